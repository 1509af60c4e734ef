"""Reconstruction grids: input | reconstruction, one row per sample, as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fourm.data.preview import (
    colorize_depth,
    colorize_edges,
    colorize_features,
    colorize_normals,
    colorize_semseg,
)


def _viewable(name: str, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """One sample of modality ``name`` as uint8 RGB (depth coloured on the reference's range)."""
    if name == "rgb":
        return values
    if name == "depth":
        both = colorize_depth(np.concatenate([reference, values], axis=1))
        return both[:, reference.shape[1] :]
    if name == "normal":
        return colorize_normals(values)
    if name == "semseg":
        return colorize_semseg(values)
    if name == "edges":
        return colorize_edges(values)
    if name == "clip":
        return colorize_features(values, reference)
    raise ValueError(f"no preview for modality {name!r}")


def reconstruction_grid(name: str, inputs: np.ndarray, recons: np.ndarray, scale: int = 3) -> bytes:
    """PNG of ``len(inputs)`` rows: the input on the left, its reconstruction on the right."""
    rows = []
    for x, y in zip(inputs, recons, strict=True):
        pair = [_viewable(name, x, x), _viewable(name, y, x)]
        rows.append(np.concatenate([pair[0], np.full((x.shape[0], 2, 3), 255, np.uint8), pair[1]], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
