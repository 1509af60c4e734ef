"""The tokenizer stages: train one tokenizer, evaluate them all.

``run_train_tokenizer`` trains the tokenizer ``name`` (an image-like modality's
VQ-VAE, or ``text``: the WordPiece vocabulary captions and boxes share) on the
train split of the accepted labeled samples. ``run_eval_tokenizers`` sends the
evaluation split through tokenize -> detokenize and measures what survives.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fourm.data.samples import DatasetInputs, iter_samples, load_arrays
from fourm.io import atomic_output_dir, atomic_write_bytes
from fourm.modalities import get_modality, modalities_with
from fourm.params import TokenizersParams
from fourm.precision import use_bf16
from fourm.progress import track
from fourm.tokenizers import metrics
from fourm.tokenizers.base import TokenizerError, directory_fingerprint
from fourm.tokenizers.image import ImageTokenizer
from fourm.tokenizers.preview import reconstruction_grid
from fourm.tokenizers.text import TextTokenizer
from fourm.tokenizers.train import train_vqvae
from fourm.tracking import NullTracker, Tracker

TEXT = "text"


def tokenizer_names() -> list[str]:
    """Every trainable tokenizer: one per VQ-VAE modality, plus ``text``."""
    return [m.name for m in modalities_with("vqvae")] + [TEXT]


@dataclass
class TrainTokenizerReport:
    tokenizer: str
    kind: str
    vocab_size: int
    train_samples: int
    fingerprint: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_name(name: str) -> None:
    if name not in tokenizer_names():
        raise TokenizerError(f"unknown tokenizer {name!r}; known: {', '.join(tokenizer_names())}")


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The loss history as CSV (a DVC plot: x = step)."""
    if not history:
        return
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in history]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def run_train_tokenizer(
    name: str,
    params: TokenizersParams,
    inputs: DatasetInputs,
    out_dir: Path,
    history_path: Path | None = None,
    checkpoint_dir: Path | None = None,
    tracker: Tracker | None = None,
) -> TrainTokenizerReport:
    """Train tokenizer ``name`` on the train split and save it to ``out_dir`` (all or nothing)."""
    _check_name(name)
    start = time.perf_counter()
    tracker = tracker or NullTracker()
    resolution = inputs.resolution
    if name == TEXT:
        captions = [
            s.values["caption"]
            for s in iter_samples(inputs.raw, inputs.labels, inputs.accepted, ["caption"], ["train"])
        ]
        if not captions:
            raise TokenizerError(f"{inputs.accepted}: no accepted train captions to learn a vocabulary from")
        text = TextTokenizer.train(captions, params.text, resolution=resolution)
        with atomic_output_dir(out_dir) as scratch:
            text.save(scratch)
        details = {"num_sentinels": params.text.num_sentinels, "coord_bins": params.text.coord_bins}
        report = TrainTokenizerReport(
            name, TEXT, text.vocab_size, len(captions), directory_fingerprint(out_dir), 0.0, details
        )
    else:
        modality = get_modality(name)
        vq_params = params.vqvae_for(name)
        _, values = load_arrays(inputs.raw, inputs.labels, inputs.accepted, modality.source, "train")
        bar = iter(track(range(vq_params.steps), vq_params.steps, f"train {name} tokenizer", unit="steps"))
        result = train_vqvae(
            modality,
            vq_params,
            values,
            values.shape[1],  # the values' own side: feature maps (clip) are smaller than images
            checkpoint_dir=checkpoint_dir,
            tracker=tracker,
            on_step=lambda _step: next(bar, None),
            bf16=use_bf16(vq_params.bf16),
        )
        with atomic_output_dir(out_dir) as scratch:
            result.tokenizer.save(scratch)
        if history_path is not None:
            write_history(history_path, result.history)
        seconds = time.perf_counter() - start
        last = result.history[-1] if result.history else {}
        details = {
            "quantizer": vq_params.quantizer,
            "steps": vq_params.steps,
            "bf16": use_bf16(vq_params.bf16),
            "final_loss": last.get("loss"),
            "images_per_second": round(vq_params.steps * vq_params.batch_size / max(seconds, 1e-9), 1),
            "resumed_from_step": result.resumed_from,
        }
        report = TrainTokenizerReport(
            name,
            "vqvae",
            result.tokenizer.vocab_size,
            len(values),
            directory_fingerprint(out_dir),
            0.0,
            details,
        )
    report.seconds = round(time.perf_counter() - start, 3)
    tracker.summary({k: v for k, v in report.to_dict().items() if isinstance(v, int | float | str)})
    return report


