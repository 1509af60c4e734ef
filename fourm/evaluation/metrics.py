"""Metrics for downstream evaluation: generated predictions vs. ground truth.

Pure functions, numpy (or lists) in, plain Python floats out. Every function takes a whole
batch of N samples; calling it once on a whole split accumulates over the split (all metrics
pool over samples the way their docstrings say, so one call on the split is the split's score).

Library use: torchmetrics for semantic segmentation (multiclass Jaccard / accuracy) and BLEU;
pycocotools' ``COCOeval`` for box mAP. (torchmetrics' ``MeanAveragePrecision`` wraps that
same COCOeval but additionally requires torchvision, which is not installed here and is tied
to the exact torch build, so COCOeval is called directly with the same defaults: 10 IoU
thresholds .50:.05:.95, 101 recall points, at most 100 detections per image and class.)
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fourm.data.scene import COLORS, SHAPES, SIZES

CaptionObject = tuple[str | None, str | None, str]
"""(size, colour, shape) of one object listed in a caption; size/colour are None when the text omits them."""

DEPTH_EPS = 1e-6
_NORMAL_EPS = 1e-8


# --------------------------------------------------------------------------- validation helpers


def _array(x: npt.ArrayLike, name: str, ndim: int, expected: str, last: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim or (last is not None and a.shape[-1] != last):
        raise ValueError(f"{name} must have shape {expected}, got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample (N >= 1), got shape {a.shape}")
    return a


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def _mask(valid: npt.ArrayLike | None, shape: tuple[int, ...], expected: str) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    v = np.asarray(valid)
    if v.shape != shape:
        raise ValueError(f"valid must have shape {expected} = {shape}, got {v.shape}")
    return v.astype(bool)


def _int_map(x: npt.ArrayLike, name: str) -> np.ndarray:
    a = _array(x, name, 3, "(N, H, W)")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer class map of shape (N, H, W), got dtype {a.dtype}")
    return a.astype(np.int64)


def _texts(x: Sequence[str], name: str) -> list[str]:
    if isinstance(x, str) or not all(isinstance(t, str) for t in x):
        raise ValueError(f"{name} must be a sequence of N strings (one per sample)")
    return list(x)


def _paired_texts(pred: Sequence[str], target: Sequence[str]) -> tuple[list[str], list[str]]:
    p, t = _texts(pred, "pred_texts"), _texts(target, "target_texts")
    if len(p) != len(t):
        raise ValueError(
            f"pred_texts and target_texts must have the same length N, got {len(p)} and {len(t)}"
        )
    if not p:
        raise ValueError("pred_texts and target_texts must hold at least one sample (N >= 1)")
    return p, t


# --------------------------------------------------------------------------- dense geometry


def depth_metrics(
    pred: npt.ArrayLike, target: npt.ArrayLike, valid: npt.ArrayLike | None = None
) -> dict[str, float]:
    """abs_rel, rmse and delta1 of (N, H, W) depth maps in the same units, pooled over all valid pixels.

    Valid pixels: ``valid`` (if given) AND target > 0 AND target finite. Predictions are clipped
    below at ``DEPTH_EPS``; a non-finite prediction at a valid pixel is an error. delta1 is the
    share of valid pixels with max(p/t, t/p) < 1.25. Raises ValueError if no pixel is valid.
    """
    p = _array(pred, "pred", 3, "(N, H, W)").astype(np.float64)
    t = _array(target, "target", 3, "(N, H, W)").astype(np.float64)
    _same_shape(p, t, "pred", "target")
    m = _mask(valid, t.shape, "(N, H, W)") & np.isfinite(t)
    m[m] = t[m] > 0
    if not m.any():
        raise ValueError("depth_metrics: no valid pixels (valid & target > 0 & finite is empty)")
    pv, tv = p[m], t[m]
    if not np.isfinite(pv).all():
        raise ValueError("pred contains non-finite depth values at valid pixels")
    pv = np.maximum(pv, DEPTH_EPS)
    ratio = np.maximum(pv / tv, tv / pv)
    return {
        "abs_rel": float(np.mean(np.abs(pv - tv) / tv)),
        "rmse": float(np.sqrt(np.mean((pv - tv) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
    }


def normal_metrics(
    pred: npt.ArrayLike, target: npt.ArrayLike, valid: npt.ArrayLike | None = None
) -> dict[str, float]:
    """Angular error of (N, H, W, 3) channel-last surface normals, pooled over all valid pixels.

    Both fields are renormalised to unit length; pixels where either vector is zero (or
    non-finite) are invalid, and ``valid`` (N, H, W), if given, is AND-ed with that. Angles in
    degrees; within_11_25 is the fraction (in [0, 1]) of valid pixels with error < 11.25 degrees.
    Raises ValueError if no pixel is valid.
    """
    p = _array(pred, "pred", 4, "(N, H, W, 3)", last=3).astype(np.float64)
    t = _array(target, "target", 4, "(N, H, W, 3)", last=3).astype(np.float64)
    _same_shape(p, t, "pred", "target")
    m = _mask(valid, t.shape[:3], "(N, H, W)")
    m &= np.isfinite(p).all(-1) & np.isfinite(t).all(-1)
    with np.errstate(invalid="ignore"):
        pn, tn = np.linalg.norm(p, axis=-1), np.linalg.norm(t, axis=-1)
    m &= (pn > _NORMAL_EPS) & (tn > _NORMAL_EPS)
    if not m.any():
        raise ValueError("normal_metrics: no valid pixels (valid & non-zero finite vectors is empty)")
    pu = p[m] / pn[m][:, None]
    tu = t[m] / tn[m][:, None]
    cos = np.clip(np.sum(pu * tu, axis=-1), -1.0, 1.0)
    ang = np.degrees(np.arccos(cos))
    return {
        "mean_angle": float(np.mean(ang)),
        "median_angle": float(np.median(ang)),
        "within_11_25": float(np.mean(ang < 11.25)),
    }


# --------------------------------------------------------------------------- semantic segmentation


def semseg_metrics(
    pred: npt.ArrayLike, target: npt.ArrayLike, num_classes: int, ignore_index: int | None = None
) -> dict[str, float]:
    """mIoU and pixel accuracy of (N, H, W) integer class maps, pooled over all pixels of all samples.

    Pixels where target == ignore_index are left out of both metrics. Per-class IoU comes from
    torchmetrics' multiclass Jaccard (average=None); mIoU is the mean over the classes that
    occur (on non-ignored pixels) in the target OR the prediction: a class absent from both has
    no defined IoU and is left out rather than counted as 0 or 1. The ignore_index class itself
    (if it is in [0, num_classes)) gets no IoU; predicting it at a kept pixel is just an error.
    Raises ValueError if no pixel is left.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    p = _int_map(pred, "pred")
    t = _int_map(target, "target")
    _same_shape(p, t, "pred", "target")
    keep = np.ones(t.shape, dtype=bool) if ignore_index is None else t != ignore_index
    if not keep.any():
        raise ValueError("semseg_metrics: every target pixel equals ignore_index")
    pk, tk = p[keep], t[keep]
    for name, a in (("pred", pk), ("target", tk)):
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(
                f"{name} holds class ids outside [0, {num_classes}) at non-ignored pixels: "
                f"[{a.min()}, {a.max()}]"
            )
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    # Ignored pixels are dropped here, so torchmetrics sees only the kept ones (1-D, pooled).
    pt, tt = torch.from_numpy(pk), torch.from_numpy(tk)
    per_class = multiclass_jaccard_index(pt, tt, num_classes, average="none", validate_args=False).numpy()
    acc = multiclass_accuracy(pt, tt, num_classes, average="micro", validate_args=False)
    present = (np.bincount(tk, minlength=num_classes) + np.bincount(pk, minlength=num_classes)) > 0
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        present[ignore_index] = False  # kept target pixels never hold it, so some class stays present
    miou = float(np.mean(per_class[present]))
    return {"miou": miou, "pixel_accuracy": float(acc)}


