"""Deployments (flows/serve.py, prefect.yaml) and the local Prefect server of ``fourm services up``.

The server tests run real processes (SeaweedFS, ``prefect server start``, ``fourm serve``)
on free ports with a temporary fourm home, so they never meet a developer's services,
and stop them all in ``finally``.
"""

from __future__ import annotations

import inspect
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from fourm import services
from fourm.settings import Settings
from tests.conftest import REPO, s3_test_settings, settings_env
from tests.waiting import wait_for as _wait_for

pytestmark = pytest.mark.integration

FOURM_CLI = REPO / ".venv" / "bin" / "fourm"
EVALUATE_PARAMETERS = {"model", "params", "tokenizers", "inputs", "out_dir"}


# -- prefect.yaml and flows/serve.py agree ------------------------------------------------


def _local_yaml_deployments() -> dict[str, dict[str, Any]]:
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in project["deployments"] if d["work_pool"]["name"] == "fourm-local"}


def test_prefect_yaml_declares_what_fourm_serve_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    import flows.stages
    from flows.serve import FLOWS, ServeError, deployments

    monkeypatch.chdir(REPO)  # entrypoints are relative to the directory serving them
    served = {d.name: d for d in deployments()}
    declared = _local_yaml_deployments()

    assert set(served) == set(declared)
    assert {"fourm-pipeline", "fourm-evaluate", "fourm-pretrain", "fourm-train-tokenizer"} <= set(served)
    stage_flows = {
        f.name for f in vars(flows.stages).values() if isinstance(f, Flow) and f.name.startswith("fourm-")
    }
    assert stage_flows | {"fourm-pipeline"} == set(served), "a stage flow is not deployed"
    assert served["fourm-evaluate"].entrypoint == "flows/stages.py:evaluate_flow"
    assert served["fourm-pipeline"].entrypoint == "flows/pipeline.py:pipeline"

    by_name = {f.name: f for f in FLOWS}
    for name, d in served.items():
        assert d.entrypoint == declared[name]["entrypoint"], name
        assert d.flow_name == name, "deployment and flow share the name: fourm-evaluate/fourm-evaluate"
        assert d.tags == ["fourm"] and declared[name]["tags"] == ["fourm"], name
        assert d.parameters == {}, f"{name}: parameter values baked in"
        assert d.description == inspect.getdoc(by_name[name].fn), name
        path, _, function = d.entrypoint.partition(":")
        loaded = load_flow_from_entrypoint(f"{REPO / path}:{function}")
        assert isinstance(loaded, Flow) and loaded.name == name, d.entrypoint
        assert set(d._parameter_openapi_schema.properties) == set(inspect.signature(loaded.fn).parameters)

    assert set(served["fourm-evaluate"]._parameter_openapi_schema.properties) == EVALUATE_PARAMETERS
    assert [d.name for d in deployments(["fourm-evaluate"])] == ["fourm-evaluate"]
    with pytest.raises(ServeError, match="unknown deployment fourm-nope"):
        deployments(["fourm-nope"])


# -- fourm services up / fourm serve against real servers -------------------------------------


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range (32768-)
    and away from the fixed ports of the other service tests (28533-29036)."""
    for _ in range(200):
        base = random.randrange(21000, 28000)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FOURM_CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )


def _deployment(api_url: str, name: str) -> Any:  # noqa: ANN401
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _flow_exists(api_url: str, name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        try:
            return client.read_flow_by_name(name) is not None
        except ObjectNotFound:
            return False


DEMO_SCRIPT = """
from prefect import flow

from flows.pipeline import prefect_ui_url, use_configured_prefect_api

api = use_configured_prefect_api()


@flow(name="fourm-demo-probe")
def probe() -> str:
    return "ok"


