"""Model-backed labelers (fourm/labelers/hf_*.py) on tiny, randomly initialised transformers models.

Each model is built from a small config (fourm/labelers/tiny_models.py) and saved with
its image processor, so the real offline loading path
(``from_pretrained(dir, local_files_only=True)``), batching and post-processing run;
the label stage then labels a generated raw set with them and the labeled validation
suite accepts the result.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from fourm.data import codecs
from fourm.data.format import Dataset, iter_shard_bytes
from fourm.data.generate import run_generate
from fourm.data.preview import sample_grid
from fourm.data.scene import CLASSES
from fourm.io import sha256_file
from fourm.labelers import tiny_models
from fourm.labelers.base import LabelerError, RawSample, make_labeler
from fourm.labelers.hf_boxes import clip_boxes
from fourm.labelers.hf_depth import HfDepthLabeler, depth_from_prediction
from fourm.labelers.hf_load import weights_digest
from fourm.labelers.stage import run_label
from fourm.params import GenerateParams, LabelParams, ValidateParams
from fourm.validation.stage import run_validate

pytestmark = pytest.mark.integration

RES = 64


def _clip_models(root: Path) -> tuple[Path, Path]:
    """A tiny CLIPVisionModel, and a full CLIPModel whose vision tower has the same weights."""
    vision = tf.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    text = tf.CLIPTextConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model = tf.CLIPVisionModel(vision)
    with torch.no_grad():  # random LayerNorm affine, so post-layernorm is not the identity
        for name, param in model.named_parameters():
            if "layernorm" in name or "layrnorm" in name:
                param.normal_(0, 0.5)
    full = tf.CLIPModel(
        tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8)
    )
    # transformers < 5 nests the tower under .vision_model in both classes
    full.vision_model.load_state_dict(getattr(model, "vision_model", model).state_dict())
    for directory, m in ((root / "clip", model), (root / "clip-full", full)):
        m.save_pretrained(directory)
        processor.save_pretrained(directory)
    return root / "clip", root / "clip-full"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    torch.manual_seed(0)
    mapping = root / "mapping.yaml"
    mapping.write_text("ball: sphere\nbox: cube\n3: cylinder\n")  # by label name and by id
    clip, clip_full = _clip_models(root)
    return {
        "depth": tiny_models.depth_model(root / "depth"),
        "semseg": tiny_models.semseg_model(root / "semseg"),
        "boxes": tiny_models.boxes_model(root / "boxes"),
        "caption": tiny_models.caption_model(root / "caption"),
        "clip": clip,
        "clip-full": clip_full,
        "mapping": mapping,
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 generated 64x64 scenes in 2 raw shards; its manifest is the accepted one."""
    out = tmp_path_factory.mktemp("hf-raw") / "raw"
    run_generate(GenerateParams(num_scenes=8, samples_per_shard=4, resolution=RES, workers=1), out)
    return out


def _samples(raw: Path, n: int = 5) -> list[RawSample]:
    ds = Dataset.open(raw)
    out = []
    for entry in ds.shards:
        for rec in iter_shard_bytes(ds.read_shard(entry["name"]), entry["name"]):
            rgb = codecs.decode("rgb", rec.members["rgb"])
            out.append(RawSample(rec.id, rgb, codecs.decode("caption", rec.members["caption"])))
    return out[:n]


def _options(models: dict[str, Path], **extra) -> dict[str, dict]:
    return {
        "hf-depth": {"model": str(models["depth"]), "batch_size": 3, **extra},
        "hf-semseg": {"model": str(models["semseg"]), "mapping": str(models["mapping"])},
        "hf-boxes": {"model": str(models["boxes"]), "mapping": str(models["mapping"]), "threshold": 0.0},
    }


