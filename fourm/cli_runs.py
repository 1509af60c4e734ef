"""``fourm register`` (the pipeline's last stage) and ``fourm reproduce`` (rebuild a registered model).

Registered on the main app by ``fourm/cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def register_cmd(
    model: Annotated[Path, typer.Option("--model", help="The checkpoint pretrain wrote.")] = Path(
        "models/pretrain/model.pt"
    ),
    tokenizers: Annotated[Path, typer.Option("--tokenizers", help="Its tokenizers' directory.")] = Path(
        "data/tokenizers"
    ),
    evaluation: Annotated[Path, typer.Option("--evaluation", help="Its evaluation metrics.json.")] = Path(
        "reports/evaluate/metrics.json"
    ),
    out_path: Annotated[Path, typer.Option("--out", help="Report: the version and its hashes.")] = Path(
        "reports/register.json"
    ),
    params_file: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = Path("params.yaml"),
) -> None:
    """Register the evaluated model as the next version of params.register.model_name, with its lineage."""
    from fourm.params import load_params
    from fourm.registry.register_stage import register_pipeline_model

    params = load_params(params_file).register_
    result = register_pipeline_model(params, model, tokenizers, evaluation, out_path)
    verdict = "beats every baseline" if result["beats_all_baselines"] else "does NOT beat every baseline"
    out.print(
        f"registered {result['ref']} (checkpoint sha256 {result['checkpoint_sha256'][:12]}…); it {verdict}",
        highlight=False,
    )


def reproduce_cmd(
    ref: Annotated[str, typer.Argument(help="A registry reference: model:version, model@alias or model.")],
    repo: Annotated[Path, typer.Option("--repo", help="The git checkout to reproduce in.")] = Path("."),
    keep: Annotated[bool, typer.Option("--keep/--clean", help="Keep the reproduction's worktree.")] = True,
    rerun: Annotated[
        list[str] | None,
        typer.Option(
            "--rerun", help="Recompute this stage although its pulled outputs are up to date (repeatable)."
        ),
    ] = None,
) -> None:
    """Check out the run that made REF, `dvc pull`, `dvc repro`; compare every hash with the registry."""
    from fourm.reproduce import reproduce

    result = reproduce(ref, repo, keep=keep, rerun=rerun or ())
    table = Table(title=f"{result.ref}: {result.git_ref} ({result.commit[:12]})")
    table.add_column("artifact", no_wrap=True)
    table.add_column("path", overflow="fold")
    table.add_column("registered", no_wrap=True)
    table.add_column("reproduced", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for c in result.checks:
        table.add_row(
            c.kind,
            c.path,
            c.registered[:12],
            (c.reproduced or "missing")[:12],
            "[green]pass[/green]" if c.passed else "[red]FAIL[/red]",
        )
    out.print(table)
    if result.skipped:
        names = ", ".join(f"{a.kind} {a.name}" for a in result.skipped)
        out.print(f"not workspace files (not compared): {names}", highlight=False, soft_wrap=True)
    if keep:
        out.print(f"workspace: {result.workspace}", highlight=False, soft_wrap=True)
    passed = sum(c.passed for c in result.checks)
    out.print(f"{passed}/{len(result.checks)} hashes (sha256) equal the registry's", highlight=False)
    if not result.passed:
        out.print(f"[red]reproduction of {result.ref} FAILED[/red]")
        raise typer.Exit(1)
    out.print(f"[green]{result.ref} reproduced[/green]")
