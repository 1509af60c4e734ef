"""Promotion events against a real (temporary) Prefect server: what is sent, what is not,
that a dead or silent server never fails (or stalls) a promotion, and that the automation
documented in docs/registry.md runs the evaluate deployment on a staging promotion."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fourm import events
from fourm.params import MetricBounds, RegistryParams
from fourm.registry.api import Registry
from fourm.registry.errors import GateFailed
from tests.waiting import wait_for as _wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "registry.md"


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefect's test harness: a real Prefect API server (with its event, trigger and action
    services) on a temporary database; yields its API URL."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with (
        # the server process takes its settings from these: events are readable within 0.5 s
        temporary_settings(updates={PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: 0.5}),
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield PREFECT_API_URL.value()


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    yield reg
    reg.close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _version(reg: Registry, name: str, n: int, metrics: dict | None = None) -> Any:  # noqa: ANN401
    """Register version ``n`` of ``name`` (checkpoint size 100 + n)."""
    ckpt = reg.register_artifact(
        "checkpoint",
        f"{name}-{n}",
        f"s3://fourm-checkpoints/{name}/{n}/model.pt",
        _sha(f"{name}{n}"),
        100 + n,
    )
    version = reg.register_model_version(name, ckpt.id, metrics=metrics or {})
    assert version.version == n
    return version


def _model_name() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def _recording(reg: Registry) -> list[bool]:
    """Replace the registry's hook by one that records what ``emit_model_event`` returned."""
    results: list[bool] = []

    def hook(info, checkpoint) -> None:  # noqa: ANN001
        results.append(events.emit_model_event(info, checkpoint))

    reg.stage_change_hooks = [hook]
    return results


