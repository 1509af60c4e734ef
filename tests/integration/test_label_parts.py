"""Shard-parallel labeling: `--part` runs plus one assembling run give the label set of one run,
here and as an Indexed Job on the stand-in Kubernetes API server (tests/kube_standin.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fourm import stages
from fourm.data.format import DatasetError
from fourm.labelers.stage import label_parts_dir, run_label
from fourm.params import LabelParams
from fourm.settings import Settings
from tests.datasets import tiny_labeled_dataset
from tests.kube_cluster import fourm_standin

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated scenes in 3 raw shards."""
    return tiny_labeled_dataset(tmp_path_factory.mktemp("label-parts") / "data").raw


def same_label_set(a: Path, b: Path) -> None:
    for name in ["dataset.json", "manifest.parquet", *(p.name for p in (a / "shards").iterdir())]:
        sub = "" if name.endswith((".json", ".parquet")) else "shards/"
        assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes(), name


def test_parts_then_assembly_equal_one_run_and_reuse_every_shard(raw: Path, tmp_path: Path):
    whole = run_label(LabelParams(), raw, raw / "manifest.parquet", tmp_path / "whole" / "labels")
    local = tmp_path / "raw"
    shutil.copytree(raw, local)
    out = tmp_path / "parts" / "labels"
    reports = [
        run_label(LabelParams(), local, local / "manifest.parquet", out, part=(i, 2)) for i in range(2)
    ]
    assert [r.num_shards for r in reports] == [1, 2] and not out.exists()
    for shard in (local / "shards").iterdir():
        shard.write_bytes(b"")  # the assembling run must not read a raw shard again
    assembled = run_label(LabelParams(), local, local / "manifest.parquet", out)
    assert assembled.num_samples == whole.num_samples == 24
    assert not label_parts_dir(out).exists()  # handed over
    (tmp_path / "whole" / "labels" / "dataset.json").write_text(
        (tmp_path / "whole" / "labels" / "dataset.json").read_text().replace(str(raw), str(local))
    )
    same_label_set(tmp_path / "whole" / "labels", out)


def test_parts_of_other_labeler_params_are_not_taken(raw: Path, tmp_path: Path):
    out = tmp_path / "labels"
    other = LabelParams(labelers={"depth": "oracle", "semseg": "oracle"})
    run_label(other, raw, raw / "manifest.parquet", out, part=(0, 1))
    local = tmp_path / "raw"
    shutil.copytree(raw, local)
    (local / "shards" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(DatasetError, match="shard-000000"):  # labeled again, from the damaged shard
        run_label(LabelParams(), local, local / "manifest.parquet", out)


def test_label_parts_run_as_an_indexed_job_on_kubernetes(raw: Path, tmp_path: Path, s3_settings: Settings):
    """`label.launcher: kubernetes`: pods run `fourm label --part $(JOB_COMPLETION_INDEX)/3`, the
    caller assembles; the stand-in's pods see this machine's files as pods see a shared volume."""
    params = LabelParams(
        launcher="kubernetes",
        parts=3,
        kubernetes={"cpu": "1", "memory": "1Gi", "wandb_secret": None, "pending_timeout_s": 60},
    )
    out = tmp_path / "labels"
    with fourm_standin(tmp_path / "kube", s3_settings) as kube:
        lines: list[str] = []
        report = stages.label(
            params,
            raw,
            raw / "manifest.parquet",
            out,
            s3_settings,
            kube_api=kube.api_client(),
            log=lines.append,
        )
        pods = kube.pods()
    assert report.num_samples == 24 and report.num_shards == 3
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"] * 3
    assert any("label part 0/3: 8 samples in 1 shards" in line for line in lines)
    local = run_label(LabelParams(), raw, raw / "manifest.parquet", tmp_path / "local" / "labels")
    assert local.num_samples == 24
    same_label_set(tmp_path / "local" / "labels", out)
