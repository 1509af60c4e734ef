"""Values in, values out: a trained 4M model with the tokenizers it was trained on.

``AnyToAny.load`` checks that each tokenizer is the one the model's token set was
made with; ``encode`` turns images, captions and box lists into ``Given`` tokens
(refusing inputs that do not fit); ``generate`` runs a plan of generation steps
in batches under a seed; ``decode`` turns generated tokens back into values.
``fourm generate`` and the evaluation stage both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fourm.modalities import get_modality
from fourm.model.generate import chain, draws
from fourm.model.generation_types import GenerationStep, Given
from fourm.model.masking_config import EOS_ID, SEQUENCE_KINDS, SOS_ID
from fourm.model.model import FourM
from fourm.params import DecodingParams
from fourm.precision import use_bf16
from fourm.progress import track
from fourm.tokenizers.base import Tokenizer, TokenizerError
from fourm.tokenizers.load import load_tokenizer, tokenizer_fingerprint
from fourm.tokenizers.text import OBJECT_TOKENS
from fourm.train.outputs import load_model


class InferenceError(ValueError):
    """An input, model or tokenizer that cannot be used as asked."""


def step_for(target: str, params: DecodingParams) -> GenerationStep:
    """The generation step of ``target`` with the knobs of ``params``."""
    return GenerationStep(target, **params.model_dump())


@dataclass
class AnyToAny:
    model: FourM
    tokenizers: dict[str, Tokenizer]
    model_path: Path
    bf16: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(
        cls, model_path: Path | str, tokenizers_root: Path | str, device: str = "cpu", bf16: bool = True
    ) -> AnyToAny:
        """The model file and, for each of its token modalities, the matching tokenizer."""
        model_path = Path(model_path)
        if not model_path.exists():
            raise InferenceError(f"{model_path}: no such model file")
        model, extra = load_model(model_path, device)
        recorded: Mapping[str, str] = extra.get("tokenizers") or {}
        tokenizers: dict[str, Tokenizer] = {}
        for name in model.config.modalities:
            if get_modality(name).tokenizer == "none":
                continue
            try:
                tokenizer = load_tokenizer(name, tokenizers_root, device=device)
                fingerprint = tokenizer_fingerprint(name, tokenizers_root)
            except TokenizerError as err:
                raise InferenceError(f"{model_path}: needs a {name} tokenizer: {err}") from None
            want = recorded.get(name)
            if want and want != fingerprint:
                raise InferenceError(
                    f"model/tokenizer mismatch: {model_path} was trained on {name} tokens of tokenizer "
                    f"{want[:12]}…, but {get_modality(name).tokenizer_dir(tokenizers_root)} is "
                    f"{fingerprint[:12]}…; pass the tokenizers the model was trained with"
                )
            if tokenizer.vocab_size > model.config.vocab_size(name):
                raise InferenceError(
                    f"model/tokenizer mismatch: the {name} tokenizer has {tokenizer.vocab_size} tokens, "
                    f"the model {model.config.vocab_size(name)}"
                )
            tokenizers[name] = tokenizer
        return cls(model, tokenizers, model_path, use_bf16(bf16, str(device)))

    # -- values -> tokens ------------------------------------------------------------------

    def encode(self, values: Mapping[str, Sequence[Any] | np.ndarray]) -> dict[str, Given]:
        """Given tokens of every modality in ``values`` (all with the same number of samples)."""
        sizes = {name: len(v) for name, v in values.items()}
        if len(set(sizes.values())) > 1:
            raise InferenceError(f"every input needs the same number of samples, got {sizes}")
        out = {}
        for name, batch in values.items():
            out[name] = Given.full(torch.as_tensor(self._encode_one(name, batch)).to(self.device))
        return out

    def _encode_one(self, name: str, batch: Sequence[Any] | np.ndarray) -> np.ndarray:
        try:
            modality = get_modality(name)
        except KeyError as err:
            raise InferenceError(str(err)) from None
        if name not in self.model.config.inputs:
            raise InferenceError(
                f"{name!r} is not an input of this model; its inputs: {', '.join(self.model.config.inputs)}"
            )
        tokenizer = self.tokenizers[name]
        if modality.kind in SEQUENCE_KINDS:
            tokens, truncated = tokenizer.encode_with_flags(list(batch))  # type: ignore[attr-defined]
            if truncated.any():
                i = int(np.flatnonzero(truncated)[0])
                raise InferenceError(
                    f"{name} input {i} is longer than the model's maximum of {modality.max_length} tokens "
                    "(including start and end)"
                )
            return tokens.astype(np.int64)
        images = np.asarray(batch)
        want = tokenizer.resolution  # type: ignore[attr-defined]
        channels = {"rgb": 3, "normal": 3}.get(name)
        shape_ok = images.ndim == (4 if channels else 3) and images.shape[1:3] == (want, want)
        if channels and shape_ok:
            shape_ok = images.shape[3] == channels
        if not shape_ok:
            expected = f"{want}x{want}" + (f"x{channels}" if channels else "")
            raise InferenceError(f"{name} input: expected images of {expected}, got shape {images.shape[1:]}")
        return np.asarray(tokenizer.encode(images), dtype=np.int64)

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        inputs: Mapping[str, Given],
        plan: Sequence[GenerationStep],
        seed: int = 0,
        batch_size: int = 32,
        description: str = "generate",
    ) -> dict[str, Given]:
        """Run ``plan`` on every sample, ``batch_size`` at a time; the same seed gives the same tokens."""
        generator = torch.Generator(self.device).manual_seed(seed)
        plan = [replace(s, vocab_size=self.tokenizers[s.target].vocab_size) for s in plan]

        def run(chunk: dict[str, Given]) -> dict[str, Given]:
            return chain(self.model, chunk, plan, generator, self.bf16).states

        parts = _in_batches(inputs, batch_size, description, run)
        return {k: _cat([p[k] for p in parts]) for k in parts[0]}

    def sample(
        self,
        inputs: Mapping[str, Given],
        step: GenerationStep,
        count: int,
        seed: int = 0,
        batch_size: int = 32,
        description: str = "generate",
    ) -> list[Given]:
        """``count`` draws of ``step.target``: draw ``k`` equals ``generate(inputs, [step], seed + k)``
        for that target; a one-step parallel decode runs each batch's forward pass once for all."""
        if count < 1:
            raise InferenceError(f"count must be >= 1, got {count}")
        generators = [torch.Generator(self.device).manual_seed(seed + k) for k in range(count)]
        step = replace(step, vocab_size=self.tokenizers[step.target].vocab_size)

        def run(chunk: dict[str, Given]) -> list[Given]:
            return draws(self.model, chunk, step, generators, self.bf16)

        parts = _in_batches(inputs, batch_size, description, run)
        return [_cat([p[k] for p in parts]) for k in range(count)]

    # -- tokens -> values ------------------------------------------------------------------

    def decode(self, name: str, given: Given) -> Any:
        """Values of ``given`` tokens: images (B, H, W[, C]), captions (str) or box lists (with scores)."""
        tokens = given.tokens.cpu().numpy()
        if name == "boxes":
            return self.decode_boxes(tokens, None if given.scores is None else given.scores.cpu().numpy())
        return self.tokenizers[name].decode(tokens)

    def decode_boxes(self, rows: np.ndarray, scores: np.ndarray | None = None) -> list[list[dict]]:
        """Box lists of generated rows: the whole objects up to the first malformed one, each with a
        ``score`` (mean probability of its five tokens; 1 without scores)."""
        tokenizer = self.tokenizers["boxes"]
        out = []
        for r, row in enumerate(rows):
            end = np.flatnonzero(row[1:] == EOS_ID)
            body = row[1 : 1 + (int(end[0]) if end.size else len(row) - 1)]
            boxes = []
            for start in range(0, len(body) - OBJECT_TOKENS + 1, OBJECT_TOKENS):
                one = np.array([SOS_ID, *body[start : start + OBJECT_TOKENS], EOS_ID])
                try:
                    (box,) = tokenizer.decode(one[None])[0]
                except (TokenizerError, ValueError):
                    break  # the model wrote something that is not a box: keep what came before
                p = 1.0 if scores is None else float(scores[r, 1 + start : 1 + start + OBJECT_TOKENS].mean())
                boxes.append({**box, "score": p})
            out.append(boxes)
        return out


