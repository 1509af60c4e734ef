"""Prefect flows against a real (temporary) Prefect server: stages, logs and artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fourm.settings import Settings

pytestmark = pytest.mark.integration


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