# --------------------------------------------------------------------------- boxes

_BOX_KEYS = ("bbox", "class")  # the dataset's box format: bbox = [xmin, ymin, xmax, ymax] in pixels


def _check_boxes(boxes: Any, name: str) -> list[list[Mapping[str, Any]]]:
    if not isinstance(boxes, Sequence) or isinstance(boxes, str | bytes):
        raise ValueError(f"{name} must be a list (per sample) of lists of box dicts")
    out = []
    for i, sample in enumerate(boxes):
        if not isinstance(sample, Sequence) or isinstance(sample, str | bytes):
            raise ValueError(f"{name}[{i}] must be a list of box dicts with keys {_BOX_KEYS}")
        for j, b in enumerate(sample):
            if not isinstance(b, Mapping) or any(k not in b for k in _BOX_KEYS):
                raise ValueError(f"{name}[{i}][{j}] must be a dict with keys {_BOX_KEYS}, got {b!r}")
            try:
                x0, y0, x1, y1 = (float(v) for v in b["bbox"])
            except (TypeError, ValueError):
                raise ValueError(f"{name}[{i}][{j}]: bbox must be four numbers, got {b['bbox']!r}") from None
            if not (np.isfinite([x0, y0, x1, y1]).all() and x1 >= x0 and y1 >= y0):
                raise ValueError(
                    f"{name}[{i}][{j}] must have finite xmin <= xmax and ymin <= ymax, got {b!r}"
                )
        out.append(list(sample))
    return out


