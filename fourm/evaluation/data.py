"""The evaluation split as arrays, and the trivial baselines fitted on the train split.

Baselines answer "what does the model add?": a per-pixel mean depth map and mean
normal map, the per-pixel majority class, the most frequent caption and the empty
box set. They are fitted on the train split and scored on the evaluation split,
exactly like the model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fourm.data.samples import DatasetInputs, iter_samples
from fourm.data.scene import CLASSES

MEMBERS = ("rgb", "caption", "depth", "normal", "semseg", "boxes")


class EvaluationDataError(ValueError):
    """The split to evaluate on is missing or unusable."""


@dataclass(frozen=True)
class EvalSplit:
    """Ground truth of one split: arrays of N samples (N, H, W[, C]) plus captions and box lists."""

    ids: list[str]
    rgb: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    semseg: np.ndarray
    captions: list[str]
    boxes: list[list[dict]]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int) -> EvalSplit:
        """The first ``n`` samples."""
        return EvalSplit(
            self.ids[:n], self.rgb[:n], self.depth[:n], self.normal[:n], self.semseg[:n],
            self.captions[:n], self.boxes[:n],
        )  # fmt: skip


def load_split(inputs: DatasetInputs, split: str, max_samples: int = 0) -> EvalSplit:
    """Accepted samples of ``split`` in dataset order (the first ``max_samples``; 0 = all)."""
    values: dict[str, list] = {m: [] for m in MEMBERS}
    ids: list[str] = []
    for sample in iter_samples(inputs.raw, inputs.labels, inputs.accepted, MEMBERS, [split]):
        ids.append(sample.id)
        for m in MEMBERS:
            values[m].append(sample.values[m])
        if max_samples and len(ids) >= max_samples:
            break
    if not ids:
        raise EvaluationDataError(f"{Path(inputs.accepted)}: split {split!r} has no accepted samples")
    return EvalSplit(
        ids,
        np.stack(values["rgb"]),
        np.stack(values["depth"]).astype(np.float32),
        np.stack(values["normal"]).astype(np.float32),
        np.stack(values["semseg"]).astype(np.int64),
        [str(c) for c in values["caption"]],
        [list(b) for b in values["boxes"]],
    )


@dataclass(frozen=True)
class Baselines:
    """Trivial predictors fitted on the train split."""

    depth: np.ndarray  # (H, W) per-pixel mean depth
    normal: np.ndarray  # (H, W, 3) per-pixel mean normal, unit length
    semseg: np.ndarray  # (H, W) per-pixel majority class
    caption: str  # the most frequent caption

    def predict(self, n: int) -> dict[str, object]:
        """The baseline's prediction for ``n`` samples, per target."""
        return {
            "depth": np.broadcast_to(self.depth, (n, *self.depth.shape)),
            "normal": np.broadcast_to(self.normal, (n, *self.normal.shape)),
            "semseg": np.broadcast_to(self.semseg, (n, *self.semseg.shape)),
            "caption": [self.caption] * n,
            "boxes": [[] for _ in range(n)],
        }


def fit_baselines(train: EvalSplit) -> Baselines:
    """Mean depth and normal maps, majority class per pixel, most frequent caption."""
    valid = np.isfinite(train.depth) & (train.depth > 0)
    depth = np.where(valid, train.depth, 0).sum(0) / np.maximum(valid.sum(0), 1)
    normal = train.normal.mean(0)
    normal = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
    counts = np.stack([(train.semseg == c).sum(0) for c in range(len(CLASSES))])
    caption = Counter(train.captions).most_common(1)[0][0]
    return Baselines(depth.astype(np.float32), normal.astype(np.float32), counts.argmax(0), caption)
