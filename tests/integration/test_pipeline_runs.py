"""``fourm-pipeline`` runs in their own worktrees: concurrency, refs, failure, cache reuse, reproduce.

One git + DVC project (tests/workspace.py, tiny params), one real Prefect API server
(Prefect's test harness), the session's real S3 server, a SQLite registry. The tests
run in file order and build on each other's runs, as users' runs do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from fourm.params import load_params
from fourm.registry.api import Registry
from fourm.settings import Settings
from tests.conftest import REPO
from tests.integration.test_flows import _artifacts_and_logs
from tests.workspace import make_workspace, run

pytestmark = pytest.mark.integration

STAGES = {
    "source", "validate", "label", "validate-labels", "train-tokenizer@rgb", "train-tokenizer@depth",
    "train-tokenizer@normal", "train-tokenizer@semseg", "train-text-tokenizer", "eval-tokenizers",
    "tokenize", "pretrain", "evaluate", "register",
}  # fmt: skip


@pytest.fixture(scope="module")
def project(
    s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("runs-project")
    ws, env = make_workspace(root, s3_settings, replace={"register.model_name": "fourm-test"})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: env[k] for k in ("FOURM_HOME", "FOURM_S3_ENDPOINT", "FOURM_S3_INTERNAL_PORTS",
                                           "PATH", "FOURM_REGISTRY_URL")})  # fmt: skip
    yield ws, env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _parameters(ws: Path, **changes: Any) -> dict[str, Any]:
    """The flow's parameters from the project's params.yaml, ``section__key=value`` changed."""
    from flows.pipeline import flow_parameters

    params = flow_parameters(load_params(ws / "params.yaml"))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section] = params[section].model_copy(update={key: value})
    return params


def _registry() -> Registry:
    return Registry(os.environ["FOURM_REGISTRY_URL"])


def _git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout


def _task_run_spans(flow_run_id) -> dict[str, tuple[Any, Any]]:  # noqa: ANN001
    """Task run name -> (start, end) of a flow run's task runs, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: (r.start_time, r.end_time) for r in runs if r.start_time and r.end_time}


