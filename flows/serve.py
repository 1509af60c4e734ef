"""fourm's deployments, served by ``fourm serve`` (Prefect ``serve``) to a Prefect server.

One deployment per flow, named like the flow: ``fourm-pipeline`` (every DVC stage,
reproducible) and one per stage (``fourm-generate`` ... ``fourm-evaluate``), so their
full names are e.g. ``fourm-evaluate/fourm-evaluate``. ``prefect.yaml`` declares the
same deployments (names and entrypoints) for the ``fourm-local`` process pool;
``tests/integration/test_serve.py`` keeps the two in step.

No parameter values are baked in: a run's parameters default to the flow's own
defaults, which are the served checkout's params.yaml (read when the flows are
imported). Serve from the repository root (entrypoints and params.yaml are relative
to it); runs execute on this machine, ``fourm-pipeline`` runs each in a git worktree
of this checkout's HEAD (docs/pipeline.md).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flows.pipeline import pipeline, prefect_ui_url, use_configured_prefect_api
from flows.stages import (
    eval_tokenizers_flow,
    evaluate_flow,
    generate_flow,
    ingest_flow,
    label_flow,
    pretrain_flow,
    tokenize_flow,
    train_tokenizer_flow,
    validate_flow,
)

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

FLOWS: tuple[Flow, ...] = (
    pipeline,
    generate_flow,
    ingest_flow,
    label_flow,
    validate_flow,
    train_tokenizer_flow,
    eval_tokenizers_flow,
    tokenize_flow,
    pretrain_flow,
    evaluate_flow,
)
TAGS = ["fourm"]


class ServeError(RuntimeError):
    """No Prefect server to serve to, or an unknown deployment name."""


def deployment_names() -> list[str]:
    """Every deployment's name (the flow's name, e.g. ``fourm-evaluate``)."""
    return [f.name for f in FLOWS]


def deployments(only: Iterable[str] | None = None) -> list[RunnerDeployment]:
    """The deployments (all, or those named in ``only``), entrypoints relative to the current directory."""
    wanted = list(only or [])
    unknown = sorted(set(wanted) - set(deployment_names()))
    if unknown:
        raise ServeError(f"unknown deployment {', '.join(unknown)}; known: {', '.join(deployment_names())}")
    return [
        f.to_deployment(name=f.name, description=f.description, tags=list(TAGS))
        for f in FLOWS
        if not wanted or f.name in wanted
    ]


def server_api_url() -> str:
    """The Prefect API to serve to (see ``use_configured_prefect_api``); it must answer."""
    from prefect.client.orchestration import get_client

    api_url = use_configured_prefect_api()
    if not api_url:
        raise ServeError(
            "no Prefect server configured: run `fourm services up` (a local one), "
            "or set PREFECT_API_URL / FOURM_PREFECT_API_URL"
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ServeError(f"the Prefect server at {api_url} does not answer: {type(problem).__name__}")
    return api_url


def _terminate_before_serving(signum: int, frame: object) -> None:
    # Until Prefect's runner installs its own graceful SIGTERM handler no flow run has
    # started, so there is nothing to clean up; an exception raised here could land in
    # a weakref callback and be ignored, so leave at once.
    print("SIGTERM before serving began: stopped", flush=True)
    sys.stderr.flush()
    os._exit(0)


def serve_all(only: Iterable[str] | None = None, limit: int | None = None) -> None:
    """Register the deployments with the configured Prefect server and run what it schedules.

    Blocks until interrupted (Ctrl-C or SIGTERM); the main thread only (signal handlers)."""
    from prefect import serve

    # SIGTERM stops serving, also before Prefect's runner installs its own (graceful)
    # handler: the deployments are registered, and visible, before that.
    signal.signal(signal.SIGTERM, _terminate_before_serving)
    chosen = deployments(only)
    api_url = server_api_url()
    print(f"Serving {len(chosen)} deployment(s) to {api_url} (UI {prefect_ui_url()}):", flush=True)
    for d in chosen:
        print(f"  {d.flow_name}/{d.name}  ({d.entrypoint})", flush=True)
    print(
        f"Run one from the UI, or: prefect deployment run '{chosen[0].flow_name}/{chosen[0].name}'"
        " (with PREFECT_API_URL set). Ctrl-C stops serving.",
        flush=True,
    )
    # Nothing to pause on shutdown (no schedules), and pausing hangs when the server is gone.
    serve(*chosen, limit=limit, print_starting_message=False, pause_on_shutdown=False)
