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
