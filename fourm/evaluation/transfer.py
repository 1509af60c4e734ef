"""Transfer: fine-tune the pretrained 4M encoder on a task it never saw, against training from scratch.

The task is counting the objects in a scene (count = number of ground-truth boxes; the
synthetic scenes hold 1..6), posed as classification over counts ``0..max_count``.
The network is the 4M encoder used as a ViT on RGB pixel patches
(``FourM.encode_images``), then mean-pool + LayerNorm + Linear.

Two variants train with the same seed, batches, steps, optimizer and schedule:

- ``pretrained``: ``from_pretrained`` copies the pretrained model's encoder into the network;
- ``scratch``: the same network, nothing copied.

Under one seed both start from identical fresh weights for the parts that are never copied
(patch embedding, head, the rgb_patches modality row when the pretrained model lacks it),
so the copied encoder is the only difference between them.

What ``from_pretrained`` copies (tensor for tensor, nothing else):

- ``encoder.*``: every encoder block (attention, MLP, norms);
- ``encoder_norm``;
- ``encoder_embed.positions.modality``: the learned modality embeddings, row by row by
  modality name (the table gains a row for rgb_patches; a modality the pretrained model
  has no row for keeps its fresh row).

Not copied: the patch embedding (pretraining never trains it: masking refuses pixel
patches, so a pretrained one would be its initialisation) and the head, both fresh; the
2D sin-cos position codes are fixed buffers, identical by construction. Left out of the
network altogether, because ``encode_images`` does not use them: the decoder side
(``context_proj``, decoder embeddings, blocks, norm, heads) and the encoder's token
tables; so the optimizer only sees what is trained.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fourm.data.samples import DatasetInputs, iter_samples
from fourm.model.config import ModelConfig
from fourm.model.model import FourM
from fourm.precision import training_attention, use_bf16
from fourm.progress import StepProgress
from fourm.train.optim import lr_factor, make_optimizer
from fourm.train.outputs import load_model

TASK = "object_count"
PATCHES = "rgb_patches"


@dataclass(frozen=True)
class TransferConfig:
    """Budget of the transfer run, the same for both variants (sized for a 2-core CPU, 64x64 images).

    ``lr`` is the peak of a linear warm-up over ``warmup_steps`` then a cosine decay to 0;
    ``flip`` mirrors training images left-right at random (the count does not change).
    """

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 30
    seed: int = 0
    max_count: int = 6
    eval_batch_size: int = 256
    device: str = "cpu"
    clip_grad: float = 1.0
    flip: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_count", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransferConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.weight_decay < 0 or self.clip_grad <= 0:
            raise ValueError(
                "TransferConfig needs warmup_steps >= 0, lr > 0, weight_decay >= 0 and clip_grad > 0"
            )


# -- the network ------------------------------------------------------------------------------

_DECODER_SIDE = ("context_proj", "decoder_embed", "decoder", "decoder_norm", "heads")


class CountingViT(nn.Module):
    """The 4M encoder as a ViT on pixel patches, mean-pooled, LayerNorm, Linear to ``max_count + 1``."""

    def __init__(self, config: ModelConfig, max_count: int):
        super().__init__()
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        config = replace(config, inputs=tuple(dict.fromkeys((*config.inputs, PATCHES))))
        backbone = FourM(config)
        for name in _DECODER_SIDE:  # unused by encode_images: not part of this network
            setattr(backbone, name, None)
        backbone.encoder_embed.token = nn.ModuleDict()  # token tables: pixels come in instead
        self.backbone = backbone
        self.max_count = max_count
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps, bias=config.bias)
        self.head = nn.Linear(config.dim, max_count + 1)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.copied: tuple[str, ...] = ()  # parameter names from_pretrained filled in

    @property
    def config(self) -> ModelConfig:
        return self.backbone.config

    @property
    def image_size(self) -> int:
        """Pixels per side the patch grid needs."""
        embed = self.backbone.patch_embed
        return embed.grid * embed.patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> count logits (B, max_count + 1)."""
        feats = self.backbone.encode_images(images)  # (B, N, D)
        return self.head(self.norm(feats.mean(dim=1)))


def build_counting_vit(config: ModelConfig, max_count: int) -> CountingViT:
    """A freshly initialised counting network for a 4M of ``config`` (rgb_patches added as input)."""
    return CountingViT(config, max_count)


