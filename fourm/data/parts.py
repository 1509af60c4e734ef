"""Splitting a stage's shards into ranges, one per pod of a shard-parallel job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def part_range(items: Sequence[T], index: int, count: int) -> list[T]:
    """The ``index``-th of ``count`` contiguous ranges of ``items`` (sizes differ by at most one)."""
    if not 0 <= index < count:
        raise ValueError(f"part {index}/{count}: the index must be in 0..{count - 1}")
    lo, hi = len(items) * index // count, len(items) * (index + 1) // count
    return list(items[lo:hi])
