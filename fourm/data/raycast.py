"""Vectorised ray casting of a ``Scene`` into pixel-aligned modalities.

One primary ray per pixel centre (no anti-aliasing, so every label is exact for
its pixel), analytic intersections with the ground plane, spheres, rotated cubes
and upright cylinders, Lambert + Blinn-Phong shading from a directional light,
and cast shadows from one shadow ray per lit pixel.

Conventions of the outputs:
- depth: metric z-depth along the camera's viewing axis (not ray length);
- normals: unit vectors in camera space, OpenGL axes (x right, y up, z towards
  the viewer); they face the camera (dot(n, -view ray) > 0), though under
  perspective n_z may be slightly negative near silhouettes;
- semseg: class id per pixel (``scene.CLASSES``), instance: 0 floor, k = object k-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fourm.data.scene import COLORS, Scene, SceneObject, camera_basis

_EPS = 1e-6
_AMBIENT = 0.28
_FLOOR_COLORS = (np.array([0.62, 0.62, 0.6]), np.array([0.5, 0.5, 0.49]))


@dataclass(frozen=True)
class Rendered:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres along the view axis
    normal: np.ndarray  # (H, W, 3) float32, camera space, unit length
    semseg: np.ndarray  # (H, W) uint8 class ids
    instance: np.ndarray  # (H, W) uint8 instance ids
    intrinsics: np.ndarray  # (3, 3) pinhole K in pixels


def intrinsics(fov_degrees: float, resolution: int) -> np.ndarray:
    """Pinhole matrix for a square image with the given vertical field of view."""
    f = resolution / (2 * math.tan(math.radians(fov_degrees) / 2))
    c = resolution / 2
    return np.array([[f, 0, c], [0, f, c], [0, 0, 1.0]])


def _primary_rays(scene: Scene, res: int) -> tuple[np.ndarray, np.ndarray]:
    right, up, forward = camera_basis(scene.camera)
    half = math.tan(math.radians(scene.camera.fov_degrees) / 2)
    coords = ((np.arange(res) + 0.5) / res * 2 - 1) * half
    u = coords[None, :].repeat(res, 0)  # columns, left to right
    v = -coords[:, None].repeat(res, 1)  # rows, top to bottom
    dirs = forward + u[..., None] * right + v[..., None] * up
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return dirs.reshape(-1, 3), np.asarray(scene.camera.position, dtype=np.float64)


def _rotate_y(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    out = v.copy()
    out[..., 0] = c * v[..., 0] + s * v[..., 2]
    out[..., 2] = -s * v[..., 0] + c * v[..., 2]
    return out


def _hit_sphere(o: np.ndarray, d: np.ndarray, obj: SceneObject) -> np.ndarray:
    r = obj.extent
    oc = o - np.array([obj.x, r, obj.z])
    b = np.einsum("...i,...i->...", oc, d)
    c = np.einsum("...i,...i->...", oc, oc) - r * r
    disc = b * b - c
    hit = disc > 0
    t = np.full(b.shape, np.inf)
    t[hit] = -b[hit] - np.sqrt(disc[hit])
    t[t <= _EPS] = np.inf
    return t


def _hit_cube(o: np.ndarray, d: np.ndarray, obj: SceneObject) -> np.ndarray:
    s = obj.extent
    ol = _rotate_y(o - np.array([obj.x, s, obj.z]), -obj.rotation)
    dl = _rotate_y(d, -obj.rotation)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-s - ol) * inv
        t2 = (s - ol) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit = (tmax >= tmin) & (tmin > _EPS)
    return np.where(hit, tmin, np.inf)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, obj: SceneObject) -> np.ndarray:
    r = h = obj.extent
    ol = o - np.array([obj.x, h, obj.z])
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = ol[..., 0] * d[..., 0] + ol[..., 2] * d[..., 2]
    c = ol[..., 0] ** 2 + ol[..., 2] ** 2 - r * r
    disc = b * b - a * c
    t = np.full(a.shape, np.inf)
    ok = (disc > 0) & (a > _EPS)
    t_side = np.full(a.shape, np.inf)
    t_side[ok] = (-b[ok] - np.sqrt(disc[ok])) / a[ok]
    y = ol[..., 1] + t_side * d[..., 1]
    side = ok & (np.abs(y) <= h) & (t_side > _EPS)
    t[side] = t_side[side]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (h - ol[..., 1]) / d[..., 1]
    px = ol[..., 0] + t_cap * d[..., 0]
    pz = ol[..., 2] + t_cap * d[..., 2]
    cap = (d[..., 1] < 0) & (px * px + pz * pz <= r * r) & (t_cap > _EPS)
    t[cap] = np.minimum(t[cap], t_cap[cap])
    return t


_HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder}


def _normal_at(p: np.ndarray, obj: SceneObject) -> np.ndarray:
    """World-space outward normals of ``obj`` at surface points ``p`` (N, 3)."""
    e = obj.extent
    local = p - np.array([obj.x, e, obj.z])
    if obj.shape == "sphere":
        n = local / e
    elif obj.shape == "cube":
        ll = _rotate_y(local, -obj.rotation)
        axis = np.argmax(np.abs(ll), axis=-1)
        n = np.zeros_like(ll)
        n[np.arange(len(ll)), axis] = np.sign(ll[np.arange(len(ll)), axis])
        n = _rotate_y(n, obj.rotation)
    else:  # cylinder: the cap where the point is at the top, else the side
        n = np.zeros_like(local)
        top = local[:, 1] >= e - 1e-6 * max(1.0, e)
        n[top, 1] = 1.0
        side = ~top
        n[side, 0] = local[side, 0]
        n[side, 2] = local[side, 2]
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _nearest_hit(
    o: np.ndarray, d: np.ndarray, objects: tuple[SceneObject, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest t and instance id (0 = none) over all objects."""
    t_best = np.full(d.shape[0], np.inf)
    inst = np.zeros(d.shape[0], dtype=np.uint8)
    for k, obj in enumerate(objects, start=1):
        t = _HIT[obj.shape](o, d, obj)
        closer = t < t_best
        t_best[closer] = t[closer]
        inst[closer] = k
    return t_best, inst