def test_label_stage_with_hf_labelers_passes_the_labeled_suite(models, raw: Path, tmp_path: Path):
    params = LabelParams(
        labelers={
            "depth": "hf-depth",
            "normal": "hf-depth",
            "semseg": "hf-semseg",
            "boxes": "hf-boxes",
            "clip": "hf-clip",
            "edges": "canny",
        },
        options={**_options(models), "hf-clip": {"model": str(models["clip"]), "grid": 4}},
        batch_size=5,
    )
    report = run_label(params, raw, raw / "manifest.parquet", tmp_path / "labels")
    assert report.num_samples == 8 and report.num_shards == 2

    labels = Dataset.open(tmp_path / "labels")
    prov = labels.card["labelers"]
    weights = models["depth"] / "model.safetensors"
    assert prov["depth"] == prov["normal"]  # one hf-depth labeler for both
    assert prov["depth"]["model"] == str(models["depth"])
    assert prov["depth"]["weight_files"] == {"model.safetensors": sha256_file(weights)}
    assert prov["depth"]["depth"]["output"] == "relative_inverse"  # Depth Anything's default
    assert prov["depth"]["depth"]["median_depth"] == 5.0
    assert prov["semseg"]["weights_sha256"] == weights_digest("t", models["semseg"])[0]
    assert prov["boxes"]["mapping"]["classes"] == {"1 ball": "sphere", "2 box": "cube", "3 can": "cylinder"}
    assert prov["clip"]["clip"]["grid"] == 4 and prov["edges"]["name"] == "canny"
    # where and how fast it ran stays out of the card
    assert "batch_size" not in labels.card["params"]["options"]["hf-depth"]

    depths = []
    for entry in labels.shards:
        for rec in iter_shard_bytes(labels.read_shard(entry["name"]), entry["name"]):
            assert set(rec.members) == {"depth", "normal", "semseg", "boxes", "clip", "edges"}  # no instance
            depth = codecs.decode("depth", rec.members["depth"])
            normal = codecs.decode("normal", rec.members["normal"])
            semseg = codecs.decode("semseg", rec.members["semseg"])
            boxes = codecs.decode("boxes", rec.members["boxes"])
            clip = codecs.decode("clip", rec.members["clip"])
            edges = codecs.decode("edges", rec.members["edges"])
            assert clip.shape == (4, 4, 32) and clip.dtype == np.float32 and np.isfinite(clip).all()
            assert edges.shape == (RES, RES) and edges.dtype == np.uint8 and edges.max() <= 1
            assert depth.shape == semseg.shape == (RES, RES) and normal.shape == (RES, RES, 3)
            assert depth.dtype == normal.dtype == np.float32 and semseg.dtype == np.uint8
            assert (depth > 0).all() and np.isfinite(depth).all()
            assert np.median(depth) == pytest.approx(5.0, rel=1e-3)
            np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1, atol=1e-5)
            assert semseg.max() < len(CLASSES)
            for box in boxes:
                x0, y0, x1, y1 = box["bbox"]
                assert box["class"] in CLASSES[1:] and 0 <= x0 < x1 <= RES and 0 <= y0 < y1 <= RES
            depths.append(depth)
    assert np.ptp(np.stack(depths)) > 0  # not one constant map

    assert sample_grid(raw, tmp_path / "labels").size[0] > 0  # the label preview needs no instance maps
    checked = run_validate(
        "labeled", ValidateParams(), tmp_path / "labels", tmp_path / "valid", raw / "manifest.parquet"
    )
    assert checked.passed and checked.num_bad == 0, checked.summary()
    checked_rules = {r.rule for r in checked.rules}
    assert {"clip_shape", "clip_finite", "edges_size", "edges_binary"} <= checked_rules


def test_batch_size_splits_the_batch_and_hf_normal_matches_hf_depth(models, raw: Path):
    samples = _samples(raw, 5)
    depth = make_labeler("hf-depth", {"model": str(models["depth"]), "batch_size": 2})
    calls = []
    forward = depth.model.forward

    @functools.wraps(forward)
    def counting(*args, **kwargs):
        calls.append(kwargs["pixel_values"].shape[0])
        return forward(*args, **kwargs)

    depth.model.forward = counting
    out = depth(samples)
    assert calls == [2, 2, 1]
    normal = make_labeler("hf-normal", {"model": str(models["depth"]), "fov_degrees": 45.0})
    assert normal.produces == ("normal",)
    for a, b in zip(out, normal(samples), strict=True):
        assert set(b) == {"normal"}
        np.testing.assert_allclose(a["normal"], b["normal"], atol=1e-5)
    assert normal.provenance()["normal"]["fov_degrees"] == 45.0


