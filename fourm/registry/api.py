"""The registry API: artifacts, runs, lineage, model versions, gated promotion, audit.

One managed session (one transaction) per operation; ORM rows are converted to
plain entities before they leave it. Promotions lock the model's row
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite transactions are ``BEGIN
IMMEDIATE``), so concurrent promotions serialise and at most one version of a
model is in production at any time.

A committed stage change (promote, rollback, archive) is then handed to
``stage_change_hooks``: by default ``fourm.events.emit_model_event``, which tells
Prefect when it is configured. Hooks run after the commit and cannot undo it.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fourm.events import emit_model_event
from fourm.params import RegistryParams
from fourm.registry import convert, lookup
from fourm.registry import lineage as lineage_walk
from fourm.registry.db import make_engine, migrate
from fourm.registry.entities import ArtifactInfo, LineageGraph, PromotionInfo, RunInfo, VersionInfo
from fourm.registry.errors import BadReference, GateFailed, NotFound, RegistryError
from fourm.registry.gates import evaluate_gates
from fourm.registry.models import (
    STAGES,
    Artifact,
    Model,
    ModelAlias,
    ModelVersion,
    ModelVersionTokenizer,
    PromotionEvent,
    Run,
    RunInput,
    RunOutput,
    utcnow,
)
from fourm.registry.refs import ModelRef, check_alias, parse_ref

RUN_STATUSES = ("running", "succeeded", "failed")
StageChangeHook = Callable[[PromotionInfo, ArtifactInfo], object]
_STAGE_CHANGES = "fourm.stage_changes"  # Session.info key: changes to announce after commit
logger = logging.getLogger(__name__)


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Registry:
    """Open (and migrate) the registry at ``url``; ``gates`` come from params.yaml."""

    def __init__(self, url: str, gates: RegistryParams | None = None, engine: Engine | None = None):
        self.engine = engine or make_engine(url)
        try:
            migrate(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.gates = gates or RegistryParams()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # called with (promotion, checkpoint artifact) after each committed stage change
        self.stage_change_hooks: list[StageChangeHook] = [emit_model_event]

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session
        # committed (an error rolls back and never gets here): announce its stage changes
        for info, checkpoint in session.info.pop(_STAGE_CHANGES, ()):
            self._announce(info, checkpoint)

    def _announce(self, info: PromotionInfo, checkpoint: ArtifactInfo) -> None:
        for hook in self.stage_change_hooks:
            try:
                hook(info, checkpoint)
            except Exception as err:  # the change is committed; a listener cannot undo it
                logger.warning(
                    "stage-change hook %r failed for %s:%s: %s", hook, info.model, info.version, err
                )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- artifacts and runs ---------------------------------------------------------

    def register_artifact(
        self,
        kind: str,
        name: str,
        uri: str,
        sha256: str,
        size: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> ArtifactInfo:
        """Record an artifact; the same (kind, name, sha256) returns the existing row."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise RegistryError(f"artifact {name!r}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
        with self._tx() as s:
            query = select(Artifact).filter_by(kind=kind, name=name, sha256=sha256)
            row = s.scalars(query).one_or_none() or lookup.insert_or_get(
                s,
                Artifact(kind=kind, name=name, uri=uri, sha256=sha256, size=size, meta=metadata or {}),
                query,
            )
            return convert.artifact(row)

    def start_run(
        self,
        stage: str,
        params: dict[str, Any] | None = None,
        *,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        params_sha256: str | None = None,
        prefect_flow_run_id: str | None = None,
        host: str | None = None,
    ) -> int:
        with self._tx() as s:
            run = Run(
                stage=stage,
                status="running",
                params=params or {},
                params_sha256=params_sha256,
                git_commit=git_commit,
                git_dirty=git_dirty,
                prefect_flow_run_id=prefect_flow_run_id,
                host=host,
            )
            s.add(run)
            s.flush()
            return run.id

    def link(self, run_id: int, inputs: Sequence[int] = (), outputs: Sequence[int] = ()) -> None:
        """Add lineage edges: the run consumed ``inputs`` and produced ``outputs``."""
        with self._tx() as s:
            lookup.run(s, run_id)
            for aid in inputs:
                if s.get(RunInput, (run_id, aid)) is None:
                    s.add(RunInput(run_id=run_id, artifact_id=lookup.artifact(s, aid).id))
            for aid in outputs:
                art = lookup.artifact(s, aid)
                if s.get(RunOutput, (run_id, aid)) is None:
                    s.add(RunOutput(run_id=run_id, artifact_id=art.id))
                if art.created_by_run_id is None:
                    art.created_by_run_id = run_id

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> RunInfo:
        if status not in RUN_STATUSES[1:]:
            raise RegistryError(f"run status must be succeeded or failed, got {status!r}")
        with self._tx() as s:
            run = lookup.run(s, run_id)
            run.status, run.error, run.finished_at = status, error, utcnow()
            return convert.run(run)

    def attach_dvc_lock(self, run_id: int, sha256: str) -> None:
        with self._tx() as s:
            lookup.run(s, run_id).dvc_lock_sha256 = sha256

    def attach_dvc_lock_by_flow_run(self, stage: str, flow_run_id: str, sha256: str) -> int | None:
        """Set the dvc.lock entry hash on the latest run of ``stage`` in a flow run."""
        with self._tx() as s:
            run = s.scalars(
                select(Run)
                .filter_by(stage=stage, prefect_flow_run_id=flow_run_id)
                .order_by(Run.id.desc())
                .limit(1)
            ).one_or_none()
            if run is None:
                return None
            run.dvc_lock_sha256 = sha256
            return run.id

    def get_run(self, run_id: int) -> RunInfo:
        with self._tx() as s:
            return convert.run(lookup.run(s, run_id))

    def runs(self, stage: str | None = None, limit: int = 50) -> list[RunInfo]:
        with self._tx() as s:
            q = select(Run).order_by(Run.id.desc()).limit(limit)
            if stage:
                q = q.filter_by(stage=stage)
            return [convert.run(r) for r in s.scalars(q)]

    def run_io(self, run_id: int) -> tuple[list[ArtifactInfo], list[ArtifactInfo]]:
        """(inputs, outputs) of a run."""
        with self._tx() as s:
            lookup.run(s, run_id)
            ins = s.scalars(select(Artifact).join(RunInput).filter(RunInput.run_id == run_id))
            outs = s.scalars(select(Artifact).join(RunOutput).filter(RunOutput.run_id == run_id))
            return [convert.artifact(a) for a in ins], [convert.artifact(a) for a in outs]

    def get_artifact(self, artifact_id: int) -> ArtifactInfo:
        with self._tx() as s:
            return convert.artifact(lookup.artifact(s, artifact_id))

    def find_artifacts(self, sha256_prefix: str) -> list[ArtifactInfo]:
        with self._tx() as s:
            q = (
                select(Artifact)
                .filter(Artifact.sha256.startswith(sha256_prefix.lower()))
                .order_by(Artifact.id)
            )
            return [convert.artifact(a) for a in s.scalars(q)]

    # -- models ---------------------------------------------------------------------

    def register_model_version(
        self,
        name: str,
        checkpoint_artifact_id: int,
        *,
        tokenizer_artifact_ids: Sequence[int] = (),
        evaluation_artifact_id: int | None = None,
        metrics: dict[str, Any] | None = None,
        run_id: int | None = None,
        description: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> VersionInfo:
        """Add the next version (monotonic per model, also under concurrency) of ``name``."""
        parse_ref(name)  # validates the name's characters
        with self._tx() as s:
            model = lookup.lock_model(s, name, create=True)
            lookup.artifact(s, checkpoint_artifact_id)
            if evaluation_artifact_id is not None:
                lookup.artifact(s, evaluation_artifact_id)
            if run_id is not None:
                lookup.run(s, run_id)
            model.last_version += 1
            mv = ModelVersion(
                model_id=model.id,
                version=model.last_version,
                checkpoint_artifact_id=checkpoint_artifact_id,
                evaluation_artifact_id=evaluation_artifact_id,
                run_id=run_id,
                metrics=metrics or {},
                tags=tags or {},
                description=description,
            )
            s.add(mv)
            s.flush()
            for aid in dict.fromkeys(tokenizer_artifact_ids):
                lookup.artifact(s, aid)
                s.add(ModelVersionTokenizer(model_version_id=mv.id, artifact_id=aid))
            s.flush()
            return convert.version(s, mv)

    def get_version(self, ref: str | ModelRef) -> VersionInfo:
        with self._tx() as s:
            return convert.version(s, lookup.resolve(s, ref))

    def list_models(self) -> list[dict[str, Any]]:
        """One row per model: latest version, versions per stage, aliases."""
        with self._tx() as s:
            out = []
            for model in s.scalars(select(Model).order_by(Model.name)):
                by_stage: dict[str, list[int]] = {st: [] for st in STAGES}
                for v in model.versions:
                    by_stage[v.stage].append(v.version)
                aliases = {
                    a.alias: s.get(ModelVersion, a.model_version_id).version
                    for a in s.scalars(select(ModelAlias).filter_by(model_id=model.id))
                }
                out.append(
                    {
                        "name": model.name,
                        "latest": model.last_version,
                        "production": by_stage["production"],
                        "staging": by_stage["staging"],
                        "aliases": aliases,
                    }
                )
            return out

    def list_versions(self, name: str) -> list[VersionInfo]:
        with self._tx() as s:
            model = lookup.model(s, name)
            return [convert.version(s, v) for v in model.versions]

    # -- promotion ------------------------------------------------------------------

    def promote(
        self,
        ref: str | ModelRef,
        to_stage: str,
        reason: str | None = None,
        *,
        actor: str | None = None,
        force: bool = False,
    ) -> PromotionInfo:
        """Move a version to ``to_stage`` after the gates; production replaces production.

        ``force`` skips failing gates but needs a ``reason``; both are audited.
        """
        if to_stage not in STAGES:
            raise RegistryError(f"unknown stage {to_stage!r}; stages: {', '.join(STAGES)}")
        if force and not (reason or "").strip():
            raise RegistryError("--force needs a --reason: forced promotions are audited")
        parsed = ref if isinstance(ref, ModelRef) else parse_ref(ref)
        with self._tx() as s:
            model = lookup.lock_model(s, parsed.name)
            mv = lookup.resolve(s, parsed)
            if mv.stage == to_stage:
                raise RegistryError(f"{model.name}:{mv.version} is already in stage {to_stage!r}")
            current = lookup.in_stage(s, model.id, "production")
            results = evaluate_gates(self.gates, to_stage, convert.version(s, mv), self._maybe(s, current))
            failed = [k for k, r in results.items() if not r["passed"]]
            if failed and not force:
                detail = "; ".join(results[k]["message"] for k in failed)
                raise GateFailed(
                    f"promotion of {model.name}:{mv.version} to {to_stage} refused: {detail}", results
                )
            return self._move(s, model, mv, to_stage, reason, actor, force, results)

    def rollback(self, name: str, reason: str | None = None, *, actor: str | None = None) -> PromotionInfo:
        """Re-promote the version that the current production version replaced."""
        with self._tx() as s:
            model = lookup.lock_model(s, name)
            current = lookup.in_stage(s, model.id, "production")
            if current is None:
                raise RegistryError(f"model {name!r} has no production version to roll back")
            event = s.scalars(
                select(PromotionEvent)
                .filter_by(model_version_id=current.id, to_stage="production")
                .order_by(PromotionEvent.id.desc())
                .limit(1)
            ).one_or_none()
            if event is None or event.replaced_version_id is None:
                raise RegistryError(
                    f"model {name!r}: production version {current.version} replaced no earlier version"
                )
            previous = s.get(ModelVersion, event.replaced_version_id)
            results = {"rollback": {"passed": True, "message": f"back to version {previous.version}"}}
            return self._move(
                s,
                model,
                previous,
                "production",
                reason or f"rollback from version {current.version}",
                actor,
                False,
                results,
            )

    def archive(
        self, ref: str | ModelRef, reason: str | None = None, *, actor: str | None = None
    ) -> PromotionInfo:
        return self.promote(ref, "archived", reason, actor=actor)

    def history(self, name: str) -> list[PromotionInfo]:
        with self._tx() as s:
            model = lookup.model(s, name)
            q = (
                select(PromotionEvent)
                .join(ModelVersion, PromotionEvent.model_version_id == ModelVersion.id)
                .filter(ModelVersion.model_id == model.id)
                .order_by(PromotionEvent.id)
            )
            return [convert.promotion(s, e) for e in s.scalars(q)]

    def tag_version(self, ref: str | ModelRef, tags: dict[str, Any]) -> VersionInfo:
        """Merge ``tags`` into a version's tags (e.g. the git ref of the run that made it)."""
        with self._tx() as s:
            mv = lookup.resolve(s, ref)
            mv.tags = {**(mv.tags or {}), **tags}
            s.flush()
            return convert.version(s, mv)

    # -- aliases --------------------------------------------------------------------

    def set_alias(self, ref: str, alias: str) -> VersionInfo:
        check_alias(alias)
        with self._tx() as s:
            mv = lookup.resolve(s, ref)
            query = select(ModelAlias).filter_by(model_id=mv.model_id, alias=alias).with_for_update()
            row = s.scalars(query).one_or_none() or lookup.insert_or_get(
                s, ModelAlias(model_id=mv.model_id, alias=alias, model_version_id=mv.id), query
            )
            row.model_version_id = mv.id
            s.flush()
            return convert.version(s, mv)

    def remove_alias(self, name: str, alias: str) -> None:
        with self._tx() as s:
            model = lookup.model(s, name)
            row = s.get(ModelAlias, (model.id, alias))
            if row is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            s.delete(row)

    # -- lineage, diff, card ---------------------------------------------------------

    def lineage(self, start: str, direction: str = "upstream", depth: int = 50) -> LineageGraph:
        """Walk lineage from a model reference, ``artifact:ID`` or ``sha256:PREFIX``."""
        if direction not in ("upstream", "downstream"):
            raise RegistryError(f"direction must be upstream or downstream, got {direction!r}")
        with self._tx() as s:
            if start.startswith("artifact:"):
                ident = start.partition(":")[2]
                if not ident.isdigit():
                    raise BadReference(f"malformed artifact reference {start!r}; expected artifact:ID")
                node = lineage_walk._artifact_node(lookup.artifact(s, int(ident)), 0)
            elif start.startswith("sha256:"):
                node = lineage_walk._artifact_node(lookup.artifact_by_sha(s, start.partition(":")[2]), 0)
            else:
                node = lineage_walk._version_node(lookup.resolve(s, start), 0)
            return lineage_walk.walk(s, node, direction, depth)

    def upstream_artifacts(self, ref: str) -> list[ArtifactInfo]:
        """Every artifact a model version depends on, nearest first."""
        graph = self.lineage(ref, "upstream")
        ids = [int(k.partition(":")[2]) for k, n in graph.nodes.items() if k.startswith("artifact:")]
        return [self.get_artifact(i) for i in ids]

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        """Params, data, tokenizer and metric differences between two versions."""
        a, b = self.get_version(ref_a), self.get_version(ref_b)
        params_a = self.get_run(a.run_id).params if a.run_id else {}
        params_b = self.get_run(b.run_id).params if b.run_id else {}

        def data(ref: str) -> dict[str, str]:
            return {
                f"{x.kind}:{x.name}": x.sha256 for x in self.upstream_artifacts(ref) if x.kind != "checkpoint"
            }

        return {
            "a": a.ref,
            "b": b.ref,
            "params": convert.dict_diff(convert.flatten(params_a), convert.flatten(params_b)),
            "data": convert.dict_diff(data(a.ref), data(b.ref)),
            "tokenizers": convert.dict_diff(
                {t.name: t.sha256 for t in a.tokenizers}, {t.name: t.sha256 for t in b.tokenizers}
            ),
            "metrics": convert.dict_diff(convert.flatten(a.metrics), convert.flatten(b.metrics)),
        }

    def card(self, ref: str) -> str:
        """A model card in markdown: use, lineage, params, metrics vs baselines, history."""
        from fourm.registry.card import model_card

        version = self.get_version(ref)
        run = self.get_run(version.run_id) if version.run_id else None
        return model_card(version, run, self.upstream_artifacts(version.ref), self.history(version.model))

    # -- internals ------------------------------------------------------------------

    def _move(
        self,
        s: Session,
        model: Model,
        mv: ModelVersion,
        to_stage: str,
        reason: str | None,
        actor: str | None,
        forced: bool,
        results: dict[str, Any],
    ) -> PromotionInfo:
        replaced = None
        if to_stage == "production":
            current = lookup.in_stage(s, model.id, "production")
            if current is not None and current.id != mv.id:
                current.stage = "archived"
                replaced = current.id
                s.flush()  # archive first: the one-production index never sees two
        event = PromotionEvent(
            model_version_id=mv.id,
            from_stage=mv.stage,
            to_stage=to_stage,
            replaced_version_id=replaced,
            actor=actor or default_actor(),
            reason=reason,
            forced=forced,
            gate_results=results,
        )
        mv.stage = to_stage
        s.add(event)
        s.flush()
        info = convert.promotion(s, event)
        checkpoint = convert.artifact(lookup.artifact(s, mv.checkpoint_artifact_id))
        s.info.setdefault(_STAGE_CHANGES, []).append((info, checkpoint))
        return info

    @staticmethod
    def _maybe(s: Session, mv: ModelVersion | None) -> VersionInfo | None:
        return convert.version(s, mv) if mv is not None else None
