"""A throw-away copy of the project as a git + DVC repository, for pipeline tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from fourm import services
from fourm.settings import Settings
from tests.conftest import REPO, settings_env

TINY_PARAMS = {
    "generate": {"num_scenes": 24, "samples_per_shard": 8, "workers": 1},
    "validate": {"max_bad_fraction": 0.01},
    # seconds, not minutes: the tokenizers learn nothing useful, the DAG runs whole
    "tokenizers": {
        "vqvae": {
            "steps": 6,
            "batch_size": 4,
            "width": 8,
            "code_dim": 8,
            "warmup_steps": 2,
            "log_every": 2,
            "checkpoint_every": 3,
        },
        "eval_preview_samples": 2,
    },
    "pretrain": {
        "model": {"size": "debug"},
        "masking": {"input_budget": 16, "target_budget": 16},
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "eval_every": 2,
        "eval_batches": 1,
        "checkpoint_every": 2,
        "loader_workers": 0,
    },
    "evaluate": {
        "batch_size": 4,
        "image": {"steps": 2},
        "gallery_samples": 2,
        "transfer": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_batch_size": 8},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_workspace(
    root: Path,
    settings: Settings,
    params: dict | None = None,
    replace: dict[str, object] | None = None,
    with_flows: bool = False,
) -> tuple[Path, dict[str, str]]:
    """Copy dvc.yaml, params.yaml (overridden by ``params``), the package and DVC config.

    ``params`` merge into the repo's params.yaml key by key; ``replace`` sets whole values
    by dotted key afterwards (e.g. ``{"label.labelers": {...}}`` drops the repo's entries).
    ``with_flows`` also copies ``flows/`` (to serve the deployments from the workspace).

    Returns the workspace and the environment its commands need (S3 settings,
    PATH with this interpreter's bin first). The DVC remote gets a unique prefix.
    """
    ws = root / "ws"
    ws.mkdir()
    shutil.copy(REPO / "dvc.yaml", ws)
    shutil.copy(REPO / ".dvcignore", ws)
    shutil.copytree(REPO / "fourm", ws / "fourm", ignore=shutil.ignore_patterns("__pycache__"))
    if with_flows:
        shutil.copytree(REPO / "flows", ws / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", ws / ".dvc")
    shutil.copy(REPO / ".dvc" / ".gitignore", ws / ".dvc")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    merged = _merge(base, params or TINY_PARAMS)
    for dotted, value in (replace or {}).items():
        *parents, last = dotted.split(".")
        section = merged
        for key in parents:
            section = section[key]
        section[last] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(merged))
    services.configure_dvc_remote(
        settings, ws, url=f"s3://{settings.buckets.dvc}/test-{uuid.uuid4().hex[:8]}"
    )
    env = {
        **os.environ,
        **settings_env(settings),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "FOURM_REGISTRY_URL": f"sqlite:///{root / 'registry.db'}",
        "COLUMNS": "200",
    }
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "workspace"], cwd=ws, check=True)
    return ws, env


def run(cmd: list[str], ws: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
