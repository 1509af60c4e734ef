"""``fourm bench train-step`` and ``generate``: the batch DESIGN.md describes, the reports."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fourm.cli import app
from fourm.model.config import bench_cpu_s
from fourm.model.model import FourM
from fourm.train import bench
from fourm.train.bench import bench_batch, bench_train_step

pytestmark = pytest.mark.unit


def test_bench_batch_has_designs_layout() -> None:
    config = bench_cpu_s()
    b = bench_batch(config, 4)
    mods = config.modalities
    assert b.enc_tokens.shape == (4, 128) and b.dec_tokens.shape == (4, 128)
    assert not b.enc_pad.any() and not b.dec_pad.any()
    for names, mod, pos in (
        (("rgb", "depth", "normal", "caption"), b.enc_mod, b.enc_pos),
        (("depth", "normal", "semseg", "caption"), b.dec_mod, b.dec_pos),
    ):
        for i, name in enumerate(names):  # 32 contiguous slots per modality, in this order
            block = slice(32 * i, 32 * (i + 1))
            assert (mod[:, block] == mods.index(name)).all()
            if name == "caption":
                assert (pos[:, block] == torch.arange(32)).all()
            else:  # distinct grid positions
                assert all(len(set(row.tolist())) == 32 and row.max() < 64 for row in pos[:, block])
    # teacher forcing: the caption's decoder input is the previous target
    caption = slice(96, 128)
    assert torch.equal(b.dec_tokens[:, caption][:, 1:], b.targets[:, caption][:, :-1])
    # the model takes it
    out = FourM(config)(b)
    assert torch.isfinite(out.loss)
    assert out.counts.tolist() == [0, 4 * 32, 4 * 32, 4 * 32, 4 * 32]  # rgb is input only


def test_bf16_is_skipped_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: False)
    r = bench_train_step(batch_size=2, warmup=0, steps=1, threads=1, modes=("fp32", "bf16"))
    assert r["modes"]["bf16"]["skipped"] == "no native bf16 on this CPU (no AMX/avx512_bf16)"
    assert r["matmul_peak"]["bf16"] == {"skipped": "no native bf16 on this CPU (no AMX/avx512_bf16)"}
    fp32 = r["modes"]["fp32"]
    assert fp32["median_s"] > 0 and fp32["tokens_per_s"] == pytest.approx(2 * 256 / fp32["median_s"])
    assert r["params"]["matches_design"]
    assert r["train_step_gflop"] == pytest.approx(219.04 / 16, rel=1e-3)  # batch 2 of 32


def test_cli_prints_one_json_object_last(tmp_path) -> None:
    profile = tmp_path / "profile.txt"
    args = ["bench", "train-step", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--threads", "1"]
    result = CliRunner().invoke(app, [*args, "--mode", "fp32", "--profile", str(profile)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["bench"] == "train-step" and set(report["modes"]) == {"fp32"}
    assert "aten::mm" in profile.read_text()


def test_masked_loader_bench_reports_masked_samples(tmp_path):
    from fourm.train.batches_bench import bench_masked_batches
    from tests.token_data import tiny_token_set

    tokens = tiny_token_set(tmp_path / "tokens", train=64, val=8)
    result = bench_masked_batches(
        tokens, batch_size=8, num_workers=0, batches=3, repeats=1, input_budget=32, target_budget=32
    )
    assert result["bench"] == "masked-loader" and result["modalities"] == [
        "rgb",
        "depth",
        "semseg",
        "caption",
    ]
    assert result["samples_per_s"]["median"] > 0


def test_unknown_or_missing_device_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'; known: cpu, cuda"):
        bench_train_step(batch_size=2, warmup=0, steps=1, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' asked for, but PyTorch sees no CUDA GPU here"):
        bench_train_step(batch_size=2, warmup=0, steps=1, device="cuda")
    result = CliRunner().invoke(app, ["bench", "train-step", "--device", "cuda", "--steps", "1"])
    assert result.exit_code == 2 and "sees no CUDA GPU" in result.output


def test_generate_bench_reports_each_setting() -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "generate", "--config", "debug", "--batch-size", "2", "--steps", "2",
         "--caption-tokens", "3", "--repeats", "1", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert set(report["maskgit"]) == {"batch_2"}
    assert set(report["caption"]) == {"batch_2_cache", "batch_2_no_cache"}
    cached = report["caption"]["batch_2_cache"]
    assert cached["tokens_per_s"] == pytest.approx(2 * 3 / cached["median_s"])
    assert report["maskgit"]["batch_2"]["ms_per_sample"] == pytest.approx(
        report["maskgit"]["batch_2"]["ms_per_call"] / 2
    )