def from_pretrained(model: FourM, max_count: int) -> CountingViT:
    """The counting network with ``model``'s encoder copied in (module docstring: what exactly)."""
    net = build_counting_vit(model.config, max_count)
    copied: list[str] = []
    with torch.no_grad():
        for name in ("encoder", "encoder_norm"):
            src, dst = getattr(model, name), getattr(net.backbone, name)
            dst.load_state_dict(src.state_dict())  # same config: every shape fits
            copied += [f"{name}.{k}" for k, _ in dst.named_parameters()]
        src_rows = model.encoder_embed.positions.modality
        dst_rows = net.backbone.encoder_embed.positions.modality
        src_index = {m: i for i, m in enumerate(model.config.modalities)}
        for i, m in enumerate(net.config.modalities):
            j = src_index.get(m)
            if j is not None and src_rows[j].shape == dst_rows[i].shape:
                dst_rows[i].copy_(src_rows[j])
                copied.append(f"encoder_embed.positions.modality[{m}]")
    net.copied = tuple(copied)
    return net


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountData:
    """One split in memory: images (N, 3, H, W) uint8 and counts (N,) int64."""

    ids: list[str]
    images: torch.Tensor
    counts: torch.Tensor


def read_counts(inputs: DatasetInputs, split: str, image_size: int, max_count: int) -> CountData:
    """``split``'s accepted samples: rgb as (3, H, W) uint8 and the count of their boxes."""
    ids, images, counts = [], [], []
    for sample in iter_samples(inputs.raw, inputs.labels, inputs.accepted, ["rgb", "boxes"], [split]):
        rgb = np.asarray(sample.values["rgb"])
        if rgb.shape != (image_size, image_size, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{inputs.raw}: sample {sample.id}: rgb is {'x'.join(map(str, rgb.shape))} {rgb.dtype}, "
                f"the model's patch grid needs {image_size}x{image_size}x3 uint8"
            )
        n = len(sample.values["boxes"])
        if n > max_count:
            raise ValueError(
                f"{inputs.labels}: sample {sample.id}: {n} objects (boxes), more than max_count "
                f"{max_count}; raise max_count"
            )
        ids.append(sample.id)
        images.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
        counts.append(n)
    if not ids:
        raise ValueError(f"{inputs.labels}: no accepted samples in split {split!r}")
    return CountData(ids, torch.stack(images), torch.tensor(counts, dtype=torch.long))


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, 3, H, W) scaled to [0, 1]; shapes (3,)."""
    x = images.double().div_(255.0)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    return mean.float(), std.clamp_min(1e-6).float()


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float: scaled to [0, 1], then per channel ``(x - mean) / std``."""
    x = images.float().div_(255.0)
    return (x - mean.to(x.device)[:, None, None]) / std.to(x.device)[:, None, None]


# -- training and evaluation ------------------------------------------------------------------


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration, the previous setting restored after.

    Needed on the CPU: the backward of the modality-embedding lookup (advanced indexing)
    accumulates with threads in a varying order, so two runs drift apart in the last bits.
    ``warn_only``: an op with no deterministic kernel (some CUDA ones) warns instead of failing;
    bitwise repeatability on CUDA also needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8``."""
    before, before_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


def _autocast(device: str) -> contextlib.AbstractContextManager:
    if use_bf16(True, device):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fine_tune(
    net: CountingViT,
    train: CountData,
    cfg: TransferConfig,
    mean: torch.Tensor,
    std: torch.Tensor,
    progress: bool = True,
    description: str = "transfer",
) -> list[float]:
    """Train ``net`` in place for ``cfg.steps`` AdamW steps; the loss of every step.

    Batches are drawn without replacement, epoch by epoch, in an order (and flips) from a
    generator seeded with ``cfg.seed``: the same for every variant."""
    device = torch.device(cfg.device)
    net.to(device).train()
    optimizer = make_optimizer(net, cfg.lr, cfg.weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(cfg.seed)
    n, batch = len(train.ids), min(cfg.batch_size, len(train.ids))
    order, at = torch.randperm(n, generator=gen), 0
    bar = StepProgress(cfg.steps, description) if progress else None
    losses: list[float] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(deterministic())
        # the pretraining step's attention: PyTorch's bf16 CPU kernels are slow at these lengths
        stack.enter_context(training_attention(cfg.device, use_bf16(True, cfg.device)))
        if bar is not None:
            stack.callback(bar.close)
        for step in range(cfg.steps):
            if at + batch > n:
                order, at = torch.randperm(n, generator=gen), 0
            idx, at = order[at : at + batch], at + batch
            images = train.images[idx]
            if cfg.flip:
                flip = torch.rand(batch, generator=gen) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            x = normalise(images.to(device), mean, std)
            y = train.counts[idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.steps)
            with _autocast(cfg.device):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(step + 1, f"loss {losses[-1]:.3f}")
    return losses


@torch.no_grad()
def predict_counts(
    net: CountingViT, data: CountData, cfg: TransferConfig, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """The predicted count (argmax class) of every sample, (N,) int64 on the CPU."""
    device = torch.device(cfg.device)
    net.to(device).eval()
    out = []
    for start in range(0, len(data.ids), cfg.eval_batch_size):
        x = normalise(data.images[start : start + cfg.eval_batch_size].to(device), mean, std)
        with _autocast(cfg.device):
            logits = net(x)
        out.append(logits.float().argmax(dim=-1).cpu())
    return torch.cat(out)


def count_metrics(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Exact-count accuracy and mean absolute count error."""
    return {
        "accuracy": float((predicted == truth).float().mean()),
        "mae": float((predicted - truth).abs().float().mean()),
    }


