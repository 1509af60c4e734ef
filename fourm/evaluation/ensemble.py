"""One per-pixel estimate from several sampled predictions of an image-like target.

A greedy (argmax) token map scored worse than sampled draws on depth and normals
here: the argmax is a mode of each patch's distribution over near-identical codes.
Averaging the decoded values of sampled draws approximates the posterior mean, which
is what RMSE and angular errors reward (docs/evaluation.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CATEGORICAL = frozenset({"semseg"})  # class ids: the per-pixel majority
UNIT_VECTORS = frozenset({"normal"})  # directions: the mean, renormalised


def aggregate(target: str, samples: Sequence[np.ndarray]) -> np.ndarray:
    """Combine decoded samples (each of one shape) of ``target`` into one prediction of that shape.

    Class maps take the per-pixel majority (ties to the lower class id), unit vectors the
    renormalised mean, everything else the mean (rounded back for integer dtypes).
    """
    if not samples:
        raise ValueError(f"{target}: no samples to aggregate")
    stack = np.stack([np.asarray(s) for s in samples])
    if len(samples) == 1:
        return stack[0]
    if target in CATEGORICAL:
        classes = int(stack.max()) + 1
        votes = np.zeros((classes, *stack.shape[1:]), dtype=np.int32)
        for c in range(classes):
            votes[c] = (stack == c).sum(axis=0)
        return votes.argmax(axis=0).astype(stack.dtype)
    mean = stack.astype(np.float64).mean(axis=0)
    if target in UNIT_VECTORS:
        mean /= np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    if np.issubdtype(stack.dtype, np.integer):
        info = np.iinfo(stack.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(stack.dtype)
    return mean.astype(stack.dtype)
