"""The 4M training loop: one entry point for one process, torchrun DDP and FSDP.

Per optimizer step: every rank takes its share of the global batch (the loader deals
samples round-robin, so the global batch is the same for any number of processes),
splits it into ``grad_accum`` micro-batches and back-propagates

    loss_r = (W / M) * sum_m ce_sum_{m,r} / count_m          (count_m over all ranks and micro-batches)

so that DDP's gradient average is the gradient of the modality-balanced loss of the
whole global batch: the same training as one process with the whole batch, up to
floating-point summation order. A non-finite loss or gradient norm stops the run
before the optimizer step, so the last checkpoint stays the last good state.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fourm.data.token_set import TokenSet
from fourm.io import canonical_json, sha256_bytes
from fourm.model.batch import MaskedBatch
from fourm.model.config import ModelConfig, model_config
from fourm.model.flops import forward_matmul_flops
from fourm.model.masking import Masker
from fourm.model.model import FourM, balanced_loss
from fourm.params import PretrainParams
from fourm.precision import training_attention, use_bf16
from fourm.tracking import NullTracker, Tracker
from fourm.train.checkpoint import CheckpointError, CheckpointStore, rng_state, set_rng_state
from fourm.train.data import (
    IncompatibleError,
    TrainBatches,
    check_compatible,
    fit_vocabularies,
    masking_config,
    unigram_baseline,
    validation_batches,
)
from fourm.train.distributed import DistInfo, all_reduce_sum, barrier, wrap_model
from fourm.train.optim import make_optimizer, make_scheduler

BASELINE_BATCHES = 64  # masked train batches (file order) the unigram baseline counts tokens over


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last checkpoint is intact."""


@dataclass
class TrainResult:
    model: FourM
    config: ModelConfig
    history: list[dict[str, float]]
    validation: list[dict[str, float]]
    baseline: dict[str, float]
    resumed_from: int | None
    seconds: float
    tokens_per_second: float
    model_flops_per_second: float
    tokenizers: dict[str, str] = field(default_factory=dict)
    model_state: dict[str, torch.Tensor] = field(default_factory=dict)  # full (unsharded), on the CPU


def config_from_params(params: PretrainParams) -> ModelConfig:
    m = params.model
    return model_config(
        m.size, m.inputs, m.targets, feed_forward=m.feed_forward, qk_norm=m.qk_norm, bias=m.bias
    )


def code_fingerprint() -> str:
    """sha256 of the model, masking, training and loader sources: a code change is a new run."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(
        [*(root / "model").glob("*.py"), *(root / "train").glob("*.py"), root / "data" / "loader.py"]
    )
    digest = hashlib.sha256()
    for f in files:
        if "bench" not in f.name:
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def run_fingerprint(params: PretrainParams, token_set: TokenSet, world_size: int = 1) -> str:
    """What must match to resume: every param that changes training (step count included), the
    number of processes, the code and the exact token set. Same fingerprint, same run."""
    keep = params.model_dump(
        mode="json",
        exclude={
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "loader_workers",
            "processes",
            "upload_checkpoints",
            "launcher",  # where it runs does not change the run; world_size below does
            "kubernetes",
        },
    )
    record = {"params": keep, "world_size": world_size, "code": code_fingerprint(), "tokens": token_set.card}
    return sha256_bytes(canonical_json(record))[:16]


def _micro_loss(out_sums: torch.Tensor, counts: torch.Tensor, world: int) -> torch.Tensor:
    """This rank's share of the global modality-balanced loss (see the module doc)."""
    present = counts > 0
    return world * (out_sums[present] / counts[present].to(out_sums.dtype)).sum() / present.sum().clamp(min=1)