def test_boxes_are_clipped_and_sub_pixel_boxes_dropped():
    boxes = np.array([[-5.0, 2.0, 30.123, 70.0], [10.0, 10.0, 10.5, 20.0], [64.5, 0.0, 70.0, 9.0]])
    out = clip_boxes(boxes, np.array([0.5, 0.9, 0.7]), ["cube", "sphere", "cylinder"], RES, RES)
    assert out == [{"class": "cube", "bbox": [0.0, 2.0, 30.12, 64.0], "score": 0.5}]


def test_depth_conversions():
    disparity = np.array([[0.0, 1.0], [2.0, 4.0]])
    rel = depth_from_prediction(disparity, "relative_inverse", 5.0, 1e-3, 1e-3)
    assert rel.dtype == np.float32 and np.median(rel) == pytest.approx(5.0)
    assert rel[0, 0] == rel.max() and np.isfinite(rel).all()  # zero disparity -> far, not infinite
    np.testing.assert_allclose(rel[1, 0] / rel[1, 1], 2.0, rtol=1e-6)  # depth is 1 / disparity
    flat = depth_from_prediction(np.zeros((3, 3)), "relative_inverse", 5.0, 1e-3, 1e-3)
    np.testing.assert_allclose(flat, 5.0)
    metric = depth_from_prediction(np.array([[0.0, 2.5], [np.nan, 7.0]]), "metric", 5.0, 1e-3, 0.01)
    np.testing.assert_allclose(metric, [[0.01, 2.5], [0.01, 7.0]])
    assert HfDepthLabeler._output_of(tf.DepthAnythingConfig(depth_estimation_type="metric")) == "metric"
    assert HfDepthLabeler._output_of(tf.DPTConfig()) == "relative_inverse"


