"""The downstream tasks: what each generates from what, and how it is scored.

Every task runs through the real tokenizers and real decoding (no teacher forcing):
values -> tokens -> generation -> tokens -> values, then the metrics of
``fourm.evaluation.metrics`` against the ground truth, beside the same metrics of
the trivial baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fourm.data.scene import CLASSES
from fourm.evaluation import metrics as m
from fourm.evaluation.data import EvalSplit

# Metrics where lower is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"abs_rel", "rmse", "mean_angle", "median_angle"})


@dataclass(frozen=True)
class Task:
    name: str
    source: str  # the input modality
    target: str  # the generated modality
    score: Callable[[Any, EvalSplit, float], dict[str, float]]  # (prediction, truth, min_fraction)


def _depth(pred: np.ndarray, truth: EvalSplit, _: float) -> dict[str, float]:
    return m.depth_metrics(pred, truth.depth)


def _normal(pred: np.ndarray, truth: EvalSplit, _: float) -> dict[str, float]:
    return m.normal_metrics(pred, truth.normal)


def _semseg(pred: np.ndarray, truth: EvalSplit, _: float) -> dict[str, float]:
    return m.semseg_metrics(pred, truth.semseg, num_classes=len(CLASSES))


def _boxes(pred: list[list[dict]], truth: EvalSplit, _: float) -> dict[str, float]:
    return m.box_map(pred, truth.boxes)


def _caption(pred: list[str], truth: EvalSplit, _: float) -> dict[str, float]:
    scores = m.caption_attribute_scores(pred, truth.captions)
    return {**scores, "bleu4": m.caption_bleu4(pred, truth.captions)}


def _presence(pred: np.ndarray, truth: EvalSplit, min_fraction: float) -> dict[str, float]:
    return m.scene_presence(pred, truth.captions, CLASSES, min_fraction=min_fraction)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("rgb->depth", "rgb", "depth", _depth),
        Task("rgb->normal", "rgb", "normal", _normal),
        Task("rgb->semseg", "rgb", "semseg", _semseg),
        Task("rgb->boxes", "rgb", "boxes", _boxes),
        Task("rgb->caption", "rgb", "caption", _caption),
        Task("caption->semseg", "caption", "semseg", _presence),
    )
}


def better(metric: str, model: float, baseline: float) -> bool:
    """Whether the model's value beats the baseline's on ``metric``."""
    return model < baseline if metric in LOWER_IS_BETTER else model > baseline


def compare(model: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, Any]:
    """Per metric: model, baseline, and whether the model is better; ``beats_baseline`` if on all."""
    rows = {
        k: {
            "model": round(model[k], 6),
            "baseline": round(baseline[k], 6),
            "better": better(k, model[k], baseline[k]),
        }
        for k in model
    }
    return {"metrics": rows, "beats_baseline": all(r["better"] for r in rows.values())}
