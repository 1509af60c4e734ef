"""Geometry shared by labelers: surface normals from a depth map.

Conventions are those of the renderer (``fourm/data/raycast.py``): depth is z-depth
along the viewing axis; normals are unit vectors in camera space with OpenGL axes
(x right, y up, z towards the viewer) and face the camera.
"""

from __future__ import annotations

import math

import numpy as np


def backproject(depth: np.ndarray, fov_degrees: float) -> np.ndarray:
    """Camera-space points (H, W, 3) of a z-depth map seen by a pinhole camera.

    The camera has ``fov_degrees`` vertical field of view, square pixels and its
    principal point at the image centre; pixel (row i, column j) is looked at
    through its centre, so point = depth * ((j + 0.5 - W/2) / f, -(i + 0.5 - H/2) / f, -1)
    with f = H / (2 tan(fov / 2)) -- the rays of ``raycast.render_scene``.
    """
    if not 0 < fov_degrees < 180:
        raise ValueError(f"fov_degrees must lie in (0, 180), got {fov_degrees!r}")
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    h, w = depth.shape
    f = h / (2 * math.tan(math.radians(fov_degrees) / 2))
    x = (np.arange(w) + 0.5 - w / 2) / f
    y = -(np.arange(h) + 0.5 - h / 2) / f
    rays = np.stack(
        [np.broadcast_to(x[None, :], (h, w)), np.broadcast_to(y[:, None], (h, w)), -np.ones((h, w))],
        axis=-1,
    )
    return depth[..., None] * rays


def normals_from_depth(depth: np.ndarray, fov_degrees: float) -> np.ndarray:
    """Unit camera-space normals (H, W, 3) float32 of the surface a z-depth map shows.

    Method: back-project every pixel with a pinhole camera of ``fov_degrees``
    vertical field of view (``backproject``); take central differences of the 3-D
    points along rows and along columns (edge-replicated: the border rows/columns
    use their neighbour on one side only, i.e. one-sided differences); the normal is
    the cross product of the two tangents, normalised, and flipped where needed so
    it faces the camera (dot(n, -point) > 0). Where the depth or a tangent is not
    finite, or the tangents are parallel, the normal is (0, 0, 1), facing the viewer.

    A plane gives its exact normal everywhere (differences of points on a plane lie
    in it). Scaling the depth map does not change the normals, so a depth known only
    up to scale gives the same normals; depth edges (occlusion boundaries) give
    normals that straddle the two surfaces.
    """
    points = backproject(depth, fov_degrees)
    padded = np.pad(points, ((1, 1), (1, 1), (0, 0)), mode="edge")
    # edge replication makes the border difference one-sided: p[i+1] - p[i] instead of (p[i+1] - p[i-1])
    d_cols = padded[1:-1, 2:] - padded[1:-1, :-2]  # along +x in the image (columns)
    d_rows = padded[2:, 1:-1] - padded[:-2, 1:-1]  # along +row (down the image)
    normal = np.cross(d_rows, d_cols)
    # face the camera: the view ray is the point itself (camera at the origin)
    flip = np.einsum("...i,...i->...", normal, points) > 0
    normal[flip] *= -1
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    good = np.isfinite(norm[..., 0]) & (norm[..., 0] > 1e-12) & np.isfinite(points).all(axis=-1)
    out = np.zeros_like(normal)
    out[..., 2] = 1.0
    out[good] = normal[good] / norm[good]
    return out.astype(np.float32)
