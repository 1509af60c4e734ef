"""``fourm bench loader --mask``: masked training batches per second, as training gets them.

The loader (``StreamLoader`` with its worker processes) reads and batches token
shards; masking (``Masker``, numpy) runs in the training process, exactly as
``TrainBatches`` does during ``fourm train``. Captions and boxes are already tokens
in a token set (the tokenize stage encoded them), so there is no tokenisation left
at load time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fourm.data.loader_bench import BENCH_SPECS
from fourm.data.token_set import TokenSet
from fourm.data.token_shards import TokenSetWriter
from fourm.model.config import model_config
from fourm.model.masking import Masker
from fourm.params import MaskingParams
from fourm.train.data import TrainBatches, masking_config


def make_masked_bench_set(root: Path, num_samples: int = 2000, per_shard: int = 256, seed: int = 0) -> Path:
    """``bench-cpu-s``-shaped random tokens whose captions are well formed: ``[SOS] 5-30 words [EOS]``."""
    writer = TokenSetWriter(root, BENCH_SPECS)
    rng = np.random.default_rng(seed)
    for i, lo in enumerate(range(0, num_samples, per_shard)):
        n = min(per_shard, num_samples - lo)
        arrays = {
            m: rng.integers(0, s.vocab_size, (n, s.length)) for m, s in BENCH_SPECS.items() if m != "caption"
        }
        caption = np.zeros((n, BENCH_SPECS["caption"].length), dtype=np.int64)
        lengths = rng.integers(5, 31, n)
        caption[:, 0] = 2  # [SOS]
        for row, length in enumerate(lengths):
            caption[row, 1 : 1 + length] = rng.integers(100, 8192, length)
            caption[row, 1 + length] = 3  # [EOS]
        arrays["caption"] = caption
        writer.add_shard(f"train-{i:06d}", "train", [f"b{lo + j:07d}" for j in range(n)], arrays)
    writer.finish({"synthetic": True, "seed": seed})
    return root


def bench_masked_batches(
    location: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    batches: int = 200,
    repeats: int = 5,
    input_budget: int = 128,
    target_budget: int = 128,
) -> dict[str, Any]:
    """Median masked samples/s over ``repeats`` fresh loaders (workers' start included).

    Default set: synthetic ``bench-cpu-s``-shaped (rgb, depth, normal, semseg, caption),
    every modality both input and target, budgets 128/128 as in DESIGN.md's reference row.
    """
    with tempfile.TemporaryDirectory(prefix="fourm-bench-masked-") as tmp:
        if location is None:
            location = Path(tmp) / "tokens"
            make_masked_bench_set(location)
        token_set = TokenSet.open(location)
        names = tuple(
            m for m in ("rgb", "depth", "normal", "semseg", "caption", "boxes") if m in token_set.modalities
        )
        config = model_config("debug", names, names)
        params = MaskingParams(input_budget=input_budget, target_budget=target_budget)
        masker = Masker(masking_config(params, config, seed=0))
        rates = []
        for r in range(repeats):
            source = TrainBatches(token_set, config, masker, batch_size, 0, 1, r, 1024, num_workers)
            for _ in range(5):  # warm-up: workers start, first shards load
                next(source)
            start = time.perf_counter()
            for _ in range(batches):
                next(source)
            rates.append(batches * batch_size / (time.perf_counter() - start))
        return {
            "bench": "masked-loader",
            "location": str(location),
            "modalities": list(names),
            "batch_size": batch_size,
            "num_workers": num_workers,
            "budgets": [input_budget, target_budget],
            "repeats": repeats,
            "samples_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        }
