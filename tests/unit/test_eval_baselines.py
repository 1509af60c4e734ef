"""Evaluation baselines and the model-vs-baseline comparison."""

from __future__ import annotations

import numpy as np
import pytest

from fourm.evaluation.data import EvalSplit, fit_baselines
from fourm.evaluation.tasks import TASKS, better, compare

pytestmark = pytest.mark.unit


def _split(n: int = 4) -> EvalSplit:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 3, (n, 4, 4)).astype(np.float32)
    normal = np.zeros((n, 4, 4, 3), np.float32)
    normal[..., 1] = 1.0
    normal[0, 0, 0] = [1.0, 0.0, 0.0]
    semseg = np.zeros((n, 4, 4), np.int64)
    semseg[:3, 0, 0] = 2  # class 2 is the majority at (0, 0)
    captions = ["a", "b", "b", "c"][:n]
    return EvalSplit(
        [f"s{i}" for i in range(n)],
        np.zeros((n, 4, 4, 3), np.uint8),
        depth,
        normal,
        semseg,
        captions,
        [[]] * n,
    )


def test_baselines_are_the_per_pixel_mean_majority_and_most_frequent_caption():
    train = _split()
    base = fit_baselines(train)
    np.testing.assert_allclose(base.depth, train.depth.mean(0), rtol=1e-6)
    assert base.semseg[0, 0] == 2 and base.semseg[1, 1] == 0
    np.testing.assert_allclose(np.linalg.norm(base.normal, axis=-1), 1.0, rtol=1e-5)
    assert base.caption == "b"
    pred = base.predict(3)
    assert pred["depth"].shape == (3, 4, 4) and pred["boxes"] == [[], [], []] and pred["caption"] == ["b"] * 3


def test_depth_ignores_invalid_pixels_in_the_mean():
    train = _split()
    depth = train.depth.copy()
    depth[0, 0, 0] = np.inf
    base = fit_baselines(
        EvalSplit(train.ids, train.rgb, depth, train.normal, train.semseg, train.captions, train.boxes)
    )
    assert np.isclose(base.depth[0, 0], train.depth[1:, 0, 0].mean())


def test_comparison_respects_each_metrics_direction():
    assert better("abs_rel", 0.1, 0.2) and not better("abs_rel", 0.3, 0.2)
    assert better("miou", 0.5, 0.2) and not better("miou", 0.1, 0.2)
    result = compare({"rmse": 1.0, "delta1": 0.9}, {"rmse": 2.0, "delta1": 0.95})
    assert result["metrics"]["rmse"]["better"] and not result["metrics"]["delta1"]["better"]
    assert result["beats_baseline"] is False
    assert set(TASKS) == {
        "rgb->depth",
        "rgb->normal",
        "rgb->semseg",
        "rgb->boxes",
        "rgb->caption",
        "caption->semseg",
    }
