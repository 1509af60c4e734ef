"""``fourm bench train-step``: seconds per training step of a named config (DESIGN.md).

One process: build the model, a fixed random ``MaskedBatch`` laid out as DESIGN.md's
``bench-cpu-s`` says, then per precision mode warm-up steps and timed steps of forward +
backward + AdamW step. The device's matmul peak is measured in the same run, so model
FLOP/s can be read as a fraction of what this CPU (or GPU, ``device="cuda"``) can do, next
to the reference figures.

bf16 autocast is emulated (and ~100x slower) on CPUs without AMX / AVX512-BF16; there the
bf16 mode is skipped unless forced (see ``fourm.precision``).
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fourm.modalities import get_modality
from fourm.model.batch import MaskedBatch
from fourm.model.config import ModelConfig, model_config
from fourm.model.flops import train_step_flops
from fourm.model.model import FourM
from fourm.precision import cpu_has_native_bf16, training_attention

# DESIGN.md "Benchmark config bench-cpu-s": tokens per sample and modality.
BENCH_INPUTS: dict[str, int] = {"rgb": 32, "depth": 32, "normal": 32, "caption": 32}
BENCH_TARGETS: dict[str, int] = {"depth": 32, "normal": 32, "semseg": 32, "caption": 32}
DESIGN_PARAMS = {"total": 13.2e6, "non_embedding": 7.44e6, "tolerance": 0.02}
# DESIGN.md "Reference figures": the paper's public code on the (AMX) reference machine.
REFERENCE = {
    "machine": "DESIGN.md reference 2-core machine (native bf16), the paper's public code",
    "fp32": {"step_s": 1.10, "tokens_per_s": 7.5e3, "matmul_peak_tflops": 0.37, "target_tokens_per_s": 9.8e3},
    "bf16": {"step_s": 0.49, "tokens_per_s": 16.6e3, "matmul_peak_tflops": 2.45, "target_tokens_per_s": 33e3},
}
NO_NATIVE_BF16 = "no native bf16 on this CPU (no AMX/avx512_bf16)"
MODES = ("fp32", "bf16")


# -- the batch -----------------------------------------------------------------------------


def bench_batch(
    config: ModelConfig,
    batch_size: int,
    inputs: Mapping[str, int] = BENCH_INPUTS,
    targets: Mapping[str, int] = BENCH_TARGETS,
    seed: int = 0,
) -> MaskedBatch:
    """A fixed random batch, no padding, each modality's tokens contiguous.

    Image-like modalities: ``n`` random distinct grid positions per sample. Sequences:
    positions 0..n-1; in the decoder the input is the previous token and the target the
    next one (teacher forcing on one random sequence of n + 1 tokens).
    """
    g = torch.Generator().manual_seed(seed)
    B = batch_size
    for name in inputs:
        if name not in config.inputs:
            raise ValueError(
                f"bench input {name!r} is not an input of this config ({', '.join(config.inputs)})"
            )
    for name in targets:
        if name not in config.targets:
            raise ValueError(
                f"bench target {name!r} is not a target of this config ({', '.join(config.targets)})"
            )

    def positions(name: str, n: int) -> torch.Tensor:
        m = get_modality(name)
        if n > m.num_tokens:
            raise ValueError(f"{n} tokens of {name!r} asked for, it has {m.num_tokens} positions")
        if m.kind in ("sequence", "boxes"):
            return torch.arange(n).expand(B, n)
        return torch.rand(B, m.num_tokens, generator=g).argsort(dim=1)[:, :n]

    def ids(name: str, n: int) -> torch.Tensor:
        return torch.randint(config.vocab_size(name), (B, n), generator=g)

    enc_tokens, enc_mod, enc_pos = [], [], []
    for name, n in inputs.items():
        enc_tokens.append(ids(name, n))
        enc_mod.append(torch.full((B, n), config.modalities.index(name)))
        enc_pos.append(positions(name, n))
    dec_tokens, dec_mod, dec_pos, dec_targets = [], [], [], []
    for name, n in targets.items():
        if get_modality(name).kind in ("sequence", "boxes"):
            seq = ids(name, n + 1)
            dec_tokens.append(seq[:, :-1])
            dec_targets.append(seq[:, 1:])
        else:
            dec_tokens.append(torch.zeros(B, n, dtype=torch.long))
            dec_targets.append(ids(name, n))
        dec_mod.append(torch.full((B, n), config.modalities.index(name)))
        dec_pos.append(positions(name, n))
    cat = torch.cat
    E, T = sum(inputs.values()), sum(targets.values())
    return MaskedBatch(
        enc_tokens=cat(enc_tokens, 1),
        enc_mod=cat(enc_mod, 1),
        enc_pos=cat(enc_pos, 1).contiguous(),
        enc_pad=torch.zeros(B, E, dtype=torch.bool),
        dec_tokens=cat(dec_tokens, 1),
        dec_mod=cat(dec_mod, 1),
        dec_pos=cat(dec_pos, 1).contiguous(),
        dec_pad=torch.zeros(B, T, dtype=torch.bool),
        targets=cat(dec_targets, 1),
    )


# -- machine figures -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA devices, else the CPU model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so host clocks time the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """TFLOP/s of an n x n @ n x n matmul on random data: median over ``repeats``.

    On the CPU at the current thread count; on a GPU after three warm-up products (clocks up,
    cuBLAS handle made), synchronising around each timed one.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    if device.type == "cuda":
        for _ in range(3):
            a @ b
    else:
        torch.randn(64, 64).to(dtype) @ torch.randn(64, 64).to(dtype)  # load the kernels, cheaply
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "n": n,
        "repeats": repeats,
        "median_s": median,
        "tflops": 2 * n**3 / median / 1e12,
        "best_tflops": 2 * n**3 / min(times) / 1e12,
    }


