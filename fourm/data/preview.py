"""A picture of labeled samples: RGB with boxes | depth | normals | semseg, one row each.

Written by the label stage as a DVC plot (and published by the flows), because a
grid of samples shows a labeling problem faster than any statistic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fourm.data import codecs
from fourm.data.format import Dataset

# semseg palette: floor, sphere, cube, cylinder, then anything unknown in magenta
PALETTE = np.array([[70, 70, 70], [230, 80, 60], [60, 140, 230], [250, 200, 40], [255, 0, 255]], np.uint8)
BOX_COLORS = {"sphere": (230, 80, 60), "cube": (60, 140, 230), "cylinder": (250, 200, 40)}
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """Near = yellow, far = purple, on a viridis-like ramp (per-image min/max)."""
    d = depth.astype(np.float64)
    finite = np.isfinite(d)
    lo, hi = (d[finite].min(), d[finite].max()) if finite.any() else (0.0, 1.0)
    t = 1 - np.clip((np.where(finite, d, hi) - lo) / max(hi - lo, 1e-9), 0, 1)
    pos = t * (len(_RAMP) - 1)
    i = np.minimum(pos.astype(int), len(_RAMP) - 2)
    frac = (pos - i)[..., None]
    return (_RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac).astype(np.uint8)


def colorize_normals(normal: np.ndarray) -> np.ndarray:
    return np.clip((normal * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)


def colorize_semseg(semseg: np.ndarray) -> np.ndarray:
    return PALETTE[np.minimum(semseg, len(PALETTE) - 1)]


def colorize_edges(edges: np.ndarray) -> np.ndarray:
    """Edge pixels white on black."""
    return np.repeat((np.asarray(edges) > 0).astype(np.uint8)[..., None] * 255, 3, axis=-1)


def colorize_features(features: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """A (H, W, D) feature map as RGB: its projection on the first three principal components of
    ``reference`` (itself by default), so a reconstruction is coloured like its input."""
    ref = np.asarray(reference if reference is not None else features, np.float64).reshape(
        -1, features.shape[-1]
    )
    mean = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    basis = vt[:3].T
    ref_proj = (ref - mean) @ basis
    lo, hi = ref_proj.min(axis=0), ref_proj.max(axis=0)
    proj = (np.asarray(features, np.float64).reshape(-1, features.shape[-1]) - mean) @ basis
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1) * 255
    if rgb.shape[1] < 3:  # fewer than 3 feature channels: pad with grey
        rgb = np.concatenate([rgb, np.full((len(rgb), 3 - rgb.shape[1]), 128.0)], axis=1)
    return rgb.reshape(*features.shape[:2], 3).astype(np.uint8)


def draw_boxes(rgb: np.ndarray, boxes: list[dict], scale: int) -> Image.Image:
    """``rgb`` scaled up with each box's outline; a generated box may be empty or have its corners
    swapped, so it is drawn as the (at least one pixel wide) rectangle its corners span."""
    img = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for box in boxes:
        x0, y0, x1, y1 = (v * scale for v in box["bbox"])
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
        corners = [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]
        draw.rectangle(corners, outline=BOX_COLORS.get(box["class"], (255, 0, 255)), width=2)
    return img


def sample_grid(raw_dir: Path, labels_dir: Path, num_samples: int = 6, scale: int = 3) -> Image.Image:
    """The first ``num_samples`` labeled samples as a grid of 4 panels per row."""
    labels = Dataset.open(labels_dir)
    wanted: dict[str, dict[str, bytes]] = {}
    for rec in labels.iter_records():
        wanted[rec.id] = rec.members
        if len(wanted) >= num_samples:
            break
    rgbs = {rec.id: rec.members["rgb"] for rec in Dataset.open(raw_dir).iter_records() if rec.id in wanted}
    rows = []
    for sample_id, members in wanted.items():
        rgb = codecs.decode("rgb", rgbs[sample_id])
        panels = [
            draw_boxes(rgb, codecs.decode("boxes", members["boxes"]), scale),
            *(
                Image.fromarray(a).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
                for a in (
                    colorize_depth(codecs.decode("depth", members["depth"])),
                    colorize_normals(codecs.decode("normal", members["normal"])),
                    colorize_semseg(codecs.decode("semseg", members["semseg"])),
                )
            ),
        ]
        rows.append(panels)
    w, h = rows[0][0].size
    pad = 4
    grid = Image.new("RGB", (4 * w + 5 * pad, len(rows) * h + (len(rows) + 1) * pad), (255, 255, 255))
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            grid.paste(panel, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
