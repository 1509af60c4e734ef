"""``fourm tokenizer train|eval``, ``fourm tokenize`` and ``fourm tokens validate``.

Registered on the main app by ``fourm/cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fourm.cli_common import (
    AcceptedOpt,
    LabelsOpt,
    ParamsOpt,
    PartOpt,
    RawOpt,
    TokenizersOpt,
    dataset_inputs,
    err,
    friendly_errors,
    out,
    parse_part,
    write_report,
)
from fourm.params import load_params

tokenizer_app = typer.Typer(help="Tokenizers: train one, evaluate all.", no_args_is_help=True)
tokens_app = typer.Typer(help="Token sets: validate.", no_args_is_help=True)


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
        name, params.tokenizers, dataset_inputs(raw, labels, accepted), target, history
    )
    write_report(report, result.to_dict())
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
        params.tokenizers, dataset_inputs(raw, labels, accepted), tokenizers, preview_dir
    )
    write_report(report, result)
    table = Table("tokenizer", "metrics", title=f"tokenizers on the {result['split']} split")
    for name, metrics in result["tokenizers"].items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        table.add_row(name, shown)
    out.print(table)


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
    inputs = dataset_inputs(raw, labels, accepted)
    if part is not None:
        index, count = parse_part(part)
        result = stages.tokenize(params.tokenize, inputs, tokenizers, out_dir, part=(index, count))
        out.print(
            f"tokenize part {index}/{count}: {result.encoded_shards} shards encoded, "
            f"{result.reused_shards} already published ({result.num_samples} samples)",
            highlight=False,
        )
        return
    result = stages.tokenize(params.tokenize, inputs, tokenizers, out_dir)
    write_report(
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
    from fourm.data.token_set import validate_token_set

    result = validate_token_set(location)
    for problem in result["problems"]:
        err.print(f"[red]problem:[/red] {problem}", highlight=False, soft_wrap=True)
    if not result["ok"]:
        raise typer.Exit(1)
    out.print(f"{location}: {result['num_samples']} samples in {result['shards']} shards, all valid")
