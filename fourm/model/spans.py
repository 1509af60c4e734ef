"""T5-style span masking of sequence modalities (captions, boxes), and its inverse.

See fourm/model/masking.py's docstring (rule 3) for what is masked and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fourm.model.masking_config import MaskingConfig
from fourm.model.rowwise import pack_rows


@dataclass
class Spans:
    """Span masks of one sequence modality for the whole batch (meaningful where ``masked``)."""

    masked: np.ndarray  # (B,) bool: the row is span-masked
    is_masked: np.ndarray  # (B, N-1) bool over content positions
    num_masked: np.ndarray  # (B,) M
    num_spans: np.ndarray  # (B,) S
    input_length: np.ndarray  # (B,) L - M + S: the masked input with one sentinel per span


def content_lengths(x: np.ndarray, c: MaskingConfig) -> np.ndarray:
    """Tokens between [SOS] and the first [EOS]/[PAD]; the row end when there is neither."""
    end = (x[:, 1:] == c.eos_id) | (x[:, 1:] == c.pad_id)
    return np.where(end.any(axis=1), end.argmax(axis=1), x.shape[1] - 1)


def span_mask(
    length: np.ndarray,
    k: np.ndarray,
    masked: np.ndarray,
    r: np.ndarray,
    cut_keys: np.ndarray,
    bar_keys: np.ndarray,
    c: MaskingConfig,
) -> Spans:
    """T5 span masks for the rows in ``masked`` (rows elsewhere: nothing masked)."""
    batch, width = len(length), cut_keys.shape[1] - 1  # width: content positions
    L = np.where(masked, length, 0)
    M = np.minimum(1 + (r * L).astype(np.int64), L)  # uniform on 1..L
    M = np.where(masked, np.maximum(M, L - k + 1), 0)  # the masked input must fit k slots
    U = L - M
    S = np.minimum((M / c.mean_span_length + 0.5).astype(np.int64), c.num_sentinels)
    S = np.where(masked, np.maximum(np.minimum(S, np.minimum(M, np.minimum(U + 1, k - U))), 1), 0)
    max_s = max(int(S.max()), 1)
    j, rows = np.arange(width), np.arange(batch)[:, None]
    # Span lengths: S - 1 cut points among the M - 1 inner boundaries of the masked tokens
    # (the first S - 1 of a random order of the valid boundaries; invalid ones sort last).
    order = np.argsort(np.where((j >= 1) & (j < M[:, None]), cut_keys[:, :width], 2.0), axis=1)[:, :max_s]
    cut = np.zeros((batch, width), bool)
    cut[rows, np.where(np.arange(max_s) < (S - 1)[:, None], order, 0)] = True
    cut[:, 0] = False
    span_of = np.minimum(np.cumsum(cut, axis=1), max_s - 1)  # span of the j-th masked token
    # Gaps: S bars among U + 1 slots; unmasked tokens before span s = bars[s] (see module doc).
    n_slots = bar_keys.shape[1]
    order = np.argsort(np.where(np.arange(n_slots) < (U + 1)[:, None], bar_keys, 2.0), axis=1)[:, :max_s]
    bars = np.sort(np.where(np.arange(max_s) < S[:, None], order, n_slots), axis=1)
    pos = j + bars[rows, span_of]  # content position of the j-th masked token
    is_masked = np.zeros(batch * (width + 1), bool)  # column ``width`` takes the unused j >= M
    is_masked[(np.where(j < M[:, None], pos, width) + rows * (width + 1)).ravel()] = True
    return Spans(masked, is_masked.reshape(batch, width + 1)[:, :width], M, S, np.where(masked, U + S, 0))


def sequence_blocks(
    x: np.ndarray, length: np.ndarray, k: np.ndarray, t: np.ndarray, spans: Spans | None, c: MaskingConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoder tokens (B, N-1) with their lengths, and target sequences (B, N+1) of one sequence modality."""
    batch, n = x.shape
    content = x[:, 1:]
    j = np.arange(n - 1)
    in_content = j < length[:, None]
    # Default: input-only (content prefix) and target-only ([S_0] content [EOS]).
    enc = np.where(j < k[:, None], content, 0)
    enc_len = np.minimum(k, length)
    tseq = np.zeros((batch, n + 1), np.int64)
    tseq[:, 0] = c.first_sentinel_id
    tseq[:, 1:n] = np.where(in_content, content, 0)
    tseq[np.arange(batch), length + 1] = c.eos_id
    if spans is None:
        return enc, enc_len, tseq
    rows = np.flatnonzero(spans.masked & (t > 0))
    if not len(rows):
        return enc, enc_len, tseq
    m, cont = spans.is_masked[rows], content[rows]
    start = m.copy()
    start[:, 1:] &= ~m[:, :-1]
    sentinel = c.first_sentinel_id - 1 + np.cumsum(start, axis=1)  # [S_s] of the span a position is in
    # Input: the kept tokens, one sentinel in place of each span.
    enc[rows] = pack_rows((~m & in_content[rows]) | start, np.where(start, sentinel, cont), n - 1)
    enc_len[rows] = spans.input_length[rows]
    # Target: each span's sentinel then its tokens (interleaved columns), then [EOS].
    ts = pack_rows(
        np.stack([start, m], axis=2).reshape(len(rows), -1), np.stack([sentinel, cont], axis=2), n + 1
    )
    ts[np.arange(len(rows)), spans.num_masked[rows] + spans.num_spans[rows]] = c.eos_id
    tseq[rows] = ts
    return enc, enc_len, tseq


def join_spans(
    input_content: Sequence[int],
    target_sequence: Sequence[int],
    first_sentinel_id: int = 4,
    num_sentinels: int = 32,
    eos_id: int = 3,
) -> list[int]:
    """The original content from a span-masked input and its target ``[S_0] span0 [S_1] .. [EOS]``.

    Each sentinel in the input is replaced by the tokens after the same sentinel in
    the target (up to the next sentinel or [EOS]). An empty input means the whole
    content was masked (target-only: ``[S_0] content [EOS]``).
    """
    sentinels = range(first_sentinel_id, first_sentinel_id + num_sentinels)
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for tok in target_sequence:
        tok = int(tok)
        if tok == eos_id:
            break
        if tok in sentinels:
            if tok in spans:
                raise ValueError(f"sentinel id {tok} appears twice in the target sequence")
            current = spans[tok] = []
        elif current is None:
            raise ValueError(f"target sequence must start with a sentinel, got {tok}")
        else:
            current.append(tok)
    out: list[int] = []
    for tok in [first_sentinel_id] if len(input_content) == 0 else input_content:
        tok = int(tok)
        if tok in sentinels:
            if tok not in spans:
                raise ValueError(f"sentinel id {tok} of the input has no span in the target sequence")
            out.extend(spans[tok])
        else:
            out.append(tok)
    return out
