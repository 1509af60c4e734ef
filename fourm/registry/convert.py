"""ORM rows -> plain entities, inside the session that loaded them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fourm.registry.entities import ArtifactInfo, PromotionInfo, RunInfo, VersionInfo
from fourm.registry.models import (
    Artifact,
    ModelAlias,
    ModelVersion,
    ModelVersionTokenizer,
    PromotionEvent,
    Run,
)


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dict_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose values differ (or exist on one side only)."""
    return [{"key": k, "a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def artifact(row: Artifact) -> ArtifactInfo:
    return ArtifactInfo(
        id=row.id,
        kind=row.kind,
        name=row.name,
        uri=row.uri,
        sha256=row.sha256,
        size=row.size,
        created_at=utc(row.created_at),
        created_by_run_id=row.created_by_run_id,
        metadata=dict(row.meta or {}),
    )


def run(row: Run) -> RunInfo:
    return RunInfo(
        id=row.id,
        stage=row.stage,
        status=row.status,
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
        git_commit=row.git_commit,
        git_dirty=row.git_dirty,
        params=dict(row.params or {}),
        params_sha256=row.params_sha256,
        dvc_lock_sha256=row.dvc_lock_sha256,
        prefect_flow_run_id=row.prefect_flow_run_id,
        host=row.host,
        error=row.error,
    )


def version(s: Session, mv: ModelVersion) -> VersionInfo:
    tokenizer_rows = s.scalars(
        select(Artifact)
        .join(ModelVersionTokenizer, ModelVersionTokenizer.artifact_id == Artifact.id)
        .filter(ModelVersionTokenizer.model_version_id == mv.id)
        .order_by(Artifact.id)
    )
    aliases = s.scalars(select(ModelAlias.alias).filter_by(model_version_id=mv.id).order_by(ModelAlias.alias))
    evaluation = s.get(Artifact, mv.evaluation_artifact_id) if mv.evaluation_artifact_id else None
    return VersionInfo(
        model=mv.model.name,
        version=mv.version,
        stage=mv.stage,
        aliases=list(aliases),
        checkpoint=artifact(s.get(Artifact, mv.checkpoint_artifact_id)),
        evaluation=artifact(evaluation) if evaluation else None,
        tokenizers=[artifact(t) for t in tokenizer_rows],
        metrics=dict(mv.metrics or {}),
        tags=dict(mv.tags or {}),
        description=mv.description,
        run_id=mv.run_id,
        created_at=utc(mv.created_at),
    )


def promotion(s: Session, e: PromotionEvent) -> PromotionInfo:
    mv = s.get(ModelVersion, e.model_version_id)
    replaced = s.get(ModelVersion, e.replaced_version_id) if e.replaced_version_id else None
    return PromotionInfo(
        id=e.id,
        model=mv.model.name,
        version=mv.version,
        from_stage=e.from_stage,
        to_stage=e.to_stage,
        replaced_version=replaced.version if replaced else None,
        actor=e.actor,
        at=utc(e.at),
        reason=e.reason,
        forced=e.forced,
        gate_results=dict(e.gate_results or {}),
    )
