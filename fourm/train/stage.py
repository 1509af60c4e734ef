"""The pretrain stage: train 4M on a token set and write the run's outputs (fourm/train/outputs.py).

``run_pretrain`` runs in every process of a (possibly distributed) run; rank 0 writes
the output directory, atomically: it appears whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fourm.data.token_set import TokenSet
from fourm.io import atomic_output_dir, atomic_write_json
from fourm.params import PretrainParams
from fourm.tracking import Tracker
from fourm.train.checkpoint import CheckpointStore
from fourm.train.distributed import DistInfo
from fourm.train.loop import TrainResult, run_fingerprint, train_4m
from fourm.train.outputs import MODEL_FILE, loss_plot, save_model, write_csv


@dataclass
class PretrainReport:
    steps: int
    resumed_from: int | None
    parameters: int
    val_loss: float
    val_losses: dict[str, float]
    baseline: dict[str, float]
    below_baseline: dict[str, float]  # val loss / unigram baseline per modality (lower is better)
    seconds: float
    tokens_per_second: float
    model_gflops_per_second: float
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_store(
    params: PretrainParams,
    token_set: TokenSet,
    home: Path,
    bucket: str | None,
    store: Any = None,
    world_size: int = 1,
) -> CheckpointStore:
    """Checkpoints of this run's fingerprint under ``home/checkpoints`` and, with a bucket, in S3."""
    name = f"pretrain-{run_fingerprint(params, token_set, world_size)}"
    uri = f"s3://{bucket}/{name}" if bucket and store is not None else None
    return CheckpointStore(home / "checkpoints" / name, uri, store, keep=params.keep_checkpoints)


def run_pretrain(
    params: PretrainParams,
    token_set: TokenSet,
    out_dir: Path,
    reports_dir: Path,
    checkpoints: CheckpointStore,
    info: DistInfo,
    *,
    resume: bool = True,
    tracker: Tracker | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    store_factory: Callable[[], Any] | None = None,
    stop_after: int | None = None,
) -> PretrainReport:
    result = train_4m(
        params,
        token_set,
        checkpoints,
        info,
        resume=resume,
        tracker=tracker,
        progress=progress,
        store_factory=store_factory,
        stop_after=stop_after,
    )
    report = _report(result, run_fingerprint(params, token_set, info.world_size))
    if info.is_main and (stop_after is None or stop_after >= params.steps):
        write_outputs(out_dir, reports_dir, result, report, token_set)
    return report


def _report(result: TrainResult, fingerprint: str) -> PretrainReport:
    final = result.validation[-1] if result.validation else {}
    val_losses = {k: v for k, v in final.items() if k not in ("step", "loss")}
    return PretrainReport(
        steps=int(result.history[-1]["step"]) if result.history else 0,
        resumed_from=result.resumed_from,
        parameters=result.model.num_parameters(),
        val_loss=float(final.get("loss", float("nan"))),
        val_losses=val_losses,
        baseline=result.baseline,
        below_baseline={
            k: val_losses[k] / b for k, b in result.baseline.items() if k in val_losses and b > 0
        },
        seconds=result.seconds,
        tokens_per_second=result.tokens_per_second,
        model_gflops_per_second=result.model_flops_per_second / 1e9,
        fingerprint=fingerprint,
    )


def write_outputs(
    out_dir: Path, reports_dir: Path, result: TrainResult, report: PretrainReport, token_set: TokenSet
) -> None:
    """``out_dir/model.pt``; ``reports_dir``: metrics.json, history.csv, val.csv, loss.png.

    Each directory appears whole or not at all."""
    with atomic_output_dir(out_dir) as tmp:
        extra = {
            "step": report.steps,
            "tokenizers": result.tokenizers,
            "token_set": token_set.card,
            "fingerprint": report.fingerprint,
        }
        save_model(tmp / MODEL_FILE, result.config, result.model_state, extra)
    with atomic_output_dir(reports_dir) as tmp:
        timing = ("tokens_per_s", "model_flops_per_s")
        write_csv(
            tmp / "history.csv", [{k: v for k, v in h.items() if k not in timing} for h in result.history]
        )
        baseline_cols = {f"baseline/{k}": v for k, v in result.baseline.items()}
        write_csv(tmp / "val.csv", [{**v, **baseline_cols} for v in result.validation])
        untimed = ("seconds", "tokens_per_second", "model_gflops_per_second", "resumed_from")
        atomic_write_json(
            tmp / "metrics.json", {k: v for k, v in report.to_dict().items() if k not in untimed}
        )
        loss_plot(tmp / "loss.png", result.history, result.validation, result.baseline)
