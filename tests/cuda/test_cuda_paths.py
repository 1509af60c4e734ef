"""Training and generation on a CUDA GPU in bf16: the paths the CPU suite cannot reach.

They need a CUDA GPU, so CI (CPU only) reports them skipped with the reason; `make gpu-check`
runs them, with the GPU benchmarks, on a machine that has one (docs/gpu.md). No service is
needed: checkpoints stay local and W&B is off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fourm.data.token_set import TokenSet
from fourm.model.config import model_config
from fourm.model.generate import GenerationStep, Given, autoregressive, generate
from fourm.model.masking_config import EOS_ID, SOS_ID
from fourm.model.model import FourM
from fourm.params import PretrainParams
from fourm.precision import use_bf16
from fourm.train.bench import bench_batch, bench_train_step
from fourm.train.checkpoint import CheckpointStore
from fourm.train.distributed import DistInfo
from fourm.train.loop import train_4m
from fourm.train.outputs import load_model
from tests.conftest import REPO
from tests.token_data import tiny_token_set

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check; docs/gpu.md)"
    ),
    pytest.mark.timeout(600),
]

ALL = ("rgb", "depth", "normal", "semseg", "caption", "boxes")
TINY = {
    "model": {"size": "debug", "inputs": ["rgb", "caption"], "targets": ["depth", "semseg", "caption"]},
    "masking": {"input_budget": 24, "target_budget": 24, "alphas": [0.5, 1.0]},
    "batch_size": 8,
    "lr": 5e-3,
    "warmup_steps": 5,
    "log_every": 60,
    "eval_every": 80,
    "eval_batches": 2,
    "checkpoint_every": 240,
    "loader_workers": 0,
    "buffer_size": 16,
    "bf16": True,
    "upload_checkpoints": False,
}
GPU = DistInfo(0, 1, 0, torch.device("cuda", 0))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_token_set(tmp_path_factory.mktemp("tokens") / "tokens-tiny")


def test_bf16_is_chosen_on_cuda():
    assert use_bf16(True, "cuda") and not use_bf16(False, "cuda")


def test_cuda_forward_matches_the_cpu():
    """fp32 on the GPU computes the CPU's loss (TF32 is off by default); bf16 autocast is close."""
    torch.manual_seed(0)
    config = model_config("debug", inputs=ALL, targets=ALL)
    cpu_model = FourM(config).eval()
    gpu_model = FourM(config).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    batch = bench_batch(config, 8, seed=3)
    with torch.no_grad():
        cpu = cpu_model(batch)
        gpu = gpu_model(batch.to("cuda"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu_bf16 = gpu_model(batch.to("cuda"))
    assert gpu.loss.device.type == "cuda"
    torch.testing.assert_close(gpu.loss.cpu(), cpu.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_bf16.loss.float().cpu(), cpu.loss, rtol=2e-2, atol=1e-3)


def test_training_on_cuda_in_bf16_learns_the_structure(tokens: Path, tmp_path: Path):
    """The same bar as the CPU test: semseg and the caption far below their unigram baselines."""
    params = PretrainParams.model_validate({**TINY, "steps": 240})
    result = train_4m(params, TokenSet.open(tokens), CheckpointStore(tmp_path / "ckpt"), GPU)
    assert next(result.model.parameters()).device.type == "cuda"
    final = result.validation[-1]
    assert final["semseg"] < 0.25 * result.baseline["semseg"], (final, result.baseline)
    assert final["caption"] < 0.5 * result.baseline["caption"], (final, result.baseline)
    assert all(h["loss"] == h["loss"] for h in result.history)  # no NaN in bf16


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_worker_trains_on_the_gpu_under_torchrun(tokens: Path, tmp_path: Path, strategy: str):
    """The real entry point (torchrun, NCCL): it picks the GPU by itself and writes a loadable model."""
    params = PretrainParams.model_validate({**TINY, "steps": 24, "eval_every": 12, "strategy": strategy})
    (tmp_path / "pretrain.json").write_text(params.model_dump_json())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
           "-m", "fourm.train.worker", "--pretrain-json", str(tmp_path / "pretrain.json"),
           "--tokens", str(tokens), "--out", str(tmp_path / "out"),
           "--reports", str(tmp_path / "reports")]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keep carried packages
    env = {**os.environ, "FOURM_HOME": str(tmp_path / "home"), "FOURM_WANDB_MODE": "disabled",
           "PYTHONPATH": path}  # fmt: skip
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stdout + run.stderr
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["steps"] == 24 and metrics["val_loss"] == metrics["val_loss"]
    model, _ = load_model(tmp_path / "out" / "model.pt", "cuda")
    assert next(model.parameters()).device.type == "cuda"


def test_generation_on_cuda():
    """MaskGIT fills every image position with a valid token in bf16; cached and uncached greedy
    captions agree on the GPU in fp32; the same seed gives the same samples twice."""
    torch.manual_seed(0)
    model = FourM(model_config("debug", inputs=ALL, targets=ALL)).cuda().eval()
    rgb = Given.full(torch.randint(0, 1024, (4, 64), device="cuda"))

    def depth(seed: int) -> torch.Tensor:
        step = GenerationStep("depth", "maskgit", steps=8, temperature=1.0)
        return generate(
            model, {"rgb": rgb}, step, torch.Generator("cuda").manual_seed(seed), bf16=True
        ).tokens

    first = depth(7)
    assert first.device.type == "cuda" and first.shape == (4, 64)
    assert int(first.min()) >= 0 and int(first.max()) < model.config.vocab_size("depth")
    assert torch.equal(first, depth(7))

    cached = autoregressive(model, {"rgb": rgb}, GenerationStep("caption", temperature=0.0))
    plain = autoregressive(model, {"rgb": rgb}, GenerationStep("caption", temperature=0.0, use_cache=False))
    assert torch.equal(cached[0].tokens, plain[0].tokens)
    rows = cached[0].tokens.tolist()
    assert all(row[0] == SOS_ID and EOS_ID in row for row in rows)


def test_train_step_bench_on_cuda_reports_a_fraction_of_the_gpu_peak():
    r = bench_train_step("tiny", batch_size=16, warmup=1, steps=2, modes=("bf16",), device="cuda")
    bf16 = r["modes"]["bf16"]
    assert r["device_name"] == torch.cuda.get_device_name(0)
    assert r["matmul_peak"]["bf16"]["n"] == 8192 and r["matmul_peak"]["bf16"]["tflops"] > 1
    assert 0 < bf16["fraction_of_peak"] < 1 and bf16["max_memory_gib"] > 0
