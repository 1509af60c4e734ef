"""Load the trained tokenizer of any registered modality from a tokenizers root.

The root holds one directory per tokenizer (``Modality.tokenizer_dir``):
``rgb/``, ``depth/``, ``normal/``, ``semseg/`` (VQ-VAEs) and ``text/`` (the
WordPiece vocabulary shared by captions and boxes).
"""

from __future__ import annotations

from pathlib import Path

from fourm.modalities import Modality, get_modality
from fourm.tokenizers.base import Tokenizer, TokenizerError, directory_fingerprint
from fourm.tokenizers.image import ImageTokenizer
from fourm.tokenizers.text import TextTokenizer
from fourm.tokenizers.text_views import BoxTokenizer, CaptionTokenizer

TEXT_VIEWS = {"caption": CaptionTokenizer, "boxes": BoxTokenizer}


def load_tokenizer(modality: Modality | str, root: Path | str, device: str = "cpu") -> Tokenizer:
    """The ``Tokenizer`` of ``modality`` saved under ``root``; a mismatching checkpoint is refused."""
    spec = get_modality(modality) if isinstance(modality, str) else modality
    directory = spec.tokenizer_dir(root)
    if not directory.is_dir():
        raise TokenizerError(
            f"{directory}: missing; train it with `fourm tokenizer train {spec.tokenizer_name}`"
        )
    if spec.tokenizer == "vqvae":
        return ImageTokenizer.load(directory, modality=spec.name, device=device)
    if spec.tokenizer == "text":
        return TEXT_VIEWS[spec.name](TextTokenizer.load(directory))
    raise TokenizerError(f"modality {spec.name!r} has no tokenizer (kind {spec.kind!r})")


def tokenizer_fingerprint(modality: Modality | str, root: Path | str) -> str:
    """sha256 over the files of ``modality``'s tokenizer directory."""
    spec = get_modality(modality) if isinstance(modality, str) else modality
    return directory_fingerprint(spec.tokenizer_dir(root))