def _loss_window(losses: list[float], first: bool) -> float:
    """Mean loss of the first or last tenth of the run (at least one step)."""
    k = max(1, len(losses) // 10)
    part = losses[:k] if first else losses[-k:]
    return sum(part) / len(part)


def run_transfer(
    model_path: Path | str, inputs: DatasetInputs, cfg: TransferConfig, progress: bool = True
) -> dict[str, Any]:
    """Fine-tune the pretrained encoder and the same network from scratch on object counting.

    Returns per variant the test accuracy and mean absolute count error and the train loss
    (mean of the last tenth of the steps; ``train_loss_start``: of the first tenth), the
    majority-count baseline, and the budget. Everything but ``seconds`` is a function of the
    inputs and ``cfg`` (seeded init and batch order, deterministic kernels while training): a
    second run on the same machine, thread count and device gives identical numbers.
    """
    started = time.perf_counter()
    pretrained, _ = load_model(model_path)  # FileNotFoundError / CheckpointError (a ValueError) name it
    image_size = build_counting_vit(pretrained.config, cfg.max_count).image_size
    train = read_counts(inputs, "train", image_size, cfg.max_count)
    test = read_counts(inputs, "test", image_size, cfg.max_count)
    mean, std = channel_stats(train.images)

    variants: dict[str, dict[str, Any]] = {}
    copied: tuple[str, ...] = ()
    for variant in ("pretrained", "scratch"):
        torch.manual_seed(cfg.seed)  # identical fresh parts (patch embedding, head) in both
        if variant == "pretrained":
            net = from_pretrained(pretrained, cfg.max_count)
            copied = net.copied
        else:
            net = build_counting_vit(pretrained.config, cfg.max_count)
        losses = fine_tune(net, train, cfg, mean, std, progress, f"transfer {variant}")
        variants[variant] = {
            **count_metrics(predict_counts(net, test, cfg, mean, std), test.counts),
            "train_loss": _loss_window(losses, first=False),
            "train_loss_start": _loss_window(losses, first=True),
        }
        del net

    freq = Counter(train.counts.tolist())
    majority = min(freq, key=lambda c: (-freq[c], c))  # most frequent, ties to the smaller count
    baseline = count_metrics(torch.full_like(test.counts, majority), test.counts)
    return {
        "task": TASK,
        "steps": cfg.steps,
        "config": asdict(cfg),
        "model": str(model_path),
        "model_size": pretrained.config.size,
        "train_samples": len(train.ids),
        "test_samples": len(test.ids),
        "bf16": use_bf16(True, cfg.device),
        "copied": _summarise(copied),
        "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "pretrained": variants["pretrained"],
        "scratch": variants["scratch"],
        "majority_baseline": {"count": majority, **baseline},
        "seconds": time.perf_counter() - started,
    }


def _summarise(copied: tuple[str, ...]) -> dict[str, Any]:
    """What was copied, compactly: parameter tensors per module and the modality rows by name."""
    rows = [c.split("[", 1)[1].rstrip("]") for c in copied if c.startswith("encoder_embed.")]
    return {
        "encoder_tensors": sum(c.startswith("encoder.") for c in copied),
        "encoder_norm_tensors": sum(c.startswith("encoder_norm.") for c in copied),
        "modality_rows": rows,
    }
