"""Run workspaces: one git worktree per pipeline run, its params, its ref.

A run never touches the checkout it was started from: it gets a detached git
worktree of the checkout's commit under ``<fourm home>/runs/<run>``, with the
run's parameters written to its params.yaml, the checkout's DVC credentials
(``.dvc/config.local``) and a DVC cache shared with the checkout (so a stage one
run has computed is restored, not recomputed, by the next run with the same
inputs). Two runs therefore hold no file or DVC lock in common.

When the run is done, :func:`commit_run_ref` commits what defines and describes
it (params.yaml, dvc.lock, the ``cache: false`` reports and DVC's .gitignore
files) on top of that commit and points ``refs/fourm-runs/<run>`` at it: the
ref is all ``fourm reproduce`` needs besides the DVC remote.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fourm.dvc_spec import dvc_stages, ignored_outputs, uncached_outputs
from fourm.io import atomic_write_bytes
from fourm.params import dump_params, parse_params

REF_PREFIX = "refs/fourm-runs/"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RunWorkspaceError(RuntimeError):
    """The run's workspace cannot be made (not a git repository, a bad name, bad params)."""


@dataclass(frozen=True)
class RunWorkspace:
    name: str
    path: Path
    repo: Path
    base_commit: str

    @property
    def ref(self) -> str:
        return run_ref(self.name)


def run_ref(name: str) -> str:
    """The git ref a run's params and dvc.lock are committed to."""
    return REF_PREFIX + name


def git(args: list[str], cwd: Path, check: bool = True) -> str:
    """Run git, returning stdout; errors carry git's own message."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RunWorkspaceError(
            f"git {' '.join(args)} (in {cwd}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout.strip()


def repo_root(path: Path) -> Path:
    """The top of the git checkout holding ``path``."""
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True, check=False
    )
    if top.returncode != 0:
        raise RunWorkspaceError(f"{Path(path).resolve()}: not inside a git repository (a run needs a commit)")
    return Path(top.stdout.strip())


def write_run_params(workspace: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Apply the run's params ``sections`` to the workspace's params.yaml, validated before anything
    is written; returns the validated params.

    Only the values that differ from the file's are written, so every other value stays as
    the file has it (defaults left implicit, comments kept when nothing differs). DVC compares
    param values as written: a run with the checkout's own params then records the same
    params in its dvc.lock as ``dvc repro`` in the checkout, and each reuses the other's outputs.
    """
    path = workspace / "params.yaml"
    base = yaml.safe_load(path.read_text()) or {}
    merged = dump_params(parse_params({**base, **sections}, f"{path} (with the run's parameters)"))
    current = dump_params(parse_params(base, path))
    if merged != current:
        path.write_text(yaml.safe_dump(overlay_changes(base, current, merged), sort_keys=False))
    return merged


def overlay_changes(raw: Any, before: Any, after: Any) -> Any:
    """``raw`` (a mapping as written, defaults omitted) with the values where ``after`` differs from
    ``before`` (both complete); mappings are compared key by key, anything else replaced whole."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return after
    out = dict(raw) if isinstance(raw, dict) else {}
    for key, value in after.items():
        if key not in before or before[key] != value:
            out[key] = overlay_changes(out.get(key), before.get(key), value)
    for key in before.keys() - after.keys():  # e.g. a labeler dropped from label.labelers
        out.pop(key, None)
    return out


def write_dvc_ignores(workspace: Path) -> None:
    """Write DVC's .gitignore line for every cached output now, in dvc.yaml order.

    DVC adds an output's line when the stage making it finishes. Stages running side by
    side finish in either order, so two runs' refs would differ in those files."""
    for gitignore, entries in ignored_outputs(workspace).items():
        path = workspace / gitignore
        lines = path.read_text().splitlines() if path.exists() else []
        missing = [e for e in entries if e not in lines]
        if missing:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{line}\n" for line in lines + missing))


_LOCK_STAGE = re.compile(r"^  (\S[^:]*):\s*$")  # a stage entry's first line in dvc.lock


def order_lock_stages(workspace: Path) -> None:
    """Put dvc.lock's stage entries in dvc.yaml order, each entry's text kept as DVC wrote it.

    DVC appends a stage's entry when the stage first finishes, so stages side by side
    leave them in finishing order; two runs' refs would differ in it. Call it while no
    stage runs (DVC rewrites the file as each stage ends)."""
    path = workspace / "dvc.lock"
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _LOCK_STAGE.match(line)]
    if not starts:
        return
    head = lines[: starts[0]]
    blocks = {
        _LOCK_STAGE.match(lines[i]).group(1): lines[i:end]  # type: ignore[union-attr]
        for i, end in zip(starts, [*starts[1:], len(lines)], strict=True)
    }
    rank = {name: k for k, name in enumerate(dvc_stages(workspace))}
    names = sorted(blocks, key=lambda n: rank.get(n, len(rank)))  # stable: unknown ones keep their order
    text = "".join(head + [line for n in names for line in blocks[n]])
    if text != path.read_text():
        atomic_write_bytes(path, text.encode())