def _events(model: str, count: int, wait_s: float = 30.0) -> list[Any]:
    """The fourm events about ``model`` on the server, oldest first, once ``count`` are there."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOrder, EventResourceFilter
    from prefect.events.schemas.events import ResourceSpecification

    query = EventFilter(
        event=EventNameFilter(prefix=["fourm.model."]),
        resource=EventResourceFilter(labels=ResourceSpecification({"fourm.model": model})),
        order=EventOrder.ASC,
    )
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_events(filter=query, limit=50).events
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.25)


def _control_event(reg: Registry) -> None:
    """Promote another model with the API configured and wait for its event: every event sent
    before it has been persisted by then, so an absent event was never sent."""
    name = _model_name()
    _version(reg, name, 1, {"depth.delta1": 1.0})  # passes the gated registry's threshold too
    reg.stage_change_hooks = [events.emit_model_event]
    reg.promote(f"{name}:1", "staging")
    assert len(_events(name, 1)) == 1


def test_each_stage_change_sends_one_event_after_commit(prefect_server: str, registry: Registry) -> None:
    name = _model_name()
    v1, v2 = _version(registry, name, 1), _version(registry, name, 2)
    sent = _recording(registry)

    registry.promote(f"{name}:1", "staging", "first candidate", actor="ci-bot")
    (event,) = _events(name, 1)
    assert event.event == "fourm.model.promoted"
    assert dict(event.resource) == {
        "prefect.resource.id": f"fourm.model.{name}.1",
        "prefect.resource.name": f"{name}:1",
        "fourm.model": name,
        "fourm.version": "1",
        "fourm.stage": "staging",
        "fourm.from_stage": "none",
    }
    payload = event.payload
    assert payload["ref"] == f"{name}:1" and payload["version"] == 1
    assert (payload["reason"], payload["actor"], payload["forced"]) == ("first candidate", "ci-bot", False)
    assert (payload["from_stage"], payload["to_stage"], payload["rollback"]) == ("none", "staging", False)
    assert payload["gates_passed"] is True and payload["gates"] == {}
    assert payload["checkpoint"] == {"uri": v1.checkpoint.uri, "sha256": v1.checkpoint.sha256, "size": 101}
    assert payload["promotion_id"] == registry.history(name)[0].id
    assert {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event.related} == {
        "model": f"fourm.model.{name}"
    }

    registry.promote(f"{name}:1", "production", "ship it")
    registry.promote(f"{name}:2", "production", "better")  # archives version 1: still one event
    registry.rollback(name, "regression")
    registry.archive(f"{name}:1", "retired")
    history = registry.history(name)
    found = _events(name, len(history))
    assert sent == [True] * len(history) and len(found) == len(history) == 5
    assert [(e.event, e.resource["fourm.version"], e.resource["fourm.stage"]) for e in found] == [
        ("fourm.model.promoted", "1", "staging"),
        ("fourm.model.promoted", "1", "production"),
        ("fourm.model.promoted", "2", "production"),
        ("fourm.model.promoted", "1", "production"),
        ("fourm.model.archived", "1", "archived"),
    ]
    replacing = found[2]
    assert replacing.payload["replaced_version"] == 1
    assert replacing.payload["checkpoint"]["sha256"] == v2.checkpoint.sha256
    assert any(
        r["prefect.resource.role"] == "replaced-version"
        and r["prefect.resource.id"] == f"fourm.model.{name}.1"
        for r in replacing.related
    )
    rollback = found[3]
    assert rollback.payload["rollback"] is True and rollback.payload["reason"] == "regression"
    assert rollback.payload["replaced_version"] == 2
    assert rollback.resource["fourm.from_stage"] == "archived"
    assert found[4].payload["reason"] == "retired" and found[4].resource["fourm.from_stage"] == "production"
    # the events' ids are the audit log's, in order
    assert [e.payload["promotion_id"] for e in found] == [h.id for h in history]


def test_refused_promotion_sends_nothing_and_forced_one_says_so(prefect_server: str, tmp_path: Path) -> None:
    gates = RegistryParams(thresholds={"depth.delta1": MetricBounds(min=0.9)})
    with Registry(f"sqlite:///{tmp_path / 'gated.db'}", gates) as reg:
        name = _model_name()
        _version(reg, name, 1, {"depth.delta1": 0.5})
        sent = _recording(reg)
        with pytest.raises(GateFailed):
            reg.promote(f"{name}:1", "staging")
        assert sent == []
        _control_event(reg)
        assert _events(name, 1, wait_s=0) == []

        reg.stage_change_hooks = [events.emit_model_event]
        reg.promote(f"{name}:1", "staging", "known-bad metric, needed for a demo", force=True)
        (event,) = _events(name, 1)
        assert event.payload["forced"] is True and event.payload["gates_passed"] is False
        assert event.payload["gates"] == {
            "threshold:depth.delta1": {"passed": False, "message": "depth.delta1 = 0.5 (required >= 0.9)"}
        }


def test_no_prefect_api_configured_sends_nothing(
    prefect_server: str, registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = _model_name()
    _version(registry, name, 1)
    sent = _recording(registry)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("FOURM_PREFECT_API_URL", raising=False)
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        caplog.at_level(logging.DEBUG, "fourm.events"),
    ):
        assert events.prefect_api_url() is None
        info = registry.promote(f"{name}:1", "staging")
    assert info.to_stage == "staging" and registry.get_version(f"{name}:1").stage == "staging"
    assert sent == [False]
    assert "no Prefect API configured" in caplog.text
    _control_event(registry)
    assert _events(name, 1, wait_s=0) == []


def test_fourm_setting_alone_points_events_at_the_server(
    prefect_server: str, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FOURM_PREFECT_API_URL`` is used when Prefect itself has no API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = _model_name()
    _version(registry, name, 1)
    sent = _recording(registry)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("FOURM_PREFECT_API_URL", prefect_server)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        registry.promote(f"{name}:1", "staging")
    assert sent == [True]
    assert [e.resource["fourm.stage"] for e in _events(name, 1)] == ["staging"]


def test_unreachable_api_does_not_fail_the_promotion(
    registry: Registry, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on port 9: one warning, without the URL's password, in well under a second or two."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = _model_name()
    _version(registry, name, 1)
    sent = _recording(registry)
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://fourm:s3cret-token@127.0.0.1:9/api"}),
        caplog.at_level(logging.DEBUG),
    ):
        start = time.monotonic()
        info = registry.promote(f"{name}:1", "staging", "dead server")
        elapsed = time.monotonic() - start
    assert info.to_stage == "staging" and registry.get_version(f"{name}:1").stage == "staging"
    assert sent == [False]
    assert elapsed < 5, elapsed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("fourm.model.promoted" in w and "not sent" in w for w in warnings), warnings
    assert "http://127.0.0.1:9/api" in caplog.text
    assert "s3cret-token" not in caplog.text + "".join(capfd.readouterr())


SILENT_SERVER_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys, time
    import prefect.events.clients  # imported up front: the timing below is the send alone
    from fourm import events
    from fourm.registry.api import Registry

    events.TIMEOUT_S = 2.0
    with Registry(sys.argv[1]) as reg:
        art = reg.register_artifact("checkpoint", "c", "s3://b/c.pt", hashlib.sha256(b"c").hexdigest(), 1)
        reg.register_model_version("silent", art.id)
        start = time.monotonic()
        info = reg.promote("silent:1", "staging")
        print(f"promoted {info.to_stage} in {time.monotonic() - start:.2f} s", flush=True)
    """
)


