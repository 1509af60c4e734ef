"""The registry's caption and boxes tokenizers: two views over one TextTokenizer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from fourm.modalities import get_modality
from fourm.tokenizers.base import TokenizerError
from fourm.tokenizers.text import TextTokenizer


class _TextView(ABC):
    """Shared part of the two registry adapters over one TextTokenizer."""

    modality: str

    def __init__(self, text: TextTokenizer) -> None:
        entry = get_modality(self.modality)
        if text.vocab_size > entry.vocab_size:
            raise TokenizerError(
                f"{self.modality}: text vocabulary has {text.vocab_size} tokens, "
                f"the registry allows {entry.vocab_size}"
            )
        self.text = text
        self.vocab_size: int = text.vocab_size
        self.max_length: int = entry.max_length
        self.last_truncated: np.ndarray = np.zeros(0, dtype=bool)

    @abstractmethod
    def encode_with_flags(self, batch: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``(B, max_length)`` and per-row truncation flags."""

    def encode(self, batch: list[Any]) -> np.ndarray:
        """``(B, max_length)`` int32 tokens; the truncation flags are kept in ``last_truncated``."""
        tokens, self.last_truncated = self.encode_with_flags(batch)
        return tokens


class CaptionTokenizer(_TextView):
    """The registry's ``caption`` tokenizer: captions (str) <-> ``(B, 128)`` WordPiece tokens."""

    modality = "caption"

    def encode_with_flags(self, batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and per-row truncation flags (see ``TextTokenizer.encode_captions``)."""
        return self.text.encode_captions(batch, self.max_length)

    def decode(self, tokens: np.ndarray) -> list[str]:
        """Captions of token rows."""
        return self.text.decode_captions(tokens)


class BoxTokenizer(_TextView):
    """The registry's ``boxes`` tokenizer: box lists <-> ``(B, 64)`` pix2seq tokens."""

    modality = "boxes"

    def encode_with_flags(self, batch: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and per-row truncation flags (see ``TextTokenizer.encode_boxes``)."""
        return self.text.encode_boxes(batch, self.max_length)

    def decode(self, tokens: np.ndarray) -> list[list[dict]]:
        """Box lists of token rows, canonical order."""
        return self.text.decode_boxes(tokens)
