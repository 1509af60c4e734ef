"""Run workspaces (fourm/run_workspace.py) on a real git + DVC repository, and their bad inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fourm.params import ParamsError, dump_params, load_params
from fourm.run_workspace import (
    RunWorkspaceError,
    commit_run_ref,
    create_run_workspace,
    remove_run_workspace,
    run_ref,
)
from tests.conftest import REPO

pytestmark = pytest.mark.integration
DVC = str(REPO / ".venv" / "bin" / "dvc")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """The project's dvc.yaml and params.yaml in a fresh git + DVC repository with credentials."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo)
    shutil.copy(REPO / "params.yaml", repo)
    _git(repo, "init", "-q")
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "remote", "add", "-d", "s3", "s3://bucket/dvc"], cwd=repo, check=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "project")
    (repo / ".dvc" / "config.local").write_text("['remote \"s3\"']\n    access_key_id = not-committed\n")
    return repo


def test_a_run_gets_a_worktree_with_its_params_credentials_and_the_shared_cache(
    repo: Path, tmp_path: Path
) -> None:
    ws = create_run_workspace(repo, "run-1", tmp_path / "runs", {"pretrain": {"steps": 700}})
    assert ws.path == (tmp_path / "runs" / "run-1").resolve() and ws.base_commit == _git(
        repo, "rev-parse", "HEAD"
    )
    params = yaml.safe_load((ws.path / "params.yaml").read_text())
    # the section is replaced whole, validated and completed with its defaults
    assert params["pretrain"]["steps"] == 700 and params["pretrain"]["lr"] == 1e-3
    assert params["generate"] == yaml.safe_load((repo / "params.yaml").read_text())["generate"]
    assert "not-committed" in (ws.path / ".dvc" / "config.local").read_text()
    cache = subprocess.run([DVC, "cache", "dir"], cwd=ws.path, capture_output=True, text=True, check=True)
    assert Path(cache.stdout.strip()) == repo / ".dvc" / "cache"
    # the checkout itself is untouched
    assert _git(repo, "status", "--porcelain") == ""
    assert yaml.safe_load((repo / "params.yaml").read_text())["pretrain"]["steps"] != 700


def test_the_run_ref_holds_params_lock_and_reports_on_top_of_the_base_commit(
    repo: Path, tmp_path: Path
) -> None:
    ws = create_run_workspace(repo, "run-2", tmp_path / "runs", {"pretrain": {"steps": 900}})
    (ws.path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (ws.path / "reports" / "pretrain").mkdir(parents=True)
    (ws.path / "reports" / "pretrain" / "metrics.json").write_text("{}\n")  # a cache: false metric
    (ws.path / "scratch.txt").write_text("not part of the run's record\n")
    sha = commit_run_ref(ws, "run-2")
    assert _git(repo, "rev-parse", run_ref("run-2")) == sha
    assert _git(repo, "rev-parse", f"{sha}^") == ws.base_commit
    changed = set(_git(repo, "diff", "--name-only", ws.base_commit, sha).split())
    assert changed == {"params.yaml", "dvc.lock", "reports/pretrain/metrics.json"}
    assert yaml.safe_load(_git(repo, "show", f"{sha}:params.yaml"))["pretrain"]["steps"] == 900
    remove_run_workspace(ws)
    assert not ws.path.exists() and _git(repo, "rev-parse", run_ref("run-2")) == sha  # the ref outlives it
    with pytest.raises(RunWorkspaceError, match="exists already"):
        create_run_workspace(repo, "run-2", tmp_path / "runs")


def test_bad_runs_are_refused_and_leave_nothing_behind(repo: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(RunWorkspaceError, match="run name 'a/b'"):
        create_run_workspace(repo, "a/b", runs)
    with pytest.raises(ParamsError) as bad:
        create_run_workspace(repo, "bad-params", runs, {"pretrain": {"steps": 0}})
    assert "params.yaml (with the run's parameters): pretrain.steps" in str(bad.value)
    assert not (runs / "bad-params").exists()
    assert "bad-params" not in _git(repo, "worktree", "list")
    with pytest.raises(ParamsError, match="unknown key"):
        create_run_workspace(repo, "typo", runs, {"pretrain": {"stepz": 3}})
    with pytest.raises(RunWorkspaceError, match="not inside a git repository"):
        create_run_workspace(tmp_path, "x", runs)
    create_run_workspace(repo, "taken", runs)
    with pytest.raises(RunWorkspaceError, match="exists already"):
        create_run_workspace(repo, "taken", runs)


def test_a_run_writes_only_the_params_that_differ_so_its_lock_matches_the_checkouts(
    repo: Path, tmp_path: Path
) -> None:
    """DVC compares params as written. A run given the checkout's own params (as the pipeline flow
    passes every section, complete) keeps params.yaml byte for byte; a changed run writes just its
    changes, defaults staying implicit, so `dvc repro` in the checkout and a run record the same
    params in dvc.lock wherever they agree."""
    original = (repo / "params.yaml").read_text()
    full = dump_params(load_params(repo / "params.yaml"))
    same = create_run_workspace(repo, "same", tmp_path / "runs", {k: full[k] for k in ("pretrain", "label")})
    assert (same.path / "params.yaml").read_text() == original
    changed_sections = {
        "pretrain": {**full["pretrain"], "steps": 900},
        "tokenizers": {**full["tokenizers"], "overrides": {"rgb": {"steps": 10}}},
    }
    changed = create_run_workspace(repo, "changed", tmp_path / "runs", changed_sections)
    written, base = yaml.safe_load((changed.path / "params.yaml").read_text()), yaml.safe_load(original)
    assert written["pretrain"] == {**base["pretrain"], "steps": 900}
    assert written["tokenizers"] == {**base["tokenizers"], "overrides": {"rgb": {"steps": 10}}}
    assert {k: v for k, v in written.items() if k not in changed_sections} == {
        k: v for k, v in base.items() if k not in changed_sections
    }
