"""What 4M masking does: the Dirichlet mixture, the budgets and the span-masking knobs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fourm.modalities import ModalityError, get_modality

SEQUENCE_KINDS = ("sequence", "boxes")


# Reserved ids of sequence vocabularies (fourm/tokenizers/text.py puts them first, in this order).
PAD_ID, SOS_ID, EOS_ID, FIRST_SENTINEL_ID = 0, 2, 3, 4


@dataclass(frozen=True)
class DirichletSetting:
    """One Dirichlet component of the mixture; a missing or 0 alpha excludes the modality."""

    input_alphas: Mapping[str, float]
    target_alphas: Mapping[str, float]
    weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_alphas", dict(self.input_alphas))
        object.__setattr__(self, "target_alphas", dict(self.target_alphas))
        for side, alphas in (("input", self.input_alphas), ("target", self.target_alphas)):
            for name, a in alphas.items():
                if not (isinstance(a, int | float) and math.isfinite(a) and a >= 0):
                    raise ValueError(f"{side} alpha of {name!r} must be a finite number >= 0, got {a!r}")
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"setting weight must be a finite number > 0, got {self.weight!r}")


@dataclass(frozen=True)
class MaskingConfig:
    """What to mask: modalities, budgets, the Dirichlet mixture and the span-masking knobs."""

    modalities: tuple[str, ...]
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    input_budget: int
    target_budget: int
    settings: tuple[DirichletSetting, ...]
    lengths: Mapping[str, int] | None = None
    mean_span_length: float = 3.0
    num_sentinels: int = 32
    pad_id: int = PAD_ID
    sos_id: int = SOS_ID
    eos_id: int = EOS_ID
    first_sentinel_id: int = FIRST_SENTINEL_ID
    seed: int = 0
    input_dropout: float = 0.0  # share of samples shown no input at all (classifier-free guidance)

    def __post_init__(self) -> None:
        for name in ("modalities", "inputs", "targets", "settings"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.lengths is not None:
            object.__setattr__(self, "lengths", dict(self.lengths))
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be non-empty and distinct, got {self.modalities}")
        kinds: dict[str, str] = {}
        for name in self.modalities:
            try:
                kind = get_modality(name).kind
            except ModalityError as e:
                raise ValueError(str(e)) from None
            if kind not in ("image", *SEQUENCE_KINDS):
                raise ValueError(
                    f"modality {name!r} has kind {kind!r}: masking handles token modalities only"
                )
            kinds[name] = kind
        for side in ("inputs", "targets"):
            names = getattr(self, side)
            if not names or len(set(names)) != len(names):
                raise ValueError(f"{side} must be non-empty and distinct, got {names}")
            if unknown := [n for n in names if n not in kinds]:
                raise ValueError(f"{side} {unknown} are not in modalities {self.modalities}")
        for name in ("input_budget", "target_budget", "num_sentinels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.mean_span_length >= 1:
            raise ValueError(f"mean_span_length must be >= 1, got {self.mean_span_length}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {self.seed!r}")
        sentinels = range(self.first_sentinel_id, self.first_sentinel_id + self.num_sentinels)
        if min(self.pad_id, self.sos_id, self.eos_id, self.first_sentinel_id) < 0 or any(
            i in sentinels for i in (self.pad_id, self.sos_id, self.eos_id)
        ):
            raise ValueError("pad/sos/eos ids must be >= 0 and outside the sentinel range")
        for name, n in (self.lengths or {}).items():
            if name not in kinds:
                raise ValueError(f"lengths names {name!r}, which is not in modalities {self.modalities}")
            low = 2 if kinds[name] in SEQUENCE_KINDS else 1
            if not isinstance(n, int) or n < low:
                raise ValueError(f"length of {name!r} must be an int >= {low}, got {n!r}")
        if not self.settings:
            raise ValueError("settings must hold at least one DirichletSetting")
        for i, s in enumerate(self.settings):
            for side, alphas, allowed in (
                ("input", s.input_alphas, self.inputs),
                ("target", s.target_alphas, self.targets),
            ):
                if extra := [n for n in alphas if n not in allowed]:
                    raise ValueError(
                        f"setting {i}: {side} alphas for {extra}, not among the {side}s {allowed}"
                    )
                if not any(a > 0 for a in alphas.values()):
                    raise ValueError(f"setting {i}: no {side} modality has an alpha > 0")

    def num_tokens(self, name: str) -> int:
        """Tokens per sample of ``name`` (N_m): ``lengths`` if given there, else the registry's."""
        if self.lengths and name in self.lengths:
            return self.lengths[name]
        return get_modality(name).num_tokens

    def kind(self, name: str) -> str:
        """The registry kind of ``name`` (image, sequence or boxes)."""
        return get_modality(name).kind

    @staticmethod
    def symmetric(
        modalities: Sequence[str],
        inputs: Sequence[str],
        targets: Sequence[str],
        input_budget: int,
        target_budget: int,
        alphas: Sequence[float] = (1.0,),
        seed: int = 0,
        **kw: Any,
    ) -> MaskingConfig:
        """A mixture of symmetric Dirichlets, one equally weighted setting per alpha value."""
        if not alphas or any(not a > 0 for a in alphas):
            raise ValueError(f"symmetric alphas must be non-empty and > 0, got {tuple(alphas)}")
        settings = tuple(
            DirichletSetting({m: float(a) for m in inputs}, {m: float(a) for m in targets}) for a in alphas
        )
        return MaskingConfig(
            tuple(modalities),
            tuple(inputs),
            tuple(targets),
            input_budget,
            target_budget,
            settings,
            seed=seed,
            **kw,
        )
