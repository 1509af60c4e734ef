"""Row lookups inside one registry transaction: by id, by name, by reference, by hash prefix.

Each raises ``NotFound`` (or ``BadReference``) with a message naming what was asked for.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fourm.registry.errors import BadReference, NotFound
from fourm.registry.models import STAGES, Artifact, Model, ModelAlias, ModelVersion, Run
from fourm.registry.refs import ModelRef, parse_ref

T = TypeVar("T")


def get_row(s: Session, table: type[T], ident: int, what: str) -> T:
    """The row of ``table`` with primary key ``ident``."""
    row = s.get(table, ident)
    if row is None:
        raise NotFound(f"unknown {what} {ident}")
    return row


def insert_or_get(s: Session, row: T, query: Any) -> T:
    """Insert ``row``; if a concurrent transaction inserted the same unique key first, return theirs."""
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
        return row
    except IntegrityError:
        return s.scalars(query).one()


def run(s: Session, run_id: int) -> Run:
    return get_row(s, Run, run_id, "run")


def artifact(s: Session, artifact_id: int) -> Artifact:
    return get_row(s, Artifact, artifact_id, "artifact")


def artifact_by_sha(s: Session, prefix: str) -> Artifact:
    """The one artifact whose sha256 starts with ``prefix`` (at least 6 hex digits)."""
    if len(prefix) < 6:
        raise BadReference(f"sha256 prefix {prefix!r} is too short; give at least 6 hex digits")
    rows = list(s.scalars(select(Artifact).filter(Artifact.sha256.startswith(prefix.lower())).limit(2)))
    if not rows:
        raise NotFound(f"no artifact with sha256 starting {prefix!r}")
    if len(rows) > 1:
        raise BadReference(f"sha256 prefix {prefix!r} matches several artifacts; give more digits")
    return rows[0]


def model(s: Session, name: str) -> Model:
    row = s.scalars(select(Model).filter_by(name=name)).one_or_none()
    if row is None:
        raise NotFound(f"unknown model {name!r}")
    return row


def lock_model(s: Session, name: str, create: bool = False) -> Model:
    """The model's row, locked for this transaction (created first if asked)."""
    q = select(Model).filter_by(name=name).with_for_update()
    row = s.scalars(q).one_or_none()
    if row is None and create:
        row = insert_or_get(s, Model(name=name), q)
    if row is None:
        raise NotFound(f"unknown model {name!r}")
    return row


def in_stage(s: Session, model_id: int, stage: str) -> ModelVersion | None:
    """The newest version of the model in ``stage``, if any."""
    q = select(ModelVersion).filter_by(model_id=model_id, stage=stage).order_by(ModelVersion.version.desc())
    return s.scalars(q.limit(1)).one_or_none()


def resolve(s: Session, ref: str | ModelRef) -> ModelVersion:
    """The version ``NAME:VERSION``, ``NAME@STAGE``, ``NAME@ALIAS`` or ``NAME`` (the latest) names."""
    parsed = ref if isinstance(ref, ModelRef) else parse_ref(ref)
    row = model(s, parsed.name)
    if parsed.version is not None:
        mv = s.scalars(select(ModelVersion).filter_by(model_id=row.id, version=parsed.version)).one_or_none()
        if mv is None:
            raise NotFound(f"model {parsed.name!r} has no version {parsed.version}")
        return mv
    if parsed.alias is not None:
        if parsed.alias in STAGES:
            mv = in_stage(s, row.id, parsed.alias)
            if mv is None:
                raise NotFound(f"model {parsed.name!r} has no version in stage {parsed.alias!r}")
            return mv
        alias = s.get(ModelAlias, (row.id, parsed.alias))
        if alias is None:
            raise NotFound(f"model {parsed.name!r} has no alias {parsed.alias!r}")
        return s.get(ModelVersion, alias.model_version_id)
    if not row.versions:
        raise NotFound(f"model {parsed.name!r} has no versions")
    return row.versions[-1]
