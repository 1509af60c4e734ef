"""Shared fixtures: a real local S3 server (SeaweedFS) on ports of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

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
