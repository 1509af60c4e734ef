"""4M masking: exact budgets, Dirichlet shares, span masking round trips, layout, determinism, errors."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fourm.model.batch import FIELDS
from fourm.model.masking import DirichletSetting, Masker, MaskingConfig, join_spans

pytestmark = pytest.mark.unit

SOS, EOS, PAD, S0 = 2, 3, 0, 4
IMAGES = ("rgb", "depth", "normal", "semseg")
ALL = (*IMAGES, "caption", "boxes")
CONTENT_LOW = 100  # content ids never collide with specials or sentinels


def sequence_rows(contents: list[list[int]], n: int) -> np.ndarray:
    """``[SOS] content [EOS] [PAD]..`` rows of length n (no [EOS] when the content fills the row)."""
    x = np.zeros((len(contents), n), np.int64)
    x[:, 0] = SOS
    for i, c in enumerate(contents):
        assert len(c) <= n - 1
        x[i, 1 : 1 + len(c)] = c
        if len(c) < n - 1:
            x[i, 1 + len(c)] = EOS
    return x


def random_tokens(cfg: MaskingConfig, batch: int, seed: int = 0, max_content: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for m in cfg.modalities:
        n = cfg.num_tokens(m)
        if cfg.kind(m) == "image":
            out[m] = rng.integers(0, 1024, (batch, n))
        else:
            top = n - 1 if max_content is None else min(max_content, n - 1)
            lengths = rng.integers(0, top + 1, batch)
            out[m] = sequence_rows([rng.integers(CONTENT_LOW, 8000, ln).tolist() for ln in lengths], n)
    return out


def content_of(row: np.ndarray) -> list[int]:
    body = row[1:].tolist()
    for i, tok in enumerate(body):
        if tok in (EOS, PAD):
            return body[:i]
    return body


def keys_for(batch: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(batch)]


def split(out: dict, i: int, cfg: MaskingConfig) -> tuple[dict, dict]:
    """Sample i as {modality: (tokens, positions)} for the encoder and {modality: (dec, pos, targets)}."""
    enc, dec = {}, {}
    ok = ~out["enc_pad"][i]
    for j, m in enumerate(cfg.modalities):
        sel = ok & (out["enc_mod"][i] == j)
        if sel.any():
            enc[m] = (out["enc_tokens"][i][sel].tolist(), out["enc_pos"][i][sel].tolist())
    ok = ~out["dec_pad"][i]
    for j, m in enumerate(cfg.modalities):
        sel = ok & (out["dec_mod"][i] == j)
        if sel.any():
            dec[m] = (
                out["dec_tokens"][i][sel].tolist(),
                out["dec_pos"][i][sel].tolist(),
                out["targets"][i][sel].tolist(),
            )
    return enc, dec


def row(out: dict, i: int) -> dict:
    return {k: v[i].copy() for k, v in out.items()}


def full_config(**kw) -> MaskingConfig:
    base = dict(input_budget=128, target_budget=128, alphas=(0.2, 1.0, 5.0))
    base.update(kw)
    return MaskingConfig.symmetric(ALL, ALL, ALL, **base)


# ---------------------------------------------------------------------- contract


def test_fields_dtypes_shapes_and_layout_contract():
    cfg = full_config(input_budget=96)
    out = Masker(cfg)(random_tokens(cfg, 16), keys_for(16))
    assert tuple(out) == FIELDS
    for k, v in out.items():
        assert v.shape == (16, 96 if k.startswith("enc") else 128), k
        assert v.dtype == (np.bool_ if k.endswith("_pad") else np.int64), k
    for i in range(16):
        for side in ("enc", "dec"):
            pad = out[f"{side}_pad"][i]
            assert not np.any(pad[:-1] & ~pad[1:]), "padding only at the tail"
            fields = [f"{side}_tokens", f"{side}_mod", f"{side}_pos"] + (["targets"] if side == "dec" else [])
            for f in fields:
                assert np.all(out[f][i][pad] == 0), f
            # One contiguous run per modality, runs in config.modalities order.
            mods = out[f"{side}_mod"][i][~pad]
            runs = [int(mods[0])] + [int(b) for a, b in zip(mods[:-1], mods[1:], strict=True) if a != b]
            assert runs == sorted(set(runs)), runs
        enc, dec = split(out, i, cfg)
        for m, (_, pos, *_rest) in {**enc, **dec}.items():
            if cfg.kind(m) == "image":
                assert pos == sorted(set(pos)), m
            else:
                assert pos == list(range(len(pos))), m  # sequences: in order from 0


def test_image_decoder_tokens_are_not_given_and_targets_are_the_tokens():
    cfg = full_config()
    tokens = random_tokens(cfg, 32, seed=3)
    out = Masker(cfg)(tokens, keys_for(32))
    for i in range(32):
        enc, dec = split(out, i, cfg)
        for m in IMAGES:
            e_tok, e_pos = enc.get(m, ([], []))
            d_tok, d_pos, tgt = dec.get(m, ([], [], []))
            assert not set(e_pos) & set(d_pos), f"{m}: a target position is also an input"
            assert e_tok == tokens[m][i][e_pos].tolist()
            assert tgt == tokens[m][i][d_pos].tolist()
            assert all(t == 0 for t in d_tok)


# ---------------------------------------------------------------------- budgets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    e=st.integers(1, 300),
    t=st.integers(1, 300),
    alphas=st.lists(st.sampled_from([0.0, 0.05, 0.5, 1.0, 4.0]), min_size=3, max_size=3),
    seed=st.integers(0, 2**32),
)
def test_budgets_exact_for_image_modalities(e, t, alphas, seed):
    mods = ("rgb", "depth", "normal")
    if not any(alphas):
        alphas[0] = 1.0
    setting = DirichletSetting(dict(zip(mods, alphas, strict=True)), {"normal": 0.3, "rgb": 1.0})
    cfg = MaskingConfig(
        mods, mods, ("rgb", "normal"), e, t, (setting,), lengths={"rgb": 16}, seed=seed % 1000
    )
    out = Masker(cfg)(random_tokens(cfg, 8, seed=seed), keys_for(8))
    n = {m: cfg.num_tokens(m) for m in mods}
    assert out["enc_pad"].shape == (8, e) and out["dec_pad"].shape == (8, t)
    for i in range(8):
        enc, dec = split(out, i, cfg)
        k = {m: len(enc.get(m, ([],))[0]) for m in mods}
        available_in = sum(n[m] for m, a in zip(mods, alphas, strict=True) if a > 0)
        assert sum(k.values()) == min(e, available_in)
        assert all(k[m] == 0 for m, a in zip(mods, alphas, strict=True) if a == 0)
        available_t = (n["rgb"] - k["rgb"]) + (n["normal"] - k["normal"])
        assert int((~out["dec_pad"][i]).sum()) == min(t, available_t)
        assert "depth" not in dec


def test_budgets_exact_with_sequences():
    cfg = full_config()
    masker = Masker(cfg)
    for seed in range(4):
        out = masker(random_tokens(cfg, 64, seed=seed), keys_for(64), epoch=seed)
        # Images alone can always fill both budgets, so no slot is ever padding.
        assert not out["enc_pad"].any() and not out["dec_pad"].any()


def test_sequence_only_budgets_leave_padding_only_when_content_runs_out():
    cfg = MaskingConfig.symmetric(("caption",), ("caption",), ("caption",), 40, 40)
    contents = [[], [200], list(range(200, 230)), list(range(300, 427))]
    out = Masker(cfg)({"caption": sequence_rows(contents, 128)}, keys_for(4))
    for i, c in enumerate(contents):
        enc, dec = split(out, i, cfg)
        k = len(enc.get("caption", ([],))[0])
        t = len(dec.get("caption", ([],))[0])
        assert k <= min(40, len(c))
        if not c:  # an empty caption is never an input; as a target it still teaches [EOS]
            assert k == 0 and dec["caption"] == ([S0], [0], [EOS])
        elif k == 0:  # target only: [S_0] content [EOS], up to the budget
            assert t == min(40, len(c) + 1)
        else:
            assert t >= 1


# ---------------------------------------------------------------------- Dirichlet


def shares(out: dict, side: str, index: int, budget: int) -> np.ndarray:
    real = ~out[f"{side}_pad"]
    return ((out[f"{side}_mod"] == index) & real).sum(axis=1) / budget


def test_dirichlet_shares_match_their_expectation():
    # Caps never bind (N = 256 > both budgets), so shares are Dirichlet draws rounded to 1/64.
    # Share of rgb ~ Beta(1, 3): mean 0.25, sd 0.19; over 4000 samples the standard error is 0.003,
    # so 0.015 is a 5-sigma tolerance (rounding adds no bias: largest remainder is unbiased to 1/64).
    setting = DirichletSetting({"rgb": 1.0, "depth": 3.0}, {"rgb": 3.0, "depth": 1.0})
    cfg = MaskingConfig(
        ("rgb", "depth"),
        ("rgb", "depth"),
        ("rgb", "depth"),
        64,
        64,
        (setting,),
        lengths={"rgb": 256, "depth": 256},
    )
    out = Masker(cfg)(random_tokens(cfg, 4000), keys_for(4000))
    assert abs(shares(out, "enc", 0, 64).mean() - 0.25) < 0.015
    assert abs(shares(out, "dec", 0, 64).mean() - 0.75) < 0.015
    assert abs(shares(out, "enc", 0, 64).std() - np.sqrt(3 / 80)) < 0.015


def test_mixture_of_settings():
    # Weights 1:3 -> 25% of samples use the rgb-only setting (binomial sd 0.007, tolerance 0.03).
    rgb_only = DirichletSetting({"rgb": 1.0}, {"depth": 1.0}, weight=1.0)
    depth_only = DirichletSetting({"depth": 1.0}, {"rgb": 1.0}, weight=3.0)
    mods = ("rgb", "depth")
    cfg = MaskingConfig(mods, mods, mods, 16, 16, (rgb_only, depth_only))
    out = Masker(cfg)(random_tokens(cfg, 4000), keys_for(4000))
    rgb_in = shares(out, "enc", 0, 16)
    assert set(np.unique(rgb_in)) == {0.0, 1.0}
    assert abs(rgb_in.mean() - 0.25) < 0.03
    assert np.all(shares(out, "dec", 1, 16) == rgb_in)  # the same setting drives both sides

    # symmetric(): alphas 0.1 and 10 both have mean 1/2; the mixture's variance is the average
    # of Beta(.1,.1) (0.208) and Beta(10,10) (0.012) variances: 0.110 (sampling sd ~0.003).
    cfg = MaskingConfig.symmetric(
        mods, mods, mods, 64, 64, alphas=(0.1, 10.0), lengths={"rgb": 256, "depth": 256}
    )
    assert len(cfg.settings) == 2 and all(s.weight == 1.0 for s in cfg.settings)
    s = shares(Masker(cfg)(random_tokens(cfg, 4000), keys_for(4000)), "enc", 0, 64)
    assert abs(s.mean() - 0.5) < 0.02
    assert abs(s.var() - 0.110) < 0.015


def test_tiny_alphas_give_one_hot_shares_not_nans():
    mods = ("rgb", "depth", "normal")
    cfg = MaskingConfig.symmetric(mods, mods, mods, 32, 32, alphas=(1e-4,))
    out = Masker(cfg)(random_tokens(cfg, 200), keys_for(200))
    assert not out["enc_pad"].any() and not out["dec_pad"].any()
    counts = np.stack([shares(out, "enc", j, 32) for j in range(3)], axis=1)
    assert np.mean(counts.max(axis=1) == 1.0) > 0.95  # nearly always a single modality
    assert counts.sum(axis=1).min() == 1.0


# ---------------------------------------------------------------------- sequences


def target_sequence(dec: tuple[list[int], list[int], list[int]]) -> list[int]:
    tokens, pos, targets = dec
    assert pos == list(range(len(pos)))
    assert tokens[1:] == targets[:-1], "teacher forcing: each decoder input is the previous target"
    return tokens[:1] + targets


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contents=st.lists(st.lists(st.integers(CONTENT_LOW, 8000), max_size=63), min_size=1, max_size=12),
    input_budget=st.integers(1, 80),
    num_sentinels=st.integers(1, 40),
    span=st.floats(1.0, 6.0),
    seed=st.integers(0, 10_000),
)
def test_span_masking_round_trips(contents, input_budget, num_sentinels, span, seed):
    # The caption is the only target, with a budget larger than any target: nothing is truncated.
    cfg = MaskingConfig(
        ("rgb", "caption"),
        ("rgb", "caption"),
        ("caption",),
        input_budget,
        70,
        (DirichletSetting({"rgb": 1.0, "caption": 1.0}, {"caption": 1.0}),),
        lengths={"caption": 64},
        mean_span_length=span,
        num_sentinels=num_sentinels,
        seed=seed,
    )
    tokens = {"rgb": np.zeros((len(contents), 64), np.int64), "caption": sequence_rows(contents, 64)}
    out = Masker(cfg)(tokens, keys_for(len(contents)))
    sentinels = range(S0, S0 + num_sentinels)
    for i, content in enumerate(contents):
        enc, dec = split(out, i, cfg)
        inp, pos = enc.get("caption", ([], []))
        assert pos == list(range(len(inp)))
        tseq = target_sequence(dec["caption"])
        assert tseq[0] == S0 and tseq[-1] == EOS
        used = [t for t in tseq if t in sentinels]
        assert used == list(range(S0, S0 + len(used))), "sentinels in order [S_0], [S_1], .."
        if inp:
            assert [t for t in inp if t in sentinels] == used, "one sentinel per span, in both sequences"
            assert len(inp) <= len(content)
        else:
            assert tseq == [S0, *content, EOS]  # target only
        assert join_spans(inp, tseq, num_sentinels=num_sentinels) == content
        real = int((~out["enc_pad"][i]).sum())
        assert real == len(inp) + len(enc.get("rgb", ([],))[0]) <= input_budget


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.sets(st.sampled_from(ALL), min_size=1),
    targets=st.sets(st.sampled_from(ALL), min_size=1),
    e=st.integers(1, 200),
    t=st.integers(1, 200),
    alphas=st.lists(st.sampled_from([0.05, 0.5, 1.0, 5.0]), min_size=1, max_size=3),
    max_content=st.integers(0, 127),
    seed=st.integers(0, 1000),
)
def test_any_configuration_keeps_every_rule(inputs, targets, e, t, alphas, max_content, seed):
    cfg = MaskingConfig.symmetric(
        ALL, tuple(sorted(inputs)), tuple(sorted(targets)), e, t, alphas=alphas, seed=seed, num_sentinels=8
    )
    tokens = random_tokens(cfg, 6, seed=seed, max_content=max_content)
    out = Masker(cfg)(tokens, keys_for(6), epoch=seed % 3)
    sentinels = range(S0, S0 + 8)
    for i in range(6):
        enc, dec = split(out, i, cfg)
        assert set(enc) <= inputs and set(dec) <= targets
        for m in ("caption", "boxes"):
            content = content_of(tokens[m][i])
            inp = enc.get(m, ([],))[0]
            assert len(inp) <= len(content)
            if m not in dec:
                assert not any(x in sentinels for x in inp) and inp == content[: len(inp)]
                continue
            tseq = target_sequence(dec[m])
            assert tseq[0] == S0
            if inp:
                assert any(x in sentinels for x in inp), "a sequence that is input and target is span-masked"
            if tseq[-1] == EOS:  # not truncated
                assert join_spans(inp, tseq, num_sentinels=8) == content
            else:  # a target is cut short only when the budget is used up
                assert int((~out["dec_pad"][i]).sum()) == t
        if sum(cfg.num_tokens(m) for m in inputs if m in IMAGES) >= e:
            assert not out["enc_pad"][i].any()


def test_span_structure_respects_mean_length_and_sentinel_limit():
    cfg = MaskingConfig(
        ("caption",), ("caption",), ("caption",), 127, 128,
        (DirichletSetting({"caption": 1.0}, {"caption": 1.0}),),
        num_sentinels=5, mean_span_length=2.0,
    )  # fmt: skip
    contents = [list(range(CONTENT_LOW, CONTENT_LOW + 120))] * 300
    out = Masker(cfg)({"caption": sequence_rows(contents, 128)}, keys_for(300))
    spans, masked = [], []
    for i in range(300):
        enc, dec = split(out, i, cfg)
        tseq = target_sequence(dec["caption"])
        n_spans = sum(S0 <= t < S0 + 5 for t in tseq)
        assert 1 <= n_spans <= 5
        spans.append(n_spans)
        masked.append(len(tseq) - 1 - n_spans)
        assert join_spans(enc["caption"][0], tseq, num_sentinels=5) == contents[i]
    # The masked count is uniform on 1..120 (mean 60.5, sd of the mean ~2): ratio ~ U(0, 1].
    assert abs(np.mean(masked) - 60.5) < 8
    assert max(spans) == 5


def test_target_only_and_input_only_sequences():
    contents = [[], [101], list(range(200, 260)), list(range(300, 427))]
    rows = sequence_rows(contents, 128)
    images = np.arange(64)[None].repeat(4, 0)
    # Target only: the caption is never an input.
    cfg = MaskingConfig.symmetric(("rgb", "caption"), ("rgb",), ("caption",), 32, 300)
    out = Masker(cfg)({"rgb": images, "caption": rows}, keys_for(4))
    for i, c in enumerate(contents):
        enc, dec = split(out, i, cfg)
        assert "caption" not in enc
        assert target_sequence(dec["caption"]) == [S0, *c, EOS]
    # Truncated to the target budget: the first t slots.
    cfg = MaskingConfig.symmetric(("rgb", "caption"), ("rgb",), ("caption",), 32, 10)
    out = Masker(cfg)({"rgb": images, "caption": rows}, keys_for(4))
    for i, c in enumerate(contents):
        _, dec = split(out, i, cfg)
        assert target_sequence(dec["caption"]) == [S0, *c, EOS][:11]
    # Input only: unmasked content, a prefix when the share is smaller than the caption.
    cfg = MaskingConfig.symmetric(("rgb", "caption"), ("rgb", "caption"), ("rgb",), 100, 16)
    masker = Masker(cfg)
    for epoch in range(5):
        out = masker({"rgb": images, "caption": rows}, keys_for(4), epoch=epoch)
        for i, c in enumerate(contents):
            enc, _ = split(out, i, cfg)
            inp = enc.get("caption", ([],))[0]
            assert inp == c[: len(inp)]
            if len(c) + 64 <= 100:  # everything fits: the whole caption is an input
                assert inp == c


def test_truncated_row_without_eos_runs_to_the_end():
    cfg = MaskingConfig.symmetric(("caption",), ("caption",), ("caption",), 8, 8, lengths={"caption": 8})
    rows = sequence_rows([[111, 112, 113, 114, 115, 116, 117]], 8)
    assert EOS not in rows[0]
    out = Masker(cfg)({"caption": rows}, ["x"])
    enc, dec = split(out, 0, cfg)
    assert join_spans(enc.get("caption", ([],))[0], target_sequence(dec["caption"])) == rows[0, 1:].tolist()


def test_join_spans():
    a, b, c, d, e, f = range(100, 106)
    assert join_spans([a, S0, d, S0 + 1], [S0, b, c, S0 + 1, e, f, EOS]) == [a, b, c, d, e, f]
    assert join_spans([], [S0, a, b, EOS]) == [a, b]  # target only
    assert join_spans([a, b], [S0, EOS]) == [a, b]
    assert join_spans([a, S0], [S0, b, c]) == [a, b, c]  # a target without [EOS]
    assert join_spans([1000, 2], [2000, 3, 3], first_sentinel_id=2000, num_sentinels=1, eos_id=3) == [1000, 2]
    with pytest.raises(ValueError, match="no span"):
        join_spans([a, S0 + 1], [S0, b, EOS])
    with pytest.raises(ValueError, match="start with a sentinel"):
        join_spans([a, S0], [b, S0, c, EOS])
    with pytest.raises(ValueError, match="twice"):
        join_spans([S0], [S0, b, S0, EOS])


# ---------------------------------------------------------------------- determinism


def test_masks_depend_only_on_seed_epoch_and_key():
    cfg = full_config()
    tokens = random_tokens(cfg, 12, seed=5)
    keys = keys_for(12)
    whole = Masker(cfg)(tokens, keys, epoch=2)
    # Two "ranks": every other sample, in reverse order, each in its own masker.
    for rank in (0, 1):
        idx = list(range(rank, 12, 2))[::-1]
        part = Masker(cfg)({m: v[idx] for m, v in tokens.items()}, [keys[i] for i in idx], epoch=2)
        for j, i in enumerate(idx):
            a, b = row(whole, i), row(part, j)
            assert all(np.array_equal(a[f], b[f]) for f in FIELDS), keys[i]
    # A sample alone, next to different neighbours, in a bigger batch.
    other = random_tokens(cfg, 30, seed=9)
    for m in tokens:
        other[m][17] = tokens[m][4]
    other_keys = keys_for(30, "z")
    other_keys[17] = keys[4]
    big = Masker(cfg)(other, other_keys, epoch=2)
    assert all(np.array_equal(row(big, 17)[f], row(whole, 4)[f]) for f in FIELDS)
    # A pickled masker (data-loader workers) and threads sharing one masker agree.
    shared = pickle.loads(pickle.dumps(Masker(cfg)))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: shared(tokens, keys, epoch=2), range(8)))
    assert all(np.array_equal(r[f], whole[f]) for r in results for f in FIELDS)
    # Another epoch or seed gives other masks.
    for changed in (Masker(cfg)(tokens, keys, epoch=3), Masker(full_config(seed=1))(tokens, keys, epoch=2)):
        differ = [not np.array_equal(changed["enc_pos"][i], whole["enc_pos"][i]) for i in range(12)]
        assert sum(differ) >= 10


# ---------------------------------------------------------------------- errors


def test_bad_input_is_refused_with_a_clear_message():
    cfg = full_config()
    masker = Masker(cfg)
    tokens = random_tokens(cfg, 4)
    keys = keys_for(4)
    with pytest.raises(ValueError, match="'boxes' is missing"):
        masker({m: v for m, v in tokens.items() if m != "boxes"}, keys)
    with pytest.raises(ValueError, match=r"'depth'.*expected 64 tokens per sample, got 63"):
        masker({**tokens, "depth": tokens["depth"][:, :63]}, keys)
    with pytest.raises(ValueError, match=r"'rgb'.*one row per key.*\(3, 64\)"):
        masker({**tokens, "rgb": tokens["rgb"][:3]}, keys)
    with pytest.raises(ValueError, match=r"'rgb'.*one row per key"):
        masker(tokens, keys[:3])
    with pytest.raises(ValueError, match="integers"):
        masker({**tokens, "normal": tokens["normal"].astype(np.float32)}, keys)
    bad = tokens["caption"].copy()
    bad[2, 0] = 57
    with pytest.raises(ValueError, match=r"'caption', sample 's00002'.*start with \[SOS\] \(id 2\), got 57"):
        masker({**tokens, "caption": bad}, keys)
    with pytest.raises(ValueError, match="epoch"):
        masker(tokens, keys, epoch=-1)
    with pytest.raises(ValueError, match="sequence of str"):
        masker(tokens, list(range(4)))


def test_bad_config_is_refused():
    one = DirichletSetting({"rgb": 1.0}, {"depth": 1.0})
    with pytest.raises(ValueError, match="rgb_patches.*patches.*token modalities only"):
        MaskingConfig(("rgb", "depth", "rgb_patches"), ("rgb", "rgb_patches"), ("depth",), 8, 8, (one,))
    with pytest.raises(ValueError, match="unknown modality 'lidar'"):
        MaskingConfig(("rgb", "lidar"), ("rgb",), ("rgb",), 8, 8, (one,))
    with pytest.raises(ValueError, match=r"targets \['caption'\] are not in modalities"):
        MaskingConfig(("rgb", "depth"), ("rgb",), ("caption",), 8, 8, (one,))
    with pytest.raises(ValueError, match=r"setting 0: target alphas for \['depth'\]"):
        MaskingConfig(("rgb", "depth"), ("rgb", "depth"), ("rgb",), 8, 8, (one,))
    with pytest.raises(ValueError, match="setting 0: no input modality has an alpha > 0"):
        MaskingConfig(
            ("rgb", "depth"), ("rgb",), ("depth",), 8, 8, (DirichletSetting({"rgb": 0.0}, {"depth": 1}),)
        )
    with pytest.raises(ValueError, match="input alpha of 'rgb' must be a finite number >= 0"):
        DirichletSetting({"rgb": -1.0}, {"depth": 1.0})
    with pytest.raises(ValueError, match="weight"):
        DirichletSetting({"rgb": 1.0}, {"depth": 1.0}, weight=0)
    with pytest.raises(ValueError, match="input_budget"):
        MaskingConfig(("rgb", "depth"), ("rgb",), ("depth",), 0, 8, (one,))
    with pytest.raises(ValueError, match="length of 'caption' must be an int >= 2"):
        MaskingConfig.symmetric(("caption",), ("caption",), ("caption",), 8, 8, lengths={"caption": 1})
    with pytest.raises(ValueError, match="symmetric alphas"):
        MaskingConfig.symmetric(("rgb",), ("rgb",), ("rgb",), 8, 8, alphas=(0.0,))
