"""Where a pipeline run's time went: each stage's span, as a table, a line and a timeline PNG.

The pipeline flow times every stage it runs (``StageTime``); this module turns those
spans into what users read: rows for a table artifact, one summary line, and a chart
of the stages against the run's clock (side-by-side stages overlap on it).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fourm.io import atomic_write_bytes

# What `dvc repro` logs for a stage it did not run (dvc/stage/cache.py, dvc/stage/__init__.py):
# restored from the run cache, or already up to date in the workspace.
_RESTORED_MARKERS = ("is cached - skipping run", "didn't change, skipping")


@dataclass(frozen=True)
class StageTime:
    """One stage's span in seconds on the run's clock; ``threads`` None = every core."""

    stage: str
    start: float
    end: float
    threads: int | None = None
    restored: bool = False

    def __post_init__(self) -> None:
        if not self.end >= self.start >= 0:
            raise ValueError(
                f"stage {self.stage!r}: span {self.start:.3f}-{self.end:.3f} s must start at or after 0 "
                "and end at or after its start"
            )

    @property
    def seconds(self) -> float:
        return self.end - self.start


def restored_from_cache(log_lines: Iterable[str]) -> bool:
    """Whether ``dvc repro``'s output says the stage was skipped or restored instead of run."""
    return any(marker in line for line in log_lines for marker in _RESTORED_MARKERS)


def _in_start_order(times: Sequence[StageTime]) -> list[StageTime]:
    if not times:
        raise ValueError("no stage times: the run timed no stage")
    return sorted(times, key=lambda t: (t.start, t.stage))


def wall_seconds(times: Sequence[StageTime]) -> float:
    """From the first stage's start to the last stage's end."""
    ordered = _in_start_order(times)
    return max(t.end for t in ordered) - ordered[0].start


def stage_time_rows(times: Sequence[StageTime]) -> list[dict[str, object]]:
    """Table rows in start order: stage, start and seconds (0.1 s), threads, ran or restored."""
    return [
        {
            "stage": t.stage,
            "start (s)": round(t.start, 1),
            "seconds": round(t.seconds, 1),
            "threads": "all" if t.threads is None else t.threads,
            "outputs": "restored from the cache" if t.restored else "computed",
        }
        for t in _in_start_order(times)
    ]


def stage_times_line(times: Sequence[StageTime], longest: int = 3) -> str:
    """One line: the stages' wall clock and the ``longest`` stages with their share of it."""
    total = wall_seconds(times)
    top = sorted(times, key=lambda t: -t.seconds)[:longest]
    share = ", ".join(f"{t.stage} {t.seconds:.0f} s ({t.seconds / total:.0%})" for t in top) if total else ""
    restored = sum(t.restored for t in times)
    cached = f"; {restored} of {len(times)} restored from the cache" if restored else ""
    return f"stages: {total:.0f} s wall clock, first start to last end; longest: {share}{cached}"


def timeline_png(times: Sequence[StageTime], path: Path, title: str) -> None:
    """A bar per stage on the run's clock (computed: blue, restored: grey), labelled with its
    seconds and threads; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = _in_start_order(times)
    total = wall_seconds(ordered)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(ordered) + 1.4))
    for row, t in enumerate(ordered):
        ax.barh(row, max(t.seconds, total / 500), left=t.start, color="0.7" if t.restored else "tab:blue")
        threads = "all cores" if t.threads is None else f"{t.threads} thread{'s' * (t.threads != 1)}"
        ax.text(t.end + total / 200, row, f"{t.seconds:.0f} s, {threads}", va="center", fontsize=8)
    ax.set_yticks(range(len(ordered)), [t.stage for t in ordered], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(ordered[0].start, ordered[0].start + total * 1.18 + 1e-9)
    ax.set(xlabel="seconds since the first stage started", title=f"{title}: {total:.0f} s")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