def train_4m(
    params: PretrainParams,
    token_set: TokenSet,
    checkpoints: CheckpointStore,
    info: DistInfo,
    *,
    resume: bool = False,
    tracker: Tracker | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    store_factory: Callable[[], Any] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) a 4M model on ``token_set`` as ``params`` say.

    ``stop_after`` ends the loop early at that step (tests use it to simulate a kill).
    """
    tracker = tracker or NullTracker()
    config = config_from_params(params)
    tokenizers = check_compatible(token_set, config)
    config = fit_vocabularies(config, token_set)
    if params.batch_size % (info.world_size * params.grad_accum):
        raise IncompatibleError(
            f"pretrain.batch_size {params.batch_size} is not divisible by {info.world_size} processes "
            f"x grad_accum {params.grad_accum}"
        )
    fingerprint = run_fingerprint(params, token_set, info.world_size)
    device = info.device
    torch.manual_seed(params.seed)
    model = FourM(config).to(device)
    bf16 = use_bf16(params.bf16, device.type)
    masker = Masker(masking_config(params.masking, config, params.seed))
    per_rank = params.batch_size // info.world_size
    batches = TrainBatches(
        token_set,
        config,
        masker,
        per_rank,
        info.rank,
        info.world_size,
        params.seed,
        params.buffer_size,
        params.loader_workers,
        store_factory,
    )
    # Validation and baseline batches do not depend on processes or accumulation.
    val = validation_batches(token_set, config, masker, params.batch_size, params.eval_batches)
    wrapped = wrap_model(model, info, params.strategy)
    optimizer = make_optimizer(model, params.lr, params.weight_decay)
    scheduler = make_scheduler(optimizer, params.warmup_steps, params.steps, params.min_lr_factor)

    step, history, validation, resumed_from = 0, [], [], None
    if resume and checkpoints.latest() is not None:
        state = checkpoints.load()
        _check_resumable(state, config, fingerprint, checkpoints)
        set_full_state(model, optimizer, state)
        scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict({**state["loader"], "rank": info.rank})
        set_rng_state(state["rng"])
        step = resumed_from = int(state["step"])
        history, validation = state["history"], state["validation"]

    baseline = unigram_baseline(
        validation_batches(token_set, config, masker, params.batch_size, BASELINE_BATCHES, split="train"),
        val,
        config,
    )
    flops_per_sample = _flops_per_sample(config, val[0]) if val else 0
    if resumed_from is not None and info.is_main:
        print(f"resuming from step {resumed_from} of {params.steps} ({checkpoints.directory})", flush=True)
    M = len(config.modalities)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start_time, trained_steps, tokens_seen = time.perf_counter(), 0, 0
    last = stop_after if stop_after is not None else params.steps
    while step < min(last, params.steps):
        t0 = time.perf_counter()
        batch = next(batches).to(device)
        parts = batch.split(params.grad_accum)
        counts = all_reduce_sum(batch.target_counts(M).to(device))
        sums = torch.zeros(M, device=device)
        for k, part in enumerate(parts):
            sync = k == len(parts) - 1 or not info.distributed
            with (
                contextlib.nullcontext() if sync else _no_sync(wrapped),
                autocast,
                training_attention(device.type, bf16),
            ):
                out = wrapped(part)
                loss = _micro_loss(out.ce_sums, counts, info.world_size)
            loss.backward()
            sums += out.ce_sums.detach()
        sums = all_reduce_sum(sums)
        total = balanced_loss(sums, counts)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), params.clip_grad)
        if not torch.isfinite(total) or not torch.isfinite(grad_norm):
            raise TrainingDiverged(
                f"step {step + 1}: loss {float(total):.4g}, grad norm {float(grad_norm):.4g} is not finite; "
                f"stopped before the update (last checkpoint: step {_latest_step(checkpoints)})"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        trained_steps += 1
        seconds = time.perf_counter() - t0
        slots = params.batch_size * (params.masking.input_budget + params.masking.target_budget)
        tokens_seen += slots
        record = {
            "step": step,
            "loss": float(total),
            "lr": lr,
            "grad_norm": float(grad_norm),
            **{f"loss/{n}": float(sums[i] / counts[i]) for i, n in enumerate(config.modalities) if counts[i]},
            "tokens_per_s": slots / seconds,
            "model_flops_per_s": 3 * flops_per_sample * params.batch_size / seconds,
        }
        history.append(record)
        if info.is_main and (step % params.log_every == 0 or step == params.steps):
            tracker.log(record, step)
        if step % params.eval_every == 0 or step == params.steps:
            v = {"step": step, **evaluate(model, val, config, autocast)}
            validation.append(v)
            if info.is_main:
                tracker.log({f"val/{k}": x for k, x in v.items() if k != "step"}, step)
        if step % params.checkpoint_every == 0 or step == params.steps:
            _save(
                checkpoints,
                info,
                step,
                model,
                optimizer,
                scheduler,
                batches,
                config,
                fingerprint,
                tokenizers,
                history,
                validation,
            )
        if progress is not None and info.is_main:
            progress(step, params.steps, record)
    seconds = time.perf_counter() - start_time
    tps = tokens_seen / seconds if trained_steps else 0.0
    model_state, _ = full_state(model, optimizer)  # a collective under FSDP: every rank takes part
    return TrainResult(
        model=model,
        config=config,
        history=history,
        validation=validation,
        baseline=baseline,
        resumed_from=resumed_from,
        seconds=seconds,
        tokens_per_second=tps,
        model_flops_per_second=3 * flops_per_sample * params.batch_size * trained_steps / seconds
        if trained_steps
        else 0.0,
        tokenizers=tokenizers,
        model_state=model_state,
    )


# -- helpers --------------------------------------------------------------------------------


def _latest_step(checkpoints: CheckpointStore) -> str:
    latest = checkpoints.latest()
    return str(latest["step"]) if latest else "none"


def _no_sync(wrapped: torch.nn.Module) -> contextlib.AbstractContextManager:
    """DDP: skip the gradient all-reduce on all but the last micro-batch."""
    return wrapped.no_sync() if hasattr(wrapped, "no_sync") else contextlib.nullcontext()


def _flops_per_sample(config: ModelConfig, batch: MaskedBatch) -> int:
    """Forward matmul FLOPs of one sample at the budgets (padding included: it is computed)."""
    real = ~batch.dec_pad
    dec = {n: int((real & (batch.dec_mod == i)).sum()) // len(batch) for i, n in enumerate(config.modalities)}
    return forward_matmul_flops(
        config, batch.enc_tokens.shape[1], {k: v for k, v in dec.items() if v and k in config.targets}
    )


@torch.no_grad()
def evaluate(
    model: FourM, batches: list[MaskedBatch], config: ModelConfig, autocast: Any
) -> dict[str, float]:
    """Modality-balanced and per-modality val cross-entropy over fixed masked batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    M = len(config.modalities)
    sums, counts = torch.zeros(M, device=device), torch.zeros(M, dtype=torch.long, device=device)
    for b in batches:
        with autocast:
            out = model(b.to(device))
        sums += out.ce_sums.float()
        counts += out.counts
    model.train(was_training)
    result = {"loss": float(balanced_loss(sums, counts))}
    result.update({n: float(sums[i] / counts[i]) for i, n in enumerate(config.modalities) if counts[i]})
    return result


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU (the same for DDP, FSDP, one process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def set_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )


