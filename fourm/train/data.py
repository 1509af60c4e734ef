"""Masked batches for training and validation, from a token set.

``TrainBatches`` streams the train split (resumable through ``state_dict``) and masks
each batch; ``validation_batches`` builds a fixed list of masked val batches (same
masks every evaluation, so val losses compare across steps). ``check_compatible``
refuses a token set that does not fit the model before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from fourm.data.loader import StreamLoader, TokenStream
from fourm.data.token_set import TokenSet
from fourm.data.token_shards import TokenSetError
from fourm.modalities import get_modality
from fourm.model.batch import MaskedBatch
from fourm.model.config import ModelConfig
from fourm.model.masking import Masker, MaskingConfig
from fourm.params import MaskingParams


class IncompatibleError(ValueError):
    """Data or checkpoint that does not match the model configuration."""


def check_compatible(token_set: TokenSet, config: ModelConfig) -> dict[str, str]:
    """Every modality of ``config`` in ``token_set`` with a fitting vocabulary and length.

    Returns the tokenizer sha256 per modality (recorded in checkpoints, compared on resume).
    """
    problems, hashes = [], {}
    for name in config.modalities:
        m = get_modality(name)
        spec = token_set.modalities.get(name)
        if spec is None:
            problems.append(
                f"modality {name!r} is not in the token set (it has {sorted(token_set.modalities)})"
            )
            continue
        if spec.vocab_size > m.vocab_size:
            problems.append(f"{name}: token set vocab {spec.vocab_size} > model vocab {m.vocab_size}")
        if spec.length != m.num_tokens:
            what = "grid" if m.kind == "image" else "length"
            problems.append(
                f"{name}: token set has {spec.length} tokens per sample, "
                f"the model's {what} needs {m.num_tokens}"
            )
        hashes[name] = spec.tokenizer_sha256
    if problems:
        raise IncompatibleError(f"{token_set.location}: does not fit the model: " + "; ".join(problems))
    return hashes


VOCAB_MULTIPLE = 64  # fitted vocabularies are padded to this: aligned rows keep the bf16 matmuls fast


def fit_vocabularies(config: ModelConfig, token_set: TokenSet) -> ModelConfig:
    """``config`` with each modality's vocabulary cut to what its tokenizer uses.

    A text tokenizer trained on a small caption set uses a few hundred of the 8192 ids its
    modality allows; embedding tables and output heads of the full size cost a quarter of a
    tiny model's step (the 8192-wide softmax) and most of its parameters for ids that never
    occur. The fitted size is the token set's vocabulary rounded up to ``VOCAB_MULTIPLE``,
    never above the registry's. Call after ``check_compatible``.
    """
    overrides = dict(config.vocab_overrides)
    for name in config.modalities:
        spec = token_set.modalities.get(name)
        if spec is None or get_modality(name).kind == "patches":
            continue
        fitted = -(-spec.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        if fitted < get_modality(name).vocab_size:
            overrides[name] = fitted
    return replace(config, vocab_overrides=tuple(sorted(overrides.items())))


def masking_config(params: MaskingParams, config: ModelConfig, seed: int) -> MaskingConfig:
    """The masking of ``params`` over the model's modalities (per-modality alphas override the mixture)."""
    base = MaskingConfig.symmetric(
        config.modalities,
        config.inputs,
        config.targets,
        params.input_budget,
        params.target_budget,
        alphas=params.alphas,
        seed=seed,
        mean_span_length=params.mean_span_length,
        input_dropout=params.input_dropout,
    )
    if not params.input_alphas and not params.target_alphas:
        return base
    settings = tuple(
        type(s)(
            input_alphas={
                **s.input_alphas,
                **{k: v for k, v in params.input_alphas.items() if k in config.inputs},
            },
            target_alphas={
                **s.target_alphas,
                **{k: v for k, v in params.target_alphas.items() if k in config.targets},
            },
            weight=s.weight,
        )
        for s in base.settings
    )
    return MaskingConfig(**{**base.__dict__, "settings": settings})


def mask_batch(masker: Masker, batch: dict[str, Any], modalities: tuple[str, ...], epoch: int) -> MaskedBatch:
    """A loader batch (ids + LongTensor per modality) masked into the model's layout."""
    tokens = {m: batch[m].numpy() for m in modalities}
    return MaskedBatch.from_numpy(masker(tokens, batch["id"], epoch))


class TrainBatches:
    """Endless masked train batches for this rank, resumable at any step boundary."""

    def __init__(
        self,
        token_set: TokenSet,
        config: ModelConfig,
        masker: Masker,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        buffer_size: int,
        workers: int,
        store_factory: Callable[[], Any] | None = None,
    ):
        stream = TokenStream(
            token_set,
            "train",
            config.modalities,
            batch_size=batch_size,
            shuffle=True,
            seed=seed,
            buffer_size=buffer_size,
            rank=rank,
            world_size=world_size,
            equal_ranks=True,
            interleave=True,
            drop_last=True,
            store_factory=store_factory,
        )
        if stream.num_batches == 0:
            raise TokenSetError(
                f"{token_set.location}: train split has {token_set.splits['train']} samples, fewer than one "
                f"batch of {batch_size} per process x {world_size} processes"
            )
        self.loader = StreamLoader(stream, num_workers=workers)
        self.config = config
        self.masker = masker
        self._iter: Iterator[dict[str, Any]] | None = None

    def __next__(self) -> MaskedBatch:
        while True:
            if self._iter is None:
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                continue
            # The loader moves to the next epoch as it yields an epoch's last batch.
            epoch = self.loader.epoch - (1 if self.loader.consumed == 0 else 0)
            return mask_batch(self.masker, batch, self.config.modalities, epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._iter = None


def validation_batches(
    token_set: TokenSet, config: ModelConfig, masker: Masker, batch_size: int, count: int, split: str = "val"
) -> list[MaskedBatch]:
    """The first ``count`` batches of ``split`` in file order, masked with epoch 0's masks."""
    stream = TokenStream(
        token_set, split, config.modalities, batch_size=batch_size, shuffle=False, rank=0, world_size=1
    )
    out = []
    for batch in stream:
        out.append(mask_batch(masker, batch, config.modalities, epoch=0))
        if len(out) >= count:
            break
    return out


def unigram_baseline(
    train: list[MaskedBatch], val: list[MaskedBatch], config: ModelConfig
) -> dict[str, float]:
    """Per target modality: val cross-entropy (nats) of predicting the train target-token frequencies.

    Frequencies come from masked train batches (so sentinels and end tokens count as
    they do for the model), with a pseudo-count of 0.1 per vocabulary entry so a val
    token unseen in train costs a finite amount.
    """
    out = {}
    for name in config.targets:
        i = config.modalities.index(name)
        vocab = config.vocab_size(name)
        counts = np.full(vocab, 0.1, dtype=np.float64)
        for b in train:
            sel = (b.dec_mod == i) & ~b.dec_pad
            counts += np.bincount(b.targets[sel].numpy(), minlength=vocab)[:vocab]
        logp = np.log(counts / counts.sum())
        val_targets = np.concatenate([b.targets[(b.dec_mod == i) & ~b.dec_pad].numpy() for b in val])
        if len(val_targets):
            out[name] = float(-logp[val_targets].mean())
    return out
