"""4M pretraining end to end: DDP under real torchrun, SIGKILL + resume, refusal of bad inputs,
divergence handling, and the `fourm train` stage with S3 checkpoints and the registry."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fourm.data.token_set import TokenSet
from fourm.data.token_shards import ModalitySpec, TokenSetWriter
from fourm.params import PretrainParams
from fourm.registry.api import Registry
from fourm.settings import Settings
from fourm.storage.object_store import ObjectStore
from fourm.train.checkpoint import CheckpointError, CheckpointStore
from fourm.train.data import IncompatibleError
from fourm.train.distributed import DistInfo
from fourm.train.loop import TrainingDiverged, train_4m
from fourm.train.outputs import load_model
from tests.conftest import REPO, settings_env
from tests.token_data import MODALITIES, structured_tokens, tiny_token_set

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY = {
    "model": {"size": "debug", "inputs": ["rgb", "caption"], "targets": ["depth", "semseg", "caption"]},
    "masking": {"input_budget": 24, "target_budget": 24, "alphas": [0.5, 1.0]},
    "steps": 12,
    "batch_size": 8,
    "lr": 3e-3,
    "warmup_steps": 2,
    "log_every": 1,
    "eval_every": 4,
    "eval_batches": 2,
    "checkpoint_every": 4,
    "loader_workers": 0,
    "buffer_size": 16,
    "bf16": False,
    "upload_checkpoints": False,
}
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


class RecordingTracker:
    """Stands in for W&B (the Tracker protocol of fourm/tracking.py): keeps what is logged."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def summary(self, metrics: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def tiny(**over) -> PretrainParams:
    return PretrainParams.model_validate({**TINY, **over})


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training on one thread: with the test suite's other processes on 2 cores,
    two OpenMP threads spin against each other and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_token_set(tmp_path_factory.mktemp("tokens") / "tokens-tiny")


