"""The evaluate stage: every downstream task on the held-out split, baselines, transfer, report.

``run_evaluate`` writes into ``out_dir`` (all or nothing):

    metrics.json      per task: each metric for the model and the baseline (DVC metrics)
    metrics.csv       the same as rows (DVC plot)
    <task>.png        model vs. baseline bars per task
    gallery.png       rgb -> every target: input | truth | generated, captions underneath
    gallery_caption.png  caption -> semseg -> rgb, beside the true scene
    report.md         the markdown report (a Prefect artifact in the flow)

The same checkpoint, tokenizers, data and seed give the same metrics.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fourm.data.samples import DatasetInputs
from fourm.evaluation.data import fit_baselines, load_split
from fourm.evaluation.ensemble import aggregate
from fourm.evaluation.report import caption_gallery, rgb_gallery, task_plot, write_reports
from fourm.evaluation.tasks import TASKS, compare
from fourm.inference import AnyToAny, InferenceError, step_for
from fourm.io import atomic_output_dir, atomic_write_json, sha256_file, without_timings
from fourm.modalities import get_modality
from fourm.params import EvaluateParams

METRICS_FILE = "metrics.json"


def run_evaluate(
    params: EvaluateParams, model_path: Path, tokenizers: Path, inputs: DatasetInputs, out_dir: Path
) -> dict[str, Any]:
    """Evaluate ``model_path`` on ``params.split``; returns the report (with timings)."""
    start = time.perf_counter()
    a2a = AnyToAny.load(model_path, tokenizers, bf16=params.bf16)
    missing = {t: TASKS[t].target for t in params.tasks if TASKS[t].target not in a2a.model.config.targets}
    missing |= {t: TASKS[t].source for t in params.tasks if TASKS[t].source not in a2a.model.config.inputs}
    if missing:
        raise InferenceError(
            f"{model_path}: the model cannot run the tasks {sorted(missing)} (it lacks "
            f"{sorted(set(missing.values()))}); choose evaluate.tasks among what it reads and predicts"
        )
    truth = load_split(inputs, params.split, params.max_samples)
    baselines = fit_baselines(load_split(inputs, "train"))
    baseline_preds = baselines.predict(len(truth))
    given = a2a.encode(
        {
            s: getattr(truth, "captions" if s == "caption" else s)
            for s in {TASKS[t].source for t in params.tasks}
        }
    )

    predictions: dict[str, Any] = {}
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in params.tasks:
        task = TASKS[name]
        sequence = task.target in ("caption", "boxes")
        decoding = params.sequence if sequence else params.image
        # Averaging draws is right where the input fixes the layout pixel for pixel (rgb -> depth);
        # from a caption, objects land in different places in each draw and would average away.
        draws = params.image_samples if _pixel_aligned(task.source, task.target) else 1
        t0 = time.perf_counter()
        tokens = a2a.sample(
            {task.source: given[task.source]},
            step_for(task.target, decoding),
            draws,
            seed=params.seed,
            batch_size=params.batch_size,
            description=f"evaluate {name}" + (f" ({draws} samples)" if draws > 1 else ""),
        )
        samples = [a2a.decode(task.target, t) for t in tokens]
        pred = aggregate(task.target, samples) if draws > 1 else samples[0]  # boxes, captions: as decoded
        seconds[name] = round(time.perf_counter() - t0, 3)
        predictions[name] = pred
        model_scores = task.score(pred, truth, params.presence_min_fraction)
        base_scores = task.score(baseline_preds[task.target], truth, params.presence_min_fraction)
        results[name] = compare(model_scores, base_scores)

    images: dict[str, bytes] = {f"{n.replace('->', '_to_')}.png": task_plot(n, c) for n, c in results.items()}
    rgb_preds = {TASKS[n].target: p for n, p in predictions.items() if TASKS[n].source == "rgb"}
    if rgb_preds:
        images["gallery.png"] = rgb_gallery(truth, rgb_preds, params.gallery_samples)
    if "caption->semseg" in predictions:
        images["gallery_caption.png"] = _caption_chain_gallery(a2a, truth, params)

    report: dict[str, Any] = {
        "model": {"path": str(model_path), "sha256": sha256_file(model_path)},
        "split": params.split,
        "samples": len(truth),
        "seed": params.seed,
        "image_samples": params.image_samples,
        "tasks": results,
        "beats_baseline": {n: r["beats_baseline"] for n, r in results.items()},
    }
    if params.transfer.enabled:
        from fourm.evaluation.transfer import TransferConfig, run_transfer

        cfg = TransferConfig(**params.transfer.model_dump(exclude={"enabled"}), seed=params.seed)
        report["transfer"] = run_transfer(model_path, inputs, cfg)
    with atomic_output_dir(out_dir) as tmp:
        atomic_write_json(tmp / METRICS_FILE, without_timings(report))
        write_reports(tmp, report, images)
    seconds["total"] = round(time.perf_counter() - start, 3)
    return {**report, "seconds": seconds}


def _pixel_aligned(source: str, target: str) -> bool:
    return get_modality(source).kind == "image" and get_modality(target).kind == "image"


def _caption_chain_gallery(a2a: AnyToAny, truth: Any, params: EvaluateParams) -> bytes:
    """caption -> semseg -> rgb on the first gallery samples (rgb only if the model predicts it)."""
    n = min(params.gallery_samples, len(truth))
    targets = [t for t in ("semseg", "rgb") if t in a2a.model.config.targets]
    plan = [step_for(t, params.image) for t in targets]
    given = a2a.encode({"caption": truth.captions[:n]})
    out = a2a.generate(given, plan, seed=params.seed, batch_size=n, description="caption gallery")
    semseg = a2a.decode("semseg", out["semseg"])
    rgb = a2a.decode("rgb", out["rgb"]) if "rgb" in out else None
    return caption_gallery(truth.take(n), semseg, rgb, n)