def test_two_concurrent_runs_complete_with_their_own_refs(prefect_server: None, project) -> None:  # noqa: ANN001
    """Two runs at once (two threads, as a served deployment runs two flow runs), different learning rates."""
    from flows.pipeline import pipeline

    ws, _ = project
    runs = {"lr-a": 1e-3, "lr-b": 3e-3}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(
                pipeline, run_name=name, repo=str(ws), return_state=True, **_parameters(ws, pretrain__lr=lr)
            )
            for name, lr in runs.items()
        }
        states = {name: f.result() for name, f in futures.items()}
    for name, state in states.items():
        assert state.is_completed(), f"{name}: {state.message}"
    # the checkout the runs started from is untouched: no outputs, no lock, same params
    assert not (ws / "data").exists() and not (ws / "dvc.lock").exists()
    assert _git(ws, "status", "--porcelain") == ""

    # each run's ref: params.yaml, dvc.lock and the reports on top of the checkout's commit
    a, b = "refs/fourm-runs/lr-a", "refs/fourm-runs/lr-b"
    head = _git(ws, "rev-parse", "HEAD").strip()
    assert _git(ws, "rev-parse", f"{a}^").strip() == head == _git(ws, "rev-parse", f"{b}^").strip()
    changed = set(_git(ws, "diff", "--name-only", a, b).split())
    assert "params.yaml" in changed and "dvc.lock" in changed
    # besides what the runs produced (dvc.lock, reports), the two refs differ only in params.yaml,
    # and params.yaml only in the learning rate
    assert {p for p in changed if p != "dvc.lock" and not p.startswith("reports/")} == {"params.yaml"}
    pa = yaml.safe_load(_git(ws, "show", f"{a}:params.yaml"))
    pb = yaml.safe_load(_git(ws, "show", f"{b}:params.yaml"))
    assert pa["pretrain"].pop("lr") == 1e-3 and pb["pretrain"].pop("lr") == 3e-3
    assert pa == pb

    # two model versions, each tagged with its run's ref, lineage back to the dataset
    reg = _registry()
    try:
        versions = {v.tags["run"]: v for v in reg.list_versions("fourm-test")}
        assert set(versions) == set(runs)
        for name, version in versions.items():
            assert version.tags["git_ref"] == f"refs/fourm-runs/{name}"
            assert version.tags["git_commit"] == _git(ws, "rev-parse", f"refs/fourm-runs/{name}").strip()
            assert "beats_all_baselines" in version.metrics
            assert any(k.endswith("/baseline") for k in version.metrics)
            kinds = {x.kind for x in reg.upstream_artifacts(version.ref)}
            assert {"dataset", "label set", "token set", "tokenizer", "model checkpoint"} <= kinds
        assert versions["lr-a"].checkpoint.sha256 != versions["lr-b"].checkpoint.sha256
        # every stage ran in one of the runs, and each recorded its dvc.lock entry
        recorded = reg.runs(limit=500)
        assert {r.stage for r in recorded} == STAGES - {"register"}
        assert all(r.status == "succeeded" for r in recorded)
        assert all(r.dvc_lock_sha256 and len(r.dvc_lock_sha256) == 64 for r in recorded)
        flow_runs = {str(s.state_details.flow_run_id) for s in states.values()}
        assert {r.prefect_flow_run_id for r in recorded} <= flow_runs
    finally:
        reg.close()

    # what the UI shows: every stage's report, its images, the pipeline summary
    artifacts, logs = _artifacts_and_logs(states["lr-a"].state_details.flow_run_id)
    rules = json.loads(artifacts["validate-rules"].data)
    assert {r["rule"] for r in rules} >= {"id_unique", "rgb_decodable", "caption_length"}
    assert all(r["failed"] == 0 and r["checked"] == 24 for r in rules)
    assert json.loads(artifacts["validate-labels-rules"].data)[0]["checked"] == 24
    assert "validate-labels-summary" in artifacts and "source-report" in artifacts
    assert "data:image/png;base64,iVBOR" in artifacts["label-label-samples"].data  # the labeled-sample grid
    table = {r["tokenizer"]: r for r in json.loads(artifacts["eval-tokenizers-metrics"].data)}
    assert table["text"]["caption_exact"] == 1.0 and "psnr" in table["rgb"]
    assert "data:image/png;base64,iVBOR" in artifacts["eval-tokenizers-recon-semseg"].data
    assert "train-tokenizer-rgb-report" in artifacts and "tokenize-report" in artifacts
    validation = {r["modality"]: r for r in json.loads(artifacts["pretrain-validation"].data)}
    assert len(validation) >= 3 and all(r["unigram baseline"] > 0 for r in validation.values())
    assert "data:image/png;base64,iVBOR" in artifacts["pretrain-loss"].data
    rows = json.loads(artifacts["evaluate-metrics"].data)
    assert {r["task"] for r in rows} == {
        "rgb->depth", "rgb->normal", "rgb->semseg", "rgb->boxes", "rgb->caption", "caption->semseg"
    }  # fmt: skip
    assert "| task | metric | model | baseline | better |" in artifacts["evaluate-report"].data
    assert "data:image/png;base64,iVBOR" in artifacts["evaluate-gallery"].data
    assert any("labeled validation of data/labels: 24/24" in m for m in logs)
    summary = artifacts["pipeline-summary"].data
    assert "registered model: fourm-test:" in summary and "refs/fourm-runs/lr-a" in summary
    assert "gallery: " in summary and "reproduce: fourm reproduce fourm-test:" in summary
    assert any("Running stage 'pretrain'" in m for m in logs)
    assert any("pushed" in m for m in logs)

    # where the run's time went: a row per stage in start order, the timeline PNG, a summary line
    times = json.loads(artifacts["pipeline-stage-times"].data)
    assert {r["stage"] for r in times} == STAGES and all(r["seconds"] >= 0 for r in times)
    assert [r["start (s)"] for r in times] == sorted(r["start (s)"] for r in times)
    row = {r["stage"]: r for r in times}
    assert row["pretrain"]["start (s)"] >= row["tokenize"]["start (s)"] + row["tokenize"]["seconds"] - 0.1
    assert isinstance(row["train-tokenizer@rgb"]["threads"], int)  # side by side on a share of the cores
    assert "data:image/png;base64,iVBOR" in artifacts["pipeline-timeline"].data
    assert "stages: " in summary and "longest: " in summary
    timeline = Path(summary.split("timeline of the stages: ")[1].split()[0])
    assert timeline.read_bytes().startswith(b"\x89PNG")
    assert "reports/pipeline_timeline.png" not in _git(ws, "ls-tree", "-r", "--name-only", a).split()

    # independent stages ran side by side on a share of the cores; the DAG's order held
    spans = _task_run_spans(states["lr-a"].state_details.flow_run_id)
    (rgb_start, rgb_end), (semseg_start, semseg_end) = (
        spans["train-tokenizer@rgb"],
        spans["train-tokenizer@semseg"],
    )
    assert rgb_start < semseg_end and semseg_start < rgb_end
    assert spans["validate-labels"][1] <= min(rgb_start, semseg_start)
    assert spans["pretrain"][0] >= max(spans[f"train-tokenizer@{m}"][1] for m in ("rgb", "depth", "normal"))
    assert any("repro --single-item train-tokenizer@rgb  (" in m and " threads)" in m for m in logs)


