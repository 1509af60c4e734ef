"""Transfer to object counting: what from_pretrained copies, both variants train, results are reproducible."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fourm.data import codecs
from fourm.data.samples import DatasetInputs, iter_samples
from fourm.evaluation.transfer import (
    TransferConfig,
    build_counting_vit,
    from_pretrained,
    run_transfer,
)
from fourm.model.config import model_config
from fourm.model.model import FourM
from fourm.train.outputs import load_model, save_model
from tests.datasets import copy_dataset, replace_member, tiny_labeled_dataset

pytestmark = pytest.mark.unit

# Small budget: the debug model (dim 32, 1+1 layers) on ~80 train scenes, a few seconds per variant.
CFG = TransferConfig(steps=30, batch_size=24, lr=3e-3, warmup_steps=3, eval_batch_size=64)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DatasetInputs:
    return tiny_labeled_dataset(
        tmp_path_factory.mktemp("transfer") / "data", num_scenes=100, samples_per_shard=50
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' debug model without pixel patches (as pretraining makes them), weights perturbed
    away from their initialisation so a copy cannot match by accident."""
    torch.manual_seed(123)
    model = FourM(model_config("debug", ("rgb", "depth", "caption"), ("depth", "caption")))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, model.config, model.state_dict(), {"step": 1})
    return path


def test_from_pretrained_copies_the_encoder_only(model_path: Path) -> None:
    model, _ = load_model(model_path)
    torch.manual_seed(0)
    net = from_pretrained(model, max_count=6)
    torch.manual_seed(0)
    scratch = build_counting_vit(model.config, max_count=6)
    assert net.config.inputs == (*model.config.inputs, "rgb_patches")
    assert net.head.out_features == 7
    src = dict(model.named_parameters())
    for name, p in net.backbone.named_parameters():
        if name.startswith(("encoder.", "encoder_norm.")):
            assert torch.equal(p, src[name]), name
            assert not torch.equal(p, dict(scratch.backbone.named_parameters())[name]), name
    # Modality rows by name: the table grew by one row (rgb_patches), the others copied.
    rows, old = net.backbone.encoder_embed.positions.modality, model.encoder_embed.positions.modality
    assert rows.shape[0] == old.shape[0] + 1
    for i, m in enumerate(net.config.modalities):
        if m in model.config.modalities:
            assert torch.equal(rows[i], old[model.config.modalities.index(m)]), m
        else:
            assert torch.equal(rows[i], scratch.backbone.encoder_embed.positions.modality[i]), m
    # Fresh, and the same as scratch's under one seed: patch embedding and head.
    for a, b in ((net.backbone.patch_embed, scratch.backbone.patch_embed), (net.head, scratch.head)):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
    # No decoder, no token tables: the optimizer sees only what is trained.
    names = [n for n, _ in net.named_parameters()]
    assert not any(
        n.startswith(("backbone.decoder", "backbone.heads", "backbone.context_proj")) for n in names
    )
    assert not any(".token." in n for n in names)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 7)


def test_patch_embedding_is_never_copied() -> None:
    """Even from a model with pixel patches as input, the patch embedding stays fresh."""
    torch.manual_seed(1)
    model = FourM(model_config("debug", ("rgb_patches", "rgb"), ("depth",)))
    torch.manual_seed(2)
    net = from_pretrained(model, max_count=3)
    assert net.config.inputs == ("rgb_patches", "rgb")  # not added twice
    assert not torch.equal(net.backbone.patch_embed.proj.weight, model.patch_embed.proj.weight)
    assert torch.equal(net.backbone.encoder[0].attn.qkv.weight, model.encoder[0].attn.qkv.weight)
    assert "encoder_embed.positions.modality[rgb_patches]" in net.copied


def test_run_transfer_trains_both_and_is_reproducible(model_path: Path, data: DatasetInputs) -> None:
    first = run_transfer(model_path, data, CFG, progress=False)
    assert {"task", "steps", "pretrained", "scratch", "majority_baseline", "seconds"} <= first.keys()
    assert first["task"] == "object_count" and first["steps"] == CFG.steps
    assert first["copied"]["modality_rows"] == ["rgb", "depth", "caption"]
    for variant in ("pretrained", "scratch", "majority_baseline"):
        r = first[variant]
        assert {"accuracy", "mae"} <= r.keys()
        assert 0.0 <= r["accuracy"] <= 1.0 and r["mae"] >= 0.0
    for variant in ("pretrained", "scratch"):
        r = first[variant]
        assert r["train_loss"] < r["train_loss_start"], (variant, r)
    assert first["pretrained"] != first["scratch"]
    second = run_transfer(model_path, data, CFG, progress=False)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored


def test_wrong_image_size_names_the_sample(model_path: Path, data: DatasetInputs, tmp_path: Path) -> None:
    raw = copy_dataset(data.raw, tmp_path / "raw")
    victim = next(iter_samples(raw, data.labels, data.accepted, ["rgb"], ["test"])).id
    replace_member(raw, victim, "rgb", codecs.encode("rgb", np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(ValueError, match=rf"sample {victim}: rgb is 32x32x3.*needs 64x64x3"):
        run_transfer(model_path, replace(data, raw=raw), CFG, progress=False)


def test_too_many_objects_names_the_sample(model_path: Path, data: DatasetInputs) -> None:
    with pytest.raises(ValueError, match=r"sample syn0-\d+: [3-6] objects.*max_count 2"):
        run_transfer(model_path, data, replace(CFG, max_count=2), progress=False)


def test_not_a_model_file(data: DatasetInputs, tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a fourm model file"):
        run_transfer(bad, data, CFG, progress=False)
    with pytest.raises(FileNotFoundError):
        run_transfer(tmp_path / "missing.pt", data, CFG, progress=False)
