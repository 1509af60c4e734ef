"""Local label workers and per-shard resume: the same bytes however many processes label, and a
rerun after a crash labels only the shards not finished for the same inputs and labelers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fourm.cli import app
from fourm.data.format import Dataset
from fourm.data.generate import run_generate
from fourm.io import sha256_file
from fourm.labelers.base import LabelerError, RawSample, register_labeler
from fourm.labelers.oracle import OracleLabeler
from fourm.labelers.shard_store import ShardStore, label_parts_dir
from fourm.labelers.stage import run_label
from fourm.params import GenerateParams, LabelParams

pytestmark = pytest.mark.integration

SEEN: list[str] = []  # sample ids the "counting-oracle" labeler was given
FAIL_AT: dict[str, int | None] = {"call": None}  # raise on this call (1-based), as a crash would


@register_labeler("counting-oracle")
class CountingOracle(OracleLabeler):
    """The oracle, counting what it labels and failing on request; its provenance never changes."""

    name = "counting-oracle"

    def __init__(self, scale: int = 1):
        self.scale = scale
        self.calls = 0

    def __call__(self, batch: list[RawSample]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls == FAIL_AT["call"]:
            raise LabelerError(f"counting-oracle: crash on call {self.calls}")
        SEEN.extend(s.id for s in batch)
        return super().__call__(batch)


COUNTING = {m: "counting-oracle" for m in ("depth", "normal", "semseg", "instance", "boxes")}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 generated scenes in 5 raw shards of 4; its manifest is the accepted one."""
    out = tmp_path_factory.mktemp("label-workers") / "raw"
    run_generate(GenerateParams(num_scenes=20, samples_per_shard=4, workers=1), out)
    return out


@pytest.fixture(autouse=True)
def _reset() -> None:
    SEEN.clear()
    FAIL_AT["call"] = None


def fingerprint(labels: Path) -> dict[str, str]:
    """sha256 of dataset.json, the manifest and every shard of a label set."""
    files = [labels / "dataset.json", labels / "manifest.parquet", *sorted((labels / "shards").iterdir())]
    return {p.name: sha256_file(p) for p in files}


def shards_seen(raw: Path) -> set[str]:
    shard_of = {r["id"]: r["shard"] for r in Dataset.open(raw).rows}
    return {shard_of[i] for i in SEEN}


def test_two_workers_give_the_bytes_of_one(raw: Path, tmp_path: Path):
    one = run_label(LabelParams(workers=1), raw, raw / "manifest.parquet", tmp_path / "one" / "labels")
    two = run_label(LabelParams(workers=2), raw, raw / "manifest.parquet", tmp_path / "two" / "labels")
    assert (one.workers, two.workers) == (1, 2)
    assert one.num_samples == two.num_samples == 20 and two.num_shards == 5
    assert fingerprint(tmp_path / "one" / "labels") == fingerprint(tmp_path / "two" / "labels")
    assert "workers" not in Dataset.open(tmp_path / "two" / "labels").card["params"]  # speed, not bytes
    assert not label_parts_dir(tmp_path / "two" / "labels").exists()


def test_two_workers_give_the_bytes_of_one_with_a_model_backed_labeler(raw: Path, tmp_path: Path):
    """hf-depth's float results change with torch's thread count: workers must not change it."""
    pytest.importorskip("transformers")
    import torch

    from fourm.labelers.tiny_models import tiny_labeler_options

    options = tiny_labeler_options(tmp_path / "models", ["hf-depth"])
    params = {"labelers": {"depth": "hf-depth", "normal": "hf-depth"}, "options": options}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # not the default: the workers must follow this process, not start afresh
    try:
        for workers in (1, 2):
            out = tmp_path / f"w{workers}" / "labels"
            run_label(LabelParams(workers=workers, **params), raw, raw / "manifest.parquet", out)
    finally:
        torch.set_num_threads(threads)
    assert fingerprint(tmp_path / "w1" / "labels") == fingerprint(tmp_path / "w2" / "labels")


