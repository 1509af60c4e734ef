"""The model registry against SQLite and the real PostgreSQL (every test runs on both)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from fourm.params import MetricBounds, RegistryParams
from fourm.registry.api import Registry
from fourm.registry.errors import BadReference, GateFailed, NotFound, RegistryError

pytestmark = pytest.mark.integration


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture()
def reg(registry_url: str) -> Registry:
    r = Registry(registry_url)
    yield r
    r.close()


def _checkpoint(reg: Registry, n: int):  # noqa: ANN202
    return reg.register_artifact(
        "checkpoint", f"ckpt-{n}", f"s3://fourm-checkpoints/run{n}/last.pt", sha(f"ck{n}"), 1000 + n
    )


def _eval(reg: Registry, name: str = "test-split"):  # noqa: ANN202
    return reg.register_artifact("evaluation report", name, f"data/eval/{name}.json", sha(name), 10)


def _version(
    reg: Registry, n: int, metrics: dict | None = None, evaluation: int | None = None, name: str = "demo"
):  # noqa: ANN202
    return reg.register_model_version(
        name, _checkpoint(reg, n).id, metrics=metrics or {}, evaluation_artifact_id=evaluation
    )


def test_artifacts_are_idempotent_and_checked(reg: Registry) -> None:
    a = reg.register_artifact("dataset", "synthetic", "data/raw", sha("d"), 42, {"num_samples": 3})
    again = reg.register_artifact("dataset", "synthetic", "data/raw", sha("d"), 42)
    assert a.id == again.id and again.metadata == {"num_samples": 3}
    with pytest.raises(RegistryError, match="sha256 must be 64 lowercase hex"):
        reg.register_artifact("dataset", "x", "data/x", "not-a-hash")


def test_versions_are_monotonic_and_references_resolve(reg: Registry) -> None:
    assert [_version(reg, i).version for i in range(1, 4)] == [1, 2, 3]
    assert _version(reg, 9, name="other").version == 1
    assert reg.get_version("demo").version == 3
    assert reg.get_version("demo:2").checkpoint.name == "ckpt-2"
    reg.set_alias("demo:1", "champion")
    assert reg.get_version("demo@champion").version == 1
    reg.set_alias("demo:2", "champion")  # moving an alias
    assert reg.get_version("demo@champion").version == 2
    reg.promote("demo:3", "staging")
    assert reg.get_version("demo@staging").version == 3
    reg.remove_alias("demo", "champion")
    with pytest.raises(NotFound, match="no alias 'champion'"):
        reg.get_version("demo@champion")
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        reg.get_version("nope")
    with pytest.raises(NotFound, match="has no version 7"):
        reg.get_version("demo:7")
    with pytest.raises(NotFound, match="no version in stage 'production'"):
        reg.get_version("demo@production")
    for bad in ("demo:0", "demo:x", "demo@", "de mo", "demo:1@a", "@champion"):
        with pytest.raises(BadReference, match="malformed model reference"):
            reg.get_version(bad)
    with pytest.raises(BadReference, match="is a stage name"):
        reg.set_alias("demo:1", "production")


def test_lineage_reaches_dataset_through_labels_tokenizers_and_shards(reg: Registry) -> None:
    """dataset -> label -> tokenizer-train -> tokenize -> pretrain -> model, with every hash."""

    def stage(name: str, inputs: list, outputs: list) -> int:
        run = reg.start_run(
            name, {"stage": name}, git_commit="abc123", git_dirty=False, params_sha256=sha(name)
        )
        reg.link(run, [a.id for a in inputs], [a.id for a in outputs])
        reg.finish_run(run, "succeeded")
        return run

    dataset = reg.register_artifact("dataset", "synthetic", "data/raw", sha("dataset"), 100)
    stage("generate", [], [dataset])
    labels = reg.register_artifact("label set", "synthetic-labels", "data/labels", sha("labels"), 200)
    stage("label", [dataset], [labels])
    tokenizer = reg.register_artifact("tokenizer", "vqvae-depth", "data/tok/depth.pt", sha("tok"), 300)
    stage("tokenizer-train", [labels], [tokenizer])
    shards = reg.register_artifact("token shard set", "tokens", "s3://fourm-tokens/v1", sha("shards"), 400)
    stage("tokenize", [labels, tokenizer], [shards])
    ckpt = reg.register_artifact(
        "checkpoint", "4m-tiny", "s3://fourm-checkpoints/a/last.pt", sha("ckpt"), 500
    )
    pretrain = stage("pretrain", [shards, tokenizer], [ckpt])
    reg.register_model_version("fourm-tiny", ckpt.id, tokenizer_artifact_ids=[tokenizer.id], run_id=pretrain)

    up = reg.lineage("fourm-tiny:1", "upstream")
    hashes = {n.sha256 for n in up.nodes.values() if n.kind != "run"}
    assert {sha(x) for x in ("dataset", "labels", "tok", "shards", "ckpt")} <= hashes
    assert f"artifact:{dataset.id}" in up.nodes
    assert (
        f"artifact:{dataset.id}",
        f"run:{pretrain - 3}",
        "consumed by",
    ) in up.edges  # dataset -> label run
    assert {n.label.split()[2] for n in up.nodes.values() if n.kind == "run"} == {
        "generate",
        "label",
        "tokenizer-train",
        "tokenize",
        "pretrain",
    }
    down = reg.lineage(f"sha256:{sha('dataset')[:10]}", "downstream")
    assert "model:fourm-tiny:1" in down.nodes
    assert reg.lineage(f"artifact:{tokenizer.id}", "downstream").nodes.keys() >= {"model:fourm-tiny:1"}
    shallow = reg.lineage("fourm-tiny:1", "upstream", depth=2)
    assert f"artifact:{dataset.id}" not in shallow.nodes

    from fourm.registry.lineage import render

    assert "flowchart LR" in render(up, "mermaid") and "digraph lineage" in render(up, "dot")
    assert sha("dataset") in render(up, "text")
    with pytest.raises(BadReference):
        reg.lineage("artifact:abc")
    with pytest.raises(NotFound):
        reg.lineage("sha256:ffffffffff")


def test_production_is_unique_and_rollback_restores_previous(reg: Registry) -> None:
    for i in (1, 2, 3):
        _version(reg, i)
    reg.promote("demo:1", "production", "first", actor="alice")
    event = reg.promote("demo:2", "production", "better", actor="bob")
    assert event.replaced_version == 1 and event.from_stage == "none"
    assert reg.get_version("demo:1").stage == "archived"
    assert [v.version for v in reg.list_versions("demo") if v.stage == "production"] == [2]
    back = reg.rollback("demo", actor="carol")
    assert (back.version, back.replaced_version, back.to_stage) == (1, 2, "production")
    assert reg.get_version("demo@production").version == 1
    reg.archive("demo:1", "retired")
    assert reg.list_models()[0]["production"] == []
    history = reg.history("demo")
    assert [(e.version, e.to_stage, e.actor) for e in history][:3] == [
        (1, "production", "alice"),
        (2, "production", "bob"),
        (1, "production", "carol"),
    ]
    with pytest.raises(RegistryError, match="no production version to roll back"):
        reg.rollback("demo")
    with pytest.raises(RegistryError, match="unknown stage 'prod'"):
        reg.promote("demo:3", "prod")
    with pytest.raises(RegistryError, match="already in stage 'archived'"):
        reg.promote("demo:1", "archived")


def test_gates_thresholds_and_not_worse_than_production(registry_url: str) -> None:
    gates = RegistryParams(
        thresholds={"depth.delta1": MetricBounds(min=0.5)},
        compare_metric="depth.delta1",
        higher_is_better=True,
    )
    reg = Registry(registry_url, gates)
    ev = _eval(reg).id
    _version(reg, 1, {"depth.delta1": 0.8}, ev)
    _version(reg, 2, {"depth.delta1": 0.7}, ev)
    _version(reg, 3, {"depth.delta1": 0.4}, ev)
    _version(reg, 4, {"depth.delta1": 0.9}, _eval(reg, "other-split").id)
    reg.promote("demo:1", "production")

    with pytest.raises(GateFailed) as worse:
        reg.promote("demo:2", "production", "try")
    assert "0.7 on demo:2 vs 0.8 on production demo:1" in str(worse.value)
    with pytest.raises(GateFailed, match=r"depth.delta1 = 0.4 \(required >= 0.5\)"):
        reg.promote("demo:3", "staging")
    with pytest.raises(GateFailed, match="not evaluated on the same evaluation artifact"):
        reg.promote("demo:4", "production")
    with pytest.raises(RegistryError, match="--force needs a --reason"):
        reg.promote("demo:2", "production", force=True)

    forced = reg.promote("demo:2", "production", "hotfix approved by the on-call", actor="dana", force=True)
    assert forced.forced and forced.replaced_version == 1
    assert forced.gate_results["vs-production:depth.delta1"]["passed"] is False
    assert (
        reg.history("demo")[-1].forced and reg.history("demo")[-1].reason == "hotfix approved by the on-call"
    )
    # a passing promotion is recorded as not forced, with its gate results
    ok = reg.promote("demo:1", "production", "back to the better one")
    assert not ok.forced and ok.gate_results["vs-production:depth.delta1"]["passed"] is True
    reg.close()


def test_concurrent_promotions_leave_one_production(registry_url: str) -> None:
    reg = Registry(registry_url)
    for i in range(1, 17):
        _version(reg, i)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def promote(i: int) -> None:
        try:
            r = Registry(registry_url)  # one engine per "user", all opening at once
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            barrier.abort()
            return
        try:
            barrier.wait()
            r.promote(f"demo:{i}", "production", f"race {i}", actor=f"user{i}")
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
        finally:
            r.close()

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(1, 17)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    versions = reg.list_versions("demo")
    production = [v.version for v in versions if v.stage == "production"]
    assert len(production) == 1
    events = reg.history("demo")
    assert len(events) == 16
    # serialised: each promotion replaced exactly the one before it, none was lost
    assert events[0].replaced_version is None
    for before, after in zip(events, events[1:], strict=False):
        assert after.replaced_version == before.version
    assert events[-1].version == production[0]
    assert sorted(e.version for e in events) == list(range(1, 17))
    reg.close()


def test_diff_and_card(reg: Registry) -> None:
    tok = reg.register_artifact("tokenizer", "text", "data/tok/text.json", sha("t1"), 5)
    tok2 = reg.register_artifact("tokenizer", "text", "data/tok/text.json", sha("t2"), 5)
    runs = []
    for lr in (1e-4, 3e-4):
        run = reg.start_run("pretrain", {"train": {"lr": lr, "steps": 100}}, git_commit="c0ffee")
        reg.finish_run(run, "succeeded")
        runs.append(run)
    ev = _eval(reg).id
    reg.register_model_version(
        "m",
        _checkpoint(reg, 1).id,
        tokenizer_artifact_ids=[tok.id],
        run_id=runs[0],
        metrics={"loss": 2.0, "baselines": {"loss": 4.1}},
        evaluation_artifact_id=ev,
    )
    reg.register_model_version(
        "m",
        _checkpoint(reg, 2).id,
        tokenizer_artifact_ids=[tok2.id],
        run_id=runs[1],
        metrics={"loss": 1.5, "baselines": {"loss": 4.1}},
        evaluation_artifact_id=ev,
    )
    d = reg.diff("m:1", "m:2")
    assert d["params"] == [{"key": "train.lr", "a": 1e-4, "b": 3e-4}]
    assert d["tokenizers"] == [{"key": "text", "a": sha("t1"), "b": sha("t2")}]
    assert {"key": "loss", "a": 2.0, "b": 1.5} in d["metrics"]
    reg.promote("m:2", "production", "best loss", actor="erin")
    card = reg.card("m@production")
    assert card.startswith("# Model card: m:2")
    assert "| loss | 1.5 | 4.1 |" in card
    assert "erin" in card and "best loss" in card and '"lr": 0.0003' in card
    assert sha("t2")[:16] in card


def test_concurrent_first_registrations_of_a_new_model(registry_url: str) -> None:
    """16 writers register versions of a model that does not exist yet: 16 distinct versions."""
    Registry(registry_url).close()
    barrier = threading.Barrier(16)
    versions: list[int] = []
    errors: list[BaseException] = []

    def register(i: int) -> None:
        with Registry(registry_url) as r:
            ck = r.register_artifact("checkpoint", "shared", "s3://b/shared.pt", sha("shared"), 1)
            try:
                barrier.wait()
                versions.append(r.register_model_version("fresh", ck.id).version)
            except BaseException as e:  # noqa: BLE001 - asserted below
                errors.append(e)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(versions) == list(range(1, 17))


def test_database_enforces_one_production_version(registry_url: str) -> None:
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from fourm.registry.models import ModelVersion

    reg = Registry(registry_url)
    _version(reg, 1)
    _version(reg, 2)
    reg.promote("demo:1", "production")
    with Session(reg.engine) as s, pytest.raises(IntegrityError):  # bypassing the API
        s.execute(update(ModelVersion).where(ModelVersion.version == 2).values(stage="production"))
        s.commit()
    reg.close()
