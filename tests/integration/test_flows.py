"""Prefect flows against a real (temporary) Prefect server: stages, logs and artifacts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fourm.settings import Settings
from tests.workspace import make_workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's test harness: a real Prefect API server on a temporary database."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


def _artifacts_and_logs(flow_run_id) -> tuple[dict[str, object], list[str]]:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs: list = []
        while True:  # the API pages logs (200 per call by default)
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), offset=len(logs)
            )
            logs.extend(page)
            if not page:
                break
    return {a.key: a for a in arts}, [entry.message for entry in logs]


@pytest.fixture()
def workspace_env(s3_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    ws, env = make_workspace(tmp_path, s3_settings)
    for key in ("FOURM_HOME", "FOURM_S3_ENDPOINT", "FOURM_S3_INTERNAL_PORTS", "PATH", "FOURM_REGISTRY_URL"):
        monkeypatch.setenv(key, env[key])
    return ws


def test_pipeline_flow_runs_stages_and_publishes_validation(
    prefect_server: None, workspace_env: Path
) -> None:
    from flows.pipeline import pipeline

    state = pipeline(workspace=str(workspace_env), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary[0].startswith(f"dataset: {workspace_env / 'data' / 'raw'}")
    assert "24/24 samples pass" in summary[1]

    artifacts, logs = _artifacts_and_logs(state.state_details.flow_run_id)
    rules = json.loads(artifacts["validate-rules"].data)
    assert {r["rule"] for r in rules} >= {"id_unique", "rgb_decodable", "caption_length"}
    assert all(r["failed"] == 0 and r["checked"] == 24 for r in rules)
    assert json.loads(artifacts["validate-labels-rules"].data)[0]["checked"] == 24
    assert "validate-labels-summary" in artifacts and "source-report" in artifacts
    assert "data:image/png;base64,iVBOR" in artifacts["label-label-samples"].data  # the labeled-sample grid
    # tokenizer results: a metrics table and a reconstruction grid per image modality
    table = {r["tokenizer"]: r for r in json.loads(artifacts["eval-tokenizers-metrics"].data)}
    assert table["text"]["caption_exact"] == 1.0 and "psnr" in table["rgb"]
    assert "data:image/png;base64,iVBOR" in artifacts["eval-tokenizers-recon-semseg"].data
    assert "train-tokenizer-rgb-report" in artifacts and "tokenize-report" in artifacts
    # pretraining: val loss per modality beside its unigram baseline, and the loss curves
    validation = {r["modality"]: r for r in json.loads(artifacts["pretrain-validation"].data)}
    # a tiny run (4 val samples, 16 targets each) need not draw targets of every modality
    assert (
        set(validation) <= {"rgb", "depth", "normal", "semseg", "caption", "boxes"} and len(validation) >= 3
    )
    assert all(r["unigram baseline"] > 0 for r in validation.values())
    assert "data:image/png;base64,iVBOR" in artifacts["pretrain-loss"].data
    # evaluation: every task's metrics beside its baseline, the markdown report, the galleries
    rows = json.loads(artifacts["evaluate-metrics"].data)
    assert {r["task"] for r in rows} == {
        "rgb->depth",
        "rgb->normal",
        "rgb->semseg",
        "rgb->boxes",
        "rgb->caption",
        "caption->semseg",
    }
    assert "| task | metric | model | baseline | better |" in artifacts["evaluate-report"].data
    assert "data:image/png;base64,iVBOR" in artifacts["evaluate-gallery"].data
    # each stage's own output is streamed into the run log
    assert any("Running stage 'source'" in m for m in logs)
    assert any("labeled validation of data/labels: 24/24" in m for m in logs)
    assert any("pushed" in m for m in logs)
    # the registry knows which flow run made each stage run, and its dvc.lock entry
    from fourm.registry.api import Registry

    reg = Registry(os.environ["FOURM_REGISTRY_URL"])
    runs = reg.runs()
    assert {r.stage for r in runs} == {
        "source",
        "validate",
        "label",
        "validate-labels",
        *(f"train-tokenizer@{m}" for m in ("rgb", "depth", "normal", "semseg")),
        "train-text-tokenizer",
        "eval-tokenizers",
        "tokenize",
        "pretrain",
        "evaluate",
    }
    assert {r.prefect_flow_run_id for r in runs} == {str(state.state_details.flow_run_id)}
    assert all(r.dvc_lock_sha256 and len(r.dvc_lock_sha256) == 64 for r in runs)
    reg.close()


def test_failed_validation_fails_the_run_and_publishes_its_report(
    prefect_server: None, workspace_env: Path
) -> None:
    from flows.pipeline import pipeline

    params = workspace_env / "params.yaml"
    params.write_text(params.read_text().replace("caption_max_chars: 600", "caption_max_chars: 20"))
    state = pipeline(workspace=str(workspace_env), push_to_remote=False, return_state=True)
    assert state.is_failed()
    artifacts, logs = _artifacts_and_logs(state.state_details.flow_run_id)
    rules = {r["rule"]: r for r in json.loads(artifacts["validate-rules"].data)}
    assert rules["caption_length"]["failed"] == 24
    assert "FAILED" in artifacts["validate-summary"].data
    assert any("validation failed" in m for m in logs)
    assert any("rule caption_length" in m and "24 failed" in m for m in logs)
    assert "rules with failures: caption_length" in str(state.message)
    assert not (workspace_env / "data" / "raw_validated").exists()
    assert "validate-labels-rules" not in artifacts
    from fourm.registry.api import Registry

    reg = Registry(os.environ["FOURM_REGISTRY_URL"])
    failed = reg.runs(stage="validate")[0]
    assert failed.status == "failed" and "caption_length" in failed.error
    reg.close()


def test_stage_flow_with_typed_params(prefect_server: None, tmp_path: Path) -> None:
    from flows.stages import generate_flow, validate_flow
    from fourm.params import GenerateParams, ValidateParams

    state = generate_flow(
        params={"num_scenes": 6, "samples_per_shard": 4, "workers": 1},
        out_dir=str(tmp_path / "raw"),
        return_state=True,
    )
    assert state.is_completed() and state.result()["num_samples"] == 6
    report = validate_flow(
        suite="raw", params=ValidateParams(), dataset=str(tmp_path / "raw"), out_dir=str(tmp_path / "ok")
    )
    assert report["passed"] and report["num_samples"] == 6
    bad = generate_flow(params={"num_scenes": 0}, out_dir=str(tmp_path / "x"), return_state=True)
    assert bad.is_failed() and "num_scenes" in str(bad.message)
    # the flow's parameter schema is the params model, so the UI form shows its fields
    schema = generate_flow.parameters.model_dump()["definitions"]
    assert set(GenerateParams.model_fields) <= set(schema["GenerateParams"]["properties"])


def test_ingest_flow_publishes_the_quarantine(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.stages import ingest_flow
    from tests.photos import write_photo_folder

    monkeypatch.setenv("FOURM_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    photos = write_photo_folder(tmp_path / "photos", per_photo=2)
    state = ingest_flow(
        source=str(tmp_path / "photos"), params={"samples_per_shard": 4}, out_dir=str(tmp_path / "raw"),
        return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    assert state.result()["num_ingested"] == len(photos)
    artifacts, _ = _artifacts_and_logs(state.state_details.flow_run_id)
    rows = json.loads(artifacts["ingest-quarantine"].data)
    assert sorted(r["rules"] for r in rows) == ["empty_file", "not_image"]
    assert all(r["source"].startswith("bad/") and r["reason"] for r in rows)
    missing = ingest_flow(source=str(tmp_path / "nowhere"), out_dir=str(tmp_path / "x"), return_state=True)
    assert missing.is_failed() and "nowhere" in str(missing.message)
    assert not (tmp_path / "x").exists()


def test_pretrain_flow_with_typed_params_publishes_validation_and_curves(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.stages import pretrain_flow
    from fourm.params import PretrainParams
    from tests.token_data import tiny_token_set

    monkeypatch.setenv("FOURM_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    tokens = tiny_token_set(tmp_path / "tokens", train=32, val=8)
    params = {
        "model": {"size": "debug", "inputs": ["rgb", "caption"], "targets": ["semseg", "caption"]},
        "masking": {"input_budget": 16, "target_budget": 16},
        "steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
        "checkpoint_every": 2, "loader_workers": 0, "bf16": False, "upload_checkpoints": False,
    }  # fmt: skip
    state = pretrain_flow(
        params=params,
        tokens=str(tokens),
        out_dir=str(tmp_path / "model"),
        reports_dir=str(tmp_path / "reports"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert state.result()["steps"] == 4 and (tmp_path / "model" / "model.pt").exists()
    artifacts, _ = _artifacts_and_logs(state.state_details.flow_run_id)
    rows = {r["modality"]: r for r in json.loads(artifacts["pretrain-validation"].data)}
    assert set(rows) == {"semseg", "caption"} and rows["semseg"]["unigram baseline"] > 0
    assert "data:image/png;base64,iVBOR" in artifacts["pretrain-loss"].data
    schema = pretrain_flow.parameters.model_dump()["definitions"]
    assert set(PretrainParams.model_fields) <= set(schema["PretrainParams"]["properties"])


def test_pretrain_flow_trains_on_kubernetes_when_params_say_so(
    prefect_server: None, s3_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`launcher: kubernetes` in the flow's params: the task launches pods (on the stand-in API
    server of tests/kube_standin.py: no real cluster can run here), rank 0's log and the pod
    events land in the flow run's Prefect logs, and the pods carry the flow run's id."""

    from flows.stages import pretrain_flow
    from tests.conftest import settings_env
    from tests.integration.test_k8s_launch import free_port, write_kubeconfig
    from tests.kube_cluster import fourm_standin
    from tests.token_data import tiny_token_set

    tokens = tiny_token_set(tmp_path / "tokens", train=32, val=8)
    with fourm_standin(tmp_path / "kube", s3_settings) as kube:
        for key, value in settings_env(s3_settings).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("FOURM_K8S_CONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", kube.url)))
        monkeypatch.setenv("FOURM_REGISTRY_URL", f"sqlite:///{tmp_path / 'registry.db'}")
        params = {
            "model": {"size": "debug", "inputs": ["rgb", "caption"], "targets": ["semseg", "caption"]},
            "masking": {"input_budget": 16, "target_budget": 16},
            "steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
            "checkpoint_every": 2, "loader_workers": 0, "bf16": False, "launcher": "kubernetes",
            "kubernetes": {"nodes": 2, "gpus_per_node": 0, "cpu": "1", "memory": "2Gi", "tolerations": [],
                           "wandb_secret": None, "rendezvous_port": free_port()},
        }  # fmt: skip
        state = pretrain_flow(
            params=params,
            tokens=str(tokens),
            out_dir=str(tmp_path / "model"),
            reports_dir=str(tmp_path / "reports"),
            return_state=True,
        )
        assert state.is_completed(), state.message
        flow_run_id = state.state_details.flow_run_id
        pods = kube.pods()
    assert state.result()["steps"] == 4 and (tmp_path / "model" / "model.pt").exists()
    assert len(pods) == 2
    assert {p["metadata"]["labels"]["fourm.dev/flow-run-id"] for p in pods} == {str(flow_run_id)}
    _, logs = _artifacts_and_logs(flow_run_id)
    text = "\n".join(logs)
    assert "[kubernetes] job fourm/pretrain-debug-" in text and "node 0 of 2" in text
