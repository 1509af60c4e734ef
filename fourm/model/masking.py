"""4M masking: per-modality token arrays in, a masked batch (``fourm.model.batch``) out.

Numpy only, so it runs in data-loader workers. For every sample (after Mizrahi et
al., "4M", NeurIPS 2023, and the paper's public code):

1. **Budgets.** Pick a mixture setting (probability weight / sum of weights), draw
   input shares ~ Dirichlet(input alphas) and target shares ~ Dirichlet(target
   alphas) over the modalities whose alpha is > 0, and turn each into integer token
   counts that sum exactly to the budget: water-filling (a modality whose share
   exceeds what it can supply gets its cap; the rest of the budget is re-split
   among the others by their shares), then largest remainder. So the real
   (non-padding) slots are ``min(budget, what the eligible modalities can supply)``;
   the slots after them are padding (pad flag True, id/mod/pos 0).
   Dirichlet draws use ``Gamma(a) = Gamma(a + 1) * U**(1/a)`` in log space, so very
   small alphas give (near) one-hot shares instead of 0/0.
2. **Image-like modalities** (kind ``image``): a uniformly random permutation of the
   N positions; its first k positions are inputs, the next t targets, so targets
   are always tokens that are not inputs (target cap = N - k). Inside a modality
   tokens are in position order.
3. **Sequences** (kinds ``sequence`` and ``boxes``): rows are ``[SOS] content
   [EOS] [PAD]..``; content ends at the first [EOS] or [PAD] after [SOS], else at
   the row end (truncated row). With L content tokens:

   - input cap L (an empty sequence is never an input: cap 0);
   - a sequence that gets k > 0 input slots and may also be a target in the chosen
     setting is span-masked (T5 style) *before* the target budget is drawn: the
     number of masked tokens M is uniform on {1..L} (masking ratio ~ U(0, 1], the
     paper's keep probability ~ U(0, 1)), raised to L - k + 1 when the masked input
     would not fit k slots (the paper lowers the keep probability instead); the
     number of spans is ``round(M / mean_span_length)`` clipped to
     [1, num_sentinels] and to what fits (spans need gaps between them, input
     length L - M + spans <= k). Spans and gaps are uniformly random compositions.
     Input: content with each span replaced by [S_0], [S_1], .. in order (length
     L - M + spans; the input slots it leaves unused are water-filled again over
     the image modalities and the input-only sequences); target sequence
     ``[S_0] span0 [S_1] span1 .. [EOS]``; target cap M + spans (decoder slots =
     target length - 1);
   - target only (k = 0): target sequence ``[S_0] content [EOS]``, target cap L + 1
     (an empty caption still teaches [EOS]);
   - input only (t = 0, or not a target in this setting): the content unmasked,
     first k tokens (a masked sequence that then gets no target slot shows its
     first k content tokens unmasked).

   Decoder: ``dec_tokens = target_sequence[:-1]``, ``targets =
   target_sequence[1:]``, ``dec_pos`` 0, 1, 2..; t < cap keeps the first t slots.
   So counts never exceed what a sequence supplies and no slot inside a budget is
   wasted on padding.
4. **Layout.** Encoder: the inputs of every modality, concatenated in
   ``config.modalities`` order, then padding; decoder likewise (a modality's
   decoder tokens are contiguous, sequences in order). ``dec_tokens`` of image
   slots is 0 (the model feeds a mask token there).
5. **Input dropout** (classifier-free guidance, Ho & Salimans 2022): with
   probability ``input_dropout`` a sample's encoder slots are all padding, so the
   model also learns to predict its targets unconditionally. The draw comes from
   a stream of its own (blake2b of seed, epoch, "drop", key), so every other
   mask is the same with and without dropout.
6. **Determinism.** Every random number of a sample comes from its own generator,
   seeded with blake2b(seed, epoch, key) and drawn in fixed-size blocks before any
   batch-wide (vectorised, row-independent) arithmetic; so a sample's masks depend
   only on (seed, epoch, key), never on its batch, position or process.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fourm.model.masking_config import SEQUENCE_KINDS, DirichletSetting, MaskingConfig
from fourm.model.rowwise import allocate, compact_slots, row_ranks
from fourm.model.spans import content_lengths, join_spans, sequence_blocks, span_mask

__all__ = ["DirichletSetting", "Masker", "MaskingConfig", "join_spans"]


@dataclass(frozen=True)
class _Mod:
    """A modality as the masker handles it."""

    name: str
    index: int  # in config.modalities
    column: int  # in the masker's per-sample arrays (used modalities only)
    is_seq: bool
    n: int  # N_m
    is_input: bool
    is_target: bool


class Masker:
    """Callable turning ``{modality: (B, N_m) tokens}`` and sample keys into a masked batch."""

    def __init__(self, config: MaskingConfig):
        self.config = c = config
        used = [m for m in c.modalities if m in c.inputs or m in c.targets]
        self._mods = [
            _Mod(
                m,
                c.modalities.index(m),
                j,
                c.kind(m) in SEQUENCE_KINDS,
                c.num_tokens(m),
                m in c.inputs,
                m in c.targets,
            )
            for j, m in enumerate(used)
        ]
        self._seqs = [m for m in self._mods if m.is_seq]
        self._images = [m for m in self._mods if not m.is_seq]
        # alphas[s, side, column], side 0 = input, 1 = target
        self._alphas = np.array(
            [
                [
                    [s.input_alphas.get(m.name, 0.0) for m in self._mods],
                    [s.target_alphas.get(m.name, 0.0) for m in self._mods],
                ]
                for s in c.settings
            ],
            dtype=np.float64,
        )
        weights = np.array([s.weight for s in c.settings], dtype=np.float64)
        self._cum_weights = np.cumsum(weights / weights.sum()).tolist()
        # Gamma draws of a setting, grouped by shape (one numpy call per distinct alpha).
        flat = self._alphas.reshape(len(c.settings), -1)
        self._gamma_groups = [
            [(float(a) + 1.0, np.flatnonzero(row == a)) for a in np.unique(row[row > 0])] for row in flat
        ]
        # Per-sample uniforms: setting | gamma aux | image keys | per sequence: r, cut keys, bar keys
        self._u_gamma = slice(1, 1 + flat.shape[1])
        offset = self._u_gamma.stop
        self._u_image: dict[str, slice] = {}
        for m in self._images:
            self._u_image[m.name] = slice(offset, offset + m.n)
            offset += m.n
        # All sequence modalities are masked together, as rows of one array as wide as the longest.
        self._seq_cols = np.array([m.column for m in self._seqs], np.int64)
        self._seq_width = max((m.n for m in self._seqs), default=0)
        self._u_seq = offset
        self._num_uniforms = offset + len(self._seqs) * (1 + 2 * self._seq_width)
        self._seed_bytes = c.seed.to_bytes(8, "little")
        # Constant modality/position of every column of the per-sample "virtual" encoder/decoder rows.
        enc = [(m, m.n - 1 if m.is_seq else m.n) for m in self._mods if m.is_input]
        dec = [(m, m.n) for m in self._mods if m.is_target]
        self._enc_mod = np.concatenate([np.full(w, m.index, np.int64) for m, w in enc])
        self._enc_pos = np.concatenate([np.arange(w, dtype=np.int64) for _, w in enc])
        self._dec_mod = np.concatenate([np.full(w, m.index, np.int64) for m, w in dec])
        self._dec_pos = np.concatenate([np.arange(w, dtype=np.int64) for _, w in dec])

    # ------------------------------------------------------------------ randomness
    def _draw(self, keys: Sequence[str], epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every random number of every sample, from its own stream: setting (B,), gammas (B, 2M), uniforms.

        The stream is PCG64 with its state set from blake2b(seed, epoch, key): cheaper
        than building a generator per sample, and just as reproducible. One generator per
        call, so a masker may be shared by threads.
        """
        n = len(keys)
        setting = np.empty(n, np.int64)
        gammas = np.ones((n, 2 * len(self._mods)))
        uniforms = np.empty((n, self._num_uniforms))
        prefix = self._seed_bytes + int(epoch).to_bytes(8, "little")
        last = len(self._cum_weights) - 1
        bitgen = np.random.PCG64(0)
        rng = np.random.Generator(bitgen)
        for i, key in enumerate(keys):
            d = hashlib.blake2b(prefix + key.encode("utf-8"), digest_size=32).digest()
            bitgen.state = {
                "bit_generator": "PCG64",
                "state": {
                    "state": int.from_bytes(d[:16], "little"),
                    "inc": int.from_bytes(d[16:], "little") | 1,
                },
                "has_uint32": 0,
                "uinteger": 0,
            }
            rng.random(out=uniforms[i])
            setting[i] = s = min(bisect.bisect_right(self._cum_weights, uniforms[i, 0]), last)
            for shape, idx in self._gamma_groups[s]:
                gammas[i, idx] = rng.standard_gamma(shape, size=len(idx))
        return setting, gammas, uniforms

    def _image_ranks(self, uniforms: np.ndarray) -> dict[str, np.ndarray]:
        """A random permutation rank (B, N) per image modality (one sort when all have the same N)."""
        if not self._images:
            return {}
        sizes = {m.n for m in self._images}
        if len(sizes) > 1:
            return {m.name: row_ranks(uniforms[:, self._u_image[m.name]]) for m in self._images}
        n = sizes.pop()
        block = slice(self._u_image[self._images[0].name].start, self._u_image[self._images[-1].name].stop)
        rank = row_ranks(uniforms[:, block].reshape(-1, n)).reshape(len(uniforms), -1, n)
        return {m.name: rank[:, i] for i, m in enumerate(self._images)}

    def _shares(self, setting: np.ndarray, gammas: np.ndarray, uniforms: np.ndarray, side: int) -> np.ndarray:
        """Dirichlet shares (B, M) of ``side`` in each row's setting; 0 where alpha is 0."""
        n_mod = len(self._mods)
        alpha = self._alphas[setting, side]
        g = gammas[:, side * n_mod : (side + 1) * n_mod]
        u = uniforms[:, self._u_gamma][:, side * n_mod : (side + 1) * n_mod]
        positive = alpha > 0
        with np.errstate(divide="ignore"):
            logits = np.where(positive, np.log(g) + np.log1p(-u) / np.where(positive, alpha, 1.0), -np.inf)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ main
    def __call__(
        self, tokens: Mapping[str, np.ndarray], keys: Sequence[str], epoch: int = 0
    ) -> dict[str, np.ndarray]:
        """Mask one batch; ``keys[i]`` names sample i (its masks depend on seed, epoch and key only)."""
        c = self.config
        rows_in = self._check(tokens, keys, epoch)
        batch, n_seq, seq_cols = len(keys), len(self._seqs), self._seq_cols
        setting, gammas, uniforms = self._draw(keys, epoch)
        in_alpha, tg_alpha = self._alphas[setting, 0] > 0, self._alphas[setting, 1] > 0

        def seq_rows(a: np.ndarray) -> np.ndarray:
            """(B, modalities) -> (n_seq * B,): the sequence columns, modality-major like ``seqs``."""
            return a[:, seq_cols].T.ravel()

        def seq_cols_of(v: np.ndarray) -> np.ndarray:
            return v.reshape(n_seq, batch).T

        # Sequence rows of all sequence modalities, padded with [PAD] to the longest.
        seqs = np.full((n_seq * batch, self._seq_width), c.pad_id, np.int64)
        for i, m in enumerate(self._seqs):
            seqs[i * batch : (i + 1) * batch, : m.n] = rows_in[m.name]
        seq_u = uniforms[:, self._u_seq :].reshape(batch, n_seq, 1 + 2 * self._seq_width)
        seq_u = seq_u.transpose(1, 0, 2).reshape(n_seq * batch, 1 + 2 * self._seq_width)

        # Input caps (content length for sequences) and the input budget.
        length = np.zeros((batch, len(self._mods)), np.int64)
        length[:] = [m.n for m in self._mods]
        if n_seq:
            length[:, seq_cols] = seq_cols_of(content_lengths(seqs, c))
        shares_in = self._shares(setting, gammas, uniforms, 0)
        k = allocate(shares_in, length, in_alpha, c.input_budget)

        # Span-mask the sequences that are inputs and may be targets; give unused input slots back.
        seq_len, seq_k = seq_rows(length), seq_rows(k)
        masked = (seq_k > 0) & seq_rows(tg_alpha)
        spans = None
        if masked.any():
            w = self._seq_width
            spans = span_mask(seq_len, seq_k, masked, seq_u[:, 0], seq_u[:, 1 : 1 + w], seq_u[:, 1 + w :], c)
            seq_k = np.where(masked, spans.input_length, seq_k)
            k[:, seq_cols] = seq_cols_of(seq_k)
            freed = c.input_budget - k.sum(axis=1)
            if freed.any():  # to images and input-only sequences; target-only and masked ones keep theirs
                room = length - k
                room[:, seq_cols] *= seq_cols_of((seq_k > 0) & ~masked)
                k += allocate(shares_in, room, in_alpha, freed)
                seq_k = seq_rows(k)

        # Target caps and budget.
        caps_t = length - k
        seq_caps = np.where(seq_k == 0, seq_len + 1, 0)
        if spans is not None:
            seq_caps = np.where(masked, spans.num_masked + spans.num_spans, seq_caps)
        caps_t[:, seq_cols] = seq_cols_of(seq_caps)
        t = allocate(self._shares(setting, gammas, uniforms, 1), caps_t, tg_alpha, c.target_budget)

        # Per-modality blocks of the virtual rows, then compaction into the budgets.
        ranks = self._image_ranks(uniforms)
        seq_t = seq_rows(t)
        if n_seq:
            seq_enc, seq_enc_len, seq_tgt = sequence_blocks(seqs, seq_len, seq_k, seq_t, spans, c)
        enc_tok, enc_ok, dec_in, dec_tgt, dec_ok = [], [], [], [], []
        for m in self._mods:
            x = rows_in[m.name]
            kk, tt = k[:, m.column : m.column + 1], t[:, m.column : m.column + 1]
            if m.is_seq:
                i = self._seqs.index(m)
                rows = slice(i * batch, (i + 1) * batch)
                e_tok, e_ok = seq_enc[rows, : m.n - 1], np.arange(m.n - 1) < seq_enc_len[rows, None]
                d_in, d_tgt, d_ok = seq_tgt[rows, : m.n], seq_tgt[rows, 1 : m.n + 1], np.arange(m.n) < tt
            else:
                rank = ranks[m.name]
                e_tok, e_ok = x, rank < kk
                d_in, d_tgt, d_ok = np.zeros_like(x), x, (rank >= kk) & (rank < kk + tt)
            if m.is_input:
                enc_tok.append(e_tok)
                enc_ok.append(e_ok)
            if m.is_target:
                dec_in.append(d_in)
                dec_tgt.append(d_tgt)
                dec_ok.append(d_ok)
        enc = compact_slots(
            np.concatenate(enc_ok, 1),
            c.input_budget,
            self._enc_mod,
            self._enc_pos,
            np.concatenate(enc_tok, 1),
        )
        dec = compact_slots(
            np.concatenate(dec_ok, 1),
            c.target_budget,
            self._dec_mod,
            self._dec_pos,
            np.concatenate(dec_in, 1),
            np.concatenate(dec_tgt, 1),
        )
        if c.input_dropout > 0:
            self._drop_inputs(enc, keys, epoch)
        return {
            "enc_tokens": enc[3],
            "enc_mod": enc[1],
            "enc_pos": enc[2],
            "enc_pad": enc[0],
            "dec_tokens": dec[3],
            "dec_mod": dec[1],
            "dec_pos": dec[2],
            "dec_pad": dec[0],
            "targets": dec[4],
        }

    def _drop_inputs(self, enc: tuple[np.ndarray, ...], keys: Sequence[str], epoch: int) -> None:
        """Pad every encoder slot of the samples whose dropout draw is below ``input_dropout``."""
        prefix = self._seed_bytes + int(epoch).to_bytes(8, "little") + b"drop"
        u = np.array(
            [
                int.from_bytes(hashlib.blake2b(prefix + k.encode("utf-8"), digest_size=8).digest(), "little")
                / 2**64
                for k in keys
            ]
        )
        drop = u < self.config.input_dropout
        if drop.any():
            pad, *values = enc
            pad[drop] = True
            for v in values:
                v[drop] = 0

    def _check(
        self, tokens: Mapping[str, np.ndarray], keys: Sequence[str], epoch: int
    ) -> dict[str, np.ndarray]:
        """Validated int64 token arrays per used modality; ValueError naming modality, sample and rule."""
        if isinstance(keys, str) or not all(isinstance(key, str) for key in keys):
            raise ValueError("keys must be a sequence of str sample keys, one per batch row")
        if not isinstance(epoch, int | np.integer) or not 0 <= epoch < 2**64:
            raise ValueError(f"epoch must be an int in [0, 2**64), got {epoch!r}")
        batch = len(keys)
        if batch == 0:
            raise ValueError("empty batch: no sample keys")
        out = {}
        for m in self._mods:
            if m.name not in tokens:
                raise ValueError(f"modality {m.name!r} is missing from the tokens (have: {sorted(tokens)})")
            x = np.asarray(tokens[m.name])
            if x.ndim != 2 or x.shape[0] != batch:
                raise ValueError(
                    f"modality {m.name!r}: expected ({batch}, {m.n}) tokens (one row per key), got {x.shape}"
                )
            if x.shape[1] != m.n:
                raise ValueError(f"modality {m.name!r}: expected {m.n} tokens per sample, got {x.shape[1]}")
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"modality {m.name!r}: token ids must be integers, got dtype {x.dtype}")
            x = x.astype(np.int64, copy=False)
            if m.is_seq and (bad := np.flatnonzero(x[:, 0] != self.config.sos_id)).size:
                i = int(bad[0])
                raise ValueError(
                    f"modality {m.name!r}, sample {keys[i]!r}: a sequence row must start with [SOS] "
                    f"(id {self.config.sos_id}), got {int(x[i, 0])}"
                )
            out[m.name] = x
        return out
