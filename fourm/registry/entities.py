"""Plain entities returned by the registry API (ORM rows never leave a session)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ArtifactInfo:
    id: int
    kind: str
    name: str
    uri: str
    sha256: str
    size: int
    created_at: dt.datetime
    created_by_run_id: int | None
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class RunInfo:
    id: int
    stage: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    git_commit: str | None
    git_dirty: bool | None
    params: dict[str, Any]
    params_sha256: str | None
    dvc_lock_sha256: str | None
    prefect_flow_run_id: str | None
    host: str | None
    error: str | None

    @property
    def seconds(self) -> float | None:
        """How long the run took (None while it runs)."""
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started_at"] = self.started_at.isoformat()
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        d["seconds"] = self.seconds
        return d


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    stage: str
    aliases: list[str]
    checkpoint: ArtifactInfo
    evaluation: ArtifactInfo | None
    tokenizers: list[ArtifactInfo]
    metrics: dict[str, Any]
    tags: dict[str, Any]
    description: str | None
    run_id: int | None
    created_at: dt.datetime

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "stage": self.stage,
            "aliases": self.aliases,
            "checkpoint": self.checkpoint.to_dict(),
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "tokenizers": [t.to_dict() for t in self.tokenizers],
            "metrics": self.metrics,
            "tags": self.tags,
            "description": self.description,
            "run_id": self.run_id,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class PromotionInfo:
    id: int
    model: str
    version: int
    from_stage: str
    to_stage: str
    replaced_version: int | None
    actor: str
    at: dt.datetime
    reason: str | None
    forced: bool
    gate_results: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


@dataclass(frozen=True)
class LineageNode:
    key: str  # "artifact:12" or "run:3" or "model:name:2"
    kind: str  # artifact kind, "run", or "model version"
    label: str
    sha256: str | None = None
    depth: int = 0


@dataclass
class LineageGraph:
    root: str
    direction: str
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, relation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "direction": self.direction,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "edges": [{"from": a, "to": b, "relation": r} for a, b, r in self.edges],
        }