def worker(tmp: Path, params: PretrainParams, tokens: Path, processes: int, *extra: str) -> subprocess.Popen:
    """The real worker entry point, under torchrun for ``processes`` > 1."""
    (tmp / "pretrain.json").write_text(params.model_dump_json())
    args = ["--pretrain-json", str(tmp / "pretrain.json"), "--tokens", str(tokens), "--out", str(tmp / "out"),
            "--reports", str(tmp / "reports"), *extra]  # fmt: skip
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "fourm.train.worker", *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "fourm.train.worker", *args]
    env = {**os.environ, "FOURM_HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, out
    return out


def final_history(tmp: Path) -> list[dict]:
    """Per-step records from the run's last checkpoint (exact floats, unlike the CSV)."""
    (ckpt_dir,) = (tmp / "home" / "checkpoints").iterdir()
    return CheckpointStore(ckpt_dir).load()["history"]


@pytest.fixture(scope="module")
def one_process_losses(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    one = tmp_path_factory.mktemp("one-process")
    finished(worker(one, tiny(), tokens, 1))
    return [h["loss"] for h in final_history(one)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(
    strategy: str, tokens: Path, tmp_path: Path, one_process_losses: list[float]
):
    """Same global batch of 8: 2 gloo processes x 4 samples vs 1 process x 8, losses within 1e-4.

    The loader deals samples round-robin and the loss is normalised by global token counts,
    so both runs compute the same gradients; only float summation order differs (measured:
    the curves agree to about 2e-7 relative). FSDP shards parameters and optimizer state instead of
    replicating them and must give the same curve.
    """
    finished(worker(tmp_path, tiny(strategy=strategy), tokens, 2))
    a, b = one_process_losses, [h["loss"] for h in final_history(tmp_path)]
    assert len(a) == len(b) == 12
    assert a[-1] < a[0]
    for x, y in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=1e-4, abs=1e-5)
    model, extra = load_model(tmp_path / "out")  # unsharded weights, whatever the strategy
    assert extra["step"] == 12 and model.num_parameters() > 0
    assert (tmp_path / "reports" / "metrics.json").exists()


def test_gradient_accumulation_matches_one_big_batch(
    tokens: Path, tmp_path: Path, one_process_losses: list[float]
):
    """Batch 8 as 2 micro-batches of 4: the loss is normalised over the whole step, so the same curve."""
    finished(worker(tmp_path, tiny(grad_accum=2), tokens, 1))
    for x, y in zip(one_process_losses, [h["loss"] for h in final_history(tmp_path)], strict=True):
        assert y == pytest.approx(x, rel=1e-4, abs=1e-5)


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tokens: Path, tmp_path: Path):
    """Killed with SIGKILL after a checkpoint, resumed: the same per-step losses, bit for bit (fp32, CPU)."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir(), killed.mkdir()
    params = tiny(steps=16, checkpoint_every=3, eval_every=8)
    finished(worker(ref, params, tokens, 1))

    proc = worker(killed, params, tokens, 1)
    ckpt_root = killed / "home" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = list(ckpt_root.glob("*/latest.json"))
        if latest and json.loads(latest[0].read_text())["step"] >= 6:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "out").exists()  # no half-written outputs
    killed_at = json.loads(latest[0].read_text())["step"]
    assert killed_at < 16

    out = finished(worker(killed, params, tokens, 1))
    assert f"resuming from step {killed_at} of 16" in out  # really resumed, not restarted
    a, b = final_history(ref), final_history(killed)
    assert [h["step"] for h in b] == list(range(1, 17))
    assert [h["loss"] for h in b] == [h["loss"] for h in a]  # bitwise
    ma, _ = load_model(ref / "out")
    mb, _ = load_model(killed / "out")
    for x, y in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_token_set_that_does_not_fit_is_refused_before_training(tmp_path: Path):
    specs = {m: ModalitySpec.for_modality(m) for m in MODALITIES}
    specs["depth"] = ModalitySpec(1024, 16)  # a 4x4 grid, not the model's 8x8
    specs.pop("semseg")
    w = TokenSetWriter(tmp_path / "bad", specs)
    import numpy as np

    arrays = structured_tokens(np.random.default_rng(0), 8)
    arrays["depth"] = arrays["depth"][:, :16]
    arrays.pop("semseg")
    w.add_shard("train-000000", "train", [f"s{i}" for i in range(8)], arrays)
    w.finish({})
    store = CheckpointStore(tmp_path / "ckpt")
    with pytest.raises(IncompatibleError) as err:
        train_4m(tiny(), TokenSet.open(tmp_path / "bad"), store, CPU)
    message = str(err.value)
    assert "bad" in message and "modality 'semseg' is not in the token set" in message
    assert "depth: token set has 16 tokens per sample, the model's grid needs 64" in message
    assert not (tmp_path / "ckpt").exists()


def test_checkpoint_of_another_model_is_refused_on_resume(tokens: Path, tmp_path: Path):
    store = CheckpointStore(tmp_path / "ckpt")
    train_4m(tiny(steps=4, checkpoint_every=4), TokenSet.open(tokens), store, CPU)
    with pytest.raises(IncompatibleError, match=r"another model: dim: 32 != 64|dim: 64 != 32"):
        # Same checkpoint directory, other width: named field by field.
        from fourm.train import loop

        params = tiny(steps=4, checkpoint_every=4)
        original = loop.config_from_params
        loop.config_from_params = lambda p: original(p).__class__(
            **{**original(p).__dict__, "dim": 64, "heads": 2}
        )
        try:
            train_4m(params, TokenSet.open(tokens), store, CPU, resume=True)
        finally:
            loop.config_from_params = original


def test_checkpoint_of_other_params_is_refused(tokens: Path, tmp_path: Path):
    store = CheckpointStore(tmp_path / "ckpt")
    train_4m(tiny(steps=4, checkpoint_every=4), TokenSet.open(tokens), store, CPU)
    with pytest.raises(CheckpointError, match=r"made with other params or another token set"):
        train_4m(tiny(steps=4, checkpoint_every=4, lr=1e-4), TokenSet.open(tokens), store, CPU, resume=True)


def test_resume_from_s3_when_the_local_checkpoints_are_gone(
    tokens: Path, tmp_path: Path, s3_settings: Settings
):
    """A fresh pod has no local files: the latest checkpoint comes from the bucket."""
    store = ObjectStore.from_settings(s3_settings)
    uri = f"s3://{s3_settings.buckets.checkpoints}/test-{tmp_path.name}"
    params = tiny(steps=6, checkpoint_every=2)
    first = train_4m(
        params, TokenSet.open(tokens), CheckpointStore(tmp_path / "a", uri, store), CPU, stop_after=4
    )
    assert [h["step"] for h in first.history] == [1, 2, 3, 4]
    resumed = train_4m(
        params, TokenSet.open(tokens), CheckpointStore(tmp_path / "b", uri, store), CPU, resume=True
    )
    assert resumed.resumed_from == 4 and [h["step"] for h in resumed.history] == list(range(1, 7))
    assert [h["loss"] for h in resumed.history[:4]] == [h["loss"] for h in first.history]


def test_divergence_stops_before_the_update_and_keeps_the_last_good_checkpoint(tokens: Path, tmp_path: Path):
    store = CheckpointStore(tmp_path / "ckpt", keep=5)
    with pytest.raises(
        TrainingDiverged, match=r"is not finite; stopped before the update \(last checkpoint: step \d+\)"
    ):
        train_4m(
            tiny(lr=1e6, warmup_steps=0, checkpoint_every=1, clip_grad=1e9), TokenSet.open(tokens), store, CPU
        )
    state = store.load()
    assert state["step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(h["loss"] == h["loss"] for h in state["history"])  # no NaN recorded


def test_learns_the_structure_far_below_the_unigram_baseline(tokens: Path, tmp_path: Path):
    params = tiny(steps=240, eval_every=80, checkpoint_every=240, lr=5e-3, warmup_steps=5, log_every=60)
    tracker = RecordingTracker()
    result = train_4m(params, TokenSet.open(tokens), CheckpointStore(tmp_path / "ckpt"), CPU, tracker=tracker)
    # what W&B receives: total and per-modality loss, lr, grad norm, throughput; val per modality
    assert [step for step, _ in tracker.logged if "loss" in _] == [60, 120, 180, 240]
    train_keys = set(tracker.logged[0][1])
    assert {
        "loss",
        "loss/semseg",
        "loss/caption",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "model_flops_per_s",
    } <= train_keys
    assert {"val/loss", "val/semseg"} <= {k for _, m in tracker.logged for k in m}
    final = result.validation[-1]
    # semseg and the caption follow the scene class that any rgb token reveals.
    assert final["semseg"] < 0.25 * result.baseline["semseg"], (final["semseg"], final, result.baseline)
    assert final["caption"] < 0.5 * result.baseline["caption"], (final, result.baseline)


def test_train_cli_records_model_with_lineage_and_s3_checkpoints(
    tokens: Path, tmp_path: Path, s3_settings: Settings
):
    ws = tmp_path / "ws"
    ws.mkdir()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["pretrain"] = {
        **base["pretrain"],
        **TINY,
        "upload_checkpoints": True,
        "steps": 6,
        "checkpoint_every": 3,
    }
    base["pretrain"]["model"] = TINY["model"]
    base["pretrain"]["masking"] = {**base["pretrain"]["masking"], **TINY["masking"]}
    (ws / "params.yaml").write_text(yaml.safe_dump(base))
    registry_url = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {
        **os.environ,
        **settings_env(s3_settings),
        "FOURM_REGISTRY_URL": registry_url,
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "fourm", "train", "--tokens", str(tokens), "--out", "models/pretrain",
           "--reports", "reports/pretrain"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pretrained" in proc.stdout and "val / unigram baseline" in proc.stdout
    metrics = json.loads((ws / "reports/pretrain/metrics.json").read_text())
    assert metrics["steps"] == 6 and set(metrics["val_losses"]) == {"depth", "semseg", "caption"}
    for name in ("history.csv", "val.csv", "loss.png"):
        assert (ws / "reports/pretrain" / name).stat().st_size > 0
    assert (ws / "reports/pretrain/loss.png").read_bytes()[:4] == b"\x89PNG"

    store = ObjectStore.from_settings(s3_settings)
    keys = list(store.list(s3_settings.buckets.checkpoints, f"pretrain-{metrics['fingerprint']}/"))
    assert any(k.endswith("latest.json") for k in keys) and any(k.endswith("step-00000006.pt") for k in keys)

    registry = Registry(registry_url)
    runs = registry.runs(stage="pretrain")
    assert len(runs) == 1 and runs[0].status == "succeeded"
    inputs, outputs = registry.run_io(runs[0].id)
    assert [a.kind for a in inputs] == ["token set"]
    assert [a.kind for a in outputs] == ["model checkpoint"]
    assert outputs[0].metadata["steps"] == 6
    assert outputs[0].sha256 == hashlib.sha256((ws / "models/pretrain/model.pt").read_bytes()).hexdigest()

    # Bad params: a clear one-line error naming the file and key, nothing written.
    base["pretrain"]["batch_size"], base["pretrain"]["grad_accum"] = 7, 2
    (ws / "params.yaml").write_text(yaml.safe_dump(base))
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "params.yaml: pretrain" in proc.stderr and "divisible" in proc.stderr
    assert "Traceback" not in proc.stderr
