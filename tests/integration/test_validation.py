"""Validation stage: one planted defect per rule, quarantine policy, no partial outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fourm.data import codecs
from fourm.data.format import read_manifest_rows
from fourm.data.generate import run_generate
from fourm.labelers.stage import run_label
from fourm.params import GenerateParams, LabelParams, ValidateParams
from fourm.validation.stage import ValidationFailed, run_validate
from tests.datasets import copy_dataset, read_member, rename_sample, replace_member, tamper_shard

pytestmark = pytest.mark.integration

LENIENT = ValidateParams(max_bad_fraction=1.0)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny valid raw dataset, its validation, and its labels (30 scenes, 3 shards)."""
    root = tmp_path_factory.mktemp("clean")
    run_generate(GenerateParams(num_scenes=30, samples_per_shard=10, workers=1), root / "raw")
    run_validate("raw", ValidateParams(), root / "raw", root / "raw_ok")
    run_label(LabelParams(), root / "raw", root / "raw_ok" / "manifest.parquet", root / "labels")
    return {"raw": root / "raw", "accepted": root / "raw_ok" / "manifest.parquet", "labels": root / "labels"}


def _ids(root: Path) -> list[str]:
    return [r["id"] for r in read_manifest_rows(root / "manifest.parquet")]


def _rule(report, name: str):  # noqa: ANN001
    return next(r for r in report.rules if r.rule == name)


def test_clean_dataset_passes_every_rule(clean: dict[str, Path], tmp_path: Path) -> None:
    raw = run_validate("raw", ValidateParams(), clean["raw"], tmp_path / "raw", docs_dir=tmp_path / "docs")
    lab = run_validate("labeled", ValidateParams(), clean["labels"], tmp_path / "lab", clean["accepted"])
    for report in (raw, lab):
        assert report.passed and report.num_bad == 0
        assert all(r.failed == 0 and r.checked == 30 for r in report.rules), report.summary()
    assert len(_ids(tmp_path / "lab")) == 30
    assert raw.docs == str(tmp_path / "docs" / "index.html")
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert pages and "caption_chars" in pages[0].read_text()  # the rendered expectation


