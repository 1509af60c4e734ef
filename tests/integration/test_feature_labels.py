"""Optional label members (edges, CLIP feature maps, a captioner's caption) through the label
stage, the labeled validation suite and the sample reader; their defects are named and quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fourm.data import codecs
from fourm.data.generate import run_generate
from fourm.data.samples import iter_samples
from fourm.labelers.base import RawSample, register_labeler
from fourm.labelers.stage import run_label
from fourm.params import GenerateParams, LabelParams, ValidateParams
from fourm.validation.stage import run_validate
from tests.datasets import copy_dataset, replace_member

pytestmark = pytest.mark.integration

GRID, WIDTH = 4, 6


@register_labeler("test-features")
class FeatureLabeler:
    """A stand-in for a feature/caption model: a deterministic feature map and caption per sample."""

    name = "test-features"
    version = "1"
    produces = ("clip", "caption")

    def __call__(self, batch: list[RawSample]) -> list[dict]:
        out = []
        for s in batch:
            pooled = s.rgb.reshape(GRID, 64 // GRID, GRID, 64 // GRID, 3).mean(axis=(1, 3)) / 255.0
            features = np.concatenate([pooled, pooled**2], axis=-1).astype(np.float32)  # (GRID, GRID, 6)
            out.append({"clip": features, "caption": f"labeled {s.id}"})
        return out

    def provenance(self) -> dict:
        return {"name": self.name, "version": self.version}


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("features")
    raw = root / "raw"
    run_generate(GenerateParams(num_scenes=12, samples_per_shard=6, workers=1), raw)
    params = LabelParams(
        labelers={
            "depth": "oracle",
            "normal": "oracle",
            "semseg": "oracle",
            "boxes": "oracle",
            "edges": "canny",
            "clip": "test-features",
            "caption": "test-features",
        },
    )
    run_label(params, raw, raw / "manifest.parquet", root / "labels")
    return {"raw": raw, "labels": root / "labels", "accepted": raw / "manifest.parquet"}


def test_optional_members_are_stored_validated_and_read(labeled: dict[str, Path], tmp_path: Path) -> None:
    report = run_validate(
        "labeled", ValidateParams(), labeled["labels"], tmp_path / "ok", labeled["accepted"]
    )
    assert report.passed and report.num_bad == 0
    rules = {r.rule for r in report.rules}
    assert {"edges_size", "edges_binary", "clip_shape", "clip_finite", "label_caption_length"} <= rules

    samples = list(
        iter_samples(labeled["raw"], labeled["labels"], labeled["accepted"], ["caption", "clip", "edges"])
    )
    assert len(samples) == 12
    for s in samples:
        assert s.values["caption"] == f"labeled {s.id}"  # the label set's caption wins over the raw one
        assert s.values["clip"].shape == (GRID, GRID, WIDTH) and s.values["clip"].dtype == np.float32
        assert s.values["edges"].shape == (64, 64) and set(np.unique(s.values["edges"])) <= {0, 1}
    # without a caption member in the label set, the raw caption is read
    raw_caption = next(iter_samples(labeled["raw"], labeled["raw"], labeled["accepted"], ["caption"]))
    assert not raw_caption.values["caption"].startswith("labeled")


def test_defects_of_optional_members_are_named(labeled: dict[str, Path], tmp_path: Path) -> None:
    ds = copy_dataset(labeled["labels"], tmp_path / "labels")
    ids = [s.id for s in iter_samples(labeled["raw"], ds, labeled["accepted"], ["edges"])]
    edges = np.zeros((64, 64), np.uint8)
    edges[3, 3] = 7
    replace_member(ds, ids[0], "edges", codecs.encode("edges", edges))
    nan_map = np.zeros((GRID, GRID, WIDTH), np.float32)
    nan_map[0, 0, 0] = np.nan
    replace_member(ds, ids[1], "clip", codecs.encode("clip", nan_map))
    replace_member(ds, ids[2], "clip", codecs.encode("clip", np.zeros((GRID, GRID, WIDTH + 1), np.float32)))
    replace_member(ds, ids[3], "caption", b"  ")
    replace_member(ds, ids[4], "edges", codecs.encode("edges", np.zeros((32, 32), np.uint8)))

    lenient = ValidateParams(max_bad_fraction=0.5)
    report = run_validate("labeled", lenient, ds, tmp_path / "out", labeled["accepted"])
    broken = {q["id"]: q["rules"] for q in json.loads((tmp_path / "out" / "quarantine.json").read_text())}
    assert broken == {
        ids[0]: ["edges_binary"],
        ids[1]: ["clip_finite"],
        ids[2]: ["clip_shape"],
        ids[3]: ["label_caption_length"],
        ids[4]: ["edges_size"],
    }
    assert report.num_bad == 5
