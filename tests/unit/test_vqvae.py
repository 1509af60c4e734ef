"""VQ-VAE tokenizers: quantizers, codecs, save/load refusal, determinism and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fourm.modalities import get_modality
from fourm.params import VQVAEParams
from fourm.tokenizers import metrics
from fourm.tokenizers.base import TokenizerError
from fourm.tokenizers.image import ImageTokenizer, codec_for
from fourm.tokenizers.train import model_config, train_vqvae
from fourm.tokenizers.vqvae import VQVAE, EMAQuantizer, FSQuantizer, VQVAEConfig

pytestmark = pytest.mark.unit

TINY = VQVAEParams(
    steps=6, batch_size=4, width=8, code_dim=8, warmup_steps=2, log_every=2, checkpoint_every=3, bf16=False
)


def _semseg(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 64, 64), np.uint8)
    for i in range(n):
        x0, y0 = rng.integers(0, 48, 2)
        out[i, y0 : y0 + 16, x0 : x0 + 16] = rng.integers(1, 4)
    return out


def test_fsq_codes_cover_the_vocabulary_and_invert() -> None:
    fsq = FSQuantizer((4, 4, 4, 4, 4), dim=8)
    assert fsq.vocab_size == 1024
    codes = torch.arange(1024).view(1, 32, 32)
    back = fsq._to_codes(fsq.lookup(codes))
    assert torch.equal(back, codes)
    z = torch.randn(2, 8, 8, 8) * 3
    _, got, _ = fsq(z)
    assert got.min() >= 0 and got.max() < 1024 and got.shape == (2, 8, 8)


def test_ema_quantizer_kmeans_init_and_dead_code_restart() -> None:
    torch.manual_seed(0)
    q = EMAQuantizer(vocab_size=16, dim=4, decay=0.5, dead_code_threshold=0.5).train()
    z = torch.randn(2, 4, 8, 8)
    _, codes, commitment = q(z)
    assert bool(q.initialised) and commitment.item() >= 0
    assert torch.allclose(q.codebook.norm(dim=-1), torch.ones(16), atol=1e-5)
    # feed only one direction: every other code starves and is restarted on current outputs
    one_way = torch.zeros(2, 4, 8, 8)
    one_way[:, 0] = 1.0
    for _ in range(6):
        q(one_way + 0.01 * torch.randn_like(one_way))
    assert (q.codebook[:, 0] > 0.9).sum() >= 8


def test_grid_must_match_the_registry() -> None:
    with pytest.raises(TokenizerError, match=r"tokenizers\.vqvae\.downsample.*8x8 token grid"):
        model_config(get_modality("rgb"), VQVAEParams(downsample=4), 64)


def test_codecs_round_trip_and_mirror() -> None:
    normal = np.zeros((1, 4, 4, 3), np.float32)
    normal[..., 0] = 1.0
    codec = codec_for("normal")
    mirrored = codec.hflip(codec.to_input(normal))
    assert torch.all(mirrored[:, 0] == -1.0)
    depth = np.random.default_rng(0).uniform(2, 20, (3, 8, 8)).astype(np.float32)
    dc = codec_for("depth")
    dc.stats = dc.fit(depth)
    assert np.allclose(dc.from_output(dc.to_input(depth)), depth, rtol=1e-5)
    with pytest.raises(TokenizerError, match="class id 7"):
        codec_for("semseg").to_input(np.full((1, 4, 4), 7, np.uint8))


def test_training_is_deterministic_and_resumes_exactly(tmp_path: Path) -> None:
    values = _semseg(12)
    spec = get_modality("semseg")
    a = train_vqvae(spec, TINY, values, 64, checkpoint_dir=tmp_path / "a")
    b = train_vqvae(spec, TINY, values, 64)
    for (k, va), vb in zip(
        a.tokenizer.model.state_dict().items(), b.tokenizer.model.state_dict().values(), strict=False
    ):
        assert torch.equal(va, vb), k
    # a run that finds the step-3 checkpoint continues from it and ends at the same weights
    assert (tmp_path / "a" / "checkpoint.pt").exists()
    resumed = train_vqvae(spec, TINY, values, 64, checkpoint_dir=tmp_path / "a")
    assert resumed.resumed_from == 3
    for va, vr in zip(
        a.tokenizer.model.state_dict().values(), resumed.tokenizer.model.state_dict().values(), strict=False
    ):
        assert torch.equal(va, vr)
    assert [h["step"] for h in resumed.history] == [2, 4, 6]


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    values = _semseg(8)
    tok = train_vqvae(get_modality("semseg"), TINY, values, 64).tokenizer
    tok.save(tmp_path / "semseg")
    first = (tmp_path / "semseg" / "weights.pt").read_bytes()
    tok.save(tmp_path / "again")
    assert (tmp_path / "again" / "weights.pt").read_bytes() == first  # byte-reproducible
    loaded = ImageTokenizer.load(tmp_path / "semseg", modality="semseg")
    tokens = tok.encode(values)
    assert tokens.shape == (8, 64) and np.array_equal(loaded.encode(values), tokens)
    assert loaded.decode(tokens).shape == values.shape

    with pytest.raises(TokenizerError, match="modality 'semseg', not 'depth'"):
        ImageTokenizer.load(tmp_path / "semseg", modality="depth")
    config = json.loads((tmp_path / "semseg" / "tokenizer.json").read_text())
    (tmp_path / "semseg" / "tokenizer.json").write_text(json.dumps({**config, "vocab_size": 4096}))
    with pytest.raises(TokenizerError, match="vocab 4096"):
        ImageTokenizer.load(tmp_path / "semseg")
    (tmp_path / "semseg" / "tokenizer.json").write_text(json.dumps(config))
    (tmp_path / "semseg" / "weights.pt").write_bytes(first[: len(first) // 2])
    with pytest.raises(TokenizerError, match="weights.pt: cannot load"):
        ImageTokenizer.load(tmp_path / "semseg")
    with pytest.raises(TokenizerError, match=r"token ids must be in \[0, 1024\)"):
        loaded.decode(np.full((1, 64), 1024))


def test_vqvae_shapes_for_every_image_modality() -> None:
    for name, channels in (("rgb", 3), ("depth", 1), ("normal", 3), ("semseg", 4)):
        model = VQVAE(VQVAEConfig(channels, channels, 1024, width=8, code_dim=8)).eval()
        tokens = model.encode(torch.randn(2, channels, 64, 64))
        assert tokens.shape == (2, 64), name
        assert model.decode(tokens).shape == (2, channels, 64, 64)


def test_activations_stay_contiguous_nchw_for_channels_last_input() -> None:
    """The codecs hand the model permuted (channels-last) NHWC arrays; a permuted tensor
    reaching GroupNorm takes its slow channels-last kernel (about 10x slower in bf16)."""
    for quantizer in ("vq", "fsq"):
        model = VQVAE(VQVAEConfig(3, 3, 1024, width=8, code_dim=8, quantizer=quantizer))
        contiguous: list[bool] = []

        def record(_module: nn.Module, args: tuple[torch.Tensor], seen: list[bool] = contiguous) -> None:
            seen.append(args[0].is_contiguous())

        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.register_forward_pre_hook(record)
        x = torch.rand(2, 64, 64, 3).permute(0, 3, 1, 2)
        assert not x.is_contiguous()
        model(x)
        model.decode(model.encode(x))
        assert contiguous and all(contiguous), (
            f"{quantizer}: {contiguous.count(False)} of {len(contiguous)} GroupNorm inputs not contiguous"
        )


def test_metrics_on_known_values() -> None:
    d = np.full((1, 4, 4), 2.0)
    assert metrics.depth_metrics(d, d * 1.1)["abs_rel"] == pytest.approx(0.1)
    assert metrics.depth_metrics(d, d * 1.3)["delta1"] == 0.0
    n = np.zeros((1, 2, 2, 3))
    n[..., 2] = 1
    m = np.zeros((1, 2, 2, 3))
    m[..., 0] = 1
    assert metrics.normal_metrics(n, m)["angular_mean"] == pytest.approx(90.0)
    seg = np.array([[[0, 1], [2, 3]]])
    assert metrics.semseg_metrics(seg, seg, 4)["miou"] == pytest.approx(1.0)
    usage = metrics.codebook_usage(np.array([0, 1, 2, 3]), 8)
    assert usage["code_usage"] == 0.5 and usage["perplexity"] == pytest.approx(4.0)
    assert metrics.box_iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(1 / 3)


def test_resume_is_exact_with_dead_code_restarts(tmp_path: Path) -> None:
    """Restarts draw from torch's global generator, which the checkpoint must carry too."""
    params = TINY.model_copy(update={"dead_code_threshold": 1e6})  # every code restarts every step
    values = _semseg(12)
    spec = get_modality("semseg")
    a = train_vqvae(spec, params, values, 64, checkpoint_dir=tmp_path / "a")
    resumed = train_vqvae(spec, params, values, 64, checkpoint_dir=tmp_path / "a")
    assert resumed.resumed_from == 3
    for (k, va), vr in zip(
        a.tokenizer.model.state_dict().items(), resumed.tokenizer.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vr), k


def test_normal_loss_and_output_match_torch_cosine_and_normalize() -> None:
    """The normal codec's hand-written cosine and normalisation (PyTorch's strided-dim norm is
    slow on the CPU) compute what ``F.cosine_similarity`` and ``F.normalize`` do, gradients included."""
    from fourm.tokenizers.image import channel_cosine

    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(4, 3, 8, 8, generator=g), dim=1)
    ours = channel_cosine(out, target)
    theirs = torch.nn.functional.cosine_similarity(out, target, dim=1)
    torch.testing.assert_close(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours.sum(), out)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), out)
    torch.testing.assert_close(grad_ours, grad_theirs)
    unit = codec_for("normal").from_output(out.detach())
    want = torch.nn.functional.normalize(out.detach(), dim=1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(unit, want, rtol=1e-6, atol=1e-6)
    assert channel_cosine(torch.zeros(1, 3, 2, 2), target[:1, :, :2, :2]).eq(0).all()  # no NaN for a zero map