def _plant_raw(clean: dict[str, Path], tmp_path: Path, defect: str) -> tuple[Path, str]:
    ds = copy_dataset(clean["raw"], tmp_path / "raw")
    victim = _ids(ds)[7]
    if defect == "truncated_png":
        png = read_member(ds, victim, "rgb")
        replace_member(ds, victim, "rgb", png[: len(png) // 2])
    elif defect == "empty_caption":
        replace_member(ds, victim, "caption", b"   ")
    elif defect == "wrong_size":
        replace_member(ds, victim, "rgb", codecs.encode("rgb", np.zeros((32, 32, 3), np.uint8)))
    elif defect == "grey_image":
        replace_member(ds, victim, "rgb", codecs.encode("rgb", np.zeros((64, 64), np.uint8)))
    elif defect == "duplicate_id":
        rename_sample(ds, victim, _ids(ds)[3])
        victim = _ids(ds)[3]
    return ds, victim


@pytest.mark.parametrize(
    ("defect", "rule", "value"),
    [
        ("truncated_png", "rgb_decodable", False),
        ("empty_caption", "caption_length", 0),
        ("wrong_size", "rgb_size", "32x32"),
        ("grey_image", "rgb_channels", 1),
        ("duplicate_id", "id_unique", None),
    ],
)
def test_raw_defect_is_named_and_quarantined(
    clean: dict[str, Path], tmp_path: Path, defect: str, rule: str, value: object
) -> None:
    ds, victim = _plant_raw(clean, tmp_path, defect)
    report = run_validate("raw", LENIENT, ds, tmp_path / "out")
    result = _rule(report, rule)
    expected_failures = 2 if defect == "duplicate_id" else 1
    assert result.failed == expected_failures, report.summary()
    assert result.examples[0]["id"] == victim
    if value is not None:
        assert result.examples[0]["value"] == value
    quarantined = {q["id"]: q["rules"] for q in report.quarantined}
    assert rule in quarantined[victim]
    accepted = _ids(tmp_path / "out")
    assert victim not in accepted
    assert len(accepted) == 30 - expected_failures
    # every other rule stays clean: the defect is reported where it belongs
    others = [r.rule for r in report.rules if r.failed and r.rule not in (rule, "rgb_size", "rgb_channels")]
    assert others == []


def test_tampered_shard_fails_every_sample_of_that_shard(clean: dict[str, Path], tmp_path: Path) -> None:
    ds = copy_dataset(clean["raw"], tmp_path / "raw")
    tamper_shard(ds, "shard-000001.tar")
    report = run_validate("raw", LENIENT, ds, tmp_path / "out")
    result = _rule(report, "shard_sha256_matches")
    in_shard = [
        r["id"] for r in read_manifest_rows(ds / "manifest.parquet") if r["shard"] == "shard-000001.tar"
    ]
    assert result.failed == len(in_shard) == 10
    assert set(result.failing_ids) == set(in_shard)
    assert not set(_ids(tmp_path / "out")) & set(in_shard)


def _plant_label(clean: dict[str, Path], tmp_path: Path, defect: str) -> tuple[Path, str]:
    ds = copy_dataset(clean["labels"], tmp_path / "labels")
    victim = _ids(ds)[12]
    if defect in ("nan_depth", "zero_depth"):
        depth = codecs.decode("depth", read_member(ds, victim, "depth"))
        depth[5, 9] = np.nan if defect == "nan_depth" else 0.0
        replace_member(ds, victim, "depth", codecs.encode("depth", depth))
    elif defect == "class_out_of_range":
        semseg = codecs.decode("semseg", read_member(ds, victim, "semseg")).copy()
        semseg[0, 0] = 17
        replace_member(ds, victim, "semseg", codecs.encode("semseg", semseg))
    elif defect == "long_normals":
        normal = codecs.decode("normal", read_member(ds, victim, "normal"))
        normal[3, 3] *= 1.5
        replace_member(ds, victim, "normal", codecs.encode("normal", normal))
    else:
        boxes = codecs.decode("boxes", read_member(ds, victim, "boxes"))
        x0, y0, x1, y1 = boxes[0]["bbox"]
        if defect == "inverted_box":
            boxes[0]["bbox"] = [x1, y0, x0, y1]
        elif defect == "box_outside":
            boxes[0]["bbox"] = [x0, y0, 70, y1]
        elif defect == "unknown_box_class":
            boxes[0]["class"] = "teapot"
        replace_member(ds, victim, "boxes", codecs.encode("boxes", boxes))
    return ds, victim


@pytest.mark.parametrize(
    ("defect", "rule"),
    [
        ("nan_depth", "depth_finite"),
        ("zero_depth", "depth_positive"),
        ("class_out_of_range", "semseg_known_class"),
        ("long_normals", "normal_unit_length"),
        ("inverted_box", "boxes_ordered"),
        ("box_outside", "boxes_inside_image"),
        ("unknown_box_class", "boxes_known_class"),
    ],
)
def test_label_defect_is_named_and_quarantined(
    clean: dict[str, Path], tmp_path: Path, defect: str, rule: str
) -> None:
    ds, victim = _plant_label(clean, tmp_path, defect)
    report = run_validate("labeled", LENIENT, ds, tmp_path / "out", clean["accepted"])
    result = _rule(report, rule)
    assert result.failed == 1, report.summary()
    assert result.examples[0]["id"] == victim
    assert [r.rule for r in report.rules if r.failed] == [rule]
    assert victim not in _ids(tmp_path / "out")


def test_above_threshold_the_stage_raises_and_writes_nothing(clean: dict[str, Path], tmp_path: Path) -> None:
    ds, victim = _plant_label(clean, tmp_path, "nan_depth")
    out = tmp_path / "validated"
    with pytest.raises(ValidationFailed) as failure:
        run_validate("labeled", ValidateParams(max_bad_fraction=0.0), ds, out, clean["accepted"])
    message = str(failure.value)
    assert "depth_finite" in message and victim in message
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".validated")] == []


def test_cli_exits_non_zero_with_readable_message(clean: dict[str, Path], tmp_path: Path) -> None:
    ds, victim = _plant_raw(clean, tmp_path, "truncated_png")
    (tmp_path / "params.yaml").write_text("validate:\n  max_bad_fraction: 0.0\n")
    report = tmp_path / "reports" / "validate_raw.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fourm",
            "validate",
            "--suite",
            "raw",
            "--dataset",
            str(ds),
            "--out",
            str(tmp_path / "out"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 1
    assert "validation failed" in proc.stderr
    assert "rgb_decodable" in proc.stderr and victim in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists() and not report.exists()
    failed = json.loads(report.with_name("validate_raw.failed.json").read_text())
    assert failed["passed"] is False and failed["num_bad"] == 1


def test_preview_grid_shows_each_sample_with_its_labels(clean: dict[str, Path]) -> None:
    from fourm.data.preview import PALETTE, colorize_depth, sample_grid

    grid = sample_grid(clean["raw"], clean["labels"], num_samples=3, scale=2)
    assert grid.size == (4 * 128 + 5 * 4, 3 * 128 + 4 * 4)
    pixels = np.asarray(grid)
    # the semseg panel of the first row shows the floor colour and at least one object colour
    semseg_panel = pixels[4 : 4 + 128, 4 + 3 * 132 : 4 + 3 * 132 + 128].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(semseg_panel, axis=0)}
    assert tuple(PALETTE[0]) in colours and len(colours & {tuple(c) for c in PALETTE[1:4]}) >= 1
    ramp = colorize_depth(np.array([[1.0, 2.0], [3.0, np.nan]]))
    assert ramp[0, 0].tolist() != ramp[1, 0].tolist()  # near and far differ