# -- the step ------------------------------------------------------------------------------


def _autocast(mode: str, device_type: str) -> contextlib.AbstractContextManager:
    if mode == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(model: torch.nn.Module, batch: MaskedBatch, mode: str) -> Callable[[], float]:
    """Forward + backward + AdamW (lr 1e-4, wd 0.05) step on the model's device; returns the
    loss once every kernel of the step has finished."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step() -> float:
        with _autocast(mode, device.type), training_attention(device.type, mode == "bf16"):
            out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        synchronize(device)
        return loss

    return step


def _time_steps(named_steps: dict[str, Callable[[], float]], warmup: int, steps: int) -> dict[str, dict]:
    """Warm each step function up, then time them in turn (ABAB..., so load on a shared
    machine hits every variant alike): median, min and max seconds per step of each."""
    warmup_s = {}
    for name, step in named_steps.items():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        warmup_s[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in named_steps}
    losses: dict[str, float] = {}
    for _ in range(steps):
        for name, step in named_steps.items():
            start = time.perf_counter()
            losses[name] = step()
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "warmup_s": warmup_s[name],
            "final_loss": losses[name],
        }
        for name, t in times.items()
    }


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fresh_model(config: ModelConfig, seed: int, device: torch.device | str = "cpu") -> FourM:
    torch.manual_seed(seed)
    return FourM(config).to(device).train()


def bench_train_step(
    config_name: str = "bench-cpu-s",
    batch_size: int = 32,
    warmup: int = 3,
    steps: int = 10,
    threads: int = 2,
    modes: Sequence[str] = MODES,
    force_bf16: bool = False,
    compile: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Median seconds per training step per precision mode, with FLOP/s and the device's peak."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if steps < 1 or warmup < 0 or batch_size < 1 or threads < 1:
        raise ValueError("steps, batch size and threads must be >= 1 and warmup >= 0")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; known: cpu, cuda")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here")
    with _threads(threads):
        return _bench_train_step(
            config_name, batch_size, warmup, steps, threads, modes, force_bf16, compile, seed, dev
        )


def _bench_train_step(
    config_name: str,
    batch_size: int,
    warmup: int,
    steps: int,
    threads: int,
    modes: Sequence[str],
    force_bf16: bool,
    compile: bool,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    config = model_config(config_name)
    on_gpu = device.type == "cuda"
    native_bf16 = on_gpu or cpu_has_native_bf16()
    run_bf16 = "bf16" in modes and (native_bf16 or force_bf16)

    model = _fresh_model(config, seed)
    total, non_embedding = model.num_parameters(), model.num_parameters(False)
    del model
    batch = bench_batch(config, batch_size, seed=seed).to(device)
    E = sum(BENCH_INPUTS.values())
    flops = train_step_flops(config, E, BENCH_TARGETS, batch_size)
    tokens_per_step = batch_size * (E + sum(BENCH_TARGETS.values()))

    # a GPU needs a bigger product than a CPU to reach its peak (8192³: ~1.4 ms on an H200)
    peak_n, peak_repeats = (8192, 10) if on_gpu else (2048, 5)
    peak: dict[str, Any] = {}
    if "fp32" in modes or not on_gpu:
        peak["fp32"] = matmul_peak(torch.float32, peak_n, peak_repeats, device)
    if run_bf16:
        # emulated bf16 takes ~1 min for one 2048² matmul: measure a 512² one once instead
        if native_bf16:
            peak["bf16"] = matmul_peak(torch.bfloat16, peak_n, peak_repeats, device)
        else:
            note = "emulated bf16, one 512² matmul: fraction of peak not meaningful"
            peak["bf16"] = {**matmul_peak(torch.bfloat16, 512, 1), "note": note}
    elif "bf16" in modes:
        peak["bf16"] = {"skipped": NO_NATIVE_BF16}

    def figures(timing: dict[str, Any], mode: str) -> dict[str, Any]:
        gflops = flops / timing["median_s"] / 1e9
        out = {
            **timing,
            "tokens_per_s": tokens_per_step / timing["median_s"],
            "model_gflops": gflops,
        }
        if "tflops" in peak.get(mode, {}):
            out["fraction_of_peak"] = gflops / (peak[mode]["tflops"] * 1e3)
        return out

    results: dict[str, Any] = {}
    for mode in modes:
        if mode == "bf16" and not run_bf16:
            results[mode] = {"skipped": NO_NATIVE_BF16, "hint": "--force-bf16 runs it emulated, ~100x slower"}
            continue
        named_steps = {"eager": make_step(_fresh_model(config, seed, device), batch, mode)}
        if compile:  # timed interleaved with eager; the first warm-up step compiles
            named_steps["compiled"] = make_step(
                torch.compile(_fresh_model(config, seed, device)), batch, mode
            )
        timings = _time_steps(named_steps, max(warmup, 1) if compile else warmup, steps)
        eager = figures(timings["eager"], mode)
        if compile:
            compiled = figures(timings["compiled"], mode)
            compiled["speedup_vs_eager"] = eager["median_s"] / compiled["median_s"]
            eager["compiled"] = compiled
        if config_name == "bench-cpu-s" and batch_size == 32 and not on_gpu:
            ref = REFERENCE[mode]
            ref_peak = ref["matmul_peak_tflops"] * 1e12
            ref_fraction = flops / ref["step_s"] / ref_peak
            # the tokens/s target on the reference machine, as a fraction of its peak: the
            # figure that carries over to a machine with a different peak
            target_fraction = ref["target_tokens_per_s"] / tokens_per_step * flops / ref_peak
            fraction = eager.get("fraction_of_peak")
            eager["vs_reference"] = {
                "tokens_per_s_ratio": eager["tokens_per_s"] / ref["tokens_per_s"],
                "reference_fraction_of_peak": ref_fraction,
                "fraction_of_peak_ratio": fraction / ref_fraction if fraction is not None else None,
                "meets_target_tokens_per_s": eager["tokens_per_s"] >= ref["target_tokens_per_s"],
                "target_fraction_of_peak": target_fraction,
                "meets_target_fraction_of_peak": fraction >= target_fraction
                if fraction is not None
                else None,
            }
        results[mode] = eager
        named_steps.clear()  # free this mode's models and optimizer states before the next
        if on_gpu:
            eager["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    return {
        "bench": "train-step",
        "config": config_name,
        "batch_size": batch_size,
        "warmup": warmup,
        "steps": steps,
        "threads": threads,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "device": str(device),
        "device_name": device_name(device),
        "native_bf16": native_bf16,
        "compile": compile,
        "tokens_per_step": tokens_per_step,
        "train_step_gflop": flops / 1e9,
        "params": {
            "total": total,
            "non_embedding": non_embedding,
            **_param_check(config_name, total, non_embedding),
        },
        "matmul_peak": peak,
        "modes": results,
        "reference": REFERENCE,
    }


def _param_check(config_name: str, total: int, non_embedding: int) -> dict[str, Any]:
    if config_name != "bench-cpu-s":
        return {}
    ratio_total = total / DESIGN_PARAMS["total"]
    ratio_non = non_embedding / DESIGN_PARAMS["non_embedding"]
    tol = DESIGN_PARAMS["tolerance"]
    return {
        "design_total": DESIGN_PARAMS["total"],
        "design_non_embedding": DESIGN_PARAMS["non_embedding"],
        "ratio_total": ratio_total,
        "ratio_non_embedding": ratio_non,
        "matches_design": abs(ratio_total - 1) <= tol and abs(ratio_non - 1) <= tol,
    }


# -- profile -------------------------------------------------------------------------------


def profile_train_step(
    path: Path,
    config_name: str = "bench-cpu-s",
    batch_size: int = 32,
    threads: int = 2,
    steps: int = 3,
    warmup: int = 1,
    row_limit: int = 30,
    seed: int = 0,
) -> str:
    """torch.profiler over ``steps`` fp32 steps; writes the key_averages table (self CPU time) to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with _threads(threads):
        config = model_config(config_name)
        step = make_step(_fresh_model(config, seed), bench_batch(config, batch_size, seed=seed), "fp32")
        for _ in range(warmup):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    header = f"{config_name}, batch {batch_size}, {threads} threads, fp32, {steps} steps\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + table + "\n")
    return table
