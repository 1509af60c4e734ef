"""Train a VQ-VAE tokenizer for one image-like modality.

AdamW with linear warm-up then cosine decay, bf16 autocast (CPU AMX or GPU),
random left-right mirroring, periodic checkpoints that resume exactly (model,
optimizer, step and the batch sampler's RNG), a loss history for DVC plots and
a tracker (W&B, offline by default). Deterministic for a seed on one machine.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fourm.io import atomic_write_bytes
from fourm.modalities import Modality
from fourm.params import VQVAEParams
from fourm.tokenizers.base import TokenizerError
from fourm.tokenizers.image import ImageCodec, ImageTokenizer, codec_for
from fourm.tokenizers.vqvae import VQVAE, VQVAEConfig
from fourm.tracking import Tracker

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainResult:
    tokenizer: ImageTokenizer
    history: list[dict[str, float]]
    resumed_from: int | None


def model_config(
    modality: Modality, params: VQVAEParams, resolution: int, codec: ImageCodec | None = None
) -> VQVAEConfig:
    """The VQ-VAE for ``modality`` at ``resolution``; the token grid must match the registry.

    ``codec``: the fitted codec, for modalities whose channel count the data sets (clip)."""
    if resolution % params.downsample or resolution // params.downsample != modality.grid_size:
        raise TokenizerError(
            f"params.yaml: tokenizers.vqvae.downsample (or tokenizers.overrides.{modality.name}.downsample): "
            f"{resolution}px / {params.downsample} does not "
            f"give the {modality.grid_size}x{modality.grid_size} token grid of modality {modality.name!r}"
        )
    codec = codec or codec_for(modality.name)
    if codec.in_channels <= 0:
        raise TokenizerError(f"modality {modality.name!r}: the channel count comes from the data; fit first")
    vocab = math.prod(params.fsq_levels) if params.quantizer == "fsq" else modality.vocab_size
    return VQVAEConfig(
        in_channels=codec.in_channels,
        out_channels=codec.out_channels,
        vocab_size=min(vocab, modality.vocab_size) if params.quantizer == "vq" else vocab,
        downsample=params.downsample,
        patch=params.patch,
        width=params.width,
        code_dim=params.code_dim,
        quantizer=params.quantizer,
        fsq_levels=tuple(params.fsq_levels),
        ema_decay=params.ema_decay,
        dead_code_threshold=params.dead_code_threshold,
    )


def lr_at(step: int, params: VQVAEParams) -> float:
    """Linear warm-up to ``lr``, then cosine decay to 0 at ``steps``."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return params.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(
    path: Path,
    model: VQVAE,
    opt: torch.optim.Optimizer,
    step: int,
    gen: torch.Generator,
    history: list[dict[str, float]],
    fingerprint: str,
) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),  # dead-code restarts draw from the global generator
            "history": history,
            "fingerprint": fingerprint,
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def train_vqvae(
    modality: Modality,
    params: VQVAEParams,
    train_values: np.ndarray,
    resolution: int,
    checkpoint_dir: Path | None = None,
    tracker: Tracker | None = None,
    on_step: Callable[[int], None] | None = None,
    device: str = "cpu",
    bf16: bool | None = None,
) -> TrainResult:
    """Train on ``train_values`` (N, H, W[, C]); resume from ``checkpoint_dir`` when it holds a match.

    ``bf16`` overrides ``params.bf16`` (callers pass what the hardware supports, see ``fourm.precision``).
    """
    torch.manual_seed(params.seed)
    codec = codec_for(modality.name)
    codec.stats = codec.fit(train_values)
    cfg = model_config(modality, params, resolution, codec)
    inputs = codec.to_input(train_values)
    targets = codec.target(train_values)
    model = VQVAE(cfg).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, betas=(0.9, 0.99)
    )
    gen = torch.Generator().manual_seed(params.seed)
    history: list[dict[str, float]] = []
    start, resumed_from = 0, None
    fingerprint = f"{modality.name}:{params.model_dump_json()}:{len(train_values)}"
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
            history = state["history"]
            start = resumed_from = state["step"]
    n = len(inputs)
    autocast = torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, enabled=params.bf16 if bf16 is None else bf16
    )
    model.train()
    for step in range(start, params.steps):
        idx = torch.randint(n, (params.batch_size,), generator=gen)
        x, y = inputs[idx].to(device), targets[idx].to(device)
        if params.flip:
            flip = torch.rand(params.batch_size, generator=gen) < 0.5
            if flip.any():
                x[flip] = codec.hflip(x[flip])
                y[flip] = codec.hflip(y[flip])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, params)
        with autocast:
            out, codes, commitment = model(x)
        recon, parts = codec.loss(out.float(), y)
        loss = recon + params.commitment * commitment
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % params.log_every == 0 or step + 1 == params.steps:
            used = torch.bincount(codes.flatten(), minlength=cfg.vocab_size) > 0
            row = {
                "step": step + 1,
                "loss": round(float(loss.detach()), 5),
                "lr": lr_at(step, params),
                "batch_code_usage": round(float(used.float().mean()), 4),
                **{k: round(v, 5) for k, v in parts.items()},
            }
            history.append(row)
            if tracker is not None:
                tracker.log(row, step=step + 1)
        if ckpt_path is not None and (step + 1) % params.checkpoint_every == 0 and step + 1 < params.steps:
            _save_checkpoint(ckpt_path, model, opt, step + 1, gen, history, fingerprint)
        if on_step is not None:
            on_step(step + 1)
    model.eval()
    meta = {"params": params.model_dump(mode="json")}
    return TrainResult(ImageTokenizer(modality, model, codec, resolution, meta), history, resumed_from)