def test_silent_api_is_bounded_and_does_not_block_exit(tmp_path: Path) -> None:
    """A server that accepts the connection but never answers: the promotion waits at most
    ``TIMEOUT_S`` (+2 s), and the process exits at once (Prefect's ``emit_event`` would hold the
    exit for about two minutes retrying)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the kernel; nobody ever reads or answers
        port = silent.getsockname()[1]
        env = {
            **os.environ,
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", SILENT_SERVER_SCRIPT, f"sqlite:///{tmp_path / 'registry.db'}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        total = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    promoted = re.search(r"promoted staging in ([0-9.]+) s", done.stdout)
    assert promoted, done.stdout + done.stderr[-3000:]
    assert 1.5 <= float(promoted.group(1)) < 2.0 + 2.0 + 1.0, promoted.group(0)  # TIMEOUT_S + join slack
    assert "not sent to the Prefect API" in done.stderr and "no answer in 2 s" in done.stderr
    after_promotion = total - float(promoted.group(1))  # interpreter start, imports, exit
    assert after_promotion < 60, f"process took {total:.1f} s in all"


def _docs_block(language: str, after: str, containing: str = "") -> str:
    """The first ``language`` code block in docs/registry.md after the heading ``after``
    that contains ``containing``."""
    text = DOCS.read_text()
    section = text[text.index(after) :]
    for block in re.findall(rf"```{language}\n(.*?)```", section, re.S):
        if containing in block:
            return block
    raise AssertionError(f"no {language} block with {containing!r} after {after!r} in {DOCS}")


def test_documented_automation_runs_evaluate_on_staging_promotion(
    prefect_server: str, registry: Registry, tmp_path: Path
) -> None:
    """Both automation snippets of docs/registry.md, against the real evaluate flow's deployment."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.schemas.automations import AutomationCore

    from flows.stages import evaluate_flow

    deployment_id = evaluate_flow.to_deployment(name="fourm-evaluate").apply()

    # the YAML, through the documented shell commands (`prefect deployment inspect`,
    # `prefect automation create --from-file`)
    heading = "## Automations on promotion"
    spec = _docs_block("yaml", heading)
    (tmp_path / "evaluate-on-staging.yaml").write_text(spec)
    venv_bin = str(Path(sys.executable).parent)
    cli = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _docs_block("bash", heading, "prefect automation create")],
        cwd=tmp_path,
        env={**os.environ, "PREFECT_API_URL": prefect_server, "PATH": f"{venv_bin}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert str(deployment_id) in (tmp_path / "evaluate-on-staging.local.yaml").read_text()
    spec = spec.replace("DEPLOYMENT_ID", str(deployment_id))
    with get_client(sync_client=True) as client:
        (from_yaml,) = client.read_automations_by_name("fourm-evaluate-new-staging-models")
        client.delete_automation(from_yaml.id)  # one automation at a time below

    # the Python snippet, run as written
    namespace: dict[str, Any] = {}
    exec(_docs_block("python", heading), namespace)  # noqa: S102
    automation = namespace["automation"]
    try:
        assert automation.id is not None
        # both snippets define the same automation
        core = AutomationCore.model_validate(yaml.safe_load(spec))
        for made in (from_yaml, automation):
            assert made.trigger.model_dump(exclude={"id"}) == core.trigger.model_dump(exclude={"id"})
            assert (made.actions, made.name, made.description) == (core.actions, core.name, core.description)

        first, second = _model_name(), _model_name()
        _version(registry, first, 1)
        _version(registry, second, 1)
        registry.promote(f"{first}:1", "production", "not a staging promotion")
        registry.promote(f"{second}:1", "staging", "new candidate")

        def runs() -> list[Any]:
            with get_client(sync_client=True) as client:
                return client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                )

        created = _wait_for("a fourm-evaluate flow run", runs)
        assert [run.parameters for run in created] == [{"model": f"{second}:1"}]
        assert created[0].state.is_scheduled()
        # the production promotion (sent first) started nothing
        time.sleep(2)
        assert [run.parameters["model"] for run in runs()] == [f"{second}:1"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation.id)