def _dvc() -> str:
    from fourm.services import find_executable

    return find_executable("dvc", "the 'dvc' executable was not found; install the project (make setup)")


def _dvc_cache_dir(repo: Path) -> Path:
    proc = subprocess.run([_dvc(), "cache", "dir"], cwd=repo, capture_output=True, text=True, check=False)
    found = proc.stdout.strip()
    return Path(found) if proc.returncode == 0 and found else repo / ".dvc" / "cache"


def create_run_workspace(
    repo: Path, name: str, runs_dir: Path, params: dict[str, Any] | None = None, commit: str = "HEAD"
) -> RunWorkspace:
    """A detached worktree of ``repo``'s ``commit`` at ``runs_dir/name``; ``params`` sections replace
    params.yaml's.

    Raises RunWorkspaceError (and leaves nothing behind) on a bad name, a name in use,
    a repository without that commit or invalid params."""
    if not _RUN_NAME.match(name):
        raise RunWorkspaceError(f"run name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    repo = repo_root(repo)
    base_commit = git(["rev-parse", "--verify", f"{commit}^{{commit}}"], repo)
    if git(["rev-parse", "--verify", "--quiet", run_ref(name)], repo, check=False):
        raise RunWorkspaceError(f"run {name!r} exists already ({run_ref(name)}); choose another name")
    path = Path(runs_dir).resolve() / name
    if path.exists():
        raise RunWorkspaceError(f"{path}: exists already; choose another run name")
    path.parent.mkdir(parents=True, exist_ok=True)
    git(["worktree", "add", "--detach", "--quiet", str(path), base_commit], repo)
    try:
        local = repo / ".dvc" / "config.local"
        if local.exists():  # remote credentials: never committed, so not in the worktree
            shutil.copy2(local, path / ".dvc" / "config.local")
        cache = _dvc_cache_dir(repo)
        proc = subprocess.run(
            [_dvc(), "config", "--local", "cache.dir", str(cache)], cwd=path, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RunWorkspaceError(f"{path}: dvc config cache.dir failed: {proc.stderr.strip()}")
        if params:
            write_run_params(path, params)
    except Exception:
        remove_run_workspace(RunWorkspace(name, path, repo, base_commit))
        raise
    return RunWorkspace(name, path, repo, base_commit)


def stage_env(workspace: Path, home: Path) -> dict[str, str]:
    """The environment stage commands run with in a workspace.

    The workspace's own code (PYTHONPATH), so what runs is what its dvc.lock hashes;
    this interpreter's ``fourm`` first on PATH; fourm's home as an absolute path, so
    every run shares one registry and one set of services."""
    python_path = os.pathsep.join(p for p in (str(workspace), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": python_path,
        "FOURM_HOME": str(Path(home).resolve()),
        "DVC_NO_ANALYTICS": "1",
    }


def _identity(cwd: Path) -> list[str]:
    if git(["config", "user.email"], cwd, check=False):
        return []
    return ["-c", "user.name=fourm pipeline", "-c", "user.email=fourm@localhost"]


def commit_run_ref(ws: RunWorkspace, message: str) -> str:
    """Commit params.yaml, dvc.lock, the uncached reports and DVC's .gitignore files; point the ref there.

    Returns the commit's sha."""
    paths = ["params.yaml", "dvc.lock"]
    paths += [str(p) for p in uncached_outputs(ws.path) if (ws.path / p).exists()]
    paths += [str(p.relative_to(ws.path)) for p in ws.path.rglob(".gitignore") if ".dvc" not in p.parts]
    git(["add", "--force", "--", *dict.fromkeys(paths)], ws.path)
    git([*_identity(ws.path), "commit", "--quiet", "--allow-empty", "-m", message], ws.path)
    sha = git(["rev-parse", "HEAD"], ws.path)
    git(["update-ref", ws.ref, sha], ws.path)
    return sha


def remove_run_workspace(ws: RunWorkspace) -> None:
    """Remove the worktree (its ref, if committed, stays)."""
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(ws.path)], cwd=ws.repo, capture_output=True, check=False
    )
    shutil.rmtree(ws.path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ws.repo, capture_output=True, check=False)


def changed_paths(repo: Path, ref_a: str, ref_b: str) -> list[str]:
    """Files that differ between two commits (e.g. two runs' refs)."""
    return git(["diff", "--name-only", ref_a, ref_b], repo).splitlines()
