"""Whether bf16 autocast pays off on the hardware at hand.

On GPUs and on CPUs with native bf16 (AVX-512 BF16 or AMX) bf16 autocast is
faster than fp32; on CPUs without it (AVX2 only) PyTorch emulates bf16 and is
tens to hundreds of times slower, so there we train in fp32.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from fourm.model.layers import explicit_attention


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(requested: bool, device: str = "cpu") -> bool:
    """bf16 autocast when requested and the device runs it natively."""
    if not requested:
        return False
    if torch.device(device).type == "cuda":
        return True
    return cpu_has_native_bf16()


def training_attention(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    """The attention for a bf16 training step: plain batched matmuls on CPUs.

    For the short sequences 4M trains on here, PyTorch's CPU kernels are slow in bf16: the
    flash kernel's backward was 40% of a tiny-model step, and its math kernel spends half
    its time on per-call mask checks. ``attention_matmuls`` (bf16 matmuls, a softmax that
    accumulates in fp32, masks turned into additive biases once per forward pass) is about 3x
    faster than the math kernel (docs/benchmarks.md). GPUs, and fp32 where the kernels tie,
    keep PyTorch's choice.
    """
    if bf16 and torch.device(device).type == "cpu":
        return explicit_attention()
    return contextlib.nullcontext()
