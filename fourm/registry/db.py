"""Registry database: engine by URL, migration on open, refusal of newer schemas.

The backend is chosen by the URL scheme alone (``sqlite:///…`` by default,
``postgresql+psycopg://…`` in production). Opening a registry migrates it to this
code's head; a database whose revision this code does not know (made by a newer
fourm) is refused rather than touched.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from fourm.registry.errors import RegistryError

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def mask_url(url: str) -> str:
    """Hide a password in a URL that may not even parse (``scheme://user:secret@host``)."""
    return re.sub(r"([^:/@\s]+:)[^@/\s]+@", r"\1***@", url)


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def _sqlite_serialising(engine: Engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``: writers queue instead of racing."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a malformed URL is a ``RegistryError``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise RegistryError(f"registry URL {mask_url(url)!r} is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RegistryError(
                    f"registry database {mask_url(url)}: cannot create its folder: {err}"
                ) from None
        engine = create_engine(parsed, poolclass=NullPool)
        _sqlite_serialising(engine)
        return engine
    try:
        return create_engine(
            parsed, pool_pre_ping=True, connect_args=_connect_args(parsed.get_backend_name())
        )
    except (ArgumentError, ImportError) as err:
        raise RegistryError(f"registry URL {parsed.render_as_string(hide_password=True)}: {err}") from None


def _connect_args(backend: str) -> dict:
    return {"connect_timeout": 5} if backend == "postgresql" else {}


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# Alembic's environment is process-global (``alembic.context``): one migration at a time.
_MIGRATION_LOCK = threading.Lock()
# Any constant: the PostgreSQL advisory lock that serialises migrations across processes.
_PG_MIGRATION_LOCK_KEY = 0x4F4D_5245


def migrate(engine: Engine) -> None:
    """Upgrade the database to this code's head; refuse a newer database.

    Safe to call from many threads and processes at once: an up-to-date database
    is only read; upgrades are serialised by a lock (and, on PostgreSQL, an
    advisory lock held for the migration's transaction).
    """
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    head = script.get_current_head()
    try:
        current = current_revision(engine)
        if current is not None and current not in known:
            raise RegistryError(
                f"registry database {engine.url.render_as_string()} is at schema revision {current!r}, "
                f"newer than this fourm knows (head {head!r}); upgrade fourm"
            )
        if current == head:
            return
        with _MIGRATION_LOCK, engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK_KEY})")
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise RegistryError(
            f"registry database {engine.url.render_as_string()} unreachable: {reason}"
        ) from None
    except SQLAlchemyError as err:
        raise RegistryError(f"registry database {engine.url.render_as_string()}: {err}") from None
