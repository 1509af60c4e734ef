"""``fourm bench generate``: what generation costs, in the settings DESIGN.md compares against.

RGB -> depth with MaskGIT (64 tokens, 8 cosine steps: 2,7,10,12,12,10,7,4 tokens,
temperature 1) at batch 1 and 32, and RGB -> caption, 32 tokens decoded
autoregressively with and without the key/value cache. Random weights of a named
config (``bench-cpu-s`` by default); medians over repeats after a warm-up call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from fourm.model.config import model_config
from fourm.model.generate import generate
from fourm.model.generation_types import GenerationStep, Given
from fourm.model.model import FourM
from fourm.precision import use_bf16
from fourm.train.bench import cpu_model, synchronize


def _median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device) -> dict[str, float]:
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)  # a GPU call returns before its last kernels finish
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_generate(
    config: str = "bench-cpu-s",
    batch_sizes: tuple[int, ...] = (1, 32),
    steps: int = 8,
    caption_tokens: int = 32,
    repeats: int = 5,
    threads: int = 2,
    bf16: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Milliseconds per call and per sample for MaskGIT rgb->depth; caption tokens/s with/without cache."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = FourM(model_config(config)).to(dev).eval()
    low = use_bf16(bf16, device)
    result: dict[str, Any] = {
        "config": config, "cpu": cpu_model(), "threads": threads, "device": device,
        "precision": "bf16" if low else "fp32", "maskgit": {}, "caption": {},
    }  # fmt: skip
    for batch in batch_sizes:
        rgb = Given.full(torch.randint(0, 1024, (batch, 64), device=device))
        gen = torch.Generator(device).manual_seed(0)
        maskgit = GenerationStep("depth", "maskgit", steps=steps, temperature=1.0)
        t = _median_seconds(lambda: generate(model, {"rgb": rgb}, maskgit, gen, low), repeats, dev)  # noqa: B023
        result["maskgit"][f"batch_{batch}"] = {
            **t, "ms_per_call": 1e3 * t["median_s"], "ms_per_sample": 1e3 * t["median_s"] / batch,
        }  # fmt: skip
        for cached in (True, False):
            # exactly caption_tokens decoding steps per call: [EOS] only as the last token
            step = GenerationStep(
                "caption", temperature=1.0, use_cache=cached,
                min_new_tokens=caption_tokens, max_new_tokens=caption_tokens,
            )  # fmt: skip
            t = _median_seconds(lambda: _caption(model, rgb, step, low), repeats, dev)  # noqa: B023
            key = f"batch_{batch}_{'cache' if cached else 'no_cache'}"
            result["caption"][key] = {
                **t,
                "ms_per_call": 1e3 * t["median_s"],
                "ms_per_sample": 1e3 * t["median_s"] / batch,
                "tokens_per_s": batch * caption_tokens / t["median_s"],
            }
    return result


def _caption(model: FourM, rgb: Given, step: GenerationStep, bf16: bool) -> None:
    generate(model, {"rgb": rgb}, step, torch.Generator(rgb.tokens.device).manual_seed(0), bf16)
