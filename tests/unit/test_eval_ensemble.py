"""The per-pixel estimate evaluation scores from several sampled predictions."""

from __future__ import annotations

import numpy as np
import pytest

from fourm.evaluation.ensemble import aggregate

pytestmark = pytest.mark.unit


def test_depth_is_the_mean_of_the_samples() -> None:
    a = np.full((2, 4, 4), 1.0, dtype=np.float32)
    b = np.full((2, 4, 4), 4.0, dtype=np.float32)
    out = aggregate("depth", [a, b, b])
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out, 3.0)


def test_normals_are_the_renormalised_mean() -> None:
    x = np.zeros((1, 2, 2, 3), dtype=np.float32)
    x[..., 0] = 1
    y = np.zeros_like(x)
    y[..., 1] = 1
    out = aggregate("normal", [x, y])
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], [2**-0.5, 2**-0.5, 0], rtol=1e-6)


def test_class_maps_take_the_per_pixel_majority_with_ties_to_the_lower_id() -> None:
    s1 = np.array([[[0, 5], [3, 1]]], dtype=np.int64)
    s2 = np.array([[[2, 5], [1, 1]]], dtype=np.int64)
    s3 = np.array([[[2, 0], [4, 3]]], dtype=np.int64)
    out = aggregate("semseg", [s1, s2, s3])
    assert out.dtype == np.int64
    # pixel (1, 0) has one vote each for 3, 1 and 4: the lowest id wins
    assert out.tolist() == [[[2, 5], [1, 1]]]


def test_integer_images_are_averaged_and_rounded_back() -> None:
    a = np.array([[[[10, 0, 255]]]], dtype=np.uint8)
    b = np.array([[[[13, 1, 255]]]], dtype=np.uint8)
    c = np.array([[[[13, 1, 254]]]], dtype=np.uint8)
    out = aggregate("rgb", [a, b, c])
    assert out.dtype == np.uint8 and out.tolist() == [[[[12, 1, 255]]]]


def test_one_sample_is_returned_unchanged_and_none_is_an_error() -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert np.array_equal(aggregate("depth", [a]), a)
    with pytest.raises(ValueError, match="depth: no samples"):
        aggregate("depth", [])
