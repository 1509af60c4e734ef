"""Per-sample statistics that the expectation suites check.

One row per manifest entry (so duplicate ids stay visible), with plain columns
that each validation rule reads: decodability, sizes, value ranges, counts of
defects. A sample that cannot be read gets ``readable=False`` and nulls elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fourm.data import codecs
from fourm.data.format import Dataset, DatasetError, iter_shard_bytes
from fourm.data.scene import CLASSES
from fourm.io import sha256_bytes
from fourm.progress import track


def _records_by_position(ds: Dataset) -> tuple[dict[tuple[str, int], Any], dict[str, bool]]:
    """Shard records keyed by (shard, index), and whether each shard's sha256 matches."""
    records: dict[tuple[str, int], Any] = {}
    sha_ok: dict[str, bool] = {}
    for shard in ds.shards:
        name = shard["name"]
        try:
            data = ds.read_shard(name, verify=False)
        except DatasetError:
            sha_ok[name] = False
            continue
        sha_ok[name] = sha256_bytes(data) == shard["sha256"]
        try:
            for i, rec in enumerate(iter_shard_bytes(data, name)):
                records[(name, i)] = rec
        except DatasetError:
            pass  # samples after the damage stay unreadable
    return records, sha_ok


def _base_row(row: dict[str, Any], records: dict, sha_ok: dict[str, bool]) -> tuple[dict, Any]:
    rec = records.get((row["shard"], row["index"]))
    readable = rec is not None and rec.id == row["id"]
    return {
        "id": row["id"],
        "split": row.get("split"),
        "shard": row["shard"],
        "readable": readable,
        "shard_sha_ok": sha_ok.get(row["shard"], False),
    }, (rec if readable else None)


def raw_stats(ds: Dataset) -> list[dict[str, Any]]:
    """Statistics of a raw dataset (RGB + caption)."""
    records, sha_ok = _records_by_position(ds)
    out = []
    for row in track(ds.rows, len(ds.rows), "inspect raw samples"):
        stats, rec = _base_row(row, records, sha_ok)
        stats.update(rgb_decodable=None, rgb_size=None, rgb_channels=None, caption_chars=None)
        if rec is not None:
            stats["rgb_decodable"] = False
            if "rgb" in rec.members:
                try:
                    rgb = codecs.decode("rgb", rec.members["rgb"])
                    stats["rgb_decodable"] = True
                    stats["rgb_size"] = f"{rgb.shape[1]}x{rgb.shape[0]}"
                    stats["rgb_channels"] = int(rgb.shape[2]) if rgb.ndim == 3 else 1
                except codecs.DecodeError:
                    pass
            if "caption" in rec.members:
                try:
                    stats["caption_chars"] = len(codecs.decode("caption", rec.members["caption"]).strip())
                except codecs.DecodeError:
                    stats["caption_chars"] = 0
            else:
                stats["caption_chars"] = 0
        out.append(stats)
    return out


def _box_defects(boxes: Any, resolution: int) -> tuple[int, int, int]:
    """(outside image, inverted or empty, unknown class) counts for a box list."""
    outside = inverted = unknown = 0
    for box in boxes if isinstance(boxes, list) else []:
        x0, y0, x1, y1 = box.get("bbox", (0, 0, 0, 0))
        if min(x0, y0) < 0 or max(x1, y1) > resolution:
            outside += 1
        if not (x0 < x1 and y0 < y1):
            inverted += 1
        if box.get("class") not in CLASSES[1:]:
            unknown += 1
    if not isinstance(boxes, list):
        unknown += 1
    return outside, inverted, unknown


def label_stats(
    ds: Dataset, source_ids: set[str], resolution: int, members: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Statistics of a label dataset; ``source_ids`` are the accepted raw sample ids, ``members``
    the optional label members (edges, clip, caption) it holds."""
    records, sha_ok = _records_by_position(ds)
    out = []
    for row in track(ds.rows, len(ds.rows), "inspect label samples"):
        stats, rec = _base_row(row, records, sha_ok)
        stats.update(
            in_source=row["id"] in source_ids,
            labels_decodable=None,
            label_size=None,
            depth_nonfinite=None,
            depth_min=None,
            normal_norm_err=None,
            semseg_max=None,
            boxes_outside=None,
            boxes_inverted=None,
            boxes_unknown_class=None,
        )
        for member in OPTIONAL_LABEL_MEMBERS:
            if member in members:
                stats.update(dict.fromkeys(OPTIONAL_LABEL_COLUMNS[member]))
        if rec is not None:
            try:
                depth = codecs.decode("depth", rec.members["depth"]).astype(np.float64)
                normal = codecs.decode("normal", rec.members["normal"]).astype(np.float64)
                semseg = codecs.decode("semseg", rec.members["semseg"])
                boxes = codecs.decode("boxes", rec.members["boxes"])
            except (KeyError, codecs.DecodeError):
                stats["labels_decodable"] = False
                out.append(stats)
                continue
            stats["labels_decodable"] = True
            shapes = {depth.shape[:2], normal.shape[:2], semseg.shape[:2]}
            stats["label_size"] = (
                "x".join(str(s) for s in reversed(depth.shape[:2])) if len(shapes) == 1 else "mismatched"
            )
            finite = np.isfinite(depth)
            stats["depth_nonfinite"] = int((~finite).sum())
            stats["depth_min"] = float(depth[finite].min()) if finite.any() else None
            norms = np.linalg.norm(normal, axis=-1)
            stats["normal_norm_err"] = float(np.nan_to_num(np.abs(norms - 1), nan=np.inf).max())
            stats["semseg_max"] = int(semseg.max())
            (
                stats["boxes_outside"],
                stats["boxes_inverted"],
                stats["boxes_unknown_class"],
            ) = _box_defects(boxes, resolution)
            stats.update(_optional_label_stats(rec.members, members))
        out.append(stats)
    return out


OPTIONAL_LABEL_MEMBERS = ("edges", "clip", "caption")
OPTIONAL_LABEL_COLUMNS = {
    "edges": ("edges_size", "edges_nonbinary"),
    "clip": ("clip_shape", "clip_nonfinite"),
    "caption": ("label_caption_chars",),
}


def _optional_label_stats(encoded: dict[str, bytes], members: tuple[str, ...]) -> dict[str, Any]:
    """Columns of the optional label members; an undecodable one marks ``labels_decodable`` False."""
    stats: dict[str, Any] = {}
    try:
        if "edges" in members:
            edges = codecs.decode("edges", encoded["edges"])
            stats["edges_size"] = (
                "x".join(str(s) for s in reversed(edges.shape[:2])) if edges.ndim == 2 else "not 2-D"
            )
            stats["edges_nonbinary"] = int(((edges != 0) & (edges != 1)).sum())
        if "clip" in members:
            clip = codecs.decode("clip", encoded["clip"])
            stats["clip_shape"] = clip_shape_of(clip)
            stats["clip_nonfinite"] = int((~np.isfinite(clip)).sum()) if clip.dtype.kind == "f" else clip.size
        if "caption" in members:
            stats["label_caption_chars"] = len(codecs.decode("caption", encoded["caption"]).strip())
    except (KeyError, codecs.DecodeError):
        stats["labels_decodable"] = False
    return stats


def clip_shape_of(features: np.ndarray) -> str:
    """``GxGxD`` of a feature map (any other shape is reported as is, and fails the rule)."""
    return "x".join(str(s) for s in features.shape)
