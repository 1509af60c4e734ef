"""Training parts without a token set: optimizer groups, lr schedule, checkpoint files, model files."""

from __future__ import annotations

import json

import pytest
import torch

from fourm.model.config import model_config
from fourm.model.model import FourM
from fourm.train.checkpoint import LATEST, CheckpointError, CheckpointStore, rng_state, set_rng_state
from fourm.train.optim import lr_factor, make_optimizer, param_groups
from fourm.train.outputs import load_model, save_model

pytestmark = pytest.mark.unit


def test_no_weight_decay_on_norms_biases_embeddings():
    m = FourM(model_config("debug", ("rgb", "caption"), ("depth", "caption")))
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "encoder.0.attn.qkv.weight" in decayed and "decoder.0.mlp.fc1.weight" in decayed
    assert {"encoder.0.norm1.weight", "encoder.0.attn.qkv.bias", "encoder_embed.token.rgb.weight"} <= exempt
    assert "decoder_embed.mask_token" in exempt and "encoder_embed.positions.modality" in exempt
    # The tied caption table is listed once, undecayed (it is an embedding).
    assert "decoder_embed.token.caption.weight" in exempt and "heads.caption.weight" not in decayed | exempt
    assert len(decayed & exempt) == 0
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == m.num_parameters()
    assert isinstance(make_optimizer(m, 1e-3, 0.05), torch.optim.AdamW)


def test_lr_warmup_then_cosine_to_floor():
    f = [lr_factor(s, warmup_steps=10, total_steps=110, min_factor=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up to the peak
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)  # half-way down the cosine
    assert f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "model_config": {}}


def test_checkpoints_atomic_latest_and_pruned(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.latest() is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
        store.load()
    for step in (10, 20, 30):
        store.save(_state(step))
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*.pt")) == [
        "step-00000020.pt",
        "step-00000030.pt",
    ]
    assert store.latest()["step"] == 30
    assert float(store.load()["model"]["w"][0]) == 30.0
    assert not list((tmp_path / "ckpt").glob("*.tmp*"))


def test_corrupt_checkpoint_is_refused_with_its_path(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(_state(5))
    path = tmp_path / "step-00000005.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"step-00000005\.pt: sha256 differs"):
        store.load()
    record = json.loads((tmp_path / LATEST).read_text())
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.load(record)


def test_rng_state_round_trip():
    import random

    import numpy as np

    def draw() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    state = rng_state()
    a = draw()
    set_rng_state(state)
    assert draw() == a


def test_model_file_round_trip_and_bad_file(tmp_path):
    torch.manual_seed(0)
    m = FourM(model_config("debug", ("rgb", "caption"), ("depth", "caption")))
    save_model(tmp_path / "model.pt", m.config, m.state_dict(), {"step": 7})
    loaded, extra = load_model(tmp_path)
    assert extra["step"] == 7 and loaded.config == m.config
    for a, b in zip(m.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a fourm model file"):
        load_model(tmp_path / "bad.pt")


def test_step_progress_prints_rate_and_eta_when_not_a_terminal(capsys):
    from fourm.progress import StepProgress

    bar = StepProgress(20, "pretrain demo")
    for step in range(1, 21):
        bar.update(step, f"loss {1 / step:.2f}")
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10  # one per 10%
    assert (
        lines[0].startswith("pretrain demo: 2/20 steps (") and "ETA" in lines[0] and "loss 0.50" in lines[0]
    )
    assert lines[-1].startswith("pretrain demo: 20/20 steps") and "ETA 0 s" in lines[-1]
