"""The ``fourm`` command line: one command per stage, plus services and tools.

Every stage command reads params.yaml, calls the stage's plain function and
writes its report (a DVC metrics file). Known failures print one clear line and
exit non-zero; they never show a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fourm import cli_bench, cli_data, cli_generate, cli_runs, cli_serve, cli_tokens
from fourm.cli_common import TRANSIENT_EXIT, ParamsOpt, friendly_errors, out
from fourm.params import PretrainParams, load_params
from fourm.registry.cli import registry_app
from fourm.settings import get_settings

__all__ = ["TRANSIENT_EXIT", "app", "main"]

app = typer.Typer(help="fourm: train 4M-style any-to-any multimodal models.", no_args_is_help=True)
services_app = typer.Typer(help="Local development services (S3, Prefect server).", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(cli_data.data_app, name="data")
app.add_typer(cli_bench.bench_app, name="bench")
app.add_typer(registry_app, name="registry")
app.add_typer(cli_tokens.tokenizer_app, name="tokenizer")
app.add_typer(cli_tokens.tokens_app, name="tokens")


# -- settings -------------------------------------------------------------------


@app.command("settings")
def settings_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the effective settings (environment FOURM_*, .env), secrets masked."""
    shown = get_settings().masked()
    if as_json:
        out.print_json(json.dumps(shown, default=str))
        return
    table = Table("setting", "value", title="fourm settings")
    for key, value in shown.items():
        table.add_row(key, str(value))
    out.print(table)


# -- services -------------------------------------------------------------------


@services_app.command("up")
@friendly_errors
def services_up(
    prefect: Annotated[
        bool, typer.Option("--prefect/--no-prefect", help="Also start the local Prefect server (UI).")
    ] = True,
) -> None:
    """Start the local S3 server and Prefect server (idempotent), create the buckets, configure
    DVC's remote."""
    import os

    from fourm import services

    settings = get_settings()
    status = services.up(settings)
    verb = "started" if status.started else "already running"
    out.print(f"S3 server {verb}: {status.endpoint} (pid {status.pid})")
    if services.configure_dvc_remote(settings, Path.cwd()):
        out.print("DVC remote credentials written to .dvc/config.local")
    if prefect:
        pst = services.prefect_up(settings)
        line = f"Prefect server {'started' if pst.started else 'already running'} (pid {pst.pid})"
        out.print(f"{line}: UI {pst.endpoint}", highlight=False, soft_wrap=True)
        local_api = services.local_prefect_api_url(settings)
        other = os.environ.get("PREFECT_API_URL") or settings.prefect_api_url
        if other and other.rstrip("/") != local_api:
            note = f"note: flows report to {other} (PREFECT_API_URL or FOURM_PREFECT_API_URL) instead"
            out.print(note, highlight=False, soft_wrap=True)
        else:
            out.print("flows and `fourm serve` run here report to it", highlight=False)
        out.print(f"for the prefect CLI: export PREFECT_API_URL={local_api}", highlight=False, soft_wrap=True)


@services_app.command("down")
@friendly_errors
def services_down() -> None:
    """Stop the processes that ``services up`` started."""
    from fourm import services

    stopped = services.down(get_settings())
    out.print("S3 server stopped" if stopped else "S3 server was not running")
    stopped = services.prefect_down(get_settings())
    out.print("Prefect server stopped" if stopped else "Prefect server was not running")


@services_app.command("status")
@friendly_errors
def services_status() -> None:
    """Say whether the local S3 server (and the Prefect server, if started) run and answer."""
    from fourm import services

    st = services.status(get_settings())
    out.print(f"S3 server: {'healthy' if st.healthy else 'down'} {st.endpoint} pid={st.pid or '-'}")
    pst = services.prefect_status(get_settings())
    state = "healthy" if pst.healthy else ("down" if pst.pid else "not running")
    out.print(f"Prefect server: {state} {pst.endpoint} pid={pst.pid or '-'}", highlight=False, soft_wrap=True)
    if not st.healthy or (pst.pid and not pst.healthy):
        raise typer.Exit(1)


# -- stages (in the order of the pipeline; `fourm --help` lists them so) -----------

app.command("label")(cli_data.label_cmd)
app.command("validate")(cli_data.validate_cmd)
app.command("tokenize")(cli_tokens.tokenize_cmd)


@app.command("train")
@friendly_errors
def train_cmd(
    params_file: ParamsOpt = Path("params.yaml"),
    tokens: Annotated[Path, typer.Option("--tokens", help="Token set directory.")] = Path("data/tokens"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where model.pt goes.")] = Path("models/pretrain"),
    reports_dir: Annotated[
        Path, typer.Option("--reports", help="metrics.json, loss CSVs and loss.png.")
    ] = Path("reports/pretrain"),
    launcher: Annotated[
        str | None,
        typer.Option(
            "--launcher", help="local (torchrun here) or kubernetes (pods; default: pretrain.launcher)."
        ),
    ] = None,
    processes: Annotated[
        int | None, typer.Option("--processes", help="torchrun processes (default: pretrain.processes).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from this run's latest checkpoint.")
    ] = True,
) -> None:
    """Pretrain 4M on a token set (DDP over --processes); writes model.pt, metrics, loss curves."""
    from fourm import stages

    if launcher not in (None, "local", "kubernetes"):
        raise typer.BadParameter(
            f"unknown launcher {launcher!r}; available: local, kubernetes", param_hint="--launcher"
        )
    pretrain = load_params(params_file).pretrain
    if launcher:
        pretrain = PretrainParams.model_validate({**pretrain.model_dump(), "launcher": launcher})
    metrics = stages.pretrain(pretrain, tokens, out_dir, reports_dir, processes=processes, resume=resume)
    ratios = ", ".join(f"{k} {v:.2f}" for k, v in metrics["below_baseline"].items())
    out.print(
        f"pretrained {metrics['parameters'] / 1e6:.1f}M-parameter 4M for {metrics['steps']} steps: "
        f"val loss {metrics['val_loss']:.3f}; val / unigram baseline: {ratios}; model at {out_dir}/model.pt",
        highlight=False,
        soft_wrap=True,
    )


app.command("generate")(friendly_errors(cli_generate.generate_cmd))
app.command("evaluate")(friendly_errors(cli_generate.evaluate_cmd))
app.command("serve")(friendly_errors(cli_serve.serve_cmd))
app.command("register")(friendly_errors(cli_runs.register_cmd))
app.command("reproduce")(friendly_errors(cli_runs.reproduce_cmd))


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
