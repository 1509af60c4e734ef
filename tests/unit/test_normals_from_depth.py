"""Normals from depth (fourm/labelers/geometry.py): planes give their own normal, in the renderer's axes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fourm.data.raycast import render_scene
from fourm.data.scene import Camera, Scene
from fourm.labelers.geometry import backproject, normals_from_depth

pytestmark = pytest.mark.unit

FOV = 45.0


def plane_depth(normal: np.ndarray, offset: float, size: int, fov: float = FOV) -> np.ndarray:
    """z-depth of the plane {p : n.p = offset} (camera space) seen through each pixel centre."""
    rays = backproject(np.ones((size, size)), fov)  # points at z-depth 1, i.e. (x, y, -1)
    return offset / (rays @ normal)  # p = t * ray with n.p = offset


def test_fronto_parallel_plane_faces_the_viewer():
    normals = normals_from_depth(np.full((16, 20), 3.0), FOV)
    assert normals.shape == (16, 20, 3) and normals.dtype == np.float32
    np.testing.assert_allclose(normals, np.broadcast_to([0, 0, 1], normals.shape), atol=1e-6)


@pytest.mark.parametrize("tilt", [(0.3, 0.0), (0.0, -0.5), (0.4, 0.35)])
def test_tilted_plane_gives_its_constant_normal(tilt: tuple[float, float]):
    n = np.array([tilt[0], tilt[1], 1.0])
    n /= np.linalg.norm(n)
    depth = plane_depth(n, offset=-4.0 * n[2], size=32)  # passes through (0, 0, -4)
    assert (depth > 0).all()
    normals = normals_from_depth(depth, FOV)
    np.testing.assert_allclose(normals, np.broadcast_to(n, normals.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-6)


def test_scale_of_depth_does_not_change_normals():
    n = np.array([0.2, 0.5, 0.8]) / np.linalg.norm([0.2, 0.5, 0.8])
    depth = plane_depth(n, offset=-3.0 * n[2], size=24)
    np.testing.assert_allclose(
        normals_from_depth(depth, FOV), normals_from_depth(7.5 * depth, FOV), atol=1e-6
    )


def test_normals_face_the_camera_and_degenerate_pixels_face_the_viewer():
    depth = np.random.default_rng(0).uniform(1, 10, (20, 20))
    depth[3, 4] = np.nan
    normals = normals_from_depth(depth, FOV)
    points = backproject(np.nan_to_num(depth, nan=1.0), FOV)
    finite = np.isfinite(depth)
    assert (np.einsum("...i,...i->...", normals, points)[finite] <= 0).all()
    for pixel in [(3, 4), (2, 4), (3, 5)]:  # the NaN pixel and its neighbours
        np.testing.assert_allclose(normals[pixel], [0, 0, 1])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-6)


def test_floor_of_a_rendered_scene_matches_the_renderers_normals():
    """Same camera convention as raycast.py: the rendered floor's depth gives the rendered floor normal."""
    elevation = math.radians(40)
    camera = Camera(
        position=(0.0, 10 * math.sin(elevation), 10 * math.cos(elevation)), target=(0, 0, 0), fov_degrees=FOV
    )
    rendered = render_scene(Scene(camera=camera, light_direction=(0.0, 1.0, 0.0), objects=()), 48)
    normals = normals_from_depth(rendered.depth, FOV)
    np.testing.assert_allclose(normals, rendered.normal, atol=2e-3)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="fov_degrees"):
        normals_from_depth(np.ones((4, 4)), 180)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        normals_from_depth(np.ones((4, 4, 1)), FOV)
