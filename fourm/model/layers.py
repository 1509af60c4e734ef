"""Transformer building blocks: attention, feed-forward, encoder and decoder blocks.

Pre-norm residual blocks; attention through ``F.scaled_dot_product_attention`` with a
boolean mask (True = may attend), or, inside ``explicit_attention()``, through plain
batched matmuls (``attention_matmuls``), whose mask may also be an additive bias made once
per forward pass (``attention_bias``). Shapes: B batch, N query tokens, M key tokens,
D model dim, H heads, d = D / H.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from fourm.model.config import ModelConfig

_EXPLICIT = ContextVar("fourm_explicit_attention", default=False)


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Attention inside this context runs ``attention_matmuls`` instead of PyTorch's kernels."""
    token = _EXPLICIT.set(True)
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def attention_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean mask as the additive bias ``attention_matmuls`` takes (0 allowed, -inf not).

    Inside ``explicit_attention()`` the model converts each mask once per forward pass, not
    once per layer, in the dtype the attention will compute in (autocast's, else fp32);
    elsewhere the mask is returned as it is (PyTorch's kernels take booleans)."""
    if mask is None or not _EXPLICIT.get() or mask.dtype != torch.bool:
        return mask
    device = mask.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def attention_matmuls(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v with batched matmuls in q's dtype.

    ``mask``: boolean (True = may attend) or an additive bias (``attention_bias``). Every row
    must keep at least one key (the model guarantees it; an empty row is NaN). In bf16 the
    scores are rounded to bf16 as PyTorch's math kernel rounds them, and the softmax
    accumulates in fp32 inside its kernel. For the 64-token sequences of CPU training this is
    about 3x faster than the math kernel and than the same in fp32 matmuls: no per-call mask
    checks and no casts of the (B, H, N, M) scores (docs/benchmarks.md)."""
    with torch.autocast(q.device.type, enabled=False):
        k, v = k.to(q.dtype), v.to(q.dtype)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, M)
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill_(~mask, float("-inf"))
        elif mask is not None:
            scores = scores.add_(mask.to(scores.dtype))
        return scores.softmax(-1) @ v  # (B, H, N, d)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, config: ModelConfig, cross: bool = False):
        super().__init__()
        d, bias = config.dim, config.bias
        self.heads = config.heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(d, d, bias=bias)
            self.kv = nn.Linear(d, 2 * d, bias=bias)
        else:
            self.qkv = nn.Linear(d, 3 * d, bias=bias)
        self.proj = nn.Linear(d, d, bias=bias)
        # QK-norm (Dehghani et al. 2023): RMS-normalise queries and keys per head.
        self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, H, N, d)."""
        B, N, D = t.shape
        return t.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def self_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised queries, keys and values of ``x`` for self-attention: 3 x (B, H, N, d)."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def cross_q(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised cross-attention queries (B, H, N, d)."""
        return self.q_norm(self._heads(self.q(x)))

    def cross_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values of the context: 2 x (B, H, M, d); a decoder may cache them."""
        B, M, D = context.shape
        k, v = self.kv(context).view(B, M, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.k_norm(k), v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of (B, H, N, d) queries over keys/values, projected back to (B, N, D)."""
        if _EXPLICIT.get():
            y = attention_matmuls(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, d)
        B, H, N, d = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, N, H * d))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.cross:
            assert context is not None
            q, (k, v) = self.cross_q(x), self.cross_kv(context)
        else:
            q, k, v = self.self_qkv(x)
        return self.attend(q, k, v, mask)


class FeedForward(nn.Module):
    """GELU MLP or SwiGLU (Shazeer 2020), chosen by ``config.feed_forward``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, h, bias = config.dim, config.hidden_dim, config.bias
        self.swiglu = config.feed_forward == "swiglu"
        self.fc1 = nn.Linear(d, 2 * h if self.swiglu else h, bias=bias)
        self.fc2 = nn.Linear(h, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * up)
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps, bias=config.bias)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps, bias=config.bias)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention (masked per modality), cross-attention to the encoder, feed-forward."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, eps, bias = config.dim, config.norm_eps, config.bias
        self.norm1 = nn.LayerNorm(d, eps=eps, bias=bias)
        self.self_attn = Attention(config)
        self.query_norm = nn.LayerNorm(d, eps=eps, bias=bias)
        self.context_norm = nn.LayerNorm(d, eps=eps, bias=bias)
        self.cross_attn = Attention(config, cross=True)
        self.norm2 = nn.LayerNorm(d, eps=eps, bias=bias)
        self.mlp = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        self_mask: torch.Tensor | None,
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), self_mask)
        x = x + self.cross_attn(self.query_norm(x), cross_mask, self.context_norm(context))
        return x + self.mlp(self.norm2(x))
