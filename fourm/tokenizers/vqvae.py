"""A convolutional VQ-VAE that turns an image-like modality into a grid of discrete tokens.

    x (B, C, H, W) -> Encoder -> z (B, D, H/f, W/f) -> Quantizer -> codes (B, H/f, W/f)
                                                   -> Decoder -> x̂ (B, C_out, H, W)

Two quantizers, chosen by ``VQVAEParams.quantizer``:

- ``vq``: a codebook of l2-normalised vectors (cosine nearest neighbour) updated
  by exponential moving averages, initialised by k-means on the first batch,
  with dead codes restarted from the current batch's encoder outputs;
- ``fsq``: finite scalar quantization (Mentzer et al., 2023): each of a few
  channels is bounded and rounded to a fixed number of levels; the code is the
  mixed-radix number of the levels, so there is no codebook to collapse.

The module imports only torch; what a modality's pixels mean (normalisation,
loss) lives in ``fourm/tokenizers/image.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQVAEConfig:
    in_channels: int
    out_channels: int
    vocab_size: int
    downsample: int = 8
    patch: int = 2  # pixels folded into channels before the first conv (cheap on CPUs)
    width: int = 32
    code_dim: int = 32
    quantizer: str = "vq"  # "vq" | "fsq"
    fsq_levels: tuple[int, ...] = (4, 4, 4, 4, 4)
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.1  # EMA hits per batch below which a code is restarted

    @property
    def num_downsamples(self) -> int:
        return int(math.log2(self.downsample // self.patch))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _widths(cfg: VQVAEConfig) -> list[int]:
    """Channels at each resolution level, from full resolution down to the token grid."""
    return [cfg.width * min(2**i, 4) for i in range(cfg.num_downsamples + 1)]


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = _widths(cfg)
        layers: list[nn.Module] = [
            nn.PixelUnshuffle(cfg.patch),
            nn.Conv2d(cfg.in_channels * cfg.patch**2, widths[0], 3, padding=1),
        ]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(w_in, w_out, 4, stride=2, padding=1), ResBlock(w_out)]
        layers += [ResBlock(widths[-1]), _norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the codecs hand in permuted NHWC arrays; channels-last sends GroupNorm down a slow kernel
        return self.net(x.contiguous())  # (B, D, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = _widths(cfg)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, widths[0], 3, padding=1), ResBlock(widths[0])]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                ResBlock(w_in),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(w_in, w_out, 3, padding=1),
            ]
        layers += [
            _norm(widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], cfg.out_channels * cfg.patch**2, 3, padding=1),
            nn.PixelShuffle(cfg.patch),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, C_out, H, W)


class EMAQuantizer(nn.Module):
    """Cosine-similarity VQ with EMA codebook updates, k-means init and dead-code restarts."""

    def __init__(self, vocab_size: int, dim: int, decay: float, dead_code_threshold: float):
        super().__init__()
        self.vocab_size, self.dim, self.decay = vocab_size, dim, decay
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("codebook", F.normalize(torch.randn(vocab_size, dim), dim=-1))
        self.register_buffer("cluster_size", torch.ones(vocab_size))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) encoder outputs -> (N,) nearest code ids."""
        return (F.normalize(z.float(), dim=-1) @ self.codebook.t()).argmax(dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor, iters: int = 10) -> None:
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(flat.shape[0], generator=gen)[: self.vocab_size]
        if idx.numel() < self.vocab_size:  # fewer vectors than codes: repeat with noise
            idx = idx[torch.randint(idx.numel(), (self.vocab_size,), generator=gen)]
        centres = flat[idx] + 1e-3 * torch.randn(self.vocab_size, self.dim, generator=gen)
        centres = F.normalize(centres, dim=-1)
        for _ in range(iters):
            assign = (flat @ centres.t()).argmax(dim=-1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=self.vocab_size).float()
            moved = counts > 0
            centres[moved] = F.normalize(sums[moved], dim=-1)
        self.codebook.copy_(centres)
        self.embed_sum.copy_(centres)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        onehot_counts = torch.bincount(codes, minlength=self.vocab_size).float()
        sums = torch.zeros(self.vocab_size, self.dim).index_add_(0, codes, flat)
        self.cluster_size.mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.embed_sum, dim=-1))
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:  # restart dead codes on random encoder outputs of this batch
            pick = flat[torch.randint(flat.shape[0], (n_dead,))]
            self.codebook[dead] = pick
            self.embed_sum[dead] = pick
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) -> (quantised z with straight-through grads, codes (B, h, w), commitment loss)."""
        b, d, h, w = z.shape
        flat = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, d), dim=-1)  # (N, D)
        if self.training and not bool(self.initialised):
            self._kmeans_init(flat.detach())
        codes = (flat.detach() @ self.codebook.t()).argmax(dim=-1)
        quantised = self.lookup(codes)
        if self.training:
            self._ema_update(flat.detach(), codes)
        commitment = F.mse_loss(flat, quantised.detach())
        out = flat + (quantised - flat).detach()
        # contiguous NCHW: a permuted (channels-last) tensor sends every GroupNorm down its slow path
        return out.view(b, h, w, d).permute(0, 3, 1, 2).contiguous(), codes.view(b, h, w), commitment


class FSQuantizer(nn.Module):
    """Finite scalar quantization: bounded channels rounded to ``levels``; code = mixed-radix index."""

    def __init__(self, levels: tuple[int, ...], dim: int):
        super().__init__()
        self.levels = levels
        self.vocab_size = math.prod(levels)
        self.project_in = nn.Conv2d(dim, len(levels), 1)
        self.project_out = nn.Conv2d(len(levels), dim, 1)
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), dim=0)
        self.register_buffer("_basis", basis)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        half = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _scaled(self, z: torch.Tensor) -> torch.Tensor:
        """z (…, L) -> values on the grid, scaled into [-1, 1]."""
        bounded = self._bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / (self._levels // 2)

    def _to_codes(self, scaled: torch.Tensor) -> torch.Tensor:
        digits = torch.round(scaled * (self._levels // 2) + self._levels // 2).long()
        return (digits * self._basis).sum(dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(…,) code ids -> (…, L) scaled grid values."""
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits - self._levels // 2) / (self._levels // 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zl = self.project_in(z).float().permute(0, 2, 3, 1)  # (B, h, w, L)
        scaled = self._scaled(zl)
        codes = self._to_codes(scaled.detach())
        out = self.project_out(scaled.permute(0, 3, 1, 2).contiguous())
        return out, codes, torch.zeros((), device=z.device)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.lookup(codes).permute(0, 3, 1, 2).float().contiguous())


