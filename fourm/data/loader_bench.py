"""``fourm bench loader``: samples/s of the token-shard loader (medians over repeats).

Without a location it benchmarks a synthetic set shaped like ``bench-cpu-s``: rgb,
depth, normal, semseg (64 tokens, vocab 1024) and caption (128 tokens, vocab 8192).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fourm.data.loader import StreamLoader, TokenStream
from fourm.data.token_shards import ModalitySpec, TokenSetWriter

if TYPE_CHECKING:
    from fourm.storage.object_store import ObjectStore

BENCH_SPECS = {
    "rgb": ModalitySpec(1024, 64),
    "depth": ModalitySpec(1024, 64),
    "normal": ModalitySpec(1024, 64),
    "semseg": ModalitySpec(1024, 64),
    "caption": ModalitySpec(8192, 128),
}


def make_bench_token_set(
    root: Path | str, num_samples: int = 2000, samples_per_shard: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Write a random token set (all ``train``) with ``BENCH_SPECS``; returns its card."""
    writer = TokenSetWriter(root, BENCH_SPECS)
    rng = np.random.default_rng(seed)
    for i, lo in enumerate(range(0, num_samples, samples_per_shard)):
        n = min(samples_per_shard, num_samples - lo)
        arrays = {
            m: rng.integers(0, s.vocab_size, (n, s.length), dtype=np.int32) for m, s in BENCH_SPECS.items()
        }
        writer.add_shard(f"train-{i:06d}", "train", [f"b{lo + j:07d}" for j in range(n)], arrays)
    return writer.finish({"synthetic": True, "seed": seed})


def bench_loader(
    location: str | Path | None = None,
    split: str = "train",
    modalities: Sequence[str] | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    batches: int = 200,
    repeats: int = 5,
    warmup_batches: int = 5,
    buffer_size: int = 1024,
    seed: int = 0,
    num_samples: int = 2000,
    store_factory: Callable[[], ObjectStore] | None = None,
) -> dict[str, Any]:
    """Median samples/s of ``StreamLoader`` over ``repeats`` runs of ``batches`` batches each.

    Each run starts a fresh loader (workers included), skips ``warmup_batches`` and times
    the next ``batches``, crossing epochs as needed (each epoch restarts the workers; that
    cost is included). ``location=None``: a synthetic ``bench-cpu-s``-shaped set of
    ``num_samples`` samples in a temporary directory.
    """
    synthetic = location is None
    with tempfile.TemporaryDirectory(prefix="fourm-bench-loader-") as tmp:
        if location is None:
            location = Path(tmp) / "tokens"
            make_bench_token_set(location, num_samples, seed=seed)
        stream = TokenStream(
            location,
            split,
            modalities,
            batch_size=batch_size,
            seed=seed,
            buffer_size=buffer_size,
            rank=0,
            world_size=1,
            store_factory=store_factory,
        )
        if stream.num_batches == 0:
            raise ValueError(f"{location}: split {split!r} has no samples to load")
        rates = []
        for r in range(repeats):
            loader = StreamLoader(stream, num_workers=num_workers)
            loader.epoch = r  # a different shuffle per repeat

            def endless(loader: StreamLoader = loader) -> Iterator[dict[str, Any]]:
                while True:
                    yield from loader

            it = endless()
            for _ in range(warmup_batches):
                next(it)
            start = time.perf_counter()
            seen = sum(len(next(it)["id"]) for _ in range(batches))
            rates.append(seen / (time.perf_counter() - start))
            it.close()
        return {
            "bench": "loader",
            "location": "synthetic" if synthetic else str(location),
            "split": split,
            "modalities": stream.modalities,
            "split_samples": stream.split_samples,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "buffer_size": buffer_size,
            "batches_per_repeat": batches,
            "repeats": repeats,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "samples_per_s": {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            },
        }