assert probe() == "ok"
print(api, prefect_ui_url())
"""


def test_services_up_runs_a_prefect_server_that_fourm_serve_registers_with(tmp_path: Path) -> None:
    base = _free_ports(5)  # S3 and its internals on base..base+3, Prefect on base+4
    settings = Settings(
        **{**s3_test_settings(tmp_path / "home", base).model_dump(), "prefect_port": base + 4}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOURM_", "PREFECT_"))}
    env.update(settings_env(settings))
    env.update(
        FOURM_PREFECT_PORT=str(settings.prefect_port),
        FOURM_WANDB_MODE="disabled",
        PREFECT_HOME=str(tmp_path / "prefect-client"),  # the client's profile; not the server's home
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    serve: subprocess.Popen[str] | None = None
    pid = None
    try:
        # Opted out: S3 only, no Prefect server.
        done = _cli(["services", "up", "--no-prefect"], env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Prefect" not in done.stdout
        assert services.prefect_status(settings).pid is None and not services.prefect_healthy(settings)
        assert services.prefect_api_url(settings) is None

        started = time.monotonic()
        done = _cli(["services", "up"], env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        print(f"services up with the Prefect server: {time.monotonic() - started:.1f} s")
        assert f"UI http://127.0.0.1:{settings.prefect_port}" in done.stdout
        assert f"export PREFECT_API_URL={api_url}" in done.stdout
        st = services.prefect_status(settings)
        assert st.healthy and st.pid is not None
        pid = st.pid
        assert services.prefect_api_url(settings) == api_url
        # its state lives under the fourm home
        assert (settings.home_dir / "prefect" / "prefect.db").exists()
        assert (settings.services_dir / "prefect.log").exists()

        again = _cli(["services", "up"], env, tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Prefect server already running" in again.stdout
        assert services.prefect_status(settings).pid == pid

        status = _cli(["services", "status"], env, tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"Prefect server: healthy http://127.0.0.1:{settings.prefect_port} pid={pid}" in status.stdout

        # A flow run as `make demo` starts it (python -m flows.pipeline) reports to that server.
        demo = subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-c", DEMO_SCRIPT],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert f"{api_url} http://127.0.0.1:{settings.prefect_port}" in demo.stdout
        assert _flow_exists(api_url, "fourm-demo-probe"), "the flow run went to another server"

        # `fourm serve` finds the server through the fourm home (no PREFECT_API_URL set).
        serve = subprocess.Popen(
            [str(FOURM_CLI), "serve", "--only", "fourm-evaluate", "--limit", "1"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = time.monotonic()

        def registered() -> Any:  # noqa: ANN401
            if serve.poll() is not None:
                pytest.fail(f"fourm serve exited ({serve.returncode}):\n{serve.stdout.read()}")
            return _deployment(api_url, "fourm-evaluate/fourm-evaluate")

        deployment = _wait_for("deployment fourm-evaluate/fourm-evaluate", registered, wait_s=60)
        print(f"fourm serve registered the deployment in {time.monotonic() - started:.1f} s")
        assert deployment.entrypoint == "flows/stages.py:evaluate_flow"
        assert deployment.tags == ["fourm"]
        assert set(deployment.parameter_openapi_schema["properties"]) >= EVALUATE_PARAMETERS
        assert _deployment(api_url, "fourm-pipeline/fourm-pipeline") is None, "--only serves only that one"

        serve.send_signal(signal.SIGTERM)
        try:
            output, _ = serve.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            pytest.fail(f"fourm serve still runs 30 s after SIGTERM:\n{serve.communicate()[0]}")
        assert serve.returncode == 0, output
        assert f"UI http://127.0.0.1:{settings.prefect_port}" in output
        assert "fourm-evaluate/fourm-evaluate" in output

        done = _cli(["services", "down"], env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Prefect server stopped" in done.stdout
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not services.prefect_healthy(settings)
        assert not (settings.services_dir / "prefect.pid").exists()
        assert services.prefect_api_url(settings) is None
        assert not _listening(settings.prefect_port), "something still listens on the Prefect port"
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
        services.prefect_down(settings)
        services.down(settings)


def test_prefect_up_names_its_log_when_the_server_cannot_start(tmp_path: Path) -> None:
    port = _free_ports(1)
    settings = Settings(home=tmp_path / "home", prefect_port=port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(services.ServiceError) as raised:
            services.prefect_up(settings)
    assert str(settings.services_dir / "prefect.log") in str(raised.value)
    assert f"Port {port} is already in use" in str(raised.value)
    assert services.prefect_status(settings).pid is None
    assert not (settings.services_dir / "prefect.pid").exists()
