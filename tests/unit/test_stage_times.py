"""Where a pipeline run's time went: stage spans as rows, a summary line and a timeline PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fourm.stage_times import (
    StageTime,
    restored_from_cache,
    stage_time_rows,
    stage_times_line,
    timeline_png,
    wall_seconds,
)

pytestmark = pytest.mark.unit

# The shape of a demo run: a chain, two tokenizers side by side on one thread each, a long stage.
TIMES = [
    StageTime("pretrain", 300.0, 950.0),
    StageTime("source", 0.0, 7.0),
    StageTime("train-tokenizer@depth", 30.0, 136.0, threads=1),
    StageTime("train-tokenizer@rgb", 30.0, 164.0, threads=1),
    StageTime("evaluate", 950.5, 1000.0, restored=True),
]


def test_rows_follow_start_order_with_seconds_threads_and_cache_state() -> None:
    rows = stage_time_rows(TIMES)
    assert [r["stage"] for r in rows] == [
        "source", "train-tokenizer@depth", "train-tokenizer@rgb", "pretrain", "evaluate"
    ]  # fmt: skip
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["pretrain"] == {
        "stage": "pretrain",
        "start (s)": 300.0,
        "seconds": 650.0,
        "threads": "all",
        "outputs": "computed",
    }
    assert by_stage["train-tokenizer@rgb"]["threads"] == 1
    assert by_stage["evaluate"]["outputs"] == "restored from the cache"


def test_the_line_names_the_wall_clock_and_the_longest_stages_with_their_share() -> None:
    assert wall_seconds(TIMES) == 1000.0
    line = stage_times_line(TIMES, longest=2)
    assert line.startswith("stages: 1000 s wall clock")
    assert "pretrain 650 s (65%), train-tokenizer@rgb 134 s (13%)" in line
    assert "1 of 5 restored from the cache" in line
    assert "restored" not in stage_times_line(TIMES[:4])


def test_timeline_is_a_png_with_a_row_per_stage(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "timeline.png"
    path.parent.mkdir()
    timeline_png(TIMES, path, "run demo")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    few = tmp_path / "few.png"
    timeline_png(TIMES[:2], few, "run demo")
    with Image.open(few) as image:
        assert image.size[0] == width and image.size[1] < height  # taller with more stages
    assert [p.name for p in path.parent.iterdir()] == ["timeline.png"]  # written atomically, no leftovers


def test_dvc_output_tells_restored_stages_from_computed_ones() -> None:
    assert restored_from_cache(["Stage 'tokenize' is cached - skipping run, checking out outputs"])
    assert restored_from_cache(["Stage 'source' didn't change, skipping"])
    assert not restored_from_cache(["Running stage 'pretrain':", "> fourm train --tokens data/tokens"])


def test_bad_spans_and_empty_runs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"stage 'pretrain': span 10.000-5.000 s"):
        StageTime("pretrain", 10.0, 5.0)
    with pytest.raises(ValueError, match="stage 'source'"):
        StageTime("source", -1.0, 5.0)
    with pytest.raises(ValueError, match="no stage times"):
        stage_time_rows([])
    with pytest.raises(ValueError, match="no stage times"):
        timeline_png([], Path("unused.png"), "run")
    assert not Path("unused.png").exists()
