"""Stage front-ends record their runs here: params, code version, inputs, outputs.

``recorded_run`` wraps a stage call: it opens the registry (failing fast if it is
unreachable, before any work), records a ``run`` with the git commit, dirty flag,
params and their hash, the host and the Prefect flow-run id (from
``FOURM_PREFECT_FLOW_RUN_ID``, set by the pipeline flow), links the inputs, and
on success registers and links the outputs; on failure it marks the run failed
with the error and re-raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fourm.data.format import DATASET_CARD, DatasetError
from fourm.io import canonical_json, sha256_bytes, sha256_file
from fourm.registry.api import Registry
from fourm.settings import Settings

FLOW_RUN_ENV = "FOURM_PREFECT_FLOW_RUN_ID"


@dataclass(frozen=True)
class ArtifactSpec:
    kind: str
    name: str
    uri: str
    sha256: str
    size: int
    metadata: dict[str, Any] = field(default_factory=dict)


def dataset_artifact(path: Path, kind: str) -> ArtifactSpec:
    """A dataset directory as an artifact: its card's sha256 covers every shard and the manifest."""
    card_path = Path(path) / DATASET_CARD
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{card_path}: not a finished dataset ({err.__class__.__name__})") from None
    return ArtifactSpec(
        kind=kind,
        name=str(card.get("name", Path(path).name)),
        uri=str(path),
        sha256=sha256_file(card_path),
        size=sum(s["size"] for s in card["shards"]),
        metadata={
            "num_samples": card["num_samples"],
            "shards": len(card["shards"]),
            "labelers": card.get("labelers"),
        },
    )


def file_artifact(
    path: Path, kind: str, name: str | None = None, metadata: dict | None = None
) -> ArtifactSpec:
    path = Path(path)
    return ArtifactSpec(
        kind, name or path.name, str(path), sha256_file(path), path.stat().st_size, metadata or {}
    )


def git_state(cwd: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository around ``cwd``; (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


class RunRecorder:
    """Handed to the stage body: add outputs as they become final."""

    def __init__(self, registry: Registry, run_id: int):
        self.registry = registry
        self.run_id = run_id
        self.outputs: list[ArtifactSpec] = []

    def output(self, spec: ArtifactSpec) -> None:
        self.outputs.append(spec)


def _register(registry: Registry, spec: ArtifactSpec) -> int:
    return registry.register_artifact(
        spec.kind, spec.name, spec.uri, spec.sha256, spec.size, spec.metadata
    ).id


@contextmanager
def recorded_run(
    settings: Settings, stage: str, params: dict[str, Any], inputs: list[ArtifactSpec]
) -> Iterator[RunRecorder]:
    registry = Registry(settings.effective_registry_url)
    try:
        commit, dirty = git_state()
        run_id = registry.start_run(
            stage,
            params,
            git_commit=commit,
            git_dirty=dirty,
            params_sha256=sha256_bytes(canonical_json(params)),
            prefect_flow_run_id=os.environ.get(FLOW_RUN_ENV) or None,
            host=socket.gethostname(),
        )
        registry.link(run_id, inputs=[_register(registry, spec) for spec in inputs])
        recorder = RunRecorder(registry, run_id)
        try:
            yield recorder
        except BaseException as error:
            # never hide the stage's own error behind the registry's
            with contextlib.suppress(Exception):
                registry.finish_run(run_id, "failed", f"{type(error).__name__}: {error}"[:4000])
            raise
        registry.link(run_id, outputs=[_register(registry, spec) for spec in recorder.outputs])
        registry.finish_run(run_id, "succeeded")
    finally:
        registry.close()