def box_map(
    pred_boxes: Sequence[Sequence[Mapping[str, Any]]], target_boxes: Sequence[Sequence[Mapping[str, Any]]]
) -> dict[str, float]:
    """COCO box mAP over N samples: map_50 (IoU 0.5) and map (mean over IoU 0.50:0.05:0.95).

    Each argument is a list with one entry per sample, a list of dicts ``{"bbox": [xmin, ymin,
    xmax, ymax], "class": str}`` in pixels (the dataset's and the box tokenizer's format);
    predictions may carry ``"score"`` (default 1.0).
    Class names are mapped to ids in sorted order of all names seen. mAP averages over classes
    with at least one target box (COCO convention; predictions of other classes do not count).
    Conventions: no predictions at all -> 0.0; no target boxes at all -> 0.0 (not -1/NaN).
    """
    preds = _check_boxes(pred_boxes, "pred_boxes")
    targets = _check_boxes(target_boxes, "target_boxes")
    if len(preds) != len(targets):
        raise ValueError(
            f"pred_boxes and target_boxes must have one entry per sample, got {len(preds)} and {len(targets)}"
        )
    n_pred = sum(len(s) for s in preds)
    n_target = sum(len(s) for s in targets)
    if n_pred == 0 or n_target == 0:
        return {"map_50": 0.0, "map": 0.0}

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({str(b["class"]) for s in (*preds, *targets) for b in s})
    cat = {name: i + 1 for i, name in enumerate(names)}  # COCO ids start at 1

    def xywh(b: Mapping[str, Any]) -> list[float]:
        x0, y0, x1, y1 = (float(v) for v in b["bbox"])
        return [x0, y0, x1 - x0, y1 - y0]

    annotations = []
    for img, sample in enumerate(targets):
        for b in sample:
            box = xywh(b)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img,
                    "category_id": cat[str(b["class"])],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    results = [
        {
            "image_id": img,
            "category_id": cat[str(b["class"])],
            "bbox": xywh(b),
            "score": float(b.get("score", 1.0)),
        }
        for img, sample in enumerate(preds)
        for b in sample
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i} for i in range(len(targets))],
            "categories": [{"id": c, "name": n} for n, c in cat.items()],
            "annotations": annotations,
        }
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    # precision: [iou thresholds, recall points, classes, area ranges, max dets]; area "all", 100 dets.
    prec = ev.eval["precision"][:, :, :, 0, -1]

    def mean(a: np.ndarray) -> float:
        a = a[a > -1]  # -1 marks classes without target boxes
        return float(np.mean(a)) if a.size else 0.0

    return {"map_50": mean(prec[0]), "map": mean(prec)}


# --------------------------------------------------------------------------- captions

_WORD = re.compile(r"[a-z]+")
_SENTENCE_END = re.compile(r"[.!?]")
_ARTICLES = frozenset({"a", "an", "the"})


