"""A structured synthetic token set for training tests: every modality follows a scene class.

Each sample has a class c in 0..3: every rgb token is in [256 c, 256 c + 256), semseg is
c everywhere, depth = (7 rgb + 3) mod 1024 position by position, and the caption names
c in three words. Any few rgb tokens reveal c, so a model can predict semseg and the
caption almost exactly, far below their unigram baselines (about ln 4 for semseg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fourm.data.token_shards import ModalitySpec, TokenSetWriter
from fourm.modalities import get_modality

MODALITIES = ("rgb", "depth", "semseg", "caption")


def structured_tokens(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    scene = rng.integers(0, 4, (n, 1))
    rgb = 256 * scene + rng.integers(0, 256, (n, 64))
    caption = np.zeros((n, get_modality("caption").max_length), dtype=np.int64)
    caption[:, 0] = 2  # [SOS]
    caption[:, 1:4] = 100 + 10 * np.arange(3) + scene  # three "words" naming the class
    caption[:, 4] = 3  # [EOS]
    return {
        "rgb": rgb,
        "depth": (7 * rgb + 3) % 1024,
        "semseg": np.repeat(scene, 64, axis=1),
        "caption": caption,
    }


def tiny_token_set(root: Path, train: int = 96, val: int = 16, per_shard: int = 32, seed: int = 0) -> Path:
    """``train`` + ``val`` samples of MODALITIES (registry vocab and lengths) under ``root``."""
    specs = {m: ModalitySpec.for_modality(m, f"{m}-tokenizer") for m in MODALITIES}
    w = TokenSetWriter(root, specs)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for s, start in enumerate(range(0, count, per_shard)):
            n = min(per_shard, count - start)
            ids = [f"{split}-{start + i:05d}" for i in range(n)]
            w.add_shard(f"{split}-{s:06d}", split, ids, structured_tokens(rng, n))
    w.finish({"name": root.name})
    return root
