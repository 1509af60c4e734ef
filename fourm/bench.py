"""Benchmarks behind ``fourm bench ...``: medians over repeats, one process."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

from fourm.data import codecs
from fourm.data.synthetic import make_sample


def _rates(fn: Any, scenes: int, repeats: int) -> dict[str, float]:
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(scenes):
            fn(r * scenes + i)
        rates.append(scenes / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def bench_generation(resolution: int = 64, scenes: int = 200, repeats: int = 5) -> dict[str, Any]:
    """Scenes/s for rendering alone and for rendering plus encoding a raw + label sample."""

    def render(i: int) -> None:
        make_sample(1, i, resolution)

    def render_encode(i: int) -> None:
        s = make_sample(1, i, resolution)
        r = s.rendered
        for modality, value in (
            ("rgb", r.rgb),
            ("caption", s.caption),
            ("scene", s.scene.to_dict()),
            ("depth", r.depth),
            ("normal", r.normal),
            ("semseg", r.semseg),
            ("instance", r.instance),
            ("boxes", s.boxes),
        ):
            codecs.encode(modality, value)

    make_sample(1, 0, resolution)  # warm-up
    return {
        "bench": "data",
        "resolution": resolution,
        "scenes_per_repeat": scenes,
        "repeats": repeats,
        "processes": 1,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "render": _rates(render, scenes, repeats),
        "render_encode": _rates(render_encode, scenes, repeats),
    }