def _in_batches(
    inputs: Mapping[str, Given],
    batch_size: int,
    description: str,
    run: Callable[[dict[str, Given]], Any],
) -> list[Any]:
    """``run`` on each ``batch_size`` samples of ``inputs`` in order, under a progress bar."""
    if not inputs:
        raise InferenceError("no inputs: give at least one modality (or an empty target)")
    total = len(next(iter(inputs.values())))
    starts = range(0, total, batch_size)
    return [
        run({k: _rows(v, start, start + batch_size) for k, v in inputs.items()})
        for start in track(starts, len(starts), description, unit="batches")
    ]


def _rows(given: Given, start: int, stop: int) -> Given:
    scores = None if given.scores is None else given.scores[start:stop]
    return Given(given.tokens[start:stop], given.known[start:stop], scores)


def _cat(parts: list[Given]) -> Given:
    scores = None if any(p.scores is None for p in parts) else torch.cat([p.scores for p in parts])
    return Given(torch.cat([p.tokens for p in parts]), torch.cat([p.known for p in parts]), scores)


def resolve_model(ref_or_path: str, registry_url: str | None = None) -> Path:
    """A model file from a path (file or directory with model.pt) or a registry reference
    (``name:version``, ``name@stage``/alias): the version's checkpoint, sha256-checked."""
    from fourm.io import sha256_file
    from fourm.train.outputs import MODEL_FILE

    path = Path(ref_or_path)
    if path.is_dir():
        path = path / MODEL_FILE
    if path.is_file():
        return path
    from fourm.registry.api import Registry
    from fourm.registry.errors import RegistryError
    from fourm.settings import get_settings

    url = registry_url or get_settings().effective_registry_url
    try:
        with Registry(url) as registry:
            version = registry.get_version(ref_or_path)
    except RegistryError as err:
        raise InferenceError(
            f"{ref_or_path!r} is neither a model file nor a registered model: {err}"
        ) from None
    checkpoint = Path(version.checkpoint.uri)
    if not checkpoint.is_file():
        raise InferenceError(
            f"{version.ref}: its checkpoint {checkpoint} is not on this machine; fetch it "
            f"(`dvc pull {checkpoint.parent}` in the run's checkout) or pass a model file"
        )
    if sha256_file(checkpoint) != version.checkpoint.sha256:
        raise InferenceError(
            f"{version.ref}: {checkpoint} has changed since it was registered (sha256 "
            f"{version.checkpoint.sha256[:12]}… expected); check out the run that made it"
        )
    return checkpoint
