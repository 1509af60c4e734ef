"""The 4M model: parameter counts, attention rules (padding, modality separation, causality), learning."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fourm.model import layers
from fourm.model.batch import MaskedBatch
from fourm.model.config import SIZES, ModelConfig, bench_cpu_s, model_config
from fourm.model.model import FourM, balanced_loss
from fourm.precision import training_attention

pytestmark = pytest.mark.unit

INPUTS = ("rgb", "depth", "caption")
TARGETS = ("depth", "semseg", "caption")


def make_batch(
    config: ModelConfig, B: int = 3, seed: int = 0, enc_pad: int = 3, dec_pad: int = 2
) -> MaskedBatch:
    """A hand-built batch: 6 rgb + 4 depth + 5 caption inputs, then ``enc_pad`` padding slots;
    5 depth + 4 semseg + 6 caption targets, then ``dec_pad`` padding slots."""
    g = torch.Generator().manual_seed(seed)
    idx = config.modalities.index

    def image(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.stack([torch.randperm(64, generator=g)[:n] for _ in range(B)])
        return torch.randint(0, 1024, (B, n), generator=g), torch.full((B, n), idx(name)), pos

    def seq(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.randint(4, 500, (B, n), generator=g),
            torch.full((B, n), idx(name)),
            torch.arange(n).expand(B, n),
        )

    def pad(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = torch.zeros((B, n), dtype=torch.long)
        return z, z.clone(), z.clone()

    enc = [image("rgb", 6), image("depth", 4), seq("caption", 5), pad(enc_pad)]
    dec = [image("depth", 5), image("semseg", 4), seq("caption", 6), pad(dec_pad)]
    cat = lambda parts, k: torch.cat([p[k] for p in parts], dim=1)  # noqa: E731
    targets = torch.cat(
        [
            torch.randint(0, 1024, (B, 9), generator=g),
            torch.randint(4, 500, (B, 6), generator=g),
            torch.zeros((B, dec_pad), dtype=torch.long),
        ],
        dim=1,
    )
    return MaskedBatch(
        enc_tokens=cat(enc, 0),
        enc_mod=cat(enc, 1),
        enc_pos=cat(enc, 2),
        enc_pad=torch.tensor([False] * 15 + [True] * enc_pad).expand(B, -1).clone(),
        dec_tokens=cat(dec, 0),
        dec_mod=cat(dec, 1),
        dec_pos=cat(dec, 2),
        dec_pad=torch.tensor([False] * 15 + [True] * dec_pad).expand(B, -1).clone(),
        targets=targets,
    )


@pytest.fixture(scope="module")
def model() -> FourM:
    torch.manual_seed(0)
    return FourM(model_config("debug", INPUTS, TARGETS)).eval()


def decoded(model: FourM, batch: MaskedBatch) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(batch, model.encode(batch))


def test_bench_config_parameter_counts_match_design():
    m = FourM(bench_cpu_s())
    # DESIGN.md: 13.2M parameters, 7.44M outside the embeddings (within 2%).
    assert m.num_parameters() == pytest.approx(13.2e6, rel=0.02)
    assert m.num_parameters(embeddings=False) == pytest.approx(7.44e6, rel=0.02)


def test_named_sizes_come_from_one_table():
    for size, (dim, enc, dec, heads) in SIZES.items():
        c = model_config(size)
        assert (c.dim, c.encoder_depth, c.decoder_depth, c.heads) == (dim, enc, dec, heads)
    assert (
        SIZES["b"] == (768, 12, 12, 12)
        and SIZES["l"][:3] == (1024, 24, 24)
        and SIZES["xl"][:3] == (2048, 24, 24)
    )
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model_config("huge")
    with pytest.raises(ValueError, match="pixel patches"):
        model_config("debug", targets=("rgb_patches",))


def test_padding_never_changes_real_outputs(model: FourM):
    batch = make_batch(model.config)
    before = decoded(model, batch)
    loss_before = model(batch).loss
    g = torch.Generator().manual_seed(7)
    # Anything may sit in padded slots: other ids, modalities, positions.
    for tokens, mod, pos, pad in (
        (batch.enc_tokens, batch.enc_mod, batch.enc_pos, batch.enc_pad),
        (batch.dec_tokens, batch.dec_mod, batch.dec_pos, batch.dec_pad),
    ):
        n = int(pad.sum())
        tokens[pad] = torch.randint(0, 1000, (n,), generator=g)
        mod[pad] = torch.randint(0, len(model.modalities), (n,), generator=g)
        pos[pad] = torch.randint(0, 5, (n,), generator=g)
    batch.targets[batch.dec_pad] = 17
    after = decoded(model, batch)
    real = ~batch.dec_pad
    torch.testing.assert_close(after[real], before[real], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(batch).loss, loss_before, rtol=0, atol=1e-6)


def test_decoder_modalities_do_not_see_each_other(model: FourM):
    batch = make_batch(model.config)
    before = decoded(model, batch)
    semseg = batch.dec_mod == model.modalities.index("semseg")
    caption = batch.dec_mod == model.modalities.index("caption")
    # Move the semseg queries to other positions and change every caption token.
    batch.dec_pos[semseg] = (batch.dec_pos[semseg] + 11) % 64
    batch.dec_tokens[caption] = (batch.dec_tokens[caption] + 101) % 500
    after = decoded(model, batch)
    depth = batch.dec_mod == model.modalities.index("depth")
    torch.testing.assert_close(
        after[depth & ~batch.dec_pad], before[depth & ~batch.dec_pad], rtol=0, atol=1e-6
    )
    assert not torch.allclose(after[semseg], before[semseg])
    assert not torch.allclose(after[caption], before[caption])


def test_sequences_are_causal(model: FourM):
    batch = make_batch(model.config)
    before = decoded(model, batch)
    caption = (batch.dec_mod == model.modalities.index("caption")) & ~batch.dec_pad
    k = 3  # change the caption's decoder input at position 3
    at_k = caption & (batch.dec_pos == k)
    batch.dec_tokens[at_k] = (batch.dec_tokens[at_k] + 1) % 500
    after = decoded(model, batch)
    earlier, later = caption & (batch.dec_pos < k), caption & (batch.dec_pos >= k)
    torch.testing.assert_close(after[earlier], before[earlier], rtol=0, atol=1e-6)
    assert (after[later] - before[later]).abs().amax(dim=-1).min() > 1e-6  # every later position sees it


def test_image_targets_see_each_other_within_their_modality(model: FourM):
    batch = make_batch(model.config)
    before = decoded(model, batch)
    depth = (batch.dec_mod == model.modalities.index("depth")) & ~batch.dec_pad
    first = depth & (torch.cumsum(depth, dim=1) == 1)
    batch.dec_pos[first] = (batch.dec_pos[first] + 1) % 64  # move one depth query
    after = decoded(model, batch)
    others = depth & ~first
    assert (after[others] - before[others]).abs().amax(dim=-1).min() > 1e-7  # not causal: all see it


def test_balanced_loss_is_the_mean_of_modality_means(model: FourM):
    out = model(make_batch(model.config))
    per = out.modality_losses(model.modalities)
    assert set(per) == {"depth", "semseg", "caption"}
    assert out.counts.tolist()[model.modalities.index("depth")] == 3 * 5
    assert float(out.loss.detach()) == pytest.approx(sum(per.values()) / 3, rel=1e-5)
    assert float(balanced_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))) == 0.0


@pytest.mark.parametrize("options", [{"feed_forward": "swiglu"}, {"qk_norm": True}, {"bias": False}])
def test_architecture_options_train(options):
    torch.manual_seed(0)
    m = FourM(model_config("debug", INPUTS, TARGETS, **options))
    loss = m(make_batch(m.config)).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if options.get("bias") is False:
        assert not any(n.endswith(".bias") for n, _ in m.named_parameters())


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    m = FourM(model_config("debug", INPUTS, TARGETS, dim=64, heads=4))
    batch = make_batch(m.config, B=2, enc_pad=0, dec_pad=0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = m(batch).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.0
    last = float(loss.detach())
    assert last < 0.05, f"loss {last:.3f} after 200 steps on one batch"


def test_encoder_as_vit_backbone():
    torch.manual_seed(0)
    m = FourM(model_config("debug", ("rgb_patches", "rgb"), ("depth",)))
    feats = m.encode_images(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 64, 32)
    with pytest.raises(ValueError, match="64x64 pixels"):
        m.encode_images(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="no rgb_patches input"):
        FourM(model_config("debug", INPUTS, TARGETS)).encode_images(torch.rand(1, 3, 64, 64))


def test_tied_sequence_embeddings_and_config_round_trip():
    m = FourM(model_config("debug", INPUTS, TARGETS))
    assert m.heads["caption"].weight is m.decoder_embed.token["caption"].weight
    assert ModelConfig.from_dict(m.config.to_dict()) == m.config
    other = model_config("debug", INPUTS, TARGETS, dim=64)
    assert m.config.describe_difference(other) == ["dim: 32 != 64"]


def test_training_attention_gives_the_same_loss_and_gradients():
    """bf16 CPU steps run attention as plain matmuls (fourm.precision.training_attention); it must
    compute what PyTorch's kernel does, masks (as additive biases) and padding included (fp32
    here: a tight match)."""
    torch.manual_seed(0)
    m = FourM(model_config("debug", INPUTS, TARGETS))
    batch = make_batch(m.config)

    def loss_and_grads(context) -> tuple[float, list[torch.Tensor]]:
        m.zero_grad()
        with context:
            loss = m(batch).loss
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in m.parameters() if p.grad is not None]

    calls = []
    real = layers.attention_matmuls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers, "attention_matmuls", lambda *a: calls.append(1) or real(*a))
        default_loss, default_grads = loss_and_grads(contextlib.nullcontext())
        assert not calls
        explicit_loss, explicit_grads = loss_and_grads(training_attention("cpu", bf16=True))
        assert len(calls) == 3  # debug size: the encoder block, the decoder block's self and cross
        m(batch)
        assert len(calls) == 3, "the choice must not outlive the step"
        with training_attention("cpu", bf16=False):  # fp32: PyTorch's own kernel
            m(batch)
        assert len(calls) == 3
    assert explicit_loss == pytest.approx(default_loss, rel=1e-5)
    for a, b in zip(default_grads, explicit_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_explicit_attention_matches_the_kernel_in_bf16_and_keeps_the_dtype():
    """Under bf16 autocast the explicit attention returns bf16 and stays within bf16 rounding."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    mask = torch.rand(2, 1, 16, 16, generator=g) < 0.5
    mask |= torch.eye(16, dtype=torch.bool)  # every row keeps a key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layers.attention_matmuls(q, k, v, mask)
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_attention_bias_is_the_boolean_mask_made_once():
    """Inside explicit attention a boolean mask becomes an fp32 0/-inf bias with the same result;
    outside it, and for no mask, the mask is passed on untouched (PyTorch's kernels take booleans)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 8, 8, generator=g) < 0.5
    mask |= torch.eye(8, dtype=torch.bool)
    assert layers.attention_bias(mask) is mask
    with layers.explicit_attention():
        bias = layers.attention_bias(mask)
        assert layers.attention_bias(None) is None
    assert bias.dtype == torch.float32
    assert torch.equal(bias == 0, mask) and torch.isneginf(bias[~mask]).all()
    torch.testing.assert_close(
        layers.attention_matmuls(q, k, v, bias), layers.attention_matmuls(q, k, v, mask), rtol=0, atol=0
    )
