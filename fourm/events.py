"""Prefect events for registry stage changes: the one place ``fourm/`` talks to Prefect.

After a promotion, rollback or archival has committed, the registry calls
``emit_model_event``, which sends one event to the configured Prefect API so that
Prefect automations can react (docs/registry.md, "Automations on promotion"):

- ``fourm.model.promoted``: to staging or production (a rollback is a promotion
  with ``payload.rollback`` true);
- ``fourm.model.archived``: to archived;
- ``fourm.model.demoted``: back to none.

The resource is the model version (``fourm.model.<name>.<version>``) labelled with
``fourm.model``, ``fourm.version``, ``fourm.stage`` and ``fourm.from_stage``.

Nothing is sent unless a Prefect API is configured (Prefect's own settings, i.e.
``PREFECT_API_URL`` or a profile, else ``FOURM_PREFECT_API_URL``, else the local
server that ``fourm services up`` started, while it runs); without one no
server is contacted (Prefect is imported lazily, to read its settings). Sending is
bounded: one short-lived events client on a daemon thread, waited on for at most
``TIMEOUT_S`` seconds, so a slow or dead server can neither fail the (already
committed) promotion nor hold up the process at exit. Failures are one warning,
never an exception. Prefect's process-wide ``emit_event`` is not used: it queues
to a background worker that retries and is drained at interpreter exit (about two
minutes against a server that accepts the connection but never answers), binds to
the API URL of its first use, and starts a temporary server of its own when no API
is configured.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from fourm.registry.entities import ArtifactInfo, PromotionInfo

logger = logging.getLogger(__name__)

PROMOTED = "fourm.model.promoted"
ARCHIVED = "fourm.model.archived"
DEMOTED = "fourm.model.demoted"
TIMEOUT_S = 10.0  # the longest a promotion waits for the Prefect API to take its event
FLOW_RUN_ENV = "FOURM_PREFECT_FLOW_RUN_ID"  # set by the pipeline flow for its stages


def event_name(to_stage: str) -> str:
    return {"archived": ARCHIVED, "none": DEMOTED}.get(to_stage, PROMOTED)


def model_event(
    info: PromotionInfo, checkpoint: ArtifactInfo | None = None, flow_run_id: str | None = None
) -> dict[str, Any]:
    """The event for a committed stage change, as ``prefect.events.Event`` fields (no Prefect needed)."""
    ref = f"{info.model}:{info.version}"
    resource = {
        "prefect.resource.id": f"fourm.model.{info.model}.{info.version}",
        "prefect.resource.name": ref,
        "fourm.model": info.model,
        "fourm.version": str(info.version),
        "fourm.stage": info.to_stage,
        "fourm.from_stage": info.from_stage,
    }
    related = [
        {
            "prefect.resource.id": f"fourm.model.{info.model}",
            "prefect.resource.role": "model",
            "prefect.resource.name": info.model,
        }
    ]
    if info.replaced_version is not None:
        related.append(
            {
                "prefect.resource.id": f"fourm.model.{info.model}.{info.replaced_version}",
                "prefect.resource.role": "replaced-version",
                "prefect.resource.name": f"{info.model}:{info.replaced_version}",
            }
        )
    if flow_run_id:
        related.append(
            {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
        )
    gates = {
        name: {"passed": bool(r.get("passed")), "message": str(r.get("message", ""))}
        for name, r in info.gate_results.items()
    }
    payload = {
        "ref": ref,
        "model": info.model,
        "version": info.version,
        "from_stage": info.from_stage,
        "to_stage": info.to_stage,
        "replaced_version": info.replaced_version,
        "reason": info.reason,
        "actor": info.actor,
        "forced": info.forced,
        "rollback": "rollback" in info.gate_results,
        "gates_passed": all(g["passed"] for g in gates.values()),
        "gates": gates,
        "promotion_id": info.id,
        "checkpoint": (
            {"uri": checkpoint.uri, "sha256": checkpoint.sha256, "size": checkpoint.size}
            if checkpoint is not None
            else None
        ),
    }
    return {
        "event": event_name(info.to_stage),
        "resource": resource,
        "related": related,
        "payload": payload,
        "occurred": info.at,
    }


def safe_url(url: str) -> str:
    """``url`` without credentials or query, fit for a log line."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:
        return "<unparseable URL>"


