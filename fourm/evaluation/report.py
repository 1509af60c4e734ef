"""What the evaluation leaves for people: galleries, per-task plots, a table and a markdown report."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fourm.data.preview import colorize_depth, colorize_normals, colorize_semseg, draw_boxes
from fourm.io import atomic_write_bytes
from fourm.train.outputs import write_csv

SCALE = 2
GAP = 4


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _tile(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb).resize((rgb.shape[1] * SCALE, rgb.shape[0] * SCALE), Image.NEAREST)


def _text_strip(lines: list[str], width: int) -> Image.Image:
    wrapped = [w for line in lines for w in textwrap.wrap(line, max(20, width // 6)) or [""]]
    img = Image.new("RGB", (width, 12 * len(wrapped) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(wrapped):
        draw.text((2, 2 + 12 * i), line, fill=(0, 0, 0))
    return img


def _grid(rows: list[list[Image.Image]], header: list[str], notes: list[list[str]]) -> bytes:
    """Rows of equally sized tiles under a header, each row followed by its text notes."""
    tile_w, tile_h = rows[0][0].size
    width = len(header) * (tile_w + GAP) - GAP
    blocks = [_text_strip(["   ".join(header)], width)]
    for tiles, note in zip(rows, notes, strict=True):
        row = Image.new("RGB", (width, tile_h), (255, 255, 255))
        for j, tile in enumerate(tiles):
            row.paste(tile, (j * (tile_w + GAP), 0))
        blocks += [row, _text_strip(note, width)]
    canvas = Image.new("RGB", (width, sum(b.size[1] + GAP for b in blocks)), (255, 255, 255))
    y = 0
    for b in blocks:
        canvas.paste(b, (0, y))
        y += b.size[1] + GAP
    return _png(canvas)


def rgb_gallery(truth: Any, preds: dict[str, Any], n: int) -> bytes:
    """One row per sample: input RGB, then ground truth | prediction of each image target, boxes
    drawn on the RGB, and the true and generated captions underneath."""
    header, rows, notes = ["rgb"], [], []
    targets = [t for t in ("depth", "normal", "semseg", "boxes") if t in preds]
    for t in targets:
        header += [f"{t} true", f"{t} generated"]
    for i in range(min(n, len(truth))):
        tiles = [_tile(truth.rgb[i])]
        for t in targets:
            if t == "depth":
                both = colorize_depth(np.concatenate([truth.depth[i], preds["depth"][i]], axis=1))
                w = truth.depth.shape[2]
                tiles += [_tile(both[:, :w]), _tile(both[:, w:])]
            elif t == "normal":
                tiles += [
                    _tile(colorize_normals(truth.normal[i])),
                    _tile(colorize_normals(preds["normal"][i])),
                ]
            elif t == "semseg":
                tiles += [_tile(colorize_semseg(truth.semseg[i])), _tile(colorize_semseg(preds["semseg"][i]))]
            else:
                tiles += [
                    draw_boxes(truth.rgb[i], truth.boxes[i], SCALE),
                    draw_boxes(truth.rgb[i], preds["boxes"][i], SCALE),
                ]
        rows.append(tiles)
        lines = [f"{truth.ids[i]}  true: {truth.captions[i]}"]
        if "caption" in preds:
            lines.append(f"generated: {preds['caption'][i]}")
        notes.append(lines)
    return _grid(rows, header, notes)


def caption_gallery(truth: Any, semseg: np.ndarray, rgb: np.ndarray | None, n: int) -> bytes:
    """One row per caption: generated semseg (and RGB, when chained), then the true scene."""
    header = ["generated semseg", *(["generated rgb"] if rgb is not None else []), "true semseg", "true rgb"]
    rows, notes = [], []
    for i in range(min(n, len(semseg))):
        tiles = [_tile(colorize_semseg(semseg[i]))]
        if rgb is not None:
            tiles.append(_tile(rgb[i]))
        tiles += [_tile(colorize_semseg(truth.semseg[i])), _tile(truth.rgb[i])]
        rows.append(tiles)
        notes.append([f"{truth.ids[i]}  caption: {truth.captions[i]}"])
    return _grid(rows, header, notes)


def task_plot(task: str, comparison: dict[str, Any]) -> bytes:
    """Bars of model vs. baseline for each metric of one task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(comparison["metrics"])
    model = [comparison["metrics"][k]["model"] for k in names]
    base = [comparison["metrics"][k]["baseline"] for k in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.2))
    ax.bar(x - 0.2, model, 0.4, label="model")
    ax.bar(x + 0.2, base, 0.4, label="baseline")
    ax.set_xticks(x, names, rotation=20)
    ax.set_title(task)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def metric_rows(tasks: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, metric): model, baseline, better (a DVC plot and a Prefect table)."""
    return [
        {"task": t, "metric": k, "model": v["model"], "baseline": v["baseline"], "better": v["better"]}
        for t, c in tasks.items()
        for k, v in c["metrics"].items()
    ]


def _samples_note(draws: int) -> str:
    if draws <= 1:
        return ""
    return (
        f"; image-to-image tasks scored on the mean of {draws} sampled predictions (majority for semseg),"
        " other image targets on one"
    )


def markdown(report: dict[str, Any], gallery_names: list[str]) -> str:
    """The report people read: headline table, transfer, where the pictures are."""
    lines = [
        f"# Evaluation of `{report['model']['path']}`",
        "",
        f"{report['samples']} samples of the `{report['split']}` split, seed {report['seed']}"
        + _samples_note(report.get("image_samples", 1))
        + "; baselines fitted on the train split (mean depth/normal map, majority class per pixel, "
        "most frequent caption, no boxes).",
        "",
        "| task | metric | model | baseline | better |",
        "|---|---|---|---|---|",
    ]
    for row in metric_rows(report["tasks"]):
        mark = "yes" if row["better"] else "**no**"
        lines.append(
            f"| {row['task']} | {row['metric']} | {row['model']:.4g} | {row['baseline']:.4g} | {mark} |"
        )
    transfer = report.get("transfer")
    if transfer:
        lines += [
            "",
            f"## Transfer: {transfer['task']} ({transfer['steps']} steps each)",
            "",
            "| init | accuracy | mean abs. error |",
            "|---|---|---|",
        ]
        for key in ("pretrained", "scratch", "majority_baseline"):
            r = transfer[key]
            lines.append(f"| {key} | {r['accuracy']:.3f} | {r['mae']:.3f} |")
    lines += ["", "Galleries: " + ", ".join(f"`{g}`" for g in gallery_names)]
    return "\n".join(lines) + "\n"


def write_reports(out_dir: Path, report: dict[str, Any], images: dict[str, bytes]) -> None:
    """metrics.json is written by the caller; here: metrics.csv, report.md, and the PNGs."""
    write_csv(out_dir / "metrics.csv", metric_rows(report["tasks"]))
    for name, data in images.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_bytes(
        out_dir / "report.md", markdown(report, [n for n in images if n.startswith("gallery")]).encode()
    )