def test_caption_keeps_source_captions_and_generates_the_missing(models, raw: Path):
    samples = _samples(raw, 3)
    samples[1] = RawSample(samples[1].id, samples[1].rgb, "  ")
    labeler = make_labeler("hf-caption", {"model": str(models["caption"]), "max_new_tokens": 6})
    out = labeler(samples)
    assert out[0]["caption"] == samples[0].caption and out[2]["caption"] == samples[2].caption
    generated = out[1]["caption"]
    assert isinstance(generated, str) and len(generated.split()) <= 6
    assert labeler(samples)[1]["caption"] == generated  # greedy: the same caption again
    prov = labeler.provenance()
    assert prov["weights_sha256"] == weights_digest("t", models["caption"])[0]
    assert prov["decoding"] == {"method": "greedy", "max_new_tokens": 6}


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make every socket connection fail; returns the list the attempts are recorded in."""
    attempts: list = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return attempts


def test_hub_id_loads_from_the_local_cache_without_network(models, tmp_path: Path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-seg" / "snapshots" / ("0" * 40)
    shutil.copytree(models["semseg"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    attempts = _forbid_network(monkeypatch)
    labeler = make_labeler(
        "hf-semseg",
        {"model": "tiny-org/tiny-seg", "cache_dir": str(cache), "mapping": str(models["mapping"])},
    )
    assert labeler.provenance()["model"] == "tiny-org/tiny-seg"
    assert labeler.provenance()["weights_sha256"] == weights_digest("t", models["semseg"])[0]

    with pytest.raises(LabelerError) as err:
        make_labeler("hf-depth", {"model": "nobody/no-such-depth-model", "cache_dir": str(cache)})
    message = str(err.value)
    assert "nobody/no-such-depth-model" in message
    assert "huggingface-cli download nobody/no-such-depth-model --local-dir DIR" in message
    assert "label.options.hf-depth.model" in message
    assert attempts == []


def test_bad_options_and_mappings_are_clear_errors(models, raw: Path, tmp_path: Path):
    with pytest.raises(LabelerError, match=r"label\.options\.hf-depth: unknown option 'modle'.*'hf-depth'"):
        make_labeler("hf-depth", {"modle": str(models["depth"])})
    with pytest.raises(LabelerError, match=r"'hf-boxes' needs option 'model'"):
        make_labeler("hf-boxes", {"mapping": str(models["mapping"])})
    with pytest.raises(LabelerError, match="oracle.*takes no options"):
        make_labeler("oracle", {"model": "x"})
    assert make_labeler("oracle").provenance()["model"] is None  # oracle: no options needed
    with pytest.raises(LabelerError, match=r"label\.options\.hf-dept: no labeler"):
        run_label(
            LabelParams(options={"hf-dept": {"model": "x"}}), raw, raw / "manifest.parquet", tmp_path / "l"
        )
    with pytest.raises(LabelerError, match="option output must be one of"):
        make_labeler("hf-depth", {"model": str(models["depth"]), "output": "disparity"})
    with pytest.raises(LabelerError, match="option 'mapping' is required"):
        make_labeler("hf-semseg", {"model": str(models["semseg"])})
    bad = {"ball: sphere\nbox: table\n": "'table': not a project class", "bat: sphere\n": "names no class"}
    for text, match in bad.items():
        (tmp_path / "m.yaml").write_text(text)
        with pytest.raises(LabelerError, match=match):
            make_labeler("hf-semseg", {"model": str(models["semseg"]), "mapping": str(tmp_path / "m.yaml")})
    (tmp_path / "m.json").write_text(json.dumps({"background": "floor", "ball": "sphere"}))
    with pytest.raises(LabelerError, match="'floor': not a project box class"):
        make_labeler("hf-boxes", {"model": str(models["boxes"]), "mapping": str(tmp_path / "m.json")})
    with pytest.raises(LabelerError, match="not a directory"):
        make_labeler("hf-depth", {"model": str(models["mapping"])})


def test_clip_feature_maps(models, raw: Path, tmp_path: Path, monkeypatch):
    samples = _samples(raw, 5)
    labeler = make_labeler("hf-clip", {"model": str(models["clip"]), "batch_size": 2})
    out = labeler(samples)
    assert all(set(o) == {"clip"} for o in out)
    maps = [o["clip"] for o in out]
    for m in maps:
        assert m.shape == (8, 8, 32) and m.dtype == np.float32
        assert np.isfinite(m).all()
        np.testing.assert_array_equal(codecs.decode("clip", codecs.encode("clip", m)), m)
    assert np.ptp(maps[0]) > 0 and not np.allclose(maps[0], maps[1])  # depends on the image
    again = make_labeler("hf-clip", {"model": str(models["clip"]), "batch_size": 5})(samples)
    for a, b in zip(maps, again, strict=True):  # deterministic, whatever the batching
        np.testing.assert_allclose(a, b["clip"], rtol=1e-5, atol=1e-5)

    # the vision tower of a full CLIPModel checkpoint gives the same features
    full = make_labeler("hf-clip", {"model": str(models["clip-full"])})
    for a, b in zip(maps, full(samples), strict=True):
        np.testing.assert_allclose(a, b["clip"], rtol=1e-5, atol=1e-5)

    small = make_labeler("hf-clip", {"model": str(models["clip"]), "grid": 3})(samples[:1])[0]["clip"]
    assert small.shape == (3, 3, 32) and small.dtype == np.float32 and np.isfinite(small).all()

    prov = labeler.provenance()
    assert prov["weights_sha256"] == weights_digest("t", models["clip"])[0]
    assert prov["model_type"] == "clip_vision_model"
    assert prov["clip"]["grid"] == 8 and prov["clip"]["post_layernorm"] is True
    assert prov["clip"]["input_size"] == 64
    assert full.provenance()["weights_sha256"] == weights_digest("t", models["clip-full"])[0]

    attempts = _forbid_network(monkeypatch)
    with pytest.raises(LabelerError) as err:
        make_labeler("hf-clip", {"model": "nobody/no-such-clip", "cache_dir": str(tmp_path / "hub")})
    assert "huggingface-cli download nobody/no-such-clip --local-dir DIR" in str(err.value)
    assert "label.options.hf-clip.model" in str(err.value)
    assert attempts == []
    with pytest.raises(LabelerError, match=r"hf-clip: option grid must be a positive integer, got 0"):
        make_labeler("hf-clip", {"model": str(models["clip"]), "grid": 0})
    with pytest.raises(LabelerError, match=r"'segformer' checkpoint; hf-clip takes a CLIPVisionModel"):
        make_labeler("hf-clip", {"model": str(models["semseg"])})
