"""The ``fourm`` command line: one command per stage, plus services and tools.

Every stage command reads params.yaml, calls the stage's plain function and
writes its report (a DVC metrics file). Known failures print one clear line and
exit non-zero; they never show a traceback.
"""

from __future__ import annotations

import functools
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from fourm.params import ParamsError, load_params
from fourm.registry.cli import registry_app
from fourm.settings import get_settings

app = typer.Typer(help="fourm: train 4M-style any-to-any multimodal models.", no_args_is_help=True)
services_app = typer.Typer(help="Local development services (S3 server).", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: generate, publish, summarise.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (figures go to docs/benchmarks.md).", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(registry_app, name="registry")

out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]


def _known_errors() -> tuple[type[BaseException], ...]:
    from fourm.data.codecs import DecodeError
    from fourm.data.format import DatasetError
    from fourm.labelers.base import LabelerError
    from fourm.registry.errors import RegistryError
    from fourm.services import ServiceError
    from fourm.storage.object_store import StorageError

    # OSError last: a missing or unwritable file the user named is bad input, not a bug.
    return (
        ParamsError,
        DatasetError,
        DecodeError,
        LabelerError,
        StorageError,
        ServiceError,
        RegistryError,
        OSError,
    )


def friendly_errors(fn: F) -> F:
    """Turn the project's known errors into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _known_errors() as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# Timings differ run to run; reports are DVC metrics and must be reproducible.
_TIMINGS = ("seconds", "scenes_per_second", "samples_per_second")


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        from fourm.io import atomic_write_json

        atomic_write_json(path, {k: v for k, v in report.items() if k not in _TIMINGS})


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
def services_up() -> None:
    """Start the local S3 server (idempotent), create the buckets, configure DVC's remote."""
    from fourm import services

    status = services.up(get_settings())
    verb = "started" if status.started else "already running"
    out.print(f"S3 server {verb}: {status.endpoint} (pid {status.pid})")
    if services.configure_dvc_remote(get_settings(), Path.cwd()):
        out.print("DVC remote credentials written to .dvc/config.local")


@services_app.command("down")
@friendly_errors
def services_down() -> None:
    """Stop the processes that ``services up`` started."""
    from fourm import services

    stopped = services.down(get_settings())
    out.print("S3 server stopped" if stopped else "S3 server was not running")


@services_app.command("status")
@friendly_errors
def services_status() -> None:
    """Say whether the local S3 server runs and answers."""
    from fourm import services

    st = services.status(get_settings())
    out.print(f"S3 server: {'healthy' if st.healthy else 'down'} {st.endpoint} pid={st.pid or '-'}")
    if not st.healthy:
        raise typer.Exit(1)


# -- data -----------------------------------------------------------------------


