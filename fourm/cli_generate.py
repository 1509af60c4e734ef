"""``fourm generate`` and ``fourm evaluate``: a trained model asked for modalities, and scored.

Registered on the main app by ``fourm/cli.py`` (which adds its error handling).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console()

ModelArg = Annotated[
    str,
    typer.Option(
        "--model",
        help="Model file or directory (model.pt), or a registry reference: NAME:VERSION or NAME@STAGE.",
    ),
]
TokenizersOpt = Annotated[Path, typer.Option("--tokenizers", help="Tokenizers the model was trained with.")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]


def generate_cmd(
    model: ModelArg,
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input",
            "-i",
            help="NAME=VALUE, repeatable: rgb=img.png, depth=d.npy, semseg=s.png, caption='text' or "
            "caption=@file.txt, boxes=boxes.json.",
        ),
    ],
    plan: Annotated[
        str,
        typer.Option(
            "--plan",
            help="Modalities to generate in order, e.g. 'caption -> semseg -> depth -> rgb' "
            "(the given inputs in it are skipped); each output conditions the next.",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Where the PNGs, raw arrays and grid.png go.")],
    tokenizers: TokenizersOpt = Path("data/tokenizers"),
    seed: Annotated[int, typer.Option(help="Sampling seed: the same seed gives the same outputs.")] = 0,
    method: Annotated[str | None, typer.Option(help="Image targets: maskgit or roar.")] = None,
    steps: Annotated[int | None, typer.Option(help="Parallel decoding steps.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (1 = off).")] = None,
) -> None:
    """Generate modalities from any given ones; writes each as a PNG plus its raw values."""
    from fourm.generation_io import parse_assignment, read_input, write_outputs
    from fourm.inference import AnyToAny, resolve_model, step_for
    from fourm.io import atomic_output_dir
    from fourm.model.generate import parse_plan
    from fourm.model.generation_types import GenerationError
    from fourm.params import DecodingParams

    given_values = {}
    for text in inputs:
        name, value = parse_assignment(text)
        if name in given_values:
            raise GenerationError(f"--input {name} is given twice")
        given_values[name] = read_input(name, value)
    targets = [t for t in parse_plan(plan) if t not in given_values]
    if not targets:
        raise GenerationError(f"--plan {plan!r}: nothing to generate (every modality in it is given)")
    knobs = {"method": method, "steps": steps, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    knobs = {k: v for k, v in {**knobs, "guidance": guidance}.items() if v is not None}
    if method is not None and method not in ("maskgit", "roar"):
        raise GenerationError(f"--method {method!r}: use maskgit or roar (sequences decode autoregressively)")

    a2a = AnyToAny.load(resolve_model(model), tokenizers)
    steps_plan = []
    for target in targets:
        base = DecodingParams()  # greedy; image targets: MaskGIT, 8 cosine steps
        fields = (
            knobs
            if target not in ("caption", "boxes")
            else {k: v for k, v in knobs.items() if k not in ("method", "steps")}
        )
        steps_plan.append(step_for(target, DecodingParams.model_validate({**base.model_dump(), **fields})))
    encoded = a2a.encode({name: [value] for name, value in given_values.items()})
    generated = a2a.generate(encoded, steps_plan, seed=seed, batch_size=1)
    outputs = {t: a2a.decode(t, generated[t])[0] for t in targets}
    with atomic_output_dir(out_dir) as tmp:
        files = write_outputs(tmp, given_values, outputs)
        (tmp / "generation.json").write_text(
            json.dumps(
                {"model": str(a2a.model_path), "inputs": sorted(given_values), "plan": targets, "seed": seed,
                 "steps": [vars(s) for s in steps_plan]},
                indent=1,
            )
        )  # fmt: skip
    for t in targets:
        if t == "caption":
            out.print(f"caption: {outputs[t]}", highlight=False, soft_wrap=True)
    out.print(
        f"generated {', '.join(targets)} -> {out_dir}/ ({', '.join(files)})", highlight=False, soft_wrap=True
    )


def evaluate_cmd(
    model: ModelArg = "models/pretrain/model.pt",
    tokenizers: TokenizersOpt = Path("data/tokenizers"),
    raw: Annotated[Path, typer.Option("--raw")] = Path("data/raw"),
    labels: Annotated[Path, typer.Option("--labels")] = Path("data/labels"),
    accepted: Annotated[Path, typer.Option("--accepted")] = Path("data/labels_validated/manifest.parquet"),
    out_dir: Annotated[Path, typer.Option("--out", help="metrics.json, plots, galleries, report.md.")] = Path(
        "reports/evaluate"
    ),
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Score the model on the held-out split, every task beside its trivial baseline."""
    from fourm import stages
    from fourm.data.samples import DatasetInputs
    from fourm.inference import resolve_model
    from fourm.params import load_params

    params = load_params(params_file).evaluate
    report = stages.evaluate(
        params, resolve_model(model), tokenizers, DatasetInputs(raw, labels, accepted), out_dir
    )
    for task, result in report["tasks"].items():
        shown = ", ".join(
            f"{k} {v['model']:.3g} vs {v['baseline']:.3g}" for k, v in result["metrics"].items()
        )
        verdict = "beats" if result["beats_baseline"] else "does NOT beat"
        out.print(f"{task}: {verdict} the baseline ({shown})", highlight=False, soft_wrap=True)
    if "transfer" in report:
        t = report["transfer"]
        out.print(
            f"transfer ({t['task']}): accuracy pretrained {t['pretrained']['accuracy']:.3f}, "
            f"scratch {t['scratch']['accuracy']:.3f}, majority {t['majority_baseline']['accuracy']:.3f}",
            highlight=False,
        )
    out.print(f"report: {out_dir}/report.md, gallery: {out_dir}/gallery.png", highlight=False)
