"""Generation: schedules, MaskGIT/ROAR fill rules, cached = uncached decoding, chains, guidance, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fourm.model.config import model_config
from fourm.model.generate import (
    GenerationError,
    GenerationStep,
    Given,
    autoregressive,
    chain,
    draws,
    encoder_inputs,
    generate,
    parse_plan,
)
from fourm.model.masking import Masker, MaskingConfig
from fourm.model.masking_config import EOS_ID, PAD_ID, SOS_ID
from fourm.model.model import FourM
from fourm.model.sampling import sample, tokens_per_step

pytestmark = pytest.mark.unit

IMAGES = ("rgb", "depth", "normal", "semseg")
ALL = (*IMAGES, "caption", "boxes")


@pytest.fixture(scope="module")
def model() -> FourM:
    torch.manual_seed(0)
    return FourM(model_config("debug", inputs=ALL, targets=ALL)).eval()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_tokens(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 1024, (batch, 64), generator=gen(seed))


def caption_rows(contents: list[list[int]], n: int = 128) -> torch.Tensor:
    rows = torch.full((len(contents), n), PAD_ID)
    rows[:, 0] = SOS_ID
    for i, c in enumerate(contents):
        rows[i, 1 : 1 + len(c)] = torch.tensor(c)
        rows[i, 1 + len(c)] = EOS_ID
    return rows


# -- schedules and sampling --------------------------------------------------------------


def test_cosine_schedule_matches_the_reference_split():
    assert tokens_per_step(64, 8, "cosine") == (2, 7, 10, 12, 12, 10, 7, 4)
    assert tokens_per_step(64, 8, "linear") == (8,) * 8


@pytest.mark.parametrize("total", [0, 1, 3, 7, 64, 100])
@pytest.mark.parametrize("steps", [1, 2, 8, 12])
def test_schedules_sum_to_total_and_never_stall(total, steps):
    for schedule in ("cosine", "linear"):
        counts = tokens_per_step(total, steps, schedule)
        assert len(counts) == steps and sum(counts) == total
        assert all(c >= 1 for c in counts[: min(steps, total)])


def test_top_k_one_is_greedy_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    ids, _ = sample(logits.repeat(50, 1), temperature=1.0, top_k=1, generator=gen(0))
    assert set(ids.tolist()) == {1}
    ids, _ = sample(logits.repeat(200, 1), temperature=1.0, top_p=0.6, generator=gen(0))
    assert set(ids.tolist()) <= {1, 3}  # 1 and 3 hold > 0.6 of the mass together


# -- parallel decoding ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["maskgit", "roar"])
def test_parallel_decoding_fills_every_masked_position_and_keeps_given_tokens(model, method):
    batch = 3
    depth = image_tokens(batch, seed=2)
    known = torch.rand(batch, 64, generator=gen(3)) < 0.4
    known[2] = False  # one sample with nothing given
    states = {"rgb": Given.full(image_tokens(batch)), "depth": Given(depth.clone(), known.clone())}
    out = generate(model, states, GenerationStep("depth", method), gen(0))
    assert bool(out.known.all())
    assert torch.equal(out.tokens[known], depth[known])
    assert int(out.tokens.min()) >= 0 and int(out.tokens.max()) < 1024
    assert torch.equal(states["depth"].known, known)  # the caller's state is not modified


def test_parallel_decoding_is_deterministic_under_a_seed(model):
    states = {"rgb": Given.full(image_tokens(2))}
    a = generate(model, states, GenerationStep("normal"), gen(7)).tokens
    b = generate(model, states, GenerationStep("normal"), gen(7)).tokens
    c = generate(model, states, GenerationStep("normal"), gen(8)).tokens
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_maskgit_steps_feed_decoded_tokens_back_to_the_encoder(model):
    """With one step nothing decoded can condition anything; with 8 the result differs."""
    states = {"rgb": Given.full(image_tokens(2))}
    one = generate(model, states, GenerationStep("depth", steps=1, temperature=0.0), gen(0)).tokens
    eight = generate(model, states, GenerationStep("depth", steps=8, temperature=0.0), gen(0)).tokens
    assert not torch.equal(one, eight)


def test_guidance_changes_the_result_and_runs_unconditionally_too(model):
    states = {"rgb": Given.full(image_tokens(2))}
    plain = generate(model, states, GenerationStep("semseg", temperature=0.0), gen(0)).tokens
    guided = generate(model, states, GenerationStep("semseg", temperature=0.0, guidance=3.0), gen(0)).tokens
    assert not torch.equal(plain, guided)
    uncond = generate(model, {"semseg": Given.empty(2, "semseg")}, GenerationStep("semseg"), gen(0))
    assert bool(uncond.known.all())


@pytest.mark.parametrize(
    "step",
    [
        GenerationStep("depth", steps=1, temperature=1.0),
        GenerationStep("semseg", steps=1, temperature=0.7, top_k=50, guidance=2.0),
        GenerationStep("normal", steps=3),  # several steps: each draw decodes on its own
        GenerationStep("depth", "roar", steps=1),
    ],
)
def test_draws_equal_one_generate_per_generator(model, step):
    known = torch.rand(3, 64, generator=gen(3)) < 0.3
    states = {"rgb": Given.full(image_tokens(3)), step.target: Given(image_tokens(3, seed=4), known)}
    got = draws(model, states, step, [gen(10), gen(11), gen(12)])
    want = [generate(model, states, step, gen(s)) for s in (10, 11, 12)]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.tokens, w.tokens) and bool(g.known.all())
    assert not torch.equal(got[0].tokens, got[1].tokens)


def test_one_step_draws_share_one_forward_pass(model, monkeypatch):
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda mb: calls.append(1) or encode(mb))
    states = {"rgb": Given.full(image_tokens(2))}
    draws(model, states, GenerationStep("depth", steps=1), [gen(s) for s in range(4)])
    assert len(calls) == 1
    draws(model, states, GenerationStep("depth", steps=2), [gen(s) for s in range(4)])
    assert len(calls) == 1 + 4 * 2


# -- autoregressive decoding --------------------------------------------------------------


@pytest.mark.parametrize("target", ["caption", "boxes"])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_cached_decoding_equals_uncached_decoding_under_greedy(model, target, guidance):
    states = {"rgb": Given.full(image_tokens(3)), "depth": Given.full(image_tokens(3, seed=5))}
    cached = autoregressive(model, states, GenerationStep(target, temperature=0.0, guidance=guidance))
    plain = autoregressive(
        model, states, GenerationStep(target, temperature=0.0, guidance=guidance, use_cache=False)
    )
    assert torch.equal(cached[0].tokens, plain[0].tokens)
    torch.testing.assert_close(cached[1], plain[1], rtol=1e-4, atol=1e-5)


def test_decoded_rows_are_well_formed(model):
    states = {"rgb": Given.full(image_tokens(4))}
    out, scores = autoregressive(model, states, GenerationStep("caption", temperature=1.0), gen(1))
    rows = out.tokens
    assert bool((rows[:, 0] == SOS_ID).all())
    for row, sc in zip(rows.tolist(), scores.tolist(), strict=True):
        end = row.index(EOS_ID)  # every row ends (the last slot forces [EOS])
        assert all(t == PAD_ID for t in row[end + 1 :])
        assert all(s == 0.0 for s in sc[end + 1 :])
        assert all(0.0 < s <= 1.0 for s in sc[1 : end + 1])


def test_a_known_prefix_is_continued(model):
    prefix = [[500, 501, 502], [600, 601, 602]]
    rows = caption_rows(prefix)
    known = torch.zeros_like(rows, dtype=torch.bool)
    known[:, :4] = True  # [SOS] and three tokens
    states = {"rgb": Given.full(image_tokens(2)), "caption": Given(rows, known)}
    out = generate(model, states, GenerationStep("caption", temperature=0.0))
    assert out.tokens[:, 1:4].tolist() == prefix


def test_a_fully_known_caption_is_an_input_and_returned_unchanged(model):
    rows = caption_rows([[100, 101], [102]])
    enc = encoder_inputs(model, {"caption": Given.full(rows)})
    assert enc["enc_tokens"][0, :2].tolist() == [100, 101]
    assert enc["enc_pad"].tolist() == [[False, False], [False, True]]
    out = generate(model, {"caption": Given.full(rows)}, GenerationStep("caption"))
    assert torch.equal(out.tokens, rows)


# -- chains --------------------------------------------------------------------------------


def test_chain_feeds_each_output_to_the_next_step(model):
    rows = caption_rows([[100, 200, 300], [400, 500]])
    plan = [GenerationStep("semseg"), GenerationStep("depth")]
    a = chain(model, {"caption": Given.full(rows)}, plan, gen(0))
    b = chain(model, {"caption": Given.full(rows)}, plan, gen(1))
    for result in (a, b):
        first, second = result.records
        assert torch.equal(second.conditioning["semseg"].tokens, first.output.tokens)
        enc = encoder_inputs(model, second.conditioning)
        semseg_index = model.modalities.index("semseg")
        fed = enc["enc_tokens"][(enc["enc_mod"] == semseg_index) & ~enc["enc_pad"]].view(2, 64)
        assert torch.equal(fed, first.output.tokens)
    # a different first output is a different input to the second step
    assert not torch.equal(a.records[0].output.tokens, b.records[0].output.tokens)
    enc_a = encoder_inputs(model, a.records[1].conditioning)["enc_tokens"]
    enc_b = encoder_inputs(model, b.records[1].conditioning)["enc_tokens"]
    assert not torch.equal(enc_a, enc_b)


def test_parse_plan():
    assert parse_plan("caption -> semseg -> depth -> rgb") == ["caption", "semseg", "depth", "rgb"]
    assert parse_plan("semseg,depth") == ["semseg", "depth"]
    with pytest.raises(GenerationError, match="unknown modality 'colour'"):
        parse_plan("caption -> colour")


# -- bad requests -----------------------------------------------------------------------------


def test_bad_requests_get_clear_errors(model):
    with pytest.raises(GenerationError, match="unknown modality"):
        generate(model, {"rgb": Given.full(image_tokens(1))}, GenerationStep("colour"))
    with pytest.raises(GenerationError, match=r"rgb: expected tokens and known of shape \(B, 64\)"):
        generate(model, {"rgb": Given.full(torch.zeros(1, 16, dtype=torch.long))}, GenerationStep("depth"))
    with pytest.raises(GenerationError, match="nothing given"):
        generate(model, {}, GenerationStep("depth"))
    with pytest.raises(GenerationError, match="same batch size"):
        states = {"rgb": Given.full(image_tokens(1)), "normal": Given.full(image_tokens(2))}
        generate(model, states, GenerationStep("depth"))
    with pytest.raises(GenerationError, match=r"known token ids must be in \[0, 1024\)"):
        generate(model, {"rgb": Given.full(image_tokens(1) + 2000)}, GenerationStep("depth"))
    small = FourM(model_config("debug", inputs=("rgb",), targets=("depth",))).eval()
    with pytest.raises(GenerationError, match="cannot generate 'normal'"):
        generate(small, {"rgb": Given.full(image_tokens(1))}, GenerationStep("normal"))
    with pytest.raises(GenerationError, match="not an input of this model"):
        generate(small, {"rgb": Given.full(image_tokens(1))}, GenerationStep("depth", steps=8))


# -- input dropout in masking (what guidance needs at training time) ----------------------


def test_input_dropout_empties_whole_samples_and_leaves_the_others_alone():
    tokens = {m: np.random.default_rng(0).integers(40, 1000, (64, 64)) for m in ("rgb", "depth")}
    keys = [f"s{i}" for i in range(64)]

    def masked(p: float) -> dict:
        cfg = MaskingConfig.symmetric(
            ("rgb", "depth"), ("rgb", "depth"), ("rgb", "depth"), 16, 16, input_dropout=p
        )
        return Masker(cfg)(tokens, keys, epoch=0)

    base, dropped = masked(0.0), masked(0.5)
    gone = dropped["enc_pad"].all(1)
    assert 10 < gone.sum() < 54
    assert not base["enc_pad"].all(1).any()
    for k in base:
        if k.startswith("enc"):
            assert np.array_equal(dropped[k][~gone], base[k][~gone])
        else:
            assert np.array_equal(dropped[k], base[k])  # targets never change
    with pytest.raises(ValueError, match="input_dropout"):
        MaskingConfig.symmetric(("rgb",), ("rgb",), ("rgb",), 4, 4, input_dropout=1.0)


def test_min_and_max_new_tokens_bound_the_decoded_length(model):
    states = {"rgb": Given.full(image_tokens(2))}
    out = generate(model, states, GenerationStep("caption", min_new_tokens=10, max_new_tokens=10), gen(0))
    for row in out.tokens.tolist():
        assert row.index(EOS_ID) == 10  # [SOS], 9 content tokens, then [EOS] as the 10th generated


def test_ids_beyond_the_tokenizer_vocabulary_are_never_generated(model):
    states = {"rgb": Given.full(image_tokens(3))}
    caption = generate(model, states, GenerationStep("caption", temperature=2.0, vocab_size=40), gen(0))
    depth = generate(model, states, GenerationStep("depth", temperature=2.0, vocab_size=10), gen(0))
    assert int(caption.tokens.max()) < 40 and int(depth.tokens.max()) < 10
