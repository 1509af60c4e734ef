"""Reconstruction metrics for tokenizers (and, later, for generated modalities).

Image metrics come from torchmetrics; the depth and normal metrics are the
standard monocular-depth / surface-normal definitions, a few lines each.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# torchmetrics is imported where it is used: importing it takes ~3 s, which every tokenizer
# training process paid for metrics only the evaluation computes.


def rgb_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of uint8 images (B, H, W, 3), over the whole set."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    t = torch.from_numpy(target).permute(0, 3, 1, 2).float()
    p = torch.from_numpy(pred).permute(0, 3, 1, 2).float()
    return {
        "psnr": float(peak_signal_noise_ratio(p, t, data_range=255.0)),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=255.0)),
    }


def depth_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """abs-rel, RMSE and δ<1.25 of positive depths (B, H, W)."""
    t = target.astype(np.float64)
    p = np.maximum(pred.astype(np.float64), 1e-6)
    ratio = np.maximum(p / t, t / p)
    return {
        "abs_rel": float(np.mean(np.abs(p - t) / t)),
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
    }


def normal_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean and median angular error (degrees) and the share within 11.25° of unit normals (B, H, W, 3)."""
    t = target / np.linalg.norm(target, axis=-1, keepdims=True).clip(1e-8)
    p = pred / np.linalg.norm(pred, axis=-1, keepdims=True).clip(1e-8)
    angle = np.degrees(np.arccos(np.clip((t * p).sum(-1), -1.0, 1.0)))
    return {
        "angular_mean": float(angle.mean()),
        "angular_median": float(np.median(angle)),
        "within_11_25": float(np.mean(angle < 11.25)),
    }


def semseg_metrics(target: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """Mean IoU over classes present in target or prediction, and pixel accuracy."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    t = torch.from_numpy(target.astype(np.int64)).flatten()
    p = torch.from_numpy(pred.astype(np.int64)).flatten()
    return {
        "miou": float(multiclass_jaccard_index(p, t, num_classes=num_classes, average="macro")),
        "pixel_accuracy": float(multiclass_accuracy(p, t, num_classes=num_classes, average="micro")),
    }


def edge_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of edge pixels, and pixel accuracy, of 0/1 maps (B, H, W)."""
    from torchmetrics.functional.classification import binary_f1_score, binary_precision, binary_recall

    t = torch.from_numpy(target.astype(np.int64)).flatten()
    p = torch.from_numpy(pred.astype(np.int64)).flatten()
    return {
        "edge_precision": float(binary_precision(p, t)),
        "edge_recall": float(binary_recall(p, t)),
        "edge_f1": float(binary_f1_score(p, t)),
        "pixel_accuracy": float((p == t).float().mean()),
    }


def feature_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean cosine similarity of feature vectors (B, H, W, D) and MSE relative to their variance."""
    t = torch.from_numpy(target.reshape(-1, target.shape[-1]).astype(np.float32))
    p = torch.from_numpy(pred.reshape(-1, pred.shape[-1]).astype(np.float32))
    variance = float(((t - t.mean(dim=0)) ** 2).mean()) or 1.0
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(p, t, dim=1).mean()),
        "relative_mse": float(((p - t) ** 2).mean()) / variance,
    }


def codebook_usage(tokens: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Share of codes used, share unused, and the perplexity of the code distribution."""
    counts = np.bincount(tokens.ravel(), minlength=vocab_size).astype(np.float64)
    probs = counts / max(counts.sum(), 1)
    nz = probs[probs > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    used = float((counts > 0).mean())
    return {"code_usage": used, "codes_unused": 1.0 - used, "perplexity": math.exp(entropy)}


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0
