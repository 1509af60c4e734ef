"""The pipeline's ``register`` stage: the evaluated model becomes a registry version.

The checkpoint, tokenizers and evaluation report are looked up by content: the
stages that made them recorded them as artifacts (with the runs that made them),
so the new version's lineage reaches back through pretraining and tokenizing to
the dataset. Writes a small report (the version's reference and hashes) that
DVC caches, so an unchanged model is not registered twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fourm.io import atomic_write_json, sha256_file
from fourm.params import RegisterParams
from fourm.registry.api import Registry
from fourm.registry.entities import ArtifactInfo
from fourm.registry.errors import RegistryError
from fourm.settings import Settings, get_settings
from fourm.stages import tokenizer_artifact
from fourm.tokenizers.base import CONFIG_FILE


def _recorded(registry: Registry, path: Path, kind: str, made_by: str) -> ArtifactInfo:
    sha = sha256_file(path)
    found = [a for a in registry.find_artifacts(sha) if a.kind == kind and a.sha256 == sha]
    if not found:
        raise RegistryError(
            f"{path}: no {kind} with sha256 {sha[:12]}… in the registry; "
            f"it must come from the {made_by} stage"
        )
    return found[0]


def headline_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The version's metrics: model and baseline value per task metric, and the verdicts."""
    flat: dict[str, Any] = {}
    for task, result in evaluation.get("tasks", {}).items():
        for metric, values in result.get("metrics", {}).items():
            flat[f"{task}/{metric}"] = values.get("model")
            flat[f"{task}/{metric}/baseline"] = values.get("baseline")
    flat["beats_all_baselines"] = all(evaluation.get("beats_baseline", {}).values())
    return flat


def register_pipeline_model(
    params: RegisterParams,
    model_path: Path,
    tokenizers_dir: Path,
    evaluation_path: Path,
    out_path: Path,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Register the pipeline's model as the next version of ``params.model_name``; write ``out_path``."""
    settings = settings or get_settings()
    try:
        evaluation = json.loads(Path(evaluation_path).read_text())
    except (OSError, ValueError) as e:
        raise RegistryError(f"{evaluation_path}: not a readable evaluation report: {e}") from None
    if not isinstance(evaluation, dict) or "tasks" not in evaluation:
        raise RegistryError(f"{evaluation_path}: not an evaluation report (no 'tasks')")
    tok_dirs = sorted(d for d in Path(tokenizers_dir).iterdir() if (d / CONFIG_FILE).is_file())
    if not tok_dirs:
        raise RegistryError(f"{tokenizers_dir}: no trained tokenizer in it")
    registry = Registry(settings.effective_registry_url)
    try:
        checkpoint = _recorded(registry, Path(model_path), "model checkpoint", "pretrain")
        report = _recorded(registry, Path(evaluation_path), "evaluation report", "evaluate")
        tokenizers = []
        for d in tok_dirs:
            spec = tokenizer_artifact(d, d.name)
            tokenizers.append(
                registry.register_artifact(
                    spec.kind, spec.name, spec.uri, spec.sha256, spec.size, spec.metadata
                )
            )
        version = registry.register_model_version(
            params.model_name,
            checkpoint.id,
            tokenizer_artifact_ids=[t.id for t in tokenizers],
            evaluation_artifact_id=report.id,
            metrics=headline_metrics(evaluation),
            run_id=checkpoint.created_by_run_id,
            description=params.description or None,
        )
    finally:
        registry.close()
    result = {
        "model": version.model,
        "version": version.version,
        "ref": version.ref,
        "checkpoint_sha256": checkpoint.sha256,
        "evaluation_sha256": report.sha256,
        "tokenizers": {t.name: t.sha256 for t in tokenizers},
        "beats_all_baselines": version.metrics["beats_all_baselines"],
    }
    atomic_write_json(out_path, result)
    return result
