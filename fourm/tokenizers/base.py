"""The tokenizer contract every modality's tokenizer implements.

``encode`` turns a batch of decoded dataset values (images as numpy arrays,
captions as str, boxes as lists of dicts) into a ``(B, num_tokens)`` integer
array; ``decode`` is its inverse (lossy for VQ-VAEs). A trained tokenizer is a
directory with a ``tokenizer.json`` config naming its modality and vocabulary;
``fingerprint`` is the sha256 over its files, recorded with every token shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fourm.io import sha256_bytes

CONFIG_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer checkpoint is missing, corrupt, or for another modality/vocabulary."""


@runtime_checkable
class Tokenizer(Protocol):
    modality: str
    vocab_size: int

    def encode(self, batch: list[Any]) -> np.ndarray: ...

    def decode(self, tokens: np.ndarray) -> list[Any]: ...


def directory_fingerprint(directory: Path | str) -> str:
    """sha256 over (relative path, sha256) of every file in a tokenizer directory."""
    root = Path(directory)
    parts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts.append(f"{path.relative_to(root).as_posix()}:{sha256_bytes(path.read_bytes())}")
    if not parts:
        raise TokenizerError(f"{root}: no tokenizer files")
    return sha256_bytes("\n".join(parts).encode())
