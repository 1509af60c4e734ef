"""Which DVC stages of a run start next, and with how many threads.

The pipeline flow runs a stage as soon as every stage it reads from has finished,
at most ``slots`` at a time. Stages that start together share the cores: each gets
``cores // slots`` threads (at least one), because two 1-thread processes of small
convolutions get more done on 2 cores than one 2-thread process (the four VQ-VAEs:
docs/benchmarks.md). A stage that is the only one ready gets every core, even while
others still run: a process keeps its thread count for life, and those others are
the tail of an earlier group (pretraining started beside the last second of
``eval-tokenizers`` once trained its whole run on one of two cores). After a failure
nothing new starts; the stages already running finish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch and MKL size their pools by


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment for a stage process limited to ``threads`` (empty: the machine's default)."""
    return {} if threads is None else {name: str(threads) for name in THREAD_VARIABLES}


@dataclass
class StageScheduler:
    """Stage order for one run: ``upstreams`` maps each stage to the stages it waits for."""

    upstreams: Mapping[str, Sequence[str]]
    slots: int = 1
    cores: int = 1
    pending: list[str] = field(init=False)
    running: set[str] = field(init=False, default_factory=set)
    done: set[str] = field(init=False, default_factory=set)
    failed: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"stage slots must be at least 1, got {self.slots}")
        unknown = {u for ups in self.upstreams.values() for u in ups} - set(self.upstreams)
        if unknown:
            raise ValueError(f"upstream stages not in the run: {sorted(unknown)}")
        self.pending = list(self.upstreams)

    def launches(self) -> list[tuple[str, int | None]]:
        """Stages to start now, in file order, each with its thread count (None: every core)."""
        if self.failed:
            return []
        ready = [s for s in self.pending if all(u in self.done for u in self.upstreams[s])]
        batch = ready[: max(0, self.slots - len(self.running))]
        if not batch and not self.running and self.pending:
            raise RuntimeError(f"stages {self.pending} wait on each other: the stage graph has a cycle")
        alone = self.slots == 1 or len(ready) == 1  # nothing waits to share the cores with it
        threads = None if alone else max(1, self.cores // self.slots)
        for stage in batch:
            self.pending.remove(stage)
            self.running.add(stage)
        return [(stage, threads) for stage in batch]

    def finish(self, stage: str, ok: bool) -> None:
        """Record that a running stage ended (``ok``: it succeeded)."""
        self.running.remove(stage)
        (self.done if ok else self.failed).add(stage)

    @property
    def finished(self) -> bool:
        """Nothing runs and nothing more will start."""
        return not self.running and (not self.pending or bool(self.failed))
