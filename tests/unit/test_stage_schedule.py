"""The order the pipeline flow starts DVC stages in: upstreams from dvc.yaml, slots, threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from fourm.dvc_spec import stage_upstreams
from fourm.stage_schedule import StageScheduler, thread_env
from tests.conftest import REPO

pytestmark = pytest.mark.unit

TOKENIZERS = [f"train-tokenizer@{m}" for m in ("rgb", "semseg", "normal", "depth")] + ["train-text-tokenizer"]


def test_the_project_upstreams_follow_the_paths_stages_read_and_write() -> None:
    ups = stage_upstreams(REPO)
    assert ups["source"] == []
    assert ups["validate"] == ["source"]
    # a dependency on a file inside another stage's output directory (the labels manifest)
    assert "validate-labels" in ups["train-tokenizer@rgb"]
    # the tokenizers read the same data and write their own directories: none waits for another
    for tok in TOKENIZERS:
        assert not set(ups[tok]) & set(TOKENIZERS)
    # a dependency on a directory holding several stages' outputs (data/tokenizers)
    assert set(TOKENIZERS) <= set(ups["tokenize"]) and set(TOKENIZERS) <= set(ups["eval-tokenizers"])
    assert ups["pretrain"] == ["tokenize"]
    assert {"pretrain", "evaluate"} <= set(ups["register"])


def test_upstreams_of_a_dependency_on_a_directory_above_an_output(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: x, outs: [out/a]}\n"
        "  b: {cmd: x, outs: [out/b], metrics: [{reports/b.json: {cache: false}}]}\n"
        "  c: {cmd: x, deps: [out], outs: [c]}\n"
        "  d: {cmd: x, deps: [reports/b.json, c/file.txt]}\n"
    )
    assert stage_upstreams(tmp_path) == {"a": [], "b": [], "c": ["a", "b"], "d": ["b", "c"]}


def _drive(scheduler: StageScheduler) -> list[list[tuple[str, int | None]]]:
    """Run the scheduler to the end, finishing the running stages in start order; the launch waves."""
    waves, started = [], []
    while not scheduler.finished:
        wave = scheduler.launches()
        if wave:
            waves.append(wave)
            started.extend(s for s, _ in wave)
        scheduler.finish(next(s for s in started if s in scheduler.running), ok=True)
    return waves


def test_the_tokenizers_run_two_at_a_time_on_half_the_cores_each() -> None:
    ups = stage_upstreams(REPO)
    waves = _drive(StageScheduler(ups, slots=2, cores=2))
    assert waves[0] == [("source", None)]  # alone: every core
    pairs = [w for w in waves if len(w) == 2]
    # params.yaml lists the two 800-step VQ-VAEs first: they start together, each 500-step one follows one
    assert pairs[0] == [("train-tokenizer@rgb", 1), ("train-tokenizer@semseg", 1)]
    # the VQ-VAEs started while another was ready or ran, on one thread each; the text tokenizer,
    # the last one ready, gets every core beside the last VQ-VAE's tail
    shared = {s for w in waves for s, threads in w if threads == 1}
    assert shared == set(TOKENIZERS[:4]) | {"eval-tokenizers", "tokenize"}
    assert [s for w in waves for s, _ in w][-3:] == ["pretrain", "evaluate", "register"]
    assert all(threads is None for w in waves for s, threads in w if s in ("pretrain", "evaluate"))


def test_one_slot_is_the_file_order_with_every_core() -> None:
    ups = stage_upstreams(REPO)
    waves = _drive(StageScheduler(ups, slots=1, cores=8))
    assert [w for w in waves] == [[(s, None)] for s in ups]


def test_many_cores_are_split_between_the_slots() -> None:
    scheduler = StageScheduler({"a": [], "b": [], "c": [], "d": ["a"]}, slots=3, cores=16)
    assert scheduler.launches() == [("a", 5), ("b", 5), ("c", 5)]
    assert scheduler.launches() == []  # every slot taken
    scheduler.finish("a", ok=True)
    assert scheduler.launches() == [("d", None)]  # the only one ready: b and c are finishing


def test_a_stage_ready_alone_gets_every_core_while_the_last_of_a_group_finishes() -> None:
    """The demo's order: tokenize ends before eval-tokenizers, and pretraining must not run
    its whole length on the one core that was free when it started."""
    ups = stage_upstreams(REPO)
    scheduler = StageScheduler(ups, slots=2, cores=2)
    started: list[tuple[str, int | None]] = []
    while "tokenize" not in scheduler.done:
        started += scheduler.launches()
        running = sorted(scheduler.running, key=lambda s: s != "tokenize")  # tokenize finishes first
        scheduler.finish(running[0], ok=True)
    assert "eval-tokenizers" in scheduler.running
    assert scheduler.launches() == [("pretrain", None)]
    # stages that started together shared the cores
    assert ("train-tokenizer@rgb", 1) in started and ("tokenize", 1) in started


def test_a_failure_starts_nothing_new_but_lets_the_running_stages_finish() -> None:
    scheduler = StageScheduler({"a": [], "b": [], "c": ["a"], "d": []}, slots=2, cores=2)
    assert [s for s, _ in scheduler.launches()] == ["a", "b"]
    scheduler.finish("a", ok=False)
    assert scheduler.launches() == [] and not scheduler.finished  # b still runs; c and d never start
    scheduler.finish("b", ok=True)
    assert scheduler.finished and scheduler.failed == {"a"} and scheduler.pending == ["c", "d"]


def test_bad_graphs_and_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="slots must be at least 1"):
        StageScheduler({"a": []}, slots=0)
    with pytest.raises(ValueError, match=r"upstream stages not in the run: \['ghost'\]"):
        StageScheduler({"a": ["ghost"]})
    cyclic = StageScheduler({"a": ["b"], "b": ["a"]}, slots=2)
    with pytest.raises(RuntimeError, match="wait on each other"):
        cyclic.launches()


def test_thread_env_caps_torch_and_mkl_or_leaves_the_default() -> None:
    assert thread_env(None) == {}
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
