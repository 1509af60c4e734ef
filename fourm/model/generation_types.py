"""The values any-to-any generation passes around: a modality's ``Given`` tokens, a
``GenerationStep`` (method and knobs), and what a chain of steps records.

The decoding itself is fourm/model/generate.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from fourm.modalities import get_modality
from fourm.model.masking_config import SEQUENCE_KINDS
from fourm.model.sampling import Schedule, TemperatureSchedule

Method = Literal["maskgit", "roar", "autoregressive"]


class GenerationError(ValueError):
    """A generation request the model cannot serve (unknown modality, wrong shape, ...)."""


@dataclass(frozen=True)
class Given:
    """One modality's tokens for a batch: ``tokens`` (B, N) and ``known`` (B, N) True where given.

    Sequences are rows ``[SOS] content [EOS] [PAD]..``; a row is an input only when it is
    wholly known; a known prefix (``[SOS]`` and the first tokens) is continued by decoding.
    """

    tokens: torch.Tensor
    known: torch.Tensor
    scores: torch.Tensor | None = None  # generated sequences: each token's sampling probability

    @staticmethod
    def full(tokens: torch.Tensor) -> Given:
        """All of ``tokens`` known."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        return Given(tokens, torch.ones_like(tokens, dtype=torch.bool))

    @staticmethod
    def empty(batch: int, modality: str, device: torch.device | str = "cpu") -> Given:
        """Nothing known: to be generated."""
        n = get_modality(modality).num_tokens
        return Given(
            torch.zeros(batch, n, dtype=torch.long, device=device),
            torch.zeros(batch, n, dtype=torch.bool, device=device),
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class GenerationStep:
    """How to generate one target: method and its knobs (``method`` None: by the target's kind)."""

    target: str
    method: Method | None = None
    steps: int = 8  # parallel methods
    schedule: Schedule = "cosine"
    temperature: float = 1.0
    temperature_schedule: TemperatureSchedule = "constant"
    top_k: int = 0
    top_p: float = 1.0
    guidance: float = 1.0
    use_cache: bool = True  # autoregressive
    # autoregressive: bounds on the tokens generated, the closing [EOS] included
    min_new_tokens: int = 0
    max_new_tokens: int | None = None
    vocab_size: int | None = None  # ids the tokenizer can decode (None: every id of the model's head)

    def __post_init__(self) -> None:
        try:
            get_modality(self.target)
        except KeyError as err:
            raise GenerationError(str(err)) from None
        if self.steps < 1:
            raise GenerationError(f"{self.target}: steps must be >= 1, got {self.steps}")

    @property
    def resolved_method(self) -> Method:
        if self.method is not None:
            return self.method
        return "autoregressive" if get_modality(self.target).kind in SEQUENCE_KINDS else "maskgit"


@dataclass
class StepRecord:
    """What one step of a chain saw and produced (for reports and tests)."""

    step: GenerationStep
    conditioning: dict[str, Given]
    output: Given


@dataclass
class ChainResult:
    states: dict[str, Given]
    records: list[StepRecord] = field(default_factory=list)
