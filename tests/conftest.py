"""Shared fixtures: a real local S3 server (SeaweedFS) on ports of its own."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Nothing a test runs may write into the checkout's .fourm (registry, services).
os.environ["FOURM_HOME"] = tempfile.mkdtemp(prefix="fourm-test-home-")
# W&B offline runs cost seconds each; tests that check tracking turn it back on themselves.
os.environ["FOURM_WANDB_MODE"] = "disabled"

from fourm import services  # noqa: E402
from fourm.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def s3_test_settings(home: Path, base_port: int) -> Settings:
    """Settings for a private S3 server: S3 on base_port, internals on base_port+1..3."""
    return Settings(
        home=home,
        s3_endpoint=f"http://127.0.0.1:{base_port}",
        s3_internal_ports=(base_port + 1, base_port + 2, base_port + 3),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a subprocess (CLI, DVC stage) use ``settings``."""
    master, volume, filer = settings.s3_internal_ports
    return {
        "FOURM_HOME": str(settings.home_dir),
        "FOURM_S3_ENDPOINT": settings.s3_endpoint,
        "FOURM_S3_INTERNAL_PORTS": f"[{master},{volume},{filer}]",
    }


@pytest.fixture(scope="session")
def s3_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One real S3 server for the test session (ports 28533..28536)."""
    settings = s3_test_settings(tmp_path_factory.mktemp("s3home"), 28533)
    services.up(settings)
    yield settings
    services.down(settings)


@pytest.fixture()
def store(s3_settings: Settings):
    from fourm.storage.object_store import ObjectStore

    return ObjectStore.from_settings(s3_settings, retries=2, backoff_seconds=0.1)


POSTGRES_ADMIN_URL = os.environ.get(
    "FOURM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry database: a SQLite file, or a new database on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    import psycopg

    name = f"fourm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
