"""Progress for long work: a rich bar on a terminal, a line per 10% otherwise.

The plain-line mode matters because stages usually run under ``dvc repro`` or a
Prefect task, where output is a log, not a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def _fmt(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


def track(items: Iterable[T], total: int, description: str, unit: str = "samples") -> Iterator[T]:
    """Yield ``items`` while showing progress on stderr."""
    if sys.stderr.isatty():
        columns = (
            TextColumn(f"[bold]{description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        start = time.perf_counter()
        with Progress(*columns) as bar:
            task = bar.add_task(description, total=total, rate="")
            for i, item in enumerate(items, 1):
                yield item
                rate = i / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=1, rate=f"{_fmt(rate)} {unit}/s")
        return
    start = time.perf_counter()
    step = max(1, -(-total // 10))
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == total:
            rate = i / max(time.perf_counter() - start, 1e-9)
            print(f"{description}: {i}/{total} {unit} ({_fmt(rate)}/s)", file=sys.stderr, flush=True)


class StepProgress:
    """Progress of a loop that reports its own position (training steps), with rate and ETA.

    ``update(done, note)`` after each unit; ``close()`` at the end. A rich bar on a
    terminal, otherwise a line per 10% (and the last) with the ETA.
    """

    def __init__(self, total: int, description: str, unit: str = "steps", start: int = 0):
        self.total, self.description, self.unit = total, description, unit
        self.start_done, self.started = start, time.perf_counter()
        self._every = max(1, -(-total // 10))
        self._last = start
        self._bar: Progress | None = None
        if sys.stderr.isatty():
            self._bar = Progress(
                TextColumn(f"[bold]{description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=start, note="", rate="")

    def update(self, done: int, note: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        rate = (done - self.start_done) / max(elapsed, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, note=note, rate=f"{_fmt(rate)} {self.unit}/s")
            return
        # a line each time ``done`` crosses a tenth (steps of many units may skip the multiples)
        crossed = done // self._every != self._last // self._every
        finished = done == self.total != self._last
        self._last = done
        if not (crossed or finished):
            return
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        print(
            f"{self.description}: {done}/{self.total} {self.unit} ({_fmt(rate)}/s, ETA {eta:.0f} s) {note}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
