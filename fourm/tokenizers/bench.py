"""``fourm bench tokenize``: images/s through each trained image tokenizer."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fourm.modalities import modalities_with
from fourm.precision import use_bf16
from fourm.tokenizers.image import ImageTokenizer


def _random_values(
    name: str, n: int, resolution: int, rng: np.random.Generator, channels: int = 0
) -> np.ndarray:
    if name == "rgb":
        return rng.integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8)
    if name == "depth":
        return rng.uniform(3, 20, (n, resolution, resolution)).astype(np.float32)
    if name == "normal":
        v = rng.normal(size=(n, resolution, resolution, 3))
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    if name == "semseg":
        return rng.integers(0, 4, (n, resolution, resolution), dtype=np.uint8)
    if name == "edges":
        return (rng.random((n, resolution, resolution)) < 0.1).astype(np.uint8)
    if name == "clip":
        return rng.normal(size=(n, resolution, resolution, channels)).astype(np.float32)
    raise ValueError(name)


def _median_rate(fn: Any, n: int, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def bench_tokenizers(root: Path | str, batch_size: int = 64, repeats: int = 5) -> dict[str, Any]:
    """Median encode and decode images/s of every image tokenizer under ``root``."""
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for modality in modalities_with("vqvae"):
        directory = modality.tokenizer_dir(root)
        if not directory.is_dir():
            continue
        tok = ImageTokenizer.load(directory, modality=modality.name)
        values = _random_values(modality.name, batch_size, tok.resolution, rng, tok.codec.in_channels)
        tokens = tok.encode(values)
        results[modality.name] = {
            "encode": _median_rate(lambda t=tok, v=values: t.encode(v), batch_size, repeats),
            "decode": _median_rate(lambda t=tok, k=tokens: t.decode(k), batch_size, repeats),
            "parameters": sum(p.numel() for p in tok.model.parameters()),
        }
    return {
        "bench": "tokenize",
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "bf16": use_bf16(True),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "tokenizers": results,
    }