class VQVAE(nn.Module):
    """Encoder, quantizer and decoder; ``encode``/``decode`` work in token ids."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.quantizer == "vq":
            self.quantizer: nn.Module = EMAQuantizer(
                cfg.vocab_size, cfg.code_dim, cfg.ema_decay, cfg.dead_code_threshold
            )
        elif cfg.quantizer == "fsq":
            if math.prod(cfg.fsq_levels) > cfg.vocab_size:
                raise ValueError(
                    f"fsq_levels {list(cfg.fsq_levels)} give {math.prod(cfg.fsq_levels)} codes, "
                    f"more than the vocabulary ({cfg.vocab_size})"
                )
            self.quantizer = FSQuantizer(cfg.fsq_levels, cfg.code_dim)
        else:
            raise ValueError(f"unknown quantizer {cfg.quantizer!r} (vq or fsq)")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (reconstruction (B, C_out, H, W), codes (B, h, w), commitment loss)."""
        z = self.encoder(x)
        with torch.autocast(x.device.type, enabled=False):
            zq, codes, commitment = self.quantizer(z)
        return self.decoder(zq), codes, commitment

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> token ids (B, h*w), row-major."""
        z = self.encoder(x)
        with torch.autocast(x.device.type, enabled=False):
            _, codes, _ = self.quantizer(z.float())
        return codes.flatten(1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """token ids (B, h*w) -> decoder output (B, C_out, H, W)."""
        b, n = tokens.shape
        side = math.isqrt(n)
        codes = tokens.view(b, side, side)
        if isinstance(self.quantizer, FSQuantizer):
            zq = self.quantizer.embed_codes(codes)
        else:
            zq = self.quantizer.lookup(codes).permute(0, 3, 1, 2).contiguous()
        return self.decoder(zq)
