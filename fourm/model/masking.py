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
5. **Determinism.** Every random number of a sample comes from its own generator,
   seeded with blake2b(seed, epoch, key) and drawn in fixed-size blocks before any
   batch-wide (vectorised, row-independent) arithmetic; so a sample's masks depend
   only on (seed, epoch, key), never on its batch, position or process.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fourm.modalities import ModalityError, get_modality

SEQUENCE_KINDS = ("sequence", "boxes")
_TINY = 1e-12  # floor on the share of an eligible modality, so it can take leftovers


@dataclass(frozen=True)
class DirichletSetting:
    """One Dirichlet component of the mixture; a missing or 0 alpha excludes the modality."""

    input_alphas: Mapping[str, float]
    target_alphas: Mapping[str, float]
    weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_alphas", dict(self.input_alphas))
        object.__setattr__(self, "target_alphas", dict(self.target_alphas))
        for side, alphas in (("input", self.input_alphas), ("target", self.target_alphas)):
            for name, a in alphas.items():
                if not (isinstance(a, int | float) and math.isfinite(a) and a >= 0):
                    raise ValueError(f"{side} alpha of {name!r} must be a finite number >= 0, got {a!r}")
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"setting weight must be a finite number > 0, got {self.weight!r}")


@dataclass(frozen=True)
class MaskingConfig:
    """What to mask: modalities, budgets, the Dirichlet mixture and the span-masking knobs."""

    modalities: tuple[str, ...]
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    input_budget: int
    target_budget: int
    settings: tuple[DirichletSetting, ...]
    lengths: Mapping[str, int] | None = None
    mean_span_length: float = 3.0
    num_sentinels: int = 32
    pad_id: int = 0
    sos_id: int = 2
    eos_id: int = 3
    first_sentinel_id: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("modalities", "inputs", "targets", "settings"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.lengths is not None:
            object.__setattr__(self, "lengths", dict(self.lengths))
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be non-empty and distinct, got {self.modalities}")
        kinds: dict[str, str] = {}
        for name in self.modalities:
            try:
                kind = get_modality(name).kind
            except ModalityError as e:
                raise ValueError(str(e)) from None
            if kind not in ("image", *SEQUENCE_KINDS):
                raise ValueError(
                    f"modality {name!r} has kind {kind!r}: masking handles token modalities only"
                )
            kinds[name] = kind
        for side in ("inputs", "targets"):
            names = getattr(self, side)
            if not names or len(set(names)) != len(names):
                raise ValueError(f"{side} must be non-empty and distinct, got {names}")
            if unknown := [n for n in names if n not in kinds]:
                raise ValueError(f"{side} {unknown} are not in modalities {self.modalities}")
        for name in ("input_budget", "target_budget", "num_sentinels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.mean_span_length >= 1:
            raise ValueError(f"mean_span_length must be >= 1, got {self.mean_span_length}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {self.seed!r}")
        sentinels = range(self.first_sentinel_id, self.first_sentinel_id + self.num_sentinels)
        if min(self.pad_id, self.sos_id, self.eos_id, self.first_sentinel_id) < 0 or any(
            i in sentinels for i in (self.pad_id, self.sos_id, self.eos_id)
        ):
            raise ValueError("pad/sos/eos ids must be >= 0 and outside the sentinel range")
        for name, n in (self.lengths or {}).items():
            if name not in kinds:
                raise ValueError(f"lengths names {name!r}, which is not in modalities {self.modalities}")
            low = 2 if kinds[name] in SEQUENCE_KINDS else 1
            if not isinstance(n, int) or n < low:
                raise ValueError(f"length of {name!r} must be an int >= {low}, got {n!r}")
        if not self.settings:
            raise ValueError("settings must hold at least one DirichletSetting")
        for i, s in enumerate(self.settings):
            for side, alphas, allowed in (
                ("input", s.input_alphas, self.inputs),
                ("target", s.target_alphas, self.targets),
            ):
                if extra := [n for n in alphas if n not in allowed]:
                    raise ValueError(
                        f"setting {i}: {side} alphas for {extra}, not among the {side}s {allowed}"
                    )
                if not any(a > 0 for a in alphas.values()):
                    raise ValueError(f"setting {i}: no {side} modality has an alpha > 0")

    def num_tokens(self, name: str) -> int:
        """Tokens per sample of ``name`` (N_m): ``lengths`` if given there, else the registry's."""
        if self.lengths and name in self.lengths:
            return self.lengths[name]
        return get_modality(name).num_tokens

    def kind(self, name: str) -> str:
        """The registry kind of ``name`` (image, sequence or boxes)."""
        return get_modality(name).kind

    @staticmethod
    def symmetric(
        modalities: Sequence[str],
        inputs: Sequence[str],
        targets: Sequence[str],
        input_budget: int,
        target_budget: int,
        alphas: Sequence[float] = (1.0,),
        seed: int = 0,
        **kw: Any,
    ) -> MaskingConfig:
        """A mixture of symmetric Dirichlets, one equally weighted setting per alpha value."""
        if not alphas or any(not a > 0 for a in alphas):
            raise ValueError(f"symmetric alphas must be non-empty and > 0, got {tuple(alphas)}")
        settings = tuple(
            DirichletSetting({m: float(a) for m in inputs}, {m: float(a) for m in targets}) for a in alphas
        )
        return MaskingConfig(
            tuple(modalities),
            tuple(inputs),
            tuple(targets),
            input_budget,
            target_budget,
            settings,
            seed=seed,
            **kw,
        )


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
            return {m.name: _ranks(uniforms[:, self._u_image[m.name]]) for m in self._images}
        n = sizes.pop()
        block = slice(self._u_image[self._images[0].name].start, self._u_image[self._images[-1].name].stop)
        rank = _ranks(uniforms[:, block].reshape(-1, n)).reshape(len(uniforms), -1, n)
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
            length[:, seq_cols] = seq_cols_of(_content_lengths(seqs, c))
        shares_in = self._shares(setting, gammas, uniforms, 0)
        k = _allocate(shares_in, length, in_alpha, c.input_budget)

        # Span-mask the sequences that are inputs and may be targets; give unused input slots back.
        seq_len, seq_k = seq_rows(length), seq_rows(k)
        masked = (seq_k > 0) & seq_rows(tg_alpha)
        spans = None
        if masked.any():
            w = self._seq_width
            spans = _span_mask(seq_len, seq_k, masked, seq_u[:, 0], seq_u[:, 1 : 1 + w], seq_u[:, 1 + w :], c)
            seq_k = np.where(masked, spans.input_length, seq_k)
            k[:, seq_cols] = seq_cols_of(seq_k)
            freed = c.input_budget - k.sum(axis=1)
            if freed.any():  # to images and input-only sequences; target-only and masked ones keep theirs
                room = length - k
                room[:, seq_cols] *= seq_cols_of((seq_k > 0) & ~masked)
                k += _allocate(shares_in, room, in_alpha, freed)
                seq_k = seq_rows(k)

        # Target caps and budget.
        caps_t = length - k
        seq_caps = np.where(seq_k == 0, seq_len + 1, 0)
        if spans is not None:
            seq_caps = np.where(masked, spans.num_masked + spans.num_spans, seq_caps)
        caps_t[:, seq_cols] = seq_cols_of(seq_caps)
        t = _allocate(self._shares(setting, gammas, uniforms, 1), caps_t, tg_alpha, c.target_budget)

        # Per-modality blocks of the virtual rows, then compaction into the budgets.
        ranks = self._image_ranks(uniforms)
        seq_t = seq_rows(t)
        if n_seq:
            seq_enc, seq_enc_len, seq_tgt = _sequence_blocks(seqs, seq_len, seq_k, seq_t, spans, c)
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
        enc = _compact(
            np.concatenate(enc_ok, 1),
            c.input_budget,
            self._enc_mod,
            self._enc_pos,
            np.concatenate(enc_tok, 1),
        )
        dec = _compact(
            np.concatenate(dec_ok, 1),
            c.target_budget,
            self._dec_mod,
            self._dec_pos,
            np.concatenate(dec_in, 1),
            np.concatenate(dec_tgt, 1),
        )
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


# ---------------------------------------------------------------------- helpers
@dataclass
class _Spans:
    """Span masks of one sequence modality for the whole batch (meaningful where ``masked``)."""

    masked: np.ndarray  # (B,) bool: the row is span-masked
    is_masked: np.ndarray  # (B, N-1) bool over content positions
    num_masked: np.ndarray  # (B,) M
    num_spans: np.ndarray  # (B,) S
    input_length: np.ndarray  # (B,) L - M + S: the masked input with one sentinel per span


def _content_lengths(x: np.ndarray, c: MaskingConfig) -> np.ndarray:
    """Tokens between [SOS] and the first [EOS]/[PAD]; the row end when there is neither."""
    end = (x[:, 1:] == c.eos_id) | (x[:, 1:] == c.pad_id)
    return np.where(end.any(axis=1), end.argmax(axis=1), x.shape[1] - 1)


def _ranks(keys: np.ndarray, stable: bool = False) -> np.ndarray:
    """Rank of every entry in its row: a uniformly random permutation for uniform keys.

    Only ``stable`` sorting orders ties by column; random keys tie with probability ~1e-12,
    so they use numpy's faster default sort.
    """
    batch, n = keys.shape
    order = np.argsort(keys, axis=1, kind="stable" if stable else None)
    rank = np.empty(batch * n, np.int64)
    rank[(order + np.arange(0, batch * n, n)[:, None]).ravel()] = np.tile(np.arange(n), batch)
    return rank.reshape(batch, n)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat index, row, column and in-row index (0, 1, ..) of a 2-D mask's True entries, row-major."""
    flat = np.flatnonzero(mask)
    rows = flat // mask.shape[1]
    counts = np.count_nonzero(mask, axis=1)
    return flat, rows, flat - rows * mask.shape[1], np.arange(len(flat)) - (np.cumsum(counts) - counts)[rows]


def _allocate(
    shares: np.ndarray, caps: np.ndarray, eligible: np.ndarray, budget: int | np.ndarray
) -> np.ndarray:
    """Integer counts (B, M) <= caps, summing to min(budget, eligible caps), proportional to shares.

    Water-filling: modalities whose proportional part reaches their cap get the cap and
    the rest is re-split among the others; then largest remainder. Row-independent.
    """
    caps = np.where(eligible, caps, 0)
    free = caps > 0
    w = np.where(free, np.maximum(shares, _TINY), 0.0)
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
    rank = _ranks(-np.where(free, ideal - base, -1.0), stable=True)  # non-free last
    n_free = free.sum(axis=1, keepdims=True)
    base += (rank < diff) & free
    base -= (rank >= n_free + diff) & (rank < n_free) & (base > 0)
    return counts + np.clip(base, 0, caps) * free


def _span_mask(
    length: np.ndarray,
    k: np.ndarray,
    masked: np.ndarray,
    r: np.ndarray,
    cut_keys: np.ndarray,
    bar_keys: np.ndarray,
    c: MaskingConfig,
) -> _Spans:
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
    return _Spans(masked, is_masked.reshape(batch, width + 1)[:, :width], M, S, np.where(masked, U + S, 0))


def _sequence_blocks(
    x: np.ndarray, length: np.ndarray, k: np.ndarray, t: np.ndarray, spans: _Spans | None, c: MaskingConfig
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
    enc[rows] = _pack((~m & in_content[rows]) | start, np.where(start, sentinel, cont), n - 1)
    enc_len[rows] = spans.input_length[rows]
    # Target: each span's sentinel then its tokens (interleaved columns), then [EOS].
    ts = _pack(np.stack([start, m], axis=2).reshape(len(rows), -1), np.stack([sentinel, cont], axis=2), n + 1)
    ts[np.arange(len(rows)), spans.num_masked[rows] + spans.num_spans[rows]] = c.eos_id
    tseq[rows] = ts
    return enc, enc_len, tseq


def _pack(valid: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Each row's ``values`` where ``valid``, in order, moved to the front of ``width`` columns; 0 after."""
    flat, rows, _, slot = _nonzero(valid)
    out = np.zeros(len(valid) * width, np.int64)
    out[rows * width + slot] = values.ravel()[flat]
    return out.reshape(len(valid), width)


def _compact(
    valid: np.ndarray, budget: int, mod: np.ndarray, pos: np.ndarray, *values: np.ndarray
) -> list[np.ndarray]:
    """Move each row's valid columns, in order, into ``budget`` slots: [pad, mod, pos, *values]."""
    batch, width = valid.shape
    flat = np.flatnonzero(valid)
    if len(flat) == batch * budget:  # every slot used (the usual case): no padding to place
        cols = flat % width
        full = [mod[cols], pos[cols], *(v.ravel()[flat] for v in values)]
        return [np.zeros((batch, budget), bool), *(a.reshape(batch, budget) for a in full)]
    flat, rows, cols, slot = _nonzero(valid)
    dest = rows * budget + slot
    pad = np.ones(batch * budget, bool)
    pad[dest] = False
    out: list[np.ndarray] = [pad.reshape(batch, budget)]
    for v, per_row in ((mod, False), (pos, False), *((v, True) for v in values)):
        o = np.zeros(batch * budget, np.int64)
        o[dest] = v.ravel()[flat] if per_row else v[cols]
        out.append(o.reshape(batch, budget))
    return out


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
