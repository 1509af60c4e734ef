"""``fourm serve``: serve fourm's Prefect deployments to a Prefect server.

Registered on the main app by ``fourm/cli.py``. ``fourm/`` never imports Prefect:
the deployments live in ``flows/serve.py``, imported when the command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)


def serve_cmd(
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Serve only this deployment (repeatable), e.g. fourm-evaluate; default: all of them.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Most flow runs at once; default: no limit.")
    ] = None,
) -> None:
    """Serve the deployments (fourm-pipeline and one per stage, e.g. fourm-evaluate) to the Prefect
    server (`fourm services up` starts a local one; or PREFECT_API_URL / FOURM_PREFECT_API_URL), and
    run the flow runs it schedules here. Run it from the repository root; Ctrl-C stops it."""
    from flows.serve import ServeError, serve_all

    try:
        serve_all(only, limit)
    except ServeError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
