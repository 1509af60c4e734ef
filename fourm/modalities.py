"""The modality registry: one immutable entry per modality fourm models.

An entry says what a modality *is* to the model: its kind, its token shape, its
vocabulary and which tokenizer turns the dataset member it comes from into
tokens. Entries never change at run time; per-run values (token budgets,
masking) are derived from them elsewhere. Adding a modality means adding one
``register_modality`` call here plus its tokenizer (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

ModalityKind = Literal["image", "sequence", "boxes", "patches"]
TokenizerKind = Literal["vqvae", "text", "none"]


@dataclass(frozen=True)
class Modality:
    """What the model sees of one modality."""

    name: str
    kind: ModalityKind
    source: str  # dataset member the tokens are made from (raw or label set)
    tokenizer: TokenizerKind
    vocab_size: int  # token ids are in [0, vocab_size)
    grid_size: int = 0  # image-like: tokens per side
    max_length: int = 0  # sequences: tokens including start and end
    channels: int = 0  # image-like: tokenizer input channels (classes for semseg; 0: set by the data)
    description: str = ""

    @property
    def num_tokens(self) -> int:
        """Tokens per sample: grid_size² for image-like modalities, max_length for sequences."""
        return self.grid_size * self.grid_size if self.kind in ("image", "patches") else self.max_length

    @property
    def tokenizer_name(self) -> str:
        """Directory name of the trained tokenizer; captions and boxes share the text vocabulary."""
        return "text" if self.tokenizer == "text" else self.name

    def tokenizer_dir(self, root: Path | str) -> Path:
        """Where this modality's trained tokenizer lives under a tokenizers root."""
        return Path(root) / self.tokenizer_name


class ModalityError(KeyError):
    """Unknown or duplicate modality."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


_REGISTRY: dict[str, Modality] = {}
MODALITIES: Mapping[str, Modality] = MappingProxyType(_REGISTRY)


def register_modality(modality: Modality) -> Modality:
    """Add ``modality``; a second entry with the same name is refused."""
    if modality.name in _REGISTRY:
        raise ModalityError(f"modality {modality.name!r} is already registered")
    if modality.kind in ("image", "patches") and modality.grid_size <= 0:
        raise ValueError(f"modality {modality.name!r}: image-like modalities need grid_size > 0")
    if modality.kind in ("sequence", "boxes") and modality.max_length <= 2:
        raise ValueError(f"modality {modality.name!r}: sequences need max_length > 2")
    _REGISTRY[modality.name] = modality
    return modality


def get_modality(name: str) -> Modality:
    """The entry for ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModalityError(f"unknown modality {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def modalities_with(tokenizer: TokenizerKind) -> list[Modality]:
    """Registered modalities whose tokens come from tokenizer kind ``tokenizer``, in registry order."""
    return [m for m in _REGISTRY.values() if m.tokenizer == tokenizer]


IMAGE_VOCAB = 1024
TEXT_VOCAB = 8192

register_modality(
    Modality(
        "rgb",
        "image",
        "rgb",
        "vqvae",
        IMAGE_VOCAB,
        grid_size=8,
        channels=3,
        description="RGB image, VQ-VAE tokens",
    )
)
register_modality(
    Modality(
        "depth",
        "image",
        "depth",
        "vqvae",
        IMAGE_VOCAB,
        grid_size=8,
        channels=1,
        description="z-depth, normalised log-depth, VQ-VAE tokens",
    )
)
register_modality(
    Modality(
        "normal",
        "image",
        "normal",
        "vqvae",
        IMAGE_VOCAB,
        grid_size=8,
        channels=3,
        description="camera-space surface normals, VQ-VAE tokens",
    )
)
register_modality(
    Modality(
        "semseg",
        "image",
        "semseg",
        "vqvae",
        IMAGE_VOCAB,
        grid_size=8,
        channels=4,
        description="semantic segmentation (one-hot classes in), VQ-VAE tokens",
    )
)
register_modality(
    Modality(
        "edges",
        "image",
        "edges",
        "vqvae",
        IMAGE_VOCAB,
        grid_size=8,
        channels=1,
        description="Canny edges of the RGB (0/1 per pixel), VQ-VAE tokens",
    )
)
register_modality(
    Modality(
        "clip",
        "image",
        "clip",
        "vqvae",
        IMAGE_VOCAB,
        grid_size=8,
        channels=0,
        description="CLIP vision patch features (grid x grid x D; D set by the model), VQ-VAE tokens",
    )
)
register_modality(
    Modality(
        "caption",
        "sequence",
        "caption",
        "text",
        TEXT_VOCAB,
        max_length=128,
        description="caption, WordPiece tokens with start/end",
    )
)
register_modality(
    Modality(
        "boxes",
        "boxes",
        "boxes",
        "text",
        TEXT_VOCAB,
        max_length=64,
        description="boxes pix2seq-style: xmin ymin xmax ymax class, per object",
    )
)
register_modality(
    Modality(
        "rgb_patches",
        "patches",
        "rgb",
        "none",
        0,
        grid_size=8,
        channels=3,
        description="RGB pixel patches for the encoder (ViT backbone use)",
    )
)
