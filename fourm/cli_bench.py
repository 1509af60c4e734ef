"""``fourm bench ...``: the benchmarks whose figures go to docs/benchmarks.md.

Each command prints a table and, as its last line, the result as JSON. Registered on
the main app by ``fourm/cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fourm.cli_common import TokenizersOpt, friendly_errors, out

bench_app = typer.Typer(help="Benchmarks (figures go to docs/benchmarks.md).", no_args_is_help=True)


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
    device: Annotated[str, typer.Option(help="cpu or cuda (bf16 autocast runs natively there).")] = "cpu",
) -> None:
    """Seconds per training step (forward + backward + AdamW) of a named config, per precision."""
    from fourm.train.bench import bench_train_step, profile_train_step

    try:
        result = bench_train_step(
            config,
            batch_size=batch_size,
            warmup=warmup,
            steps=steps,
            threads=threads,
            modes=tuple(mode) if mode else ("fp32", "bf16"),
            force_bf16=force_bf16,
            compile=compile,
            device=device,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    p = result["params"]
    where = result["device_name"] if device != "cpu" else f"{result['threads']} threads, {result['cpu']}"
    out.print(
        f"{config}: {p['total'] / 1e6:.2f}M parameters ({p['non_embedding'] / 1e6:.2f}M non-embedding), "
        f"{result['train_step_gflop']:.1f} GFLOP/step, {where}"
    )
    unit, scale = ("TFLOP/s", 1e3) if device != "cpu" else ("GFLOP/s", 1.0)  # GPUs run ~1000x a CPU
    table = Table(
        "mode", "median s", "min s", "max s", "tokens/s", unit, f"peak {unit}", "of peak", "GPU GiB",
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
                f"{x['model_gflops'] / scale:.1f}",
                f"{peak['tflops'] * 1e3 / scale:.1f}" if "tflops" in peak else "-",
                f"{x['fraction_of_peak']:.1%}" if "fraction_of_peak" in x else "-",
                f"{r['max_memory_gib']:.1f}" if "max_memory_gib" in r else "-",
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