def _save(
    checkpoints: CheckpointStore,
    info: DistInfo,
    step: int,
    model: FourM,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: TrainBatches,
    config: ModelConfig,
    fingerprint: str,
    tokenizers: dict[str, str],
    history: list[dict[str, float]],
    validation: list[dict[str, float]],
) -> None:
    model_state, optim_state = full_state(model, optimizer)  # a collective under FSDP: every rank
    if info.is_main:
        checkpoints.save(
            {
                "step": step,
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "loader": batches.state_dict(),  # ranks differ only in "rank" (round-robin dealing)
                "model_config": config.to_dict(),
                "fingerprint": fingerprint,
                "tokenizers": tokenizers,
                "history": history,
                "validation": validation,
            }
        )
    barrier()


def _check_resumable(
    state: dict[str, Any], config: ModelConfig, fingerprint: str, checkpoints: CheckpointStore
) -> None:
    saved = ModelConfig.from_dict(state["model_config"])
    if saved != config:
        raise IncompatibleError(
            f"{checkpoints.directory}: checkpoint of step {state['step']} is for another model: "
            + "; ".join(saved.describe_difference(config))
        )
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{checkpoints.directory}: checkpoint of step {state['step']} was made with other params or "
            f"another token set (run fingerprint {state.get('fingerprint')} != {fingerprint}); "
            "start without --resume "
            "or use a fresh checkpoint directory"
        )