def _image_metrics(name: str, target: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    if name == "rgb":
        return metrics.rgb_metrics(target, recon)
    if name == "depth":
        return metrics.depth_metrics(target, recon)
    if name == "normal":
        return metrics.normal_metrics(target, recon)
    if name == "semseg":
        return metrics.semseg_metrics(target, recon, get_modality("semseg").channels)
    if name == "edges":
        return metrics.edge_metrics(target, recon)
    if name == "clip":
        return metrics.feature_metrics(target, recon)
    raise TokenizerError(f"no reconstruction metrics for {name!r}")


def evaluate_image_tokenizer(
    tokenizer: ImageTokenizer, values: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``values`` after encode -> decode, with codebook usage; and the reconstructions."""
    tokens = tokenizer.encode(values)
    recon = tokenizer.decode(tokens)
    result = _image_metrics(tokenizer.modality, values, recon)
    result.update(metrics.codebook_usage(tokens, tokenizer.vocab_size))
    return {k: round(v, 5) for k, v in result.items()}, recon


def evaluate_text_tokenizer(
    text: TextTokenizer, captions: list[str], boxes: list[list[dict]]
) -> dict[str, float]:
    """Exact round-trip rates of captions and box lists, and the mean IoU of boxes after the trip."""
    caption_len = get_modality("caption").max_length
    boxes_len = get_modality("boxes").max_length
    cap_tokens, cap_trunc = text.encode_captions(captions, caption_len)
    cap_back = text.decode_captions(cap_tokens)
    box_tokens, box_trunc = text.encode_boxes(boxes, boxes_len)
    box_back = text.decode_boxes(box_tokens)
    exact_boxes, ious = 0, []
    for original, back in zip(boxes, box_back, strict=True):
        canonical = text.canonical_boxes(original)
        exact_boxes += canonical == back
        for a, b in zip(canonical, back, strict=False):
            ious.append(metrics.box_iou(a["bbox"], b["bbox"]) if a["class"] == b["class"] else 0.0)
        ious.extend([0.0] * abs(len(canonical) - len(back)))
    lengths = (cap_tokens != text.pad_id).sum(axis=1)
    return {
        "caption_exact": round(float(np.mean([a == b for a, b in zip(captions, cap_back, strict=True)])), 5),
        "caption_truncated": int(cap_trunc.sum()),
        "caption_tokens_mean": round(float(lengths.mean()), 2),
        "caption_tokens_max": int(lengths.max()),
        "boxes_exact": round(exact_boxes / max(len(boxes), 1), 5),
        "boxes_iou": round(float(np.mean(ious)) if ious else 1.0, 5),
        "boxes_truncated": int(box_trunc.sum()),
        "vocab_size": text.vocab_size,
    }


def run_eval_tokenizers(
    params: TokenizersParams,
    inputs: DatasetInputs,
    tokenizers_root: Path,
    preview_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate every tokenizer under ``tokenizers_root`` on ``params.eval_split``."""
    start = time.perf_counter()
    split = params.eval_split
    report: dict[str, Any] = {"split": split, "tokenizers": {}}
    device = "cpu"
    names = [n for n in tokenizer_names() if (Path(tokenizers_root) / n).is_dir()]
    if not names:
        raise TokenizerError(f"{tokenizers_root}: no trained tokenizers to evaluate")
    for name in track(names, len(names), "evaluate tokenizers", unit="tokenizers"):
        directory = Path(tokenizers_root) / name
        if name == TEXT:
            samples = list(
                iter_samples(inputs.raw, inputs.labels, inputs.accepted, ["caption", "boxes"], [split])
            )
            result = evaluate_text_tokenizer(
                TextTokenizer.load(directory),
                [s.values["caption"] for s in samples],
                [s.values["boxes"] for s in samples],
            )
            result["samples"] = len(samples)
        else:
            tokenizer = ImageTokenizer.load(directory, modality=name, device=device)
            ids, values = load_arrays(
                inputs.raw, inputs.labels, inputs.accepted, get_modality(name).source, split
            )
            result, recon = evaluate_image_tokenizer(tokenizer, values)
            result["samples"] = len(ids)
            if preview_dir is not None:
                n = params.eval_preview_samples
                png = reconstruction_grid(name, values[:n], recon[:n])
                atomic_write_bytes(Path(preview_dir) / f"recon_{name}.png", png)
        result["fingerprint"] = directory_fingerprint(directory)
        report["tokenizers"][name] = result
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report
