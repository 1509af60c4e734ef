"""Token, position and modality embeddings for the encoder and the decoder.

Positions are fixed sin-cos (2D for image-like modalities, 1D for sequences), kept in
one concatenated table so a batch of mixed modalities needs a single lookup:
``row = offset[modality] + position``. Token embeddings are one table per modality
(vocabularies differ); modality embeddings are learned.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fourm.modalities import get_modality
from fourm.model.config import ModelConfig


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` sin-cos position codes (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """``(grid*grid, dim)`` codes, half the channels for the row, half for the column (MAE-style)."""
    if dim % 4:
        raise ValueError(f"2D sin-cos positions need dim divisible by 4, got {dim}")
    rows = sincos_1d(grid, dim // 2)  # (grid, D/2)
    both = torch.cat(
        [rows[:, None, :].expand(grid, grid, dim // 2), rows[None, :, :].expand(grid, grid, dim // 2)], dim=-1
    )
    return both.reshape(grid * grid, dim)


def position_table(modalities: tuple[str, ...], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated position codes of ``modalities`` and each one's first row (offsets)."""
    tables, offsets, start = [], [], 0
    for name in modalities:
        m = get_modality(name)
        table = (
            sincos_2d(m.grid_size, dim) if m.kind in ("image", "patches") else sincos_1d(m.max_length, dim)
        )
        tables.append(table)
        offsets.append(start)
        start += table.shape[0]
    return torch.cat(tables), torch.tensor(offsets, dtype=torch.long)


class _Positions(nn.Module):
    """Fixed position codes plus learned modality embeddings, looked up per token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        table, offsets = position_table(config.modalities, config.dim)
        self.register_buffer("pos_table", table, persistent=False)
        self.register_buffer("pos_offset", offsets, persistent=False)
        self.modality = nn.Parameter(torch.zeros(len(config.modalities), config.dim))

    def forward(self, mod: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.pos_table[self.pos_offset[mod] + pos] + self.modality[mod]  # (B, N, D)


class EncoderEmbedding(nn.Module):
    """Input tokens -> vectors: token embedding + position + modality, per input modality."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.modalities = config.modalities
        self.token = nn.ModuleDict(
            {
                name: nn.Embedding(config.vocab_size(name), config.dim)
                for name in config.inputs
                if get_modality(name).kind != "patches"
            }
        )
        self.positions = _Positions(config)

    def forward(self, tokens: torch.Tensor, mod: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.positions(mod, pos)  # (B, E, D)
        for name, table in self.token.items():
            sel = mod == self.modalities.index(name)  # (B, E)
            x = x.index_put((sel,), table(tokens[sel]).to(x.dtype), accumulate=True)
        return x


class DecoderEmbedding(nn.Module):
    """Target slots -> vectors.

    Image-like targets enter as a learned mask token; sequence targets as the previous
    target token (teacher forcing), embedded with the table the output head shares.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.modalities = config.modalities
        self.sequence_targets = [n for n in config.targets if get_modality(n).kind in ("sequence", "boxes")]
        self.token = nn.ModuleDict(
            {name: nn.Embedding(config.vocab_size(name), config.dim) for name in self.sequence_targets}
        )
        self.mask_token = nn.Parameter(torch.zeros(len(config.modalities), config.dim))
        self.positions = _Positions(config)

    def forward(self, tokens: torch.Tensor, mod: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.positions(mod, pos)  # (B, T, D)
        is_seq = torch.zeros_like(mod, dtype=torch.bool)
        for name, table in self.token.items():
            sel = mod == self.modalities.index(name)
            is_seq |= sel
            x = x.index_put((sel,), table(tokens[sel]).to(x.dtype), accumulate=True)
        return x + self.mask_token[mod] * (~is_seq).unsqueeze(-1).to(x.dtype)


class PatchEmbedding(nn.Module):
    """RGB pixels -> one vector per patch (linear projection), for the encoder as a ViT backbone."""

    def __init__(self, config: ModelConfig, name: str = "rgb_patches"):
        super().__init__()
        m = get_modality(name)
        self.grid = m.grid_size
        self.patch = config.patch_size
        self.proj = nn.Linear(m.channels * config.patch_size**2, config.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        p = self.patch
        if self.grid * p != H or self.grid * p != W:
            raise ValueError(
                f"images must be {self.grid * p}x{self.grid * p} pixels (grid {self.grid}, patch {p})"
            )
        patches = images.reshape(B, C, self.grid, p, self.grid, p).permute(0, 2, 4, 1, 3, 5)
        return self.proj(patches.reshape(B, self.grid * self.grid, C * p * p))  # (B, grid², D)
