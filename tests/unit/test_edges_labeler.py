"""The ``canny`` labeler (fourm/labelers/edges.py): Canny edges of the RGB as a 0/1 uint8 map."""

from __future__ import annotations

import numpy as np
import pytest
import skimage

from fourm.data import codecs
from fourm.labelers.base import LabelerError, RawSample, make_labeler
from fourm.labelers.edges import CannyLabeler

pytestmark = pytest.mark.unit

H, W = 48, 64
TOP, BOTTOM, LEFT, RIGHT = 12, 36, 16, 48  # the square: rows TOP..BOTTOM-1, cols LEFT..RIGHT-1


def square() -> np.ndarray:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[TOP:BOTTOM, LEFT:RIGHT] = 255
    return rgb


def noisy_square(seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 40, (H, W, 1))
    return np.clip(square().astype(np.float64) + noise, 0, 255).astype(np.uint8)


def label(labeler: CannyLabeler, rgb: np.ndarray) -> np.ndarray:
    return labeler([RawSample("s0", rgb, "a square")])[0]["edges"]


def test_a_square_gives_edges_on_its_border_only():
    edges = label(CannyLabeler(), square())
    assert edges.shape == (H, W) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 1}
    border = np.zeros((H, W), dtype=bool)
    border[TOP - 2 : BOTTOM + 2, LEFT - 2 : RIGHT + 2] = True
    border[TOP + 2 : BOTTOM - 2, LEFT + 2 : RIGHT - 2] = False
    assert edges[~border].sum() == 0  # nothing far inside or outside
    for row in (TOP, BOTTOM - 1, (TOP + BOTTOM) // 2):  # each side of the square is found
        assert edges[row - 1 : row + 2].any()
    assert edges[:, LEFT - 1 : LEFT + 2].any(axis=1)[TOP + 2 : BOTTOM - 2].all()
    assert edges[:, RIGHT - 2 : RIGHT + 1].any(axis=1)[TOP + 2 : BOTTOM - 2].all()


def test_higher_sigma_gives_fewer_edges_on_a_noisy_image():
    rgb = noisy_square()
    sharp, smooth = label(CannyLabeler(sigma=1.0), rgb), label(CannyLabeler(sigma=3.0), rgb)
    assert smooth.sum() < sharp.sum()
    assert set(np.unique(smooth)) <= {0, 1}


def test_thresholds_and_quantiles_change_the_result():
    rgb = noisy_square(1)
    low = label(CannyLabeler(low_threshold=0.05, high_threshold=0.1), rgb)
    high = label(CannyLabeler(low_threshold=0.3, high_threshold=0.6), rgb)
    assert high.sum() < low.sum()
    few = label(CannyLabeler(low_threshold=0.9, high_threshold=0.99, use_quantiles=True), rgb)
    many = label(CannyLabeler(low_threshold=0.5, high_threshold=0.7, use_quantiles=True), rgb)
    assert 0 < few.sum() < many.sum()


def test_make_labeler_and_provenance():
    labeler = make_labeler("canny", {"sigma": 2, "high_threshold": 0.3})
    assert isinstance(labeler, CannyLabeler) and labeler.produces == ("edges",)
    out = labeler([RawSample("a", square(), "x"), RawSample("b", np.zeros((8, 8, 3), np.uint8), "y")])
    assert [o["edges"].shape for o in out] == [(H, W), (8, 8)]
    assert out[1]["edges"].sum() == 0  # a flat image has no edges
    stored = codecs.decode("edges", codecs.encode("edges", out[0]["edges"]))
    np.testing.assert_array_equal(stored, out[0]["edges"])  # stored as png, read back unchanged
    assert labeler.provenance() == {
        "name": "canny",
        "version": "1",
        "model": None,
        "weights_sha256": None,
        "method": "skimage.feature.canny(skimage.color.rgb2gray(rgb)); 1 = edge, 0 = not",
        "scikit_image": skimage.__version__,
        "sigma": 2.0,
        "low_threshold": None,
        "high_threshold": 0.3,
        "use_quantiles": False,
    }


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sigma": -1}, r"canny: option sigma must be a finite number >= 0, got -1"),
        ({"sigma": "2"}, r"canny: option sigma must be"),
        ({"sigma": float("nan")}, r"canny: option sigma must be"),
        ({"low_threshold": True}, r"canny: option low_threshold must be .* or null"),
        ({"high_threshold": -0.1}, r"canny: option high_threshold must be"),
        ({"use_quantiles": "yes"}, r"canny: option use_quantiles must be true or false"),
        (
            {"use_quantiles": True, "high_threshold": 1.5},
            r"canny: option high_threshold must be a quantile in \[0, 1\] \(use_quantiles is true\) or null",
        ),
        ({"low_threshold": 0.5, "high_threshold": 0.2}, r"option low_threshold \(0.5\) must not exceed"),
        ({"sigmaa": 1}, r"label\.options\.canny: unknown option 'sigmaa'"),
    ],
)
def test_bad_options_are_clear_errors(options, match):
    with pytest.raises(LabelerError, match=match):
        make_labeler("canny", options)