def test_failed_stage_fails_the_run_then_a_fixed_run_reuses_every_output(
    prefect_server: None, project
) -> None:  # noqa: ANN001
    from flows.pipeline import pipeline

    ws, _ = project
    reg = _registry()
    before_versions = len(reg.list_versions("fourm-test"))
    before_runs = len(reg.runs(limit=500))
    reg.close()

    bad = pipeline(
        run_name="too-strict", repo=str(ws), return_state=True,
        **_parameters(ws, validation__caption_max_chars=20, pretrain__lr=1e-3),
    )  # fmt: skip
    assert bad.is_failed()
    assert "rules with failures: caption_length" in str(bad.message)
    artifacts, _ = _artifacts_and_logs(bad.state_details.flow_run_id)
    rules = {r["rule"]: r for r in json.loads(artifacts["validate-rules"].data)}
    assert rules["caption_length"]["failed"] == 24 and "FAILED" in artifacts["validate-summary"].data
    assert "pipeline-summary" not in artifacts
    reg = _registry()
    try:
        failed = [r for r in reg.runs(stage="validate", limit=500) if r.status == "failed"]
        assert len(failed) == 1 and "caption_length" in failed[0].error
        assert len(reg.list_versions("fourm-test")) == before_versions  # no model version
    finally:
        reg.close()
    assert not _git(ws, "for-each-ref", "refs/fourm-runs/too-strict")  # a failed run commits no ref

    # the same run with the rule fixed (the params of run lr-a): every stage comes from the cache
    fixed = pipeline(run_name="fixed", repo=str(ws), return_state=True, **_parameters(ws, pretrain__lr=1e-3))
    assert fixed.is_completed(), fixed.message
    artifacts, logs = _artifacts_and_logs(fixed.state_details.flow_run_id)
    restored = {s for s in STAGES if any(f"Stage '{s}' is cached - skipping run" in m for m in logs)}
    assert restored == STAGES
    times = json.loads(artifacts["pipeline-stage-times"].data)
    assert {r["stage"] for r in times} == STAGES
    assert {r["outputs"] for r in times} == {"restored from the cache"}
    assert (
        "the same model as run refs/fourm-runs/lr-a, which registered it"
        in artifacts["pipeline-summary"].data
    )
    reg = _registry()
    try:
        # no stage ran again (only the failed validation was added), no second version of the model
        assert len(reg.runs(limit=500)) == before_runs + 1
        assert len(reg.list_versions("fourm-test")) == before_versions
    finally:
        reg.close()
    assert _git(ws, "rev-parse", "refs/fourm-runs/fixed:dvc.lock") == _git(
        ws, "rev-parse", "refs/fourm-runs/lr-a:dvc.lock"
    )


def test_reproduce_from_a_fresh_clone(project, tmp_path: Path) -> None:  # noqa: ANN001
    """Only the git repository, the S3 remote (its config.local) and the registry database."""
    ws, env = project
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    shutil.copy(ws / ".dvc" / "config.local", clone / ".dvc" / "config.local")  # the remote's credentials
    reg = _registry()
    version = next(v for v in reg.list_versions("fourm-test") if v.tags["run"] == "lr-b")
    reg.close()
    home = tmp_path / "home"  # a fresh fourm home: nothing cached from the runs
    env = {**env, "FOURM_HOME": str(home)}
    fourm = str(REPO / ".venv" / "bin" / "fourm")
    # evaluate recomputed from the pulled inputs (the rest is checked as pulled)
    proc = run([fourm, "reproduce", version.ref, "--rerun", "evaluate"], clone, env)
    out = proc.stdout
    assert "Running stage 'evaluate'" in out
    print(out)  # the pass/fail table
    assert f"{version.ref} reproduced" in out and "FAIL" not in out
    assert "model checkpoint" in out and "dataset" in out and "token set" in out
    passed, total = (int(x) for x in out.split(" hashes (sha256) equal")[0].split()[-1].split("/"))
    assert passed == total >= 8
    # the clone's own cache was filled from S3, not from the runs' cache
    assert any((clone / ".dvc" / "cache").rglob("*"))

    # an unknown version, and a version no pipeline run made
    missing = run([fourm, "reproduce", "fourm-test:99"], clone, env, check=False)
    assert missing.returncode == 1 and "no version 99" in missing.stderr
    manual = run(
        [fourm, "registry", "register", "hand-made", "--checkpoint", str(clone / "params.yaml")], clone, env
    )
    assert manual.returncode == 0
    unmade = run([fourm, "reproduce", "hand-made:1"], clone, env, check=False)
    assert unmade.returncode == 1 and "no run ref" in unmade.stderr
