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

from fourm import cli_generate, cli_runs, cli_serve
from fourm.params import ParamsError, PretrainParams, load_params
from fourm.registry.cli import registry_app
from fourm.settings import get_settings

app = typer.Typer(help="fourm: train 4M-style any-to-any multimodal models.", no_args_is_help=True)
services_app = typer.Typer(help="Local development services (S3, Prefect server).", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: generate, ingest, publish, summarise.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (figures go to docs/benchmarks.md).", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(registry_app, name="registry")
tokenizer_app = typer.Typer(help="Tokenizers: train one, evaluate all.", no_args_is_help=True)
tokens_app = typer.Typer(help="Token sets: validate.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(tokens_app, name="tokens")

out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]


def _known_errors() -> tuple[type[BaseException], ...]:
    from fourm.data.codecs import DecodeError
    from fourm.data.format import DatasetError
    from fourm.data.ingest import IngestError
    from fourm.data.token_shards import TokenSetError
    from fourm.evaluation.data import EvaluationDataError
    from fourm.generation_io import InputError
    from fourm.inference import InferenceError
    from fourm.labelers.base import LabelerError
    from fourm.launch.local import LaunchError
    from fourm.modalities import ModalityError
    from fourm.model.generate import GenerationError
    from fourm.registry.errors import RegistryError
    from fourm.reproduce import ReproduceError
    from fourm.run_workspace import RunWorkspaceError
    from fourm.services import ServiceError
    from fourm.storage.object_store import StorageError
    from fourm.tokenizers.base import TokenizerError
    from fourm.train.checkpoint import CheckpointError
    from fourm.train.data import IncompatibleError
    from fourm.train.loop import TrainingDiverged

    # OSError last: a missing or unwritable file the user named is bad input, not a bug.
    return (
        ParamsError,
        RunWorkspaceError,
        ReproduceError,
        DatasetError,
        DecodeError,
        LabelerError,
        StorageError,
        ServiceError,
        RegistryError,
        TokenizerError,
        TokenSetError,
        CheckpointError,
        IncompatibleError,
        TrainingDiverged,
        LaunchError,
        ModalityError,
        GenerationError,
        InferenceError,
        InputError,
        EvaluationDataError,
        IngestError,
        OSError,
    )


TRANSIENT_EXIT = 75  # EX_TEMPFAIL: S3 or a service did not answer; the pipeline retries such a stage


def _is_transient(error: BaseException) -> bool:
    from fourm.services import ServiceError
    from fourm.storage.object_store import StorageError

    return isinstance(error, ServiceError) or (isinstance(error, StorageError) and error.transient)


def friendly_errors(fn: F) -> F:
    """Turn the project's known errors into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _known_errors() as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(TRANSIENT_EXIT if _is_transient(e) else 1) from None

    return wrapper  # type: ignore[return-value]


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        from fourm.io import atomic_write_json, without_timings

        atomic_write_json(path, without_timings(report))


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
    _write_report(report, {"kind": params.source.kind, **result.to_dict()})
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
    _write_report(report, result.to_dict())
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


# -- label / validate -----------------------------------------------------------


PartOpt = Annotated[
    str | None,
    typer.Option(
        "--part", help="I/N: only the I-th of N ranges of shards, for a later full run to take over."
    ),
]


def _parse_part(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected INDEX/COUNT, e.g. 0/4", param_hint="--part") from None
    if not 0 <= index < count:
        raise typer.BadParameter(f"{text!r}: INDEX must be in 0..COUNT-1", param_hint="--part")
    return index, count


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
    part: PartOpt = None,
) -> None:
    """Pseudo-label the accepted raw samples with the labelers params.yaml selects."""
    from fourm import stages

    params = load_params(params_file)
    if part is not None:
        index, count = _parse_part(part)
        result = stages.label(params.label, raw, accepted, out_dir, part=(index, count))
        out.print(f"label part {index}/{count}: {result.num_samples} samples in {result.num_shards} shards")
        return
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
        f" ({result.workers} worker{'s' if result.workers > 1 else ''})"
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


# -- tokenizers / tokenize ------------------------------------------------------

RawOpt = Annotated[Path, typer.Option("--raw", help="Raw dataset directory.")]
LabelsOpt = Annotated[Path, typer.Option("--labels", help="Label set directory.")]
AcceptedOpt = Annotated[
    Path, typer.Option("--accepted", help="Manifest of the samples that passed label validation.")
]
TokenizersOpt = Annotated[Path, typer.Option("--tokenizers", help="Root of the trained tokenizers.")]


def _dataset_inputs(raw: Path, labels: Path, accepted: Path) -> Any:
    from fourm.data.samples import DatasetInputs

    return DatasetInputs(raw, labels, accepted)


@tokenizer_app.command("train")
@friendly_errors
def tokenizer_train(
    name: Annotated[str, typer.Argument(help="rgb, depth, normal, semseg (VQ-VAEs) or text.")],
    params_file: ParamsOpt = Path("params.yaml"),
    raw: RawOpt = Path("data/raw"),
    labels: LabelsOpt = Path("data/labels"),
    accepted: AcceptedOpt = Path("data/labels_validated/manifest.parquet"),
    out_dir: Annotated[Path | None, typer.Option("--out", help="Default: data/tokenizers/NAME.")] = None,
    report: Annotated[Path | None, typer.Option("--report")] = None,
    history: Annotated[Path | None, typer.Option("--history", help="Loss history CSV (a DVC plot).")] = None,
) -> None:
    """Train one tokenizer on the train split (params: tokenizers.*)."""
    from fourm import stages

    params = load_params(params_file)
    target = out_dir or Path("data/tokenizers") / name
    result = stages.train_tokenizer(
        name, params.tokenizers, _dataset_inputs(raw, labels, accepted), target, history
    )
    _write_report(report, result.to_dict())
    extra = result.details.get("final_loss")
    out.print(
        f"trained tokenizer {name} ({result.kind}, vocab {result.vocab_size}) "
        f"on {result.train_samples} samples "
        f"at {target} — {result.seconds:.1f} s" + (f", final loss {extra}" if extra is not None else "")
    )


@tokenizer_app.command("eval")
@friendly_errors
def tokenizer_eval(
    params_file: ParamsOpt = Path("params.yaml"),
    raw: RawOpt = Path("data/raw"),
    labels: LabelsOpt = Path("data/labels"),
    accepted: AcceptedOpt = Path("data/labels_validated/manifest.parquet"),
    tokenizers: TokenizersOpt = Path("data/tokenizers"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
    preview_dir: Annotated[
        Path | None, typer.Option("--preview-dir", help="Write recon_<modality>.png grids here.")
    ] = None,
) -> None:
    """Tokenize -> detokenize the evaluation split; reconstruction metrics and codebook usage."""
    from fourm import stages

    params = load_params(params_file)
    result = stages.eval_tokenizers(
        params.tokenizers, _dataset_inputs(raw, labels, accepted), tokenizers, preview_dir
    )
    _write_report(report, result)
    table = Table("tokenizer", "metrics", title=f"tokenizers on the {result['split']} split")
    for name, metrics in result["tokenizers"].items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        table.add_row(name, shown)
    out.print(table)


@app.command("tokenize")
@friendly_errors
def tokenize_cmd(
    params_file: ParamsOpt = Path("params.yaml"),
    raw: RawOpt = Path("data/raw"),
    labels: LabelsOpt = Path("data/labels"),
    accepted: AcceptedOpt = Path("data/labels_validated/manifest.parquet"),
    tokenizers: TokenizersOpt = Path("data/tokenizers"),
    out_dir: Annotated[Path, typer.Option("--out")] = Path("data/tokens"),
    report: Annotated[Path | None, typer.Option("--report")] = None,
    part: PartOpt = None,
) -> None:
    """Encode every accepted sample with every tokenizer into token shards (and publish them to S3)."""
    from fourm import stages

    params = load_params(params_file)
    inputs = _dataset_inputs(raw, labels, accepted)
    if part is not None:
        index, count = _parse_part(part)
        result = stages.tokenize(params.tokenize, inputs, tokenizers, out_dir, part=(index, count))
        out.print(
            f"tokenize part {index}/{count}: {result.encoded_shards} shards encoded, "
            f"{result.reused_shards} already published ({result.num_samples} samples)",
            highlight=False,
        )
        return
    result = stages.tokenize(params.tokenize, inputs, tokenizers, out_dir)
    _write_report(
        report, {k: v for k, v in result.to_dict().items() if k not in ("encoded_shards", "reused_shards")}
    )
    where = f", published to {result.published}" if result.published else ""
    out.print(
        f"tokenized {result.num_samples} samples {result.splits} into {result.num_shards} shards "
        f"({result.bytes / 1e6:.1f} MB; {result.encoded_shards} encoded, {result.reused_shards} reused) at "
        f"{out_dir}{where} — {result.seconds:.1f} s, {result.samples_per_second:.0f} samples/s",
        highlight=False,
        soft_wrap=True,
    )


@tokens_app.command("validate")
@friendly_errors
def tokens_validate(
    location: Annotated[str, typer.Argument(help="Token set directory or s3:// URI.")],
) -> None:
    """Check every shard of a token set: sha256, shapes, token ids inside each vocabulary."""
    from fourm.data.token_shards import validate_token_set

    result = validate_token_set(location)
    for problem in result["problems"]:
        err.print(f"[red]problem:[/red] {problem}", highlight=False, soft_wrap=True)
    if not result["ok"]:
        raise typer.Exit(1)
    out.print(f"{location}: {result['num_samples']} samples in {result['shards']} shards, all valid")


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


# -- generate and evaluate (fourm/cli_generate.py) ------------------------------

app.command("generate")(friendly_errors(cli_generate.generate_cmd))
app.command("evaluate")(friendly_errors(cli_generate.evaluate_cmd))
app.command("serve")(friendly_errors(cli_serve.serve_cmd))
app.command("register")(friendly_errors(cli_runs.register_cmd))
app.command("reproduce")(friendly_errors(cli_runs.reproduce_cmd))


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


@bench_app.command("tokenize")
def bench_tokenize_cmd(
    tokenizers: TokenizersOpt = Path("data/tokenizers"),
    batch_size: Annotated[int, typer.Option()] = 64,
    repeats: Annotated[int, typer.Option()] = 5,
) -> None:
    """Images/s through each image tokenizer's encoder (and decoder), on random inputs."""
    from fourm.tokenizers.bench import bench_tokenizers

    result = bench_tokenizers(tokenizers, batch_size, repeats)
    table = Table("tokenizer", "encode images/s", "decode images/s", title="tokenizers, median over repeats")
    for name, r in result["tokenizers"].items():
        table.add_row(name, f"{r['encode']['median']:.0f}", f"{r['decode']['median']:.0f}")
    out.print(table)
    print(json.dumps(result))


@bench_app.command("loader")
def bench_loader_cmd(
    location: Annotated[
        str | None, typer.Option("--tokens", help="Token set dir or s3:// URI; default: a synthetic set.")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    workers: Annotated[int, typer.Option()] = 2,
    batches: Annotated[int, typer.Option()] = 200,
    repeats: Annotated[int, typer.Option()] = 5,
    mask: Annotated[
        bool, typer.Option("--mask", help="Also mask each batch as training does (4M budgets 128/128).")
    ] = False,
) -> None:
    """Samples/s of the token-shard loader (local disk or S3), optionally with masking."""
    if mask:
        from fourm.train.batches_bench import bench_masked_batches

        result = bench_masked_batches(
            location, batch_size=batch_size, num_workers=workers, batches=batches, repeats=repeats
        )
    else:
        from fourm.data.loader_bench import bench_loader

        result = bench_loader(
            location, batch_size=batch_size, num_workers=workers, batches=batches, repeats=repeats
        )
    r = result["samples_per_s"]
    out.print(
        f"{result['bench']}: median {r['median']:,.0f} samples/s (min {r['min']:,.0f}, max {r['max']:,.0f})"
    )
    print(json.dumps(result))


@bench_app.command("train-step")
def bench_train_step_cmd(
    config: Annotated[str, typer.Option("--config", help="Named model config.")] = "bench-cpu-s",
    batch_size: Annotated[int, typer.Option()] = 32,
    steps: Annotated[int, typer.Option(help="Timed steps.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 3,
    threads: Annotated[int, typer.Option()] = 2,
    mode: Annotated[
        list[str] | None, typer.Option("--mode", help="fp32 and/or bf16 (repeatable); default both.")
    ] = None,
    force_bf16: Annotated[
        bool, typer.Option("--force-bf16", help="Run bf16 even where this CPU only emulates it (slow).")
    ] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Also time torch.compile'd model.")] = False,
    profile: Annotated[
        Path | None, typer.Option("--profile", help="Write a torch.profiler table of 3 fp32 steps here.")
    ] = None,
) -> None:
    """Seconds per training step (forward + backward + AdamW) of a named config, per precision."""
    from fourm.train.bench import bench_train_step, profile_train_step

    result = bench_train_step(
        config,
        batch_size=batch_size,
        warmup=warmup,
        steps=steps,
        threads=threads,
        modes=tuple(mode) if mode else ("fp32", "bf16"),
        force_bf16=force_bf16,
        compile=compile,
    )
    p = result["params"]
    out.print(
        f"{config}: {p['total'] / 1e6:.2f}M parameters ({p['non_embedding'] / 1e6:.2f}M non-embedding), "
        f"{result['train_step_gflop']:.1f} GFLOP/step, {result['threads']} threads, {result['cpu']}"
    )
    table = Table(
        "mode", "median s", "min s", "max s", "tokens/s", "GFLOP/s", "peak GFLOP/s", "of peak",
        title=f"train step, batch {batch_size}, median of {steps} steps",
    )  # fmt: skip
    skipped = []
    for name, r in result["modes"].items():
        if "skipped" in r:
            skipped.append(f"{name} skipped: {r['skipped']} ({r['hint']})")
            continue
        rows = [(name, r)] + ([(f"{name} compiled", r["compiled"])] if "compiled" in r else [])
        peak = result["matmul_peak"].get(name, {})
        for label, x in rows:
            table.add_row(
                label,
                f"{x['median_s']:.3f}",
                f"{x['min_s']:.3f}",
                f"{x['max_s']:.3f}",
                f"{x['tokens_per_s']:,.0f}",
                f"{x['model_gflops']:.1f}",
                f"{peak['tflops'] * 1e3:.1f}" if "tflops" in peak else "-",
                f"{x['fraction_of_peak']:.1%}" if "fraction_of_peak" in x else "-",
            )
    out.print(table)
    for line in skipped:
        out.print(line)
    if profile is not None:
        profile_train_step(profile, config, batch_size=batch_size, threads=threads)
        result["profile"] = str(profile)
        out.print(f"profile of 3 fp32 steps written to {profile}")
    print(json.dumps(result))


@bench_app.command("generate")
def bench_generate_cmd(
    config: Annotated[
        str, typer.Option("--config", help="Named model config (random weights).")
    ] = "bench-cpu-s",
    batch_size: Annotated[
        list[int] | None, typer.Option("--batch-size", help="Repeatable; default 1 and 32.")
    ] = None,
    steps: Annotated[int, typer.Option(help="MaskGIT steps.")] = 8,
    caption_tokens: Annotated[int, typer.Option(help="Tokens decoded per caption.")] = 32,
    repeats: Annotated[int, typer.Option(help="Timed calls (median reported).")] = 5,
    threads: Annotated[int, typer.Option()] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """MaskGIT rgb->depth ms/sample and caption tokens/s with and without the key/value cache."""
    from fourm.model.generate_bench import bench_generate

    result = bench_generate(
        config, tuple(batch_size or (1, 32)), steps, caption_tokens, repeats, threads, device=device
    )
    table = Table(
        "work", "batch", "ms/call", "ms/sample", "tokens/s", title=f"{config}, {result['precision']}"
    )
    for key, r in result["maskgit"].items():
        table.add_row(f"MaskGIT rgb->depth, {steps} steps", key.split("_")[1], f"{r['ms_per_call']:.1f}",
                      f"{r['ms_per_sample']:.2f}", "-")  # fmt: skip
    for key, r in result["caption"].items():
        _, batch, *cache = key.split("_")
        work = f"rgb->caption, {caption_tokens} tokens, {' '.join(cache)}"
        speed = (f"{r['ms_per_call']:.1f}", f"{r['ms_per_sample']:.2f}", f"{r['tokens_per_s']:,.0f}")
        table.add_row(work, batch, *speed)
    out.print(table)
    print(json.dumps(result))


@bench_app.command("label")
@friendly_errors
def bench_label_cmd(
    labeler: Annotated[
        list[str] | None,
        typer.Option("--labeler", help="Repeatable; default: every registered labeler that builds here."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per labeler call.")] = 16,
    repeats: Annotated[int, typer.Option(help="Timed calls (median reported).")] = 5,
    resolution: Annotated[int, typer.Option()] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (model-backed labelers).")] = "auto",
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="NAME=DIR_OR_HUB_ID: a real checkpoint instead of the tiny random one."),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="NAME.KEY=VALUE labeler option (VALUE as YAML).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads; default: one per core.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON result here.")] = None,
) -> None:
    """Images/s of each labeler on sample photographs (tiny random models unless --model).

    To measure on a GPU: `fourm bench label --device cuda` on a machine with one, with real
    checkpoints via `--model hf-depth=DIR_OR_HUB_ID`."""
    from fourm.io import atomic_write_json
    from fourm.labelers.bench import bench_labelers

    result = bench_labelers(
        labeler, batch_size, repeats, resolution, device, model or (), option or (), threads
    )
    title = (
        f"labelers on {result['device']} ({result['threads']} torch threads), batch {batch_size}, "
        f"{resolution}px, median of {repeats}"
    )
    table = Table("labeler", "images/s", "min", "max", "images", "model", title=title)
    for name, r in result["labelers"].items():
        speed = (f"{r['images_per_second']:,.1f}", f"{r['min']:,.1f}", f"{r['max']:,.1f}")
        table.add_row(name, *speed, r["images"], r["model"] or "-")
    out.print(table)
    for name, why in result["skipped"].items():
        out.print(f"{name} skipped: {why}", highlight=False)
    out.print(result["gpu"], highlight=False)
    if report is not None:
        atomic_write_json(report, result)
    print(json.dumps(result))


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
