"""``fourm data ...`` (the dataset: generate, source, ingest, publish, summary), ``fourm label``
and ``fourm validate``.

Registered on the main app by ``fourm/cli.py``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import typer

from fourm.cli_common import ParamsOpt, PartOpt, err, friendly_errors, out, parse_part, write_report
from fourm.params import load_params
from fourm.settings import get_settings

data_app = typer.Typer(help="Datasets: generate, ingest, publish, summarise.", no_args_is_help=True)


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
    write_report(report, result.to_dict())
    _print_generated(result, out_dir)


def _print_generated(result: Any, out_dir: Path) -> None:
    out.print(
        f"generated {result.num_samples} scenes {result.splits} in {result.num_shards} shards "
        f"({result.bytes / 1e6:.1f} MB) at {out_dir} — {result.seconds:.1f} s, "
        f"{result.scenes_per_second:.0f} scenes/s"
    )


def _print_ingested(result: Any, out_dir: Path) -> None:
    bad = ", ".join(f"{k} {v}" for k, v in result.quarantined.items()) or "none"
    out.print(
        f"ingested {result.num_ingested} of {result.num_images} images {result.splits} in "
        f"{result.num_shards} shards at {out_dir}; quarantined: {bad} (see {out_dir}/quarantine.json)",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("source")
@friendly_errors
def data_source(
    params_file: ParamsOpt = Path("params.yaml"),
    out_dir: Annotated[Path, typer.Option("--out")] = Path("data/raw"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
) -> None:
    """The raw dataset from params.yaml's source: synthetic scenes (generate.*) or images at
    source.path (ingest.*). The pipeline's first stage: switching data is a params change."""
    from fourm import stages

    params = load_params(params_file)
    result = stages.source(params, out_dir)
    write_report(report, {"kind": params.source.kind, **result.to_dict()})
    if params.source.kind == "images":
        _print_ingested(result, out_dir)
    else:
        _print_generated(result, out_dir)


@data_app.command("ingest")
@friendly_errors
def data_ingest(
    source: Annotated[str, typer.Argument(help="Image folder, .tar file(s) or glob, or s3://bucket/prefix.")],
    params_file: ParamsOpt = Path("params.yaml"),
    out_dir: Annotated[Path, typer.Option("--out")] = Path("data/raw"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
) -> None:
    """Ingest real images (params: ingest.*) into raw shards; bad files are quarantined, not fatal."""
    from fourm import stages

    result = stages.ingest(load_params(params_file).ingest, source, out_dir)
    write_report(report, result.to_dict())
    _print_ingested(result, out_dir)


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
    part: PartOpt = None,
) -> None:
    """Pseudo-label the accepted raw samples with the labelers params.yaml selects."""
    from fourm import stages

    params = load_params(params_file)
    if part is not None:
        index, count = parse_part(part)
        result = stages.label(params.label, raw, accepted, out_dir, part=(index, count))
        out.print(f"label part {index}/{count}: {result.num_samples} samples in {result.num_shards} shards")
        return
    result = stages.label(params.label, raw, accepted, out_dir)
    write_report(report, result.to_dict())
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
        f" ({result.workers} worker{'s' if result.workers > 1 else ''})"
    )


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
    write_report(report, result.to_dict())
    if report is not None:
        failure_report_path(report).unlink(missing_ok=True)
    out.print(result.summary(), highlight=False)
