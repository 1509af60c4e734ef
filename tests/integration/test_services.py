"""fourm.services against real SeaweedFS servers on private ports.

Each test runs its own server (never the session one on 28533..28536) and stops
it in ``finally``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import psutil
import pytest
from pydantic import SecretStr

from fourm import services
from fourm.settings import Settings
from fourm.storage.object_store import ObjectStore
from tests.conftest import REPO, s3_test_settings, settings_env

pytestmark = pytest.mark.integration

FOURM_CLI = REPO / ".venv" / "bin" / "fourm"


def _pidfile(settings: Settings) -> Path:
    return settings.services_dir / "s3.pid"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _write_pidfile(settings: Settings, pid: int, create_time: float) -> None:
    _pidfile(settings).parent.mkdir(parents=True, exist_ok=True)
    _pidfile(settings).write_text(json.dumps({"pid": pid, "create_time": create_time}))


# -- 1. up is idempotent ---------------------------------------------------------------


def test_up_twice_reuses_the_server(tmp_path: Path) -> None:
    settings = s3_test_settings(tmp_path / "home", 28733)
    try:
        first = services.up(settings)
        assert first.started is True and first.healthy is True
        assert first.endpoint == settings.s3_endpoint
        assert psutil.Process(first.pid).name().startswith("weed")
        assert psutil.Process(first.pid).nice() == settings.s3_niceness == 19  # below training's priority

        second = services.up(settings)
        assert second.started is False
        assert second.pid == first.pid
        assert second.healthy is True

        st = services.status(settings)
        assert st.healthy is True and st.pid == first.pid

        record = json.loads(_pidfile(settings).read_text())
        assert record["pid"] == first.pid
        assert record["create_time"] == pytest.approx(psutil.Process(first.pid).create_time(), abs=1e-3)

        client = ObjectStore.from_settings(settings, retries=1, backoff_seconds=0.1).client
        for bucket in settings.buckets.all():
            assert client.bucket_exists(bucket), bucket
    finally:
        services.down(settings)


# -- 2. stale pid files -------------------------------------------------------------------


def test_stale_pid_files_are_cleared_without_killing_anyone(tmp_path: Path) -> None:
    settings = s3_test_settings(tmp_path / "home", 28833)
    bystander = subprocess.Popen(["sleep", "120"])  # an unrelated, living process
    try:
        # (a) The pid file names a process that has exited (and been reaped).
        dead = subprocess.Popen(["sleep", "0"])
        dead_create_time = psutil.Process(dead.pid).create_time()  # a zombie until reaped
        dead.wait()
        assert not psutil.pid_exists(dead.pid)
        _write_pidfile(settings, dead.pid, dead_create_time)
        assert services.status(settings).pid is None

        st = services.up(settings)
        assert st.started is True and st.healthy is True
        assert st.pid != dead.pid
        assert json.loads(_pidfile(settings).read_text())["pid"] == st.pid
        assert services.down(settings) is True
        assert not services.s3_healthy(settings)

        # (b) The pid is alive but is some other program (create_time differs,
        # as after pid reuse): down must not signal it.
        _write_pidfile(settings, bystander.pid, 0.0)
        assert services.status(settings).pid is None
        assert services.down(settings) is False
        assert bystander.poll() is None, "down() signalled a process it did not start"
        assert not _pidfile(settings).exists()

        # (c) Same, with this very test process as the recorded pid: up starts a
        # fresh server instead of adopting (or signalling) it.
        _write_pidfile(settings, os.getpid(), 0.0)
        st2 = services.up(settings)
        assert st2.started is True and st2.healthy is True
        assert st2.pid not in (os.getpid(), st.pid)
        assert json.loads(_pidfile(settings).read_text())["pid"] == st2.pid
        assert services.down(settings) is True
        assert bystander.poll() is None
    finally:
        services.down(settings)
        bystander.kill()
        bystander.wait()


def test_up_refuses_an_endpoint_served_by_someone_else(s3_settings: Settings, tmp_path: Path) -> None:
    # Same endpoint as the session server, but another home: not our process.
    # (Built afresh: model_copy(update={"home": ...}) would keep the cached home_dir.)
    intruder = Settings(
        home=tmp_path / "other-home",
        s3_endpoint=s3_settings.s3_endpoint,
        s3_internal_ports=s3_settings.s3_internal_ports,
    )
    assert services.status(intruder).pid is None
    with pytest.raises(services.ServiceError, match="something else already serves"):
        services.up(intruder)
    assert not _pidfile(intruder).exists()
    assert services.down(intruder) is False
    assert services.status(s3_settings).healthy, "the session server must be untouched"


# -- 3. down stops exactly our process -------------------------------------------------------


def test_down_stops_exactly_our_process(s3_settings: Settings, tmp_path: Path) -> None:
    settings = s3_test_settings(tmp_path / "home", 28933)
    session_pid = services.status(s3_settings).pid
    assert session_pid is not None
    try:
        st = services.up(settings)
        pid = st.pid
        assert psutil.pid_exists(pid)
        assert services.s3_healthy(settings)

        assert services.down(settings) is True
        assert not psutil.pid_exists(pid), f"weed pid {pid} still exists after down()"
        assert not services.s3_healthy(settings)
        for port in (settings.s3_port, *settings.s3_internal_ports):
            assert not _port_open(port), f"port {port} still open after down()"
        assert not _pidfile(settings).exists()
        after = services.status(settings)
        assert after.pid is None and after.healthy is False

        assert services.down(settings) is False

        # The session server (another process) was not touched.
        assert services.status(s3_settings).pid == session_pid
        assert services.status(s3_settings).healthy
    finally:
        services.down(settings)


# -- 4. secrets --------------------------------------------------------------------------


CANARY = "canary-s3cr3t-5b1e0d9a"


def _with_secret(settings: Settings, secret: str) -> Settings:
    return Settings(**{**settings.model_dump(), "s3_secret_key": SecretStr(secret)})


def test_identities_file_is_private_and_cli_masks_the_secret(tmp_path: Path) -> None:
    settings = _with_secret(s3_test_settings(tmp_path / "home", 29033), CANARY)
    identities = settings.services_dir / "s3-identities.json"
    try:
        services.up(settings)
        mode = stat.S_IMODE(identities.stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert CANARY in identities.read_text()  # the server needs it ...
        # ... and authenticates with it.
        store = ObjectStore.from_settings(settings, retries=1, backoff_seconds=0.1)
        store.put_bytes(settings.buckets.datasets, "canary.txt", b"ok")
        assert store.get_bytes(settings.buckets.datasets, "canary.txt") == b"ok"
    finally:
        services.down(settings)

    env = {k: v for k, v in os.environ.items() if not k.startswith("FOURM_")}
    env.update(settings_env(settings))
    env["FOURM_S3_SECRET_KEY"] = CANARY
    proc = subprocess.run(
        [str(FOURM_CLI), "settings", "--json"],
        env=env,
        cwd=tmp_path,  # no stray .env
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert CANARY not in proc.stdout and CANARY not in proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["s3_endpoint"] == settings.s3_endpoint
    assert shown["home"] == str(settings.home_dir)
    assert shown["s3_secret_key"] == "**********"

    # The human-readable table masks it too.
    table = subprocess.run(
        [str(FOURM_CLI), "settings"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0, table.stderr
    assert settings.s3_endpoint in table.stdout
    assert CANARY not in table.stdout and CANARY not in table.stderr


def test_identities_file_made_private_even_if_it_existed(tmp_path: Path) -> None:
    """A pre-existing world-readable identities file must not keep its mode once it holds the secret."""
    settings = _with_secret(s3_test_settings(tmp_path / "home", 29033), CANARY)
    identities = settings.services_dir / "s3-identities.json"
    identities.parent.mkdir(parents=True)
    identities.write_text("{}")
    identities.chmod(0o644)
    try:
        services.up(settings)
        assert CANARY in identities.read_text()
        mode = stat.S_IMODE(identities.stat().st_mode)
        assert mode == 0o600, f"identities file holding the secret has mode {oct(mode)}"
    finally:
        services.down(settings)
