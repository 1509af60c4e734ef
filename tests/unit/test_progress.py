"""Plain-log progress (stderr not a terminal): one line per tenth crossed, the last line once."""

from __future__ import annotations

import pytest

from fourm.progress import StepProgress

pytestmark = pytest.mark.unit


def test_steps_of_many_units_print_each_tenth_crossed_and_the_end_once(capsys: pytest.CaptureFixture):
    bar = StepProgress(24, "label", unit="images")
    for done in (8, 16, 24, 24):  # the last update repeats the total (a note changes)
        bar.update(done, "shards")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "label: 8/24 images",
        "label: 16/24 images",
        "label: 24/24 images",
    ]
    assert all("/s, ETA" in line for line in lines)


def test_unit_steps_print_every_tenth(capsys: pytest.CaptureFixture):
    bar = StepProgress(20, "train", start=4)
    for step in range(5, 21):
        bar.update(step)
    printed = [line.split(" ")[1] for line in capsys.readouterr().err.splitlines()]
    assert printed == ["6/20", "8/20", "10/20", "12/20", "14/20", "16/20", "18/20", "20/20"]
