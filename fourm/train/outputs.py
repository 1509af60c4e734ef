"""What a pretraining run leaves behind, and how to read the model back.

<out>/model.pt         {"model_config", "model" (state dict), "tokenizers", "token_set", "step"}
<reports>/metrics.json final validation loss per modality, unigram baselines, throughput (DVC metrics)
<reports>/history.csv  step, loss, lr, grad_norm, loss/<modality>...         (DVC plot: train loss)
<reports>/val.csv      step, loss, <modality>..., baseline/<modality>...     (DVC plot: val loss)
<reports>/loss.png     train and validation curves with the unigram baselines
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from fourm.io import atomic_write_bytes
from fourm.model.config import ModelConfig
from fourm.model.model import FourM
from fourm.train.checkpoint import CheckpointError

MODEL_FILE = "model.pt"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with the union of their keys as columns (first row's order first)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def save_model(
    path: Path, config: ModelConfig, state: dict[str, torch.Tensor], extra: dict[str, Any]
) -> None:
    """Weights (a full, unsharded state dict) and config, no optimizer: for generation,
    evaluation and fine-tuning."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in state.items()}
    torch.save({"model_config": config.to_dict(), "model": state, **extra}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[FourM, dict[str, Any]]:
    """A FourM from ``model.pt`` (or a training checkpoint), and the file's other entries."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = ModelConfig.from_dict(state["model_config"])
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch/pickle raise many kinds for a bad file
        raise CheckpointError(f"{path}: not a fourm model file ({err})") from err
    model = FourM(config)
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as err:  # shapes that do not fit the config
        raise CheckpointError(f"{path}: weights do not fit the config ({err})") from err
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device).eval(), {k: v for k, v in state.items() if k not in ("model", "model_config")}


def loss_plot(
    path: Path,
    history: list[dict[str, float]],
    validation: list[dict[str, float]],
    baseline: dict[str, float],
) -> None:
    """Train loss (smoothed), validation loss per modality and the unigram baselines as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    window = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    ax1.plot(steps, losses, alpha=0.3, label="train (per step)")
    ax1.plot(steps, smooth, label=f"train (mean of {window})")
    if validation:
        ax1.plot([v["step"] for v in validation], [v["loss"] for v in validation], "o-", label="val")
    ax1.set(xlabel="step", ylabel="modality-balanced cross-entropy (nats)", title="loss")
    ax1.legend()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, base) in enumerate(sorted(baseline.items())):
        c = colours[k % len(colours)]
        ax2.plot(
            [v["step"] for v in validation],
            [v.get(name, float("nan")) for v in validation],
            "o-",
            color=c,
            label=name,
        )
        ax2.axhline(base, color=c, linestyle="--", linewidth=1)
    ax2.set(
        xlabel="step", ylabel="val cross-entropy (nats)", title="val per modality (dashed: unigram baseline)"
    )
    ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def publish_outputs(store: Any, uri: str, out_dir: Path, reports_dir: Path) -> None:
    """Upload a run's model and report files to ``uri`` (``model/`` and ``reports/``), ``DONE`` last.

    How a pod hands its outputs to the caller that launched it."""
    from fourm.storage.object_store import split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    store.ensure_bucket(bucket)
    for part, root in (("model", Path(out_dir)), ("reports", Path(reports_dir))):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            store.put_file(bucket, f"{prefix}/{part}/{path.relative_to(root).as_posix()}", path)
    store.put_bytes(bucket, f"{prefix}/DONE", b"")


def fetch_outputs(store: Any, uri: str, out_dir: Path, reports_dir: Path) -> None:
    """Download what ``publish_outputs`` uploaded; each directory appears whole or not at all."""
    from fourm.io import atomic_output_dir
    from fourm.storage.object_store import split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    if not store.exists(bucket, f"{prefix}/DONE"):
        raise FileNotFoundError(f"{uri}: no finished outputs (DONE marker missing)")
    for part, root in (("model", Path(out_dir)), ("reports", Path(reports_dir))):
        with atomic_output_dir(root) as tmp:
            for key in store.list(bucket, f"{prefix}/{part}/"):
                store.get_file(bucket, key, tmp / key[len(f"{prefix}/{part}/") :])
