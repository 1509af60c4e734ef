"""Pieces of the pipeline run machinery: dvc.yaml as data, summaries, version metrics, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fourm.dvc_spec import dvc_stages, stage_reports, uncached_outputs
from fourm.registry.register_stage import headline_metrics
from fourm.reproduce import ReproduceError, fingerprint
from fourm.run_workspace import overlay_changes
from fourm.summary import model_lines
from tests.conftest import REPO

pytestmark = pytest.mark.unit

EVALUATION = {
    "beats_baseline": {"rgb->depth": True, "rgb->semseg": False},
    "tasks": {
        "rgb->depth": {"beats_baseline": True, "metrics": {
            "abs_rel": {"model": 0.067, "baseline": 0.077, "better": True},
            "rmse": {"model": 0.2, "baseline": 0.3, "better": True}}},
        "rgb->semseg": {"beats_baseline": False, "metrics": {
            "miou": {"model": 0.1, "baseline": 0.22, "better": False}}},
    },
}  # fmt: skip


def test_the_project_dag_ends_with_register_and_its_uncached_reports_are_known() -> None:
    stages = dvc_stages(REPO)
    assert list(stages)[-3:] == ["pretrain", "evaluate", "register"]
    assert {f"train-tokenizer@{m}" for m in ("rgb", "depth", "normal", "semseg")} <= set(stages)
    assert stage_reports(REPO)["evaluate"] == Path("reports/evaluate/metrics.json")
    uncached = uncached_outputs(REPO)
    assert (
        Path("reports/evaluate/metrics.json") in uncached and Path("reports/tokenizers/rgb.json") in uncached
    )
    # cached outputs live in the DVC cache, not in a run's ref
    assert (
        Path("reports/register.json") not in uncached and Path("reports/evaluate/report.md") not in uncached
    )


def test_version_metrics_keep_each_task_metric_beside_its_baseline() -> None:
    flat = headline_metrics(EVALUATION)
    assert flat["rgb->depth/abs_rel"] == 0.067 and flat["rgb->depth/abs_rel/baseline"] == 0.077
    assert flat["rgb->semseg/miou/baseline"] == 0.22
    assert flat["beats_all_baselines"] is False
    assert headline_metrics({"tasks": {}, "beats_baseline": {}})["beats_all_baselines"] is True


def test_model_lines_name_the_version_each_task_the_gallery_and_how_to_reproduce(tmp_path: Path) -> None:
    registered = {"ref": "fourm-4m:3", "beats_all_baselines": False, "git_ref": "refs/fourm-runs/r"}
    lines = model_lines(registered, EVALUATION, tmp_path)
    assert (
        lines[0] == "registered model: fourm-4m:3 (does NOT beat every baseline); run ref refs/fourm-runs/r"
    )
    assert "  rgb->depth: abs_rel 0.067 vs baseline 0.077 (better)" in lines
    assert "  rgb->semseg: miou 0.1 vs baseline 0.22 (NOT better)" in lines
    assert f"gallery: {tmp_path.resolve() / 'gallery.png'}" in lines
    assert lines[-1] == "reproduce: fourm reproduce fourm-4m:3"
    again = model_lines({**registered, "version_git_ref": "refs/fourm-runs/first"}, EVALUATION, tmp_path)
    assert again[0].endswith("; the same model as run refs/fourm-runs/first, which registered it")


def test_fingerprints_follow_the_stage_that_made_the_artifact(tmp_path: Path) -> None:
    from fourm.io import sha256_file

    f = tmp_path / "model.pt"
    f.write_bytes(b"weights")
    assert fingerprint(f) == sha256_file(f)
    ds = tmp_path / "raw"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({"shards": []}))
    (ds / "shard-0.tar").write_bytes(b"x")  # the card lists the shards' hashes; the card is the hash
    assert fingerprint(ds) == sha256_file(ds / "dataset.json")
    with pytest.raises(ReproduceError, match="not a file, dataset, token set or tokenizer"):
        fingerprint(tmp_path)


def test_overlay_changes_writes_only_what_differs_and_drops_removed_mapping_keys() -> None:
    raw = {"steps": 3000, "kubernetes": {"cpu": "32"}, "labelers": {"depth": "oracle", "semseg": "oracle"}}
    before = {
        "steps": 3000,
        "lr": 0.002,
        "kubernetes": {"cpu": "32", "memory": "256Gi"},
        "labelers": {"depth": "oracle", "semseg": "oracle"},
        "inputs": ["rgb", "depth"],
    }
    after = {
        "steps": 900, "lr": 0.002, "kubernetes": {"cpu": "32", "memory": "64Gi"},
        "labelers": {"depth": "oracle"}, "inputs": ["rgb"],
    }  # fmt: skip
    out = overlay_changes(raw, before, after)
    # unchanged values stay as written (lr stays implicit), changed ones are set, lists replaced whole
    assert out == {
        "steps": 900, "kubernetes": {"cpu": "32", "memory": "64Gi"}, "labelers": {"depth": "oracle"},
        "inputs": ["rgb"],
    }  # fmt: skip
    assert overlay_changes(raw, before, before) == raw
    assert raw["labelers"] == {"depth": "oracle", "semseg": "oracle"}  # the input is not modified


def test_dvc_ignore_lines_are_written_up_front_in_file_order(tmp_path: Path) -> None:
    from fourm.dvc_spec import ignored_outputs
    from fourm.run_workspace import write_dvc_ignores

    # the lines DVC itself wrote for main's committed run, in the same order
    for gitignore, lines in ignored_outputs(REPO).items():
        assert (REPO / gitignore).read_text().splitlines() == lines, gitignore
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: x, outs: [data/b, data/a], metrics: [{reports/a.json: {cache: false}}]}\n"
        "  c: {cmd: x, outs: [data/c/deep], plots: [reports/c.png]}\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".gitignore").write_text("/a\n/kept")  # a line already there stays first
    write_dvc_ignores(tmp_path)
    write_dvc_ignores(tmp_path)  # idempotent
    assert (tmp_path / "data" / ".gitignore").read_text() == "/a\n/kept\n/b\n"
    assert (tmp_path / "data" / "c" / ".gitignore").read_text() == "/deep\n"
    assert (tmp_path / "reports" / ".gitignore").read_text() == "/c.png\n"  # uncached a.json: not ignored


def test_lock_entries_are_put_in_dvc_yaml_order_with_their_text_kept(tmp_path: Path) -> None:
    import shutil

    import yaml

    from fourm.run_workspace import order_lock_stages

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    text = (REPO / "dvc.lock").read_text()
    # finishing order: depth before rgb, tokenize before eval-tokenizers, an old stage in between
    lock = yaml.safe_load(text)
    names = list(lock["stages"])
    i, j = names.index("train-tokenizer@rgb"), names.index("train-tokenizer@depth")
    names[i], names[j] = names[j], names[i]
    names.insert(2, "retired")
    lines = text.splitlines(keepends=True)
    starts = [k for k, line in enumerate(lines) if line.startswith("  ") and not line.startswith("   ")]
    ends = [*starts[1:], len(lines)]
    by_name = {lines[a].strip().rstrip(":"): lines[a:b] for a, b in zip(starts, ends, strict=True)}
    by_name["retired"] = ["  retired:\n", "    cmd: old\n"]
    shuffled = "".join(lines[: starts[0]] + [line for n in names for line in by_name[n]])
    (tmp_path / "dvc.lock").write_text(shuffled)
    order_lock_stages(tmp_path)
    ordered = (tmp_path / "dvc.lock").read_text()
    result = yaml.safe_load(ordered)
    expected = [s for s in dvc_stages(tmp_path) if s in lock["stages"]] + ["retired"]
    assert list(result["stages"]) == expected
    assert {k: v for k, v in result["stages"].items() if k != "retired"} == lock["stages"]
    assert sorted(ordered.splitlines()) == sorted(shuffled.splitlines())  # the same lines, moved
    before = (tmp_path / "dvc.lock").stat().st_mtime_ns
    order_lock_stages(tmp_path)  # already in order: not rewritten
    assert (tmp_path / "dvc.lock").stat().st_mtime_ns == before
