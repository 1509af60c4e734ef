"""``fourm reproduce REF``: rebuild a registered model's pipeline run and check every hash.

The model version's tags name the git ref its pipeline run committed (params.yaml,
dvc.lock, the reports). Reproducing checks that ref out in a fresh worktree,
``dvc pull``s the outputs from the remote, runs ``dvc repro`` (which re-runs any
stage whose inputs, code or params do not match its dvc.lock entry) and then
hashes every artifact of the version's lineage that lives in the workspace, the
same way the stage that made it did, against the hash the registry holds.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fourm.data.format import DATASET_CARD
from fourm.data.token_shards import TOKENS_CARD
from fourm.io import sha256_file
from fourm.registry.api import Registry
from fourm.registry.entities import ArtifactInfo
from fourm.run_workspace import (
    REF_PREFIX,
    RunWorkspace,
    create_run_workspace,
    git,
    remove_run_workspace,
    repo_root,
    stage_env,
)
from fourm.settings import Settings, get_settings
from fourm.tokenizers.base import CONFIG_FILE, directory_fingerprint


class ReproduceError(RuntimeError):
    """The version cannot be reproduced (no run ref, the ref is not here, a DVC command failed)."""


@dataclass(frozen=True)
class HashCheck:
    kind: str
    path: str
    registered: str
    reproduced: str | None  # None: missing from the workspace

    @property
    def passed(self) -> bool:
        return self.reproduced == self.registered


@dataclass(frozen=True)
class Reproduction:
    ref: str
    git_ref: str
    commit: str
    workspace: Path
    checks: list[HashCheck]
    skipped: list[ArtifactInfo]  # lineage artifacts outside the workspace (e.g. labeler weights)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def fingerprint(path: Path) -> str:
    """An output's hash as the stage that made it recorded it (see ``fourm.stages``)."""
    if path.is_file():
        return sha256_file(path)
    for card in (DATASET_CARD, TOKENS_CARD):  # datasets and token sets: the card lists every shard's hash
        if (path / card).is_file():
            return sha256_file(path / card)
    if (path / CONFIG_FILE).is_file():
        return directory_fingerprint(path)
    raise ReproduceError(f"{path}: not a file, dataset, token set or tokenizer")


def _workspace_path(artifact: ArtifactInfo) -> Path | None:
    uri = artifact.uri
    if "://" in uri or Path(uri).is_absolute():
        return None
    return Path(uri)


def _ensure_commit(repo: Path, git_ref: str, commit: str) -> None:
    if _has_commit(repo, commit):
        return
    remotes = git(["remote"], repo, check=False).split()
    if "origin" in remotes:
        git(["fetch", "--quiet", "origin", f"+{REF_PREFIX}*:{REF_PREFIX}*"], repo, check=False)
    if not _has_commit(repo, commit):
        raise ReproduceError(
            f"commit {commit[:12]} ({git_ref}) is not in {repo} nor fetchable from its origin: "
            "fetch it from the repository the run was made in "
            f"(git fetch <remote> '{REF_PREFIX}*:{REF_PREFIX}*')"
        )


def _has_commit(repo: Path, commit: str) -> bool:
    proc = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True, check=False
    )
    return proc.returncode == 0


def _dvc(args: list[str], ws: RunWorkspace, settings: Settings) -> None:
    proc = subprocess.run(["dvc", *args], cwd=ws.path, env=stage_env(ws.path, settings.home_dir), check=False)
    if proc.returncode != 0:
        raise ReproduceError(f"dvc {' '.join(args)} failed in {ws.path} (exit {proc.returncode}); see above")


def reproduce(
    ref: str,
    repo: Path = Path("."),
    settings: Settings | None = None,
    keep: bool = True,
    rerun: Sequence[str] = (),
) -> Reproduction:
    """Check out ``ref``'s run, pull, repro; compare every workspace artifact's hash with the registry's.

    ``rerun`` names stages to recompute even though their pulled outputs are up to date
    (``dvc repro --force``): their fresh outputs are what gets compared."""
    settings = settings or get_settings()
    registry = Registry(settings.effective_registry_url)
    try:
        version = registry.get_version(ref)
        lineage = [version.checkpoint, *version.tokenizers, *registry.upstream_artifacts(version.ref)]
        if version.evaluation is not None:
            lineage.append(version.evaluation)
    finally:
        registry.close()
    git_ref, commit = version.tags.get("git_ref"), version.tags.get("git_commit")
    if not git_ref or not commit:
        raise ReproduceError(
            f"{version.ref} has no run ref (tags git_ref, git_commit): only versions the "
            "fourm-pipeline flow registered can be reproduced"
        )
    root = repo_root(repo)
    _ensure_commit(root, git_ref, commit)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    name = f"reproduce-{version.model}-{version.version}-{stamp}"
    ws = create_run_workspace(root, name, settings.home_dir / "reproduce", commit=commit)
    try:
        _dvc(["pull"], ws, settings)
        for stage in rerun:
            _dvc(["repro", "--force", "--single-item", stage], ws, settings)
        _dvc(["repro"], ws, settings)
        checks, skipped = [], []
        for artifact in {a.id: a for a in lineage}.values():
            rel = _workspace_path(artifact)
            if rel is None:
                skipped.append(artifact)
                continue
            if any(c.path == str(rel) and c.registered == artifact.sha256 for c in checks):
                continue  # the same output recorded under two names (e.g. by its maker and by a reader)
            path = ws.path / rel
            got = fingerprint(path) if path.exists() else None
            checks.append(HashCheck(artifact.kind, str(rel), artifact.sha256, got))
    except BaseException:
        if not keep:
            remove_run_workspace(ws)
        raise
    if not keep:
        remove_run_workspace(ws)
    checks.sort(key=lambda c: (c.kind, c.path))
    return Reproduction(version.ref, git_ref, commit, ws.path, checks, skipped)
