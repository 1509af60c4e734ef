"""The DVC DAG on a tiny dataset: repro, up-to-date re-run, push, and a byte-identical pull."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fourm.io import sha256_file
from fourm.settings import Settings
from tests.workspace import make_workspace, run

pytestmark = pytest.mark.integration

STAGE_OUTPUTS = [
    "data/raw",
    "data/raw_validated",
    "data/labels",
    "data/labels_validated",
    "data/tokenizers",
    "data/tokens",
    "models/pretrain",
]
STAGES = (
    "source",
    "validate",
    "label",
    "validate-labels",
    "train-tokenizer@rgb",
    "train-tokenizer@depth",
    "train-tokenizer@normal",
    "train-tokenizer@semseg",
    "train-text-tokenizer",
    "eval-tokenizers",
    "tokenize",
    "pretrain",
    "evaluate",
    "register",
)


def _hashes(ws: Path) -> dict[str, str]:
    # DVC's own .gitignore files (it writes one beside outputs in subfolders) are not outputs
    files = [
        p
        for out in STAGE_OUTPUTS
        for p in sorted((ws / out).rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    ]
    return {str(p.relative_to(ws)): sha256_file(p) for p in files}


def test_repro_push_delete_pull_restores_identical_bytes(s3_settings: Settings, tmp_path: Path) -> None:
    ws, env = make_workspace(tmp_path, s3_settings)

    first = run(["dvc", "repro"], ws, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout

    again = run(["dvc", "repro"], ws, env)
    assert "Running stage" not in again.stdout
    assert "up to date" in run(["dvc", "status"], ws, env).stdout

    metrics = run(["dvc", "metrics", "show"], ws, env).stdout
    assert "reports/validate_raw.json" in metrics and "num_bad" in metrics

    _check_registry_records(env["FOURM_REGISTRY_URL"], ws)
    _check_token_lineage(env["FOURM_REGISTRY_URL"], ws)

    before = _hashes(ws)
    assert any(k.endswith(".tar") for k in before) and any(k.endswith("quarantine.json") for k in before)
    assert (ws / "reports" / "validate_raw_docs" / "index.html").exists()  # Data Docs: a view, not an output
    assert (ws / "reports" / "label_samples.png").read_bytes()[:4] == b"\x89PNG"
    for modality in ("rgb", "depth", "normal", "semseg"):
        recon = ws / "reports" / "tokenizers" / "recon" / f"recon_{modality}.png"
        assert recon.read_bytes()[:4] == b"\x89PNG"
        assert "step,loss" in (ws / "reports" / "tokenizers" / f"{modality}_loss.csv").read_text()
    assert "caption_exact" in metrics and "psnr" in metrics
    assert "reports/pretrain/metrics.json" in metrics and "val_loss" in metrics
    assert "step,loss,lr,grad_norm" in (ws / "reports" / "pretrain" / "history.csv").read_text()
    assert "reports/evaluate/metrics.json" in metrics and "beats_baseline" in metrics
    assert (ws / "reports" / "evaluate" / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    run(["dvc", "push"], ws, env)

    shutil.rmtree(ws / ".dvc" / "cache")
    for out in STAGE_OUTPUTS:
        shutil.rmtree(ws / out)
    run(["dvc", "pull"], ws, env)
    assert _hashes(ws) == before
    assert "up to date" in run(["dvc", "status"], ws, env).stdout


def test_params_change_reruns_only_downstream(s3_settings: Settings, tmp_path: Path) -> None:
    ws, env = make_workspace(tmp_path, s3_settings)
    run(["dvc", "repro"], ws, env)
    params = (ws / "params.yaml").read_text().replace("batch_size: 64", "batch_size: 5")
    (ws / "params.yaml").write_text(params)
    second = run(["dvc", "repro"], ws, env)
    assert "Running stage 'source'" not in second.stdout
    assert "Running stage 'label'" in second.stdout
    # labels are the same bytes whatever the batch size, so validation is restored from cache
    assert "Running stage 'validate-labels'" not in second.stdout
    assert "Running stage 'train-tokenizer@rgb'" not in second.stdout


def _check_registry_records(url: str, ws: Path) -> None:
    """Every stage run is in the registry with its code version, params hash and hashed outputs."""
    from fourm.registry.api import Registry

    reg = Registry(url)
    runs = {r.stage: r for r in reg.runs()}
    assert set(runs) == set(STAGES) - {"register"}  # register adds a model version, not a run
    head = run(["git", "rev-parse", "HEAD"], ws, {**os.environ}).stdout.strip()
    for r in runs.values():
        assert r.status == "succeeded" and r.git_commit == head and len(r.params_sha256) == 64
    _, outputs = reg.run_io(runs["source"].id)
    assert outputs[0].kind == "dataset"
    assert outputs[0].sha256 == sha256_file(ws / "data" / "raw" / "dataset.json")
    # validated labels trace back to the raw dataset through the label run
    validated = reg.run_io(runs["validate-labels"].id)[1]
    graph = reg.lineage(f"artifact:{validated[0].id}", "upstream")
    assert f"artifact:{outputs[0].id}" in graph.nodes
    assert any(n.label.startswith(f"run {runs['label'].id} label") for n in graph.nodes.values())
    # the label run read exactly what the validate run wrote (one artifact, one lineage chain)
    validated_raw = reg.run_io(runs["validate"].id)[1]
    label_inputs = reg.run_io(runs["label"].id)[0]
    assert {a.id for a in validated_raw if a.kind == "validated dataset"} <= {a.id for a in label_inputs}
    # the register stage: the evaluated checkpoint is version 1, made by the pretrain run
    version = reg.get_version("fourm-4m:1")
    assert version.checkpoint.sha256 == sha256_file(ws / "models" / "pretrain" / "model.pt")
    assert version.run_id == runs["pretrain"].id and version.evaluation is not None
    assert {t.name for t in version.tokenizers} == {"rgb", "depth", "normal", "semseg", "text"}
    assert json.loads((ws / "reports" / "register.json").read_text())["ref"] == "fourm-4m:1"
    reg.close()


def _check_token_lineage(url: str, ws: Path) -> None:
    """The token set traces back through the tokenize run to the tokenizers and the dataset."""
    from fourm.registry.api import Registry

    reg = Registry(url)
    tokenize_run = reg.runs(stage="tokenize")[0]
    inputs, outputs = reg.run_io(tokenize_run.id)
    assert [a.kind for a in outputs] == ["token set"]
    assert outputs[0].sha256 == sha256_file(ws / "data" / "tokens" / "tokens.json")
    assert outputs[0].metadata["published"].startswith("s3://")
    tokenizers = {a.name for a in inputs if a.kind == "tokenizer"}
    assert tokenizers == {f"tokenizer-{n}" for n in ("rgb", "depth", "normal", "semseg", "text")}
    # each tokenizer artifact is the output of its training run
    trained = reg.run_io(reg.runs(stage="train-tokenizer@depth")[0].id)[1]
    assert trained[0].kind == "tokenizer" and trained[0].id in {a.id for a in inputs}
    # the pretrained model was made from exactly that token set
    model_inputs, model_outputs = reg.run_io(reg.runs(stage="pretrain")[0].id)
    assert [a.id for a in model_inputs] == [outputs[0].id]
    assert model_outputs[0].kind == "model checkpoint"
    assert model_outputs[0].sha256 == sha256_file(ws / "models" / "pretrain" / "model.pt")
    graph = reg.lineage(f"artifact:{model_outputs[0].id}", "upstream")
    assert f"artifact:{trained[0].id}" in graph.nodes  # model -> token set -> depth tokenizer
    reg.close()
