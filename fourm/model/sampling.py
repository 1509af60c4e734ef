"""Decoding knobs shared by every generation method: step schedules and token sampling.

``tokens_per_step`` says how many tokens each parallel-decoding step fixes;
``temperature_at`` anneals the sampling temperature over the steps; ``sample``
draws one token per row of logits (greedy, temperature, top-k, top-p).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch

Schedule = Literal["cosine", "linear"]
TemperatureSchedule = Literal["constant", "linear", "cosine"]


@functools.lru_cache(maxsize=1024)
def tokens_per_step(total: int, steps: int, schedule: Schedule = "cosine") -> tuple[int, ...]:
    """How many of ``total`` tokens each of ``steps`` steps decodes (sums to ``total``).

    cosine (MaskGIT): step i gets the share c(i) - c(i-1) of c(t) = (1 - cos(pi t / steps)) / 2,
    few tokens first and last, most in the middle; linear: equal shares. Each share is
    rounded, every step gets at least one token while there are enough, and the last step
    takes what is left (64 tokens, 8 cosine steps: 2, 7, 10, 12, 12, 10, 7, 4).
    """
    if total < 0 or steps < 1:
        raise ValueError(f"need total >= 0 and steps >= 1, got total={total}, steps={steps}")
    if schedule not in ("cosine", "linear"):
        raise ValueError(f"unknown schedule {schedule!r}; use cosine or linear")
    if total == 0:
        return (0,) * steps
    used = min(steps, total)

    def c(t: float) -> float:
        return (1 - math.cos(math.pi * t / used)) / 2 if schedule == "cosine" else t / used

    counts = [max(1, round(total * (c(i + 1) - c(i)))) for i in range(used - 1)]
    while sum(counts) > total - 1:  # leave the last step at least one token
        counts[counts.index(max(counts))] -= 1
    counts.append(total - sum(counts))
    return tuple(counts) + (0,) * (steps - used)


def temperature_at(step: int, steps: int, temperature: float, schedule: TemperatureSchedule) -> float:
    """The temperature of ``step`` (0-based): constant, or annealed linearly/cosine-like to 0."""
    if schedule == "constant" or steps <= 1:
        return temperature
    t = step / (steps - 1)
    if schedule == "linear":
        return temperature * (1 - t)
    if schedule == "cosine":
        return temperature * (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"unknown temperature schedule {schedule!r}; use constant, linear or cosine")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf (rows are kept
    non-empty: the most likely token always survives)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` (N, V) and its probability under the distribution sampled
    from; ``temperature`` 0 is greedy (argmax)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or temperature < 0:
        raise ValueError(f"top_k and temperature must be >= 0, got {top_k}, {temperature}")
    logits = logits.float()
    if temperature == 0:
        ids = logits.argmax(-1)
        probs = logits.softmax(-1)
    else:
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids, probs.gather(-1, ids[:, None]).squeeze(-1)