@data_app.command("generate")
@friendly_errors
def data_generate(
    params_file: ParamsOpt = Path("params.yaml"),
    out_dir: Annotated[Path, typer.Option("--out")] = Path("data/raw"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
) -> None:
    """Render the synthetic dataset (params: generate.*) into raw shards."""
    from fourm import stages

    params = load_params(params_file)
    result = stages.generate(params.generate, out_dir)
    _write_report(report, result.to_dict())
    out.print(
        f"generated {result.num_samples} scenes {result.splits} in {result.num_shards} shards "
        f"({result.bytes / 1e6:.1f} MB) at {out_dir} — {result.seconds:.1f} s, "
        f"{result.scenes_per_second:.0f} scenes/s"
    )


@data_app.command("publish")
@friendly_errors
def data_publish(
    dataset: Annotated[Path, typer.Argument(help="A finished dataset directory.")],
    uri: Annotated[str | None, typer.Option("--to", help="s3://bucket/prefix")] = None,
) -> None:
    """Upload a dataset directory to S3 as a published set (manifest last)."""
    from fourm.storage.dataset_source import publish_dataset
    from fourm.storage.object_store import ObjectStore

    settings = get_settings()
    uri = uri or f"s3://{settings.buckets.datasets}/{dataset.name}"
    manifest = publish_dataset(ObjectStore.from_settings(settings), dataset, uri)
    out.print(f"published {len(manifest['parts'])} files to {uri}")


@data_app.command("summary")
@friendly_errors
def data_summary(
    dataset: Annotated[Path, typer.Option("--dataset")] = Path("data/raw"),
    reports: Annotated[list[Path], typer.Option("--report")] = [],  # noqa: B006
) -> None:
    """Where the dataset lives, its size, and the validation summaries."""
    from fourm.summary import pipeline_summary

    for line in pipeline_summary(dataset, reports):
        out.print(line, highlight=False, soft_wrap=True)


# -- label / validate -----------------------------------------------------------


@app.command("label")
@friendly_errors
def label_cmd(
    params_file: ParamsOpt = Path("params.yaml"),
    raw: Annotated[Path, typer.Option("--raw")] = Path("data/raw"),
    accepted: Annotated[Path, typer.Option("--accepted")] = Path("data/raw_validated/manifest.parquet"),
    out_dir: Annotated[Path, typer.Option("--out")] = Path("data/labels"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
    preview: Annotated[
        Path | None, typer.Option("--preview", help="Write a PNG grid of labeled samples.")
    ] = None,
) -> None:
    """Pseudo-label the accepted raw samples with the labelers params.yaml selects."""
    from fourm import stages

    params = load_params(params_file)
    result = stages.label(params.label, raw, accepted, out_dir)
    _write_report(report, result.to_dict())
    if preview is not None:
        from fourm.data.preview import sample_grid
        from fourm.io import atomic_write_bytes

        buf = io.BytesIO()
        sample_grid(raw, out_dir).save(buf, format="PNG")
        atomic_write_bytes(preview, buf.getvalue())
    names = sorted({p["name"] for p in result.labelers.values()})
    out.print(
        f"labeled {result.num_samples} samples in {result.num_shards} shards with "
        f"{', '.join(names)} at {out_dir} — {result.seconds:.1f} s, {result.samples_per_second:.0f} samples/s"
    )


@app.command("validate")
@friendly_errors
def validate_cmd(
    suite: Annotated[str, typer.Option("--suite", help="raw or labeled")],
    dataset: Annotated[Path, typer.Option("--dataset")],
    out_dir: Annotated[Path, typer.Option("--out")],
    source_manifest: Annotated[Path | None, typer.Option("--source-manifest")] = None,
    docs: Annotated[Path | None, typer.Option("--docs", help="Folder for GX Data Docs (HTML).")] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
) -> None:
    """Validate a dataset; quarantine bad samples; fail above validate.max_bad_fraction."""
    from fourm import stages
    from fourm.validation.stage import ValidationFailed, failure_report_path

    if suite not in ("raw", "labeled"):
        err.print(f"[red]error:[/red] --suite must be raw or labeled, got {suite!r}")
        raise typer.Exit(2)
    params = load_params(params_file)
    try:
        result = stages.validate(suite, params.validate_, dataset, out_dir, source_manifest, docs)  # type: ignore[arg-type]
    except ValidationFailed as failure:
        # Outputs stay untouched; the failed report goes where flows can publish it.
        from fourm.io import atomic_write_json

        if report is not None:
            atomic_write_json(failure_report_path(report), failure.report.to_dict())
        err.print(f"[red]validation failed[/red] — {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    _write_report(report, result.to_dict())
    if report is not None:
        failure_report_path(report).unlink(missing_ok=True)
    out.print(result.summary(), highlight=False)


# -- bench ----------------------------------------------------------------------


@bench_app.command("data")
def bench_data(
    resolution: Annotated[int, typer.Option()] = 64,
    scenes: Annotated[int, typer.Option(help="Scenes per repeat.")] = 200,
    repeats: Annotated[int, typer.Option()] = 5,
) -> None:
    """Scenes/s of the synthetic renderer on one core (render only, and render + encode)."""
    from fourm.bench import bench_generation

    result = bench_generation(resolution, scenes, repeats)
    table = Table(
        "measure", "median", "min", "max", title=f"synthetic scenes at {resolution}x{resolution}, 1 process"
    )
    for key in ("render", "render_encode"):
        r = result[key]
        table.add_row(f"{key} scenes/s", f"{r['median']:.1f}", f"{r['min']:.1f}", f"{r['max']:.1f}")
    out.print(table)
    print(json.dumps(result))


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