def caption_objects(text: str) -> list[CaptionObject]:
    """The objects listed in a caption's first sentence, as (size, colour, shape) tuples, in order.

    Case-insensitive. Each shape word (``SHAPES``) closes an object, taking the latest size
    (``SIZES``) and colour (``COLORS``) words seen since the previous object or article; an
    article starts a new object; every other word is ignored. Size/colour are None when missing.
    Returns [] when nothing parses.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    first = _SENTENCE_END.split(text, maxsplit=1)[0].lower()
    objects: list[CaptionObject] = []
    size: str | None = None
    colour: str | None = None
    for word in _WORD.findall(first):
        if word in _ARTICLES:
            size = colour = None
        elif word in SIZES:
            size = word
        elif word in COLORS:
            colour = word
        elif word in SHAPES:
            objects.append((size, colour, word))
            size = colour = None
    return objects


def caption_attribute_scores(pred_texts: Sequence[str], target_texts: Sequence[str]) -> dict[str, float]:
    """Attribute agreement of generated vs. reference captions, averaged over N samples.

    Per sample (objects from ``caption_objects``): count correct = same number of listed
    objects; shapes correct = same set of shapes; colours correct = same set of colours (objects
    without a colour add none). attribute_accuracy is the mean of the three accuracies.
    """
    preds, targets = _paired_texts(pred_texts, target_texts)
    count = shape = colour = 0
    for p_text, t_text in zip(preds, targets, strict=True):
        p, t = caption_objects(p_text), caption_objects(t_text)
        count += len(p) == len(t)
        shape += {o[2] for o in p} == {o[2] for o in t}
        colour += {o[1] for o in p if o[1]} == {o[1] for o in t if o[1]}
    n = len(preds)
    scores = {"count_accuracy": count / n, "shape_accuracy": shape / n, "colour_accuracy": colour / n}
    scores["attribute_accuracy"] = sum(scores.values()) / 3
    return scores


def _bleu_tokens(text: str) -> str:
    return " ".join(re.findall(r"\w+|[^\w\s]", text.lower()))


def caption_bleu4(pred_texts: Sequence[str], target_texts: Sequence[str]) -> float:
    """Corpus BLEU-4 (torchmetrics, no smoothing) with one reference caption per sample.

    Texts are lower-cased and punctuation is split off into its own tokens before scoring. A
    corpus with no matching 4-gram (e.g. captions under four tokens) scores 0.
    """
    preds, targets = _paired_texts(pred_texts, target_texts)
    from torchmetrics.functional.text import bleu_score

    score = bleu_score([_bleu_tokens(p) for p in preds], [[_bleu_tokens(t)] for t in targets], n_gram=4)
    return float(score)


# --------------------------------------------------------------------------- caption -> semseg


def scene_presence(
    pred_class_maps: npt.ArrayLike,
    captions: Sequence[str],
    class_names: Sequence[str],
    min_fraction: float = 0.01,
) -> dict[str, float]:
    """Do predicted class maps (N, H, W) contain the shapes their captions name? Micro precision/recall.

    Per sample, named = the classes whose name is a shape in ``caption_objects(caption)`` (shapes
    with no entry in ``class_names`` cannot be predicted and are dropped); predicted = the class
    ids >= 1 covering at least ``min_fraction`` of the map's pixels (and at least one pixel).
    Class 0 (the floor) is background and never counts. Counts are summed over samples:
    precision = |named & predicted| / |predicted|, recall = |named & predicted| / |named|. With
    nothing predicted anywhere, precision is 0 (a predictor that never commits earns none) unless
    nothing is named either (then 1); recall is 1 when nothing is named anywhere.
    """
    maps = _int_map(pred_class_maps, "pred_class_maps")
    texts = _texts(captions, "captions")
    if len(texts) != maps.shape[0]:
        raise ValueError(f"captions must have one entry per map (N={maps.shape[0]}), got {len(texts)}")
    names = _texts(class_names, "class_names")
    if not names:
        raise ValueError("class_names must name at least the background class 0")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if maps.min() < 0 or maps.max() >= len(names):
        raise ValueError(
            f"pred_class_maps holds class ids outside [0, {len(names)}): [{maps.min()}, {maps.max()}]"
        )
    class_of = {name: i for i, name in enumerate(names) if i > 0}
    pixels = maps.shape[1] * maps.shape[2]
    hits = n_pred = n_named = 0
    for m, text in zip(maps, texts, strict=True):
        named = {class_of[o[2]] for o in caption_objects(text) if o[2] in class_of}
        counts = np.bincount(m.ravel(), minlength=len(names))
        predicted = {i for i in range(1, len(names)) if counts[i] > 0 and counts[i] >= min_fraction * pixels}
        hits += len(named & predicted)
        n_pred += len(predicted)
        n_named += len(named)
    return {
        "precision": hits / n_pred if n_pred else (0.0 if n_named else 1.0),
        "recall": hits / n_named if n_named else 1.0,
    }
