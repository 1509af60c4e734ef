"""Model configuration: one frozen dataclass and the named sizes, decoded from one table.

``model_config("demo", inputs=..., targets=...)`` is how every caller gets a config;
the sizes follow the paper (B, L, XL) plus small ones for this CPU and for tests.
Which modalities the model reads and predicts comes from the modality registry, so a
config never repeats a vocabulary or a grid: ``vocab_sizes``/``lengths`` are derived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from fourm.modalities import get_modality

FeedForward = Literal["gelu", "swiglu"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a 4M encoder-decoder.

    ``inputs`` get an encoder embedding, ``targets`` a decoder embedding and an output
    head. With ``tie_embeddings`` a sequence target's head shares its weight with the
    decoder's token table (image targets enter as mask tokens, so they have no table
    to tie to). A modality may be both an input and a target.
    """

    dim: int
    encoder_depth: int
    decoder_depth: int
    heads: int
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    mlp_ratio: float = 4.0
    feed_forward: FeedForward = "gelu"
    qk_norm: bool = False
    bias: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    patch_size: int = 8  # pixels per side of an rgb_patches token (64x64 images on an 8x8 grid)
    size: str = "custom"
    # (modality, vocabulary) pairs smaller than the registry's: a trained tokenizer that uses fewer
    # ids than its modality allows (fourm.train.data.fit_vocabularies) gets tables and heads its size
    vocab_overrides: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head dim {self.dim // self.heads} must be even")
        if not self.inputs or not self.targets:
            raise ValueError("a model needs at least one input and one target modality")
        for name in (*self.inputs, *self.targets):
            m = get_modality(name)  # unknown names raise ModalityError
            if name in self.targets and m.kind == "patches":
                raise ValueError(f"{name!r} (pixel patches) can be an input only")
        if len(set(self.inputs)) != len(self.inputs) or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"duplicate modality in inputs {self.inputs} or targets {self.targets}")
        for name, size in self.vocab_overrides:
            if name not in self.modalities:
                raise ValueError(f"vocab override for {name!r}, which is not a modality of this model")
            registry = get_modality(name).vocab_size
            if not 0 < size <= registry:
                raise ValueError(f"vocab override {name}={size} is outside 1..{registry} (the registry's)")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Inputs then targets not already inputs: the index space of ``modality`` ids in a batch."""
        return tuple(dict.fromkeys((*self.inputs, *self.targets)))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden_dim(self) -> int:
        """Feed-forward width; SwiGLU uses 2/3 of it so the parameter count matches GELU's."""
        hidden = int(self.dim * self.mlp_ratio)
        return int(2 * hidden / 3) if self.feed_forward == "swiglu" else hidden

    def vocab_size(self, name: str) -> int:
        """Token ids of ``name`` the model embeds and predicts: the registry's, unless overridden."""
        return dict(self.vocab_overrides).get(name, get_modality(name).vocab_size)

    def num_tokens(self, name: str) -> int:
        """Positions per sample: grid² for image-like modalities, max_length for sequences."""
        return get_modality(name).num_tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"], d["targets"] = list(self.inputs), list(self.targets)
        d["vocab_overrides"] = [list(pair) for pair in self.vocab_overrides]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["inputs"], d["targets"] = tuple(d["inputs"]), tuple(d["targets"])
        d["vocab_overrides"] = tuple((str(n), int(v)) for n, v in d.get("vocab_overrides", ()))
        return ModelConfig(**d)

    def describe_difference(self, other: ModelConfig) -> list[str]:
        """Human-readable fields that differ, e.g. ``dim: 256 != 512``."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b.get(k)!r}" for k in a if a[k] != b.get(k)]


# size -> (dim, encoder depth, decoder depth, heads). B/L/XL as in the paper (Table 8).
SIZES: dict[str, tuple[int, int, int, int]] = {
    "debug": (32, 1, 1, 2),
    "tiny": (128, 2, 2, 4),
    "demo": (256, 4, 4, 4),
    "b": (768, 12, 12, 12),
    "l": (1024, 24, 24, 16),
    "xl": (2048, 24, 24, 32),
}

DEFAULT_INPUTS = ("rgb", "depth", "normal", "semseg", "caption", "boxes")
DEFAULT_TARGETS = ("rgb", "depth", "normal", "semseg", "caption", "boxes")


def model_config(
    size: str,
    inputs: Sequence[str] = DEFAULT_INPUTS,
    targets: Sequence[str] = DEFAULT_TARGETS,
    **overrides: Any,
) -> ModelConfig:
    """The named ``size`` (``debug | tiny | demo | b | l | xl``) with ``overrides`` applied."""
    if size == "bench-cpu-s":
        return replace(bench_cpu_s(), **overrides)
    try:
        dim, enc, dec, heads = SIZES[size]
    except KeyError:
        raise ValueError(
            f"unknown model size {size!r}; known: {', '.join([*SIZES, 'bench-cpu-s'])}"
        ) from None
    base = ModelConfig(dim, enc, dec, heads, tuple(inputs), tuple(targets), size=size)
    return replace(base, **overrides) if overrides else base


def bench_cpu_s() -> ModelConfig:
    """DESIGN.md's ``bench-cpu-s``: rgb/depth/normal/caption in, depth/normal/semseg/caption out."""
    return ModelConfig(
        dim=256,
        encoder_depth=4,
        decoder_depth=4,
        heads=4,
        inputs=("rgb", "depth", "normal", "caption"),
        targets=("depth", "normal", "semseg", "caption"),
        mlp_ratio=4.0,
        feed_forward="gelu",
        bias=True,
        size="bench-cpu-s",
    )