def render_scene(scene: Scene, resolution: int) -> Rendered:
    """Render every pixel-aligned modality of ``scene`` at ``resolution`` x ``resolution``."""
    res = resolution
    dirs, origin = _primary_rays(scene, res)
    right, up, forward = camera_basis(scene.camera)

    # Ground plane y = 0; the camera looks down steeply enough that every ray hits it.
    t_floor = -origin[1] / dirs[:, 1]
    t_obj, inst = _nearest_hit(origin, dirs, scene.objects)
    on_object = t_obj < t_floor
    t = np.where(on_object, t_obj, t_floor)
    inst[~on_object] = 0
    points = origin + t[:, None] * dirs

    normals = np.zeros_like(points)
    normals[:, 1] = 1.0
    albedo = np.empty_like(points)
    checker = (np.floor(points[:, 0]) + np.floor(points[:, 2])).astype(np.int64) % 2 == 0
    albedo[:] = np.where(checker[:, None], _FLOOR_COLORS[0], _FLOOR_COLORS[1])
    semseg = np.zeros(len(points), dtype=np.uint8)
    for k, obj in enumerate(scene.objects, start=1):
        mask = inst == k
        if mask.any():
            normals[mask] = _normal_at(points[mask], obj)
            albedo[mask] = COLORS[obj.color]
            semseg[mask] = obj.class_id

    light = np.asarray(scene.light_direction, dtype=np.float64)
    lambert = np.clip(normals @ light, 0.0, None)
    lit = lambert > 0
    shadow_origins = points[lit] + normals[lit] * 1e-4
    t_shadow, _ = _nearest_hit(shadow_origins, np.broadcast_to(light, shadow_origins.shape), scene.objects)
    visible_light = np.ones(len(points))
    visible_light[np.flatnonzero(lit)[np.isfinite(t_shadow)]] = 0.0
    half_vec = light - dirs
    half_vec /= np.linalg.norm(half_vec, axis=-1, keepdims=True)
    specular = np.where(inst > 0, np.clip(np.einsum("ij,ij->i", normals, half_vec), 0, 1) ** 40, 0)
    shade = _AMBIENT + (1 - _AMBIENT) * lambert * visible_light
    color = albedo * shade[:, None] + 0.35 * (specular * visible_light)[:, None]
    rgb = np.clip(np.round(np.clip(color, 0, 1) ** (1 / 2.2) * 255), 0, 255).astype(np.uint8)

    depth = t * (dirs @ forward)
    # World -> camera (OpenGL) axes: x = right, y = up, z = -forward.
    cam_normals = np.stack([normals @ right, normals @ up, -(normals @ forward)], axis=-1)
    return Rendered(
        rgb=rgb.reshape(res, res, 3),
        depth=depth.reshape(res, res).astype(np.float32),
        normal=cam_normals.reshape(res, res, 3).astype(np.float32),
        semseg=semseg.reshape(res, res),
        instance=inst.reshape(res, res),
        intrinsics=intrinsics(scene.camera.fov_degrees, res),
    )


def boxes_from_instances(instance: np.ndarray, scene: Scene) -> list[dict]:
    """Tight boxes ``[x0, y0, x1, y1]`` (pixel edges, x1/y1 exclusive) of each visible object."""
    boxes = []
    for k, obj in enumerate(scene.objects, start=1):
        ys, xs = np.nonzero(instance == k)
        if len(xs) == 0:
            continue
        boxes.append(
            {
                "instance": k,
                "class": obj.shape,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            }
        )
    return boxes