def prefect_api_url() -> str | None:
    """The Prefect API that events go to, or None: Prefect's settings first, then fourm's
    (``FOURM_PREFECT_API_URL``, then the running local server of ``fourm services up``)."""
    url: str | None = None
    try:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    except Exception as err:  # prefect missing or its settings invalid: fourm's own settings may still say
        logger.debug("Prefect settings unreadable (%s)", type(err).__name__)
    if not url:
        url = os.environ.get("PREFECT_API_URL")
    if not url:
        from fourm.services import prefect_api_url as fourm_prefect_api_url
        from fourm.settings import get_settings

        url = fourm_prefect_api_url(get_settings())  # FOURM_PREFECT_API_URL, else `fourm services up`'s
    return url or None


def emit_model_event(
    info: PromotionInfo, checkpoint: ArtifactInfo | None = None, timeout: float | None = None
) -> bool:
    """Send the event for ``info`` (a committed stage change); True when the server confirmed it.

    Never raises: no configured API means nothing to do; any failure is a warning.
    """
    try:
        api_url = prefect_api_url()
    except Exception as err:
        logger.warning(
            "%s for %s:%s not sent: %s", event_name(info.to_stage), info.model, info.version, _describe(err)
        )
        return False
    if not api_url:
        logger.debug("no Prefect API configured; no event for %s:%s", info.model, info.version)
        return False
    timeout = TIMEOUT_S if timeout is None else timeout
    name = event_name(info.to_stage)
    outcome: dict[str, BaseException | None] = {}
    try:
        event = _build_event(info, checkpoint)
        context = contextvars.copy_context()  # Prefect's settings context (e.g. a test harness) goes along
        thread = threading.Thread(
            target=context.run,
            args=(_send_blocking, event, api_url, timeout, outcome),
            name="fourm-prefect-event",
            daemon=True,  # never keeps the process alive
        )
        thread.start()
        thread.join(timeout + 2.0)
        error = outcome.get("error", TimeoutError(f"no answer in {timeout:g} s"))
    except Exception as err:
        error = err
    if error is None:
        logger.debug("%s sent for %s:%s", name, info.model, info.version)
        return True
    logger.warning(
        "%s for %s:%s not sent to the Prefect API at %s (the stage change stands): %s",
        name,
        info.model,
        info.version,
        safe_url(api_url),
        _describe(error),
    )
    return False


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    if "://" in text:  # messages from HTTP/websocket libraries may quote the URL
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is not None and ctx.flow_run is not None:
            return str(ctx.flow_run.id)
    except Exception:
        pass
    return os.environ.get(FLOW_RUN_ENV) or None


def _build_event(info: PromotionInfo, checkpoint: ArtifactInfo | None) -> Any:
    from prefect.events import Event

    return Event(**model_event(info, checkpoint, _flow_run_id()))


class _QuietThread(logging.Filter):
    """Drop records logged on one thread: Prefect's client logs the socket URL (with any credentials)."""

    def __init__(self, ident: int):
        super().__init__()
        self.ident = ident

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident


def _send_blocking(
    event: Any, api_url: str, timeout: float, outcome: dict[str, BaseException | None]
) -> None:
    quiet = _QuietThread(threading.get_ident())
    client_logger = logging.getLogger("prefect.events.clients")
    client_logger.addFilter(quiet)
    try:
        asyncio.run(asyncio.wait_for(_send(event, api_url), timeout))
        outcome["error"] = None
    except BaseException as err:  # reported by the caller
        outcome["error"] = (
            TimeoutError(f"no answer in {timeout:g} s") if isinstance(err, TimeoutError) else err
        )
    finally:
        client_logger.removeFilter(quiet)


async def _send(event: Any, api_url: str) -> None:
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # checkpoint_every=1: ping after the event, so a pong means the server has it;
    # few reconnection attempts: a refused connection fails in well under a second.
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        client = get_events_client(reconnection_attempts=2, checkpoint_every=1)
    async with client:
        await client.emit(event)
