"""Row-independent array operations the masker is built from (one row = one sample).

Every function treats each row of its 2-D inputs on its own, so a sample's result
never depends on the other rows of its batch.
"""

from __future__ import annotations

import numpy as np

TINY_SHARE = 1e-12  # floor on the share of an eligible modality, so it can take leftovers


def row_ranks(keys: np.ndarray, stable: bool = False) -> np.ndarray:
    """Rank of every entry in its row: a uniformly random permutation for uniform keys.

    Only ``stable`` sorting orders ties by column; random keys tie with probability ~1e-12,
    so they use numpy's faster default sort.
    """
    batch, n = keys.shape
    order = np.argsort(keys, axis=1, kind="stable" if stable else None)
    rank = np.empty(batch * n, np.int64)
    rank[(order + np.arange(0, batch * n, n)[:, None]).ravel()] = np.tile(np.arange(n), batch)
    return rank.reshape(batch, n)


def nonzero_entries(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat index, row, column and in-row index (0, 1, ..) of a 2-D mask's True entries, row-major."""
    flat = np.flatnonzero(mask)
    rows = flat // mask.shape[1]
    counts = np.count_nonzero(mask, axis=1)
    return flat, rows, flat - rows * mask.shape[1], np.arange(len(flat)) - (np.cumsum(counts) - counts)[rows]


def allocate(
    shares: np.ndarray, caps: np.ndarray, eligible: np.ndarray, budget: int | np.ndarray
) -> np.ndarray:
    """Integer counts (B, M) <= caps, summing to min(budget, eligible caps), proportional to shares.

    Water-filling: modalities whose proportional part reaches their cap get the cap and
    the rest is re-split among the others; then largest remainder. Row-independent.
    """
    caps = np.where(eligible, caps, 0)
    free = caps > 0
    w = np.where(free, np.maximum(shares, TINY_SHARE), 0.0)
    remaining = np.minimum(budget, caps.sum(axis=1))
    counts = np.zeros_like(caps)
    for _ in range(caps.shape[1] + 1):
        w = np.where(free, w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        ideal = remaining[:, None] * w / np.where(total > 0, total, 1.0)
        over = free & (ideal >= caps)
        if not over.any():
            break
        counts = np.where(over, caps, counts)
        remaining = remaining - (caps * over).sum(axis=1)
        free &= ~over
    # Largest remainder: the leftover units go to the largest fractional parts (ties: column order).
    base = np.where(free, np.floor(ideal).astype(np.int64), 0)
    diff = (remaining - base.sum(axis=1))[:, None]  # 0 <= diff < free modalities, up to float error
    rank = row_ranks(-np.where(free, ideal - base, -1.0), stable=True)  # non-free last
    n_free = free.sum(axis=1, keepdims=True)
    base += (rank < diff) & free
    base -= (rank >= n_free + diff) & (rank < n_free) & (base > 0)
    return counts + np.clip(base, 0, caps) * free


def pack_rows(valid: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Each row's ``values`` where ``valid``, in order, moved to the front of ``width`` columns; 0 after."""
    flat, rows, _, slot = nonzero_entries(valid)
    out = np.zeros(len(valid) * width, np.int64)
    out[rows * width + slot] = values.ravel()[flat]
    return out.reshape(len(valid), width)


def compact_slots(
    valid: np.ndarray, budget: int, mod: np.ndarray, pos: np.ndarray, *values: np.ndarray
) -> list[np.ndarray]:
    """Move each row's valid columns, in order, into ``budget`` slots: [pad, mod, pos, *values]."""
    batch, width = valid.shape
    flat = np.flatnonzero(valid)
    if len(flat) == batch * budget:  # every slot used (the usual case): no padding to place
        cols = flat % width
        full = [mod[cols], pos[cols], *(v.ravel()[flat] for v in values)]
        return [np.zeros((batch, budget), bool), *(a.reshape(batch, budget) for a in full)]
    flat, rows, cols, slot = nonzero_entries(valid)
    dest = rows * budget + slot
    pad = np.ones(batch * budget, bool)
    pad[dest] = False
    out: list[np.ndarray] = [pad.reshape(batch, budget)]
    for v, per_row in ((mod, False), (pos, False), *((v, True) for v in values)):
        o = np.zeros(batch * budget, np.int64)
        o[dest] = v.ravel()[flat] if per_row else v[cols]
        out.append(o.reshape(batch, budget))
    return out
