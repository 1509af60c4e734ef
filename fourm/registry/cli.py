"""``fourm registry …``: list, inspect, trace, compare and promote models.

Rich tables for people, ``--json`` for scripts. Every failure is one line on
stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from fourm.params import ParamsError, RegistryParams, load_params
from fourm.registry.errors import RegistryError
from fourm.settings import get_settings

registry_app = typer.Typer(
    help="The model registry: artifacts, lineage, versions, promotion.", no_args_is_help=True
)
alias_app = typer.Typer(help="Aliases (@champion-style names for versions).", no_args_is_help=True)
registry_app.add_typer(alias_app, name="alias")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

UrlOpt = Annotated[str | None, typer.Option("--url", help="Registry SQLAlchemy URL (default: settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RegistryError, ParamsError, OSError) as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except SQLAlchemyError as e:
            first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            err.print(f"[red]error:[/red] registry database: {first}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _registry(url: str | None, params_file: Path | None = None):  # noqa: ANN202
    from fourm.registry.api import Registry

    gates = RegistryParams()
    path = params_file or Path("params.yaml")
    if params_file is not None or path.exists():
        gates = load_params(path).registry
    return Registry(url or get_settings().effective_registry_url, gates)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


@registry_app.command("ls")
@_errors
def ls_cmd(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List models with their latest, staging and production versions and aliases."""
    models = _registry(url).list_models()
    if as_json:
        _print_json(models)
        return
    table = Table("model", "latest", "production", "staging", "aliases", title="models")
    for m in models:
        aliases = ", ".join(f"@{a}→{v}" for a, v in sorted(m["aliases"].items()))
        table.add_row(m["name"], str(m["latest"]), _nums(m["production"]), _nums(m["staging"]), aliases)
    out.print(table)


def _nums(values: list[int]) -> str:
    return ", ".join(map(str, values)) or "–"