def test_a_rerun_after_a_crash_labels_only_the_unfinished_shards(raw: Path, tmp_path: Path):
    clean = run_label(LabelParams(labelers=COUNTING), raw, raw / "manifest.parquet", tmp_path / "clean")
    assert len(shards_seen(raw)) == 5 and clean.num_shards == 5
    SEEN.clear()

    out = tmp_path / "labels"
    FAIL_AT["call"] = 3  # batch size > shard size: one call per shard, so shard 3 of 5 fails
    with pytest.raises(LabelerError, match="crash on call 3"):
        run_label(LabelParams(labelers=COUNTING), raw, raw / "manifest.parquet", out)
    assert not out.exists()  # nothing half-written at the output
    assert len(shards_seen(raw)) == 2
    stored = list(label_parts_dir(out).glob("*/*.tar.json"))
    assert len(stored) == 2  # the two finished shards are kept

    SEEN.clear()
    FAIL_AT["call"] = None
    resumed = run_label(LabelParams(labelers=COUNTING), raw, raw / "manifest.parquet", out)
    assert len(shards_seen(raw)) == 3  # only the unfinished ones
    assert resumed.num_samples == 20 and resumed.num_shards == 5
    assert not label_parts_dir(out).exists()  # handed over
    assert fingerprint(tmp_path / "clean") == fingerprint(out)


def test_shards_of_other_labeler_options_are_labeled_again(raw: Path, tmp_path: Path):
    out = tmp_path / "labels"
    FAIL_AT["call"] = 5
    with pytest.raises(LabelerError):
        run_label(LabelParams(labelers=COUNTING), raw, raw / "manifest.parquet", out)
    assert len(shards_seen(raw)) == 4
    SEEN.clear()
    FAIL_AT["call"] = None
    other = LabelParams(labelers=COUNTING, options={"counting-oracle": {"scale": 2}})
    run_label(other, raw, raw / "manifest.parquet", out)
    assert len(shards_seen(raw)) == 5  # different provenance (an option): everything again
    assert Dataset.open(out).card["params"]["options"] == {"counting-oracle": {"scale": 2}}


def test_parts_with_workers_then_an_assembly_with_workers(raw: Path, tmp_path: Path):
    out = tmp_path / "labels"
    part = run_label(LabelParams(workers=2), raw, raw / "manifest.parquet", out, part=(0, 2))
    assert part.num_shards == 2 and not out.exists()
    assert len(list(label_parts_dir(out).glob("*/*.tar.json"))) == 2
    report = run_label(LabelParams(workers=2), raw, raw / "manifest.parquet", out)
    assert report.num_shards == 5 and not label_parts_dir(out).exists()
    run_label(LabelParams(), raw, raw / "manifest.parquet", tmp_path / "whole")
    assert fingerprint(tmp_path / "whole") == fingerprint(out)


def test_a_damaged_or_foreign_stored_shard_is_not_taken(raw: Path, tmp_path: Path):
    out = tmp_path / "labels"
    run_label(LabelParams(labelers=COUNTING), raw, raw / "manifest.parquet", out, part=(0, 5))
    store_dir = next(label_parts_dir(out).iterdir())
    (store_dir / "shard-000000.tar").write_bytes(b"damaged")
    SEEN.clear()
    run_label(LabelParams(labelers=COUNTING), raw, raw / "manifest.parquet", out)
    assert len(shards_seen(raw)) == 5


def test_store_identity_and_records(tmp_path: Path):
    identity = {"labelers": {"depth": {"name": "x", "size": (1, 2)}}, "params": {}, "resolution": 64}
    store = ShardStore(tmp_path / "labels", identity)
    assert store.root.parent == tmp_path / ".labels.parts"
    assert store.finished() == {}
    with store.scratch() as tmp:
        (tmp / "a.tar").write_bytes(b"tar bytes")
        entry = {"name": "a.tar", "sha256": sha256_file(tmp / "a.tar"), "size": 9, "num_samples": 1}
        kept = store.put("a.tar", tmp / "a.tar", entry, [{"id": "s1", "split": "train"}])
    store.put("b.tar", None, None, [])  # a raw shard with no accepted sample
    assert store.finished() == {"a.tar": kept, "b.tar": store.finished()["b.tar"]}
    assert store.finished()["b.tar"].entry is None and store.read(kept) == b"tar bytes"
    assert list(store.root.glob(".tmp-*")) == []
    other = ShardStore(tmp_path / "labels", {**identity, "resolution": 32})
    assert other.root != store.root and other.finished() == {}
    (store.root / "c.tar.json").write_text("{not json")  # a torn record is ignored
    assert set(store.finished()) == {"a.tar", "b.tar"}


def test_bench_label_cli_writes_a_report(tmp_path: Path):
    report = tmp_path / "bench.json"
    args = ["bench", "label", "--labeler", "oracle", "--labeler", "hf-depth", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "--device cuda" in result.output
    data = json.loads(report.read_text())
    assert set(data["labelers"]) == {"oracle", "hf-depth"}
    for name, r in data["labelers"].items():
        assert r["images_per_second"] > 0, name
    assert data["labelers"]["hf-depth"]["model"] == "tiny random"
    assert data["labelers"]["oracle"]["images"] == "synthetic scenes"
