"""``fourm bench label``: images/s of each labeler, median over repeated calls on one batch.

Model-backed labelers run tiny random checkpoints (``fourm/labelers/tiny_models.py``)
unless ``--model NAME=DIR_OR_HUB_ID`` names a real one; their figures then measure
the labeler's pre- and post-processing around a minimal model, not a real model's
cost. Images are scikit-image's sample photographs resized to the resolution;
labelers that refuse photographs (the oracle needs a scene graph) get synthetic
scenes. Only the labeler call is timed, not the stage's shard decoding and encoding.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

import fourm.labelers.stage  # noqa: F401  (registers every labeler)
from fourm.labelers.base import (
    Labeler,
    LabelerError,
    RawSample,
    available_labelers,
    labeler_options,
    make_labeler,
)
from fourm.labelers.tiny_models import TINY_FAMILIES, tiny_labeler_options

GPU_HINT = (
    "to measure on a GPU: run `fourm bench label --device cuda` on a machine with one "
    "(real checkpoints: --model hf-depth=DIR_OR_HUB_ID, plus --option hf-semseg.mapping=FILE where a "
    "labeler needs a class mapping)"
)
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
)


def _square(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre square crop, resized to ``resolution`` (bilinear), as uint8 RGB."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side]).convert("RGB")
    return np.asarray(crop.resize((resolution, resolution), Image.Resampling.BILINEAR))


def photographs(n: int, resolution: int) -> list[RawSample]:
    """``n`` samples cycling through scikit-image's bundled photographs, with empty captions."""
    try:
        import skimage.data
    except ImportError as err:
        raise LabelerError(
            "fourm bench label needs scikit-image for its photographs: pip install scikit-image"
        ) from err
    images = [_square(getattr(skimage.data, name)(), resolution) for name in PHOTOS]
    return [RawSample(f"photo{i}", images[i % len(images)], "") for i in range(n)]


def scenes(n: int, resolution: int) -> list[RawSample]:
    """``n`` synthetic scenes with their scene graphs (what the oracle labels)."""
    from fourm.data.synthetic import make_sample

    out = []
    for i in range(n):
        s = make_sample(0, i, resolution)
        out.append(RawSample(s.id, s.rendered.rgb, s.caption, s.scene.to_dict()))
    return out


def parse_assignments(models: Sequence[str], options: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--model NAME=PATH`` and ``--option NAME.KEY=VALUE`` (VALUE read as YAML) -> name -> options."""
    parsed: dict[str, dict[str, Any]] = {}
    for text in models:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise LabelerError(f"--model {text!r}: expected NAME=DIR_OR_HUB_ID, e.g. hf-depth=models/depth")
        parsed.setdefault(name, {})["model"] = path
    for text in options:
        key, sep, value = text.partition("=")
        name, dot, option = key.rpartition(".")
        if not sep or not dot or not name or not option:
            raise LabelerError(f"--option {text!r}: expected NAME.KEY=VALUE, e.g. hf-semseg.mapping=map.yaml")
        parsed.setdefault(name, {})[option] = yaml.safe_load(value)
    return parsed


def _options(name: str, tiny: dict[str, dict], given: dict[str, Any], device: str, batch_size: int) -> dict:
    accepted = labeler_options(name)
    opts = {} if "model" in given else dict(tiny.get(name, {}))  # a real model brings its own mapping
    opts |= {k: v for k, v in (("device", device), ("batch_size", batch_size)) if k in accepted}
    return opts | given


def _rates(labeler: Labeler, batch: list[RawSample], repeats: int) -> dict[str, float]:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        labeler(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return {"images_per_second": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _quiet_transformers() -> None:
    """No per-model load bars and backend notices between the bench's lines."""
    try:
        import transformers
    except ImportError:
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def bench_labelers(
    labelers: Sequence[str] | None = None,
    batch_size: int = 16,
    repeats: int = 5,
    resolution: int = 64,
    device: str = "auto",
    models: Sequence[str] = (),
    options: Sequence[str] = (),
    threads: int | None = None,
) -> dict[str, Any]:
    """Median images/s of each labeler (default: every registered one that can be built here).

    ``threads``: torch's CPU threads (default: torch's own choice, one per core)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    _quiet_transformers()
    given = parse_assignments(models, options)
    names = list(labelers) if labelers else available_labelers()
    unknown = [n for n in [*names, *given] if n not in available_labelers()]
    if unknown:
        raise LabelerError(f"no labeler called {unknown[0]!r}; available: {', '.join(available_labelers())}")
    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    photos, synthetic = photographs(batch_size, resolution), scenes(batch_size, resolution)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fourm-tiny-models-") as tmp:
        tiny_names = [n for n in names if n in TINY_FAMILIES and "model" not in given.get(n, {})]
        tiny = tiny_labeler_options(Path(tmp), tiny_names)
        for name in names:
            try:
                labeler = make_labeler(name, _options(name, tiny, given.get(name, {}), device, batch_size))
            except LabelerError as err:
                if labelers:  # asked for by name: say why it cannot run
                    raise
                skipped[name] = str(err)
                continue
            try:
                labeler(photos)  # warm-up (allocator, kernels), and: does it label photographs?
                batch, images = photos, "photographs"
            except LabelerError:
                labeler(synthetic)
                batch, images = synthetic, "synthetic scenes"
            model = given.get(name, {}).get("model") or ("tiny random" if name in tiny else None)
            results[name] = {
                **_rates(labeler, batch, repeats),
                "images": images,
                "model": model,
                "produces": list(labeler.produces),
            }
    return {
        "bench": "label",
        "device": resolved,
        "batch_size": batch_size,
        "repeats": repeats,
        "resolution": resolution,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "labelers": results,
        "skipped": skipped,
        "gpu": GPU_HINT,
    }