@registry_app.command("show")
@_errors
def show_cmd(ref: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show one version: NAME, NAME:VERSION or NAME@ALIAS (stages work as aliases)."""
    v = _registry(url).get_version(ref)
    if as_json:
        _print_json(v.to_dict())
        return
    table = Table("field", "value", title=v.ref, show_header=False)
    table.add_row("stage", v.stage)
    table.add_row("aliases", ", ".join("@" + a for a in v.aliases) or "–")
    table.add_row("checkpoint", f"{v.checkpoint.uri}\nsha256 {v.checkpoint.sha256}")
    for t in v.tokenizers:
        table.add_row("tokenizer", f"{t.name}: {t.uri}\nsha256 {t.sha256}")
    if v.evaluation:
        table.add_row("evaluation", f"{v.evaluation.uri}\nsha256 {v.evaluation.sha256}")
    table.add_row("metrics", json.dumps(v.metrics, sort_keys=True))
    table.add_row("run", str(v.run_id or "–"))
    table.add_row("created", v.created_at.isoformat(timespec="seconds"))
    out.print(table)


@registry_app.command("lineage")
@_errors
def lineage_cmd(
    ref: Annotated[str, typer.Argument(help="Model reference, artifact:ID or sha256:PREFIX.")],
    downstream: Annotated[
        bool, typer.Option("--downstream/--upstream", help="Direction (default upstream).")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="text, dot or mermaid")] = "text",
    depth: Annotated[int, typer.Option(min=1)] = 50,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trace where a model or artifact came from (upstream) or what was made from it."""
    from fourm.registry.lineage import render

    if fmt not in ("text", "dot", "mermaid"):
        raise RegistryError(f"--format must be text, dot or mermaid, got {fmt!r}")
    graph = _registry(url).lineage(ref, "downstream" if downstream else "upstream", depth)
    if as_json:
        _print_json(graph.to_dict())
    else:
        print(render(graph, fmt))


@registry_app.command("promote")
@_errors
def promote_cmd(
    ref: str,
    to: Annotated[str, typer.Option("--to", help="none, staging, production or archived")],
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who promotes (default: OS user).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Override failing gates (needs --reason).")] = False,
    params_file: Annotated[
        Path | None, typer.Option("--params", help="params.yaml with registry gates.")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote a version through the gates in params.yaml (registry.*); audited."""
    event = _registry(url, params_file).promote(ref, to, reason, actor=by, force=force)
    _print_event(event, as_json)


def _print_event(event: Any, as_json: bool) -> None:
    if as_json:
        _print_json(event.to_dict())
        return
    replaced = f", replacing version {event.replaced_version}" if event.replaced_version else ""
    forced = " [forced]" if event.forced else ""
    out.print(
        f"{event.model}:{event.version}: {event.from_stage} → {event.to_stage}{replaced}{forced} "
        f"(by {event.actor}, event {event.id})",
        highlight=False,
    )


@registry_app.command("rollback")
@_errors
def rollback_cmd(
    name: str,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    by: Annotated[str | None, typer.Option("--by")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-promote the production version that the current one replaced."""
    _print_event(_registry(url).rollback(name, reason, actor=by), as_json)


@registry_app.command("archive")
@_errors
def archive_cmd(
    ref: str,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    by: Annotated[str | None, typer.Option("--by")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Archive a version (an archived production version leaves no production version)."""
    _print_event(_registry(url).archive(ref, reason, actor=by), as_json)


@registry_app.command("history")
@_errors
def history_cmd(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The promotion audit log of a model."""
    events = _registry(url).history(name)
    if as_json:
        _print_json([e.to_dict() for e in events])
        return
    table = Table(
        "id", "when", "version", "from → to", "replaced", "by", "forced", "reason", title=f"{name} history"
    )
    for e in events:
        table.add_row(
            str(e.id),
            e.at.isoformat(timespec="seconds"),
            str(e.version),
            f"{e.from_stage} → {e.to_stage}",
            str(e.replaced_version or ""),
            e.actor,
            "yes" if e.forced else "",
            e.reason or "",
        )
    out.print(table)


@alias_app.command("set")
@_errors
def alias_set(ref: str, alias: str, url: UrlOpt = None) -> None:
    """Point ALIAS at the version REF names."""
    v = _registry(url).set_alias(ref, alias)
    out.print(f"@{alias} → {v.ref}", highlight=False)


@alias_app.command("rm")
@_errors
def alias_rm(name: str, alias: str, url: UrlOpt = None) -> None:
    """Remove an alias of model NAME."""
    _registry(url).remove_alias(name, alias)
    out.print(f"removed @{alias} from {name}", highlight=False)


@registry_app.command("diff")
@_errors
def diff_cmd(ref_a: str, ref_b: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Params, data, tokenizer and metric differences between two versions."""
    d = _registry(url).diff(ref_a, ref_b)
    if as_json:
        _print_json(d)
        return
    for section in ("params", "data", "tokenizers", "metrics"):
        table = Table("key", d["a"], d["b"], title=section)
        for row in d[section]:
            table.add_row(row["key"], str(row["a"]), str(row["b"]))
        if not d[section]:
            table.add_row("(no differences)", "", "")
        out.print(table)


@registry_app.command("card")
@_errors
def card_cmd(
    ref: str,
    output: Annotated[Path | None, typer.Option("--out", help="Write the markdown here.")] = None,
    url: UrlOpt = None,
) -> None:
    """A model card in markdown."""
    text = _registry(url).card(ref)
    if output:
        output.write_text(text)
        out.print(f"wrote {output}")
    else:
        print(text, end="")


@registry_app.command("register")
@_errors
def register_cmd(
    name: str,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint file.")],
    checkpoint_uri: Annotated[
        str | None, typer.Option("--checkpoint-uri", help="Where it lives (s3://…).")
    ] = None,
    tokenizers: Annotated[list[Path], typer.Option("--tokenizer", help="Tokenizer files (repeat).")] = [],  # noqa: B006
    evaluation: Annotated[
        Path | None, typer.Option("--evaluation", help="Evaluation report (metrics JSON).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a new model version from files (the pipeline's final step calls this).

    Metrics are read from the evaluation report (a JSON object); the run that made
    the checkpoint, if recorded, becomes the version's run.
    """
    from fourm.registry.hooks import file_artifact

    reg = _registry(url)
    ckpt = file_artifact(checkpoint, "checkpoint")
    ck = reg.register_artifact(ckpt.kind, ckpt.name, checkpoint_uri or ckpt.uri, ckpt.sha256, ckpt.size)
    toks = [file_artifact(t, "tokenizer") for t in tokenizers]
    tok_ids = [reg.register_artifact(t.kind, t.name, t.uri, t.sha256, t.size).id for t in toks]
    metrics: dict[str, Any] = {}
    eval_id = None
    if evaluation is not None:
        try:
            metrics = json.loads(evaluation.read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"{evaluation}: not a readable JSON metrics file: {e}") from None
        if not isinstance(metrics, dict):
            raise RegistryError(f"{evaluation}: metrics must be a JSON object")
        ev = file_artifact(evaluation, "evaluation report")
        eval_id = reg.register_artifact(ev.kind, ev.name, ev.uri, ev.sha256, ev.size).id
    version = reg.register_model_version(
        name,
        ck.id,
        tokenizer_artifact_ids=tok_ids,
        evaluation_artifact_id=eval_id,
        metrics=metrics,
        run_id=ck.created_by_run_id,
        description=description,
    )
    if as_json:
        _print_json(version.to_dict())
    else:
        out.print(
            f"registered {version.ref} (checkpoint sha256 {version.checkpoint.sha256[:12]}…)", highlight=False
        )


@registry_app.command("runs")
@_errors
def runs_cmd(
    stage: Annotated[str | None, typer.Option("--stage")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent stage runs with their status, how long they took, commit and params hash."""
    runs = _registry(url).runs(stage, limit)
    if as_json:
        _print_json([r.to_dict() for r in runs])
        return
    table = Table(
        "id", "stage", "status", "started", "seconds", "commit", "params sha256", "flow run", title="runs"
    )
    for r in runs:
        commit = (r.git_commit or "–")[:10] + ("+dirty" if r.git_dirty else "")
        table.add_row(
            str(r.id),
            r.stage,
            r.status,
            r.started_at.isoformat(timespec="seconds"),
            "–" if r.seconds is None else f"{r.seconds:.1f}",
            commit,
            (r.params_sha256 or "–")[:12],
            r.prefect_flow_run_id or "–",
        )
    out.print(table)
