"""dvc.yaml read as data: its stages in file order, their reports, plots and outputs.

``foreach`` stages are expanded to ``name@item`` as DVC names them, including a
``foreach`` over a params.yaml list (``${section.key}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _paths(entries: list | None) -> list[Path]:
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []]


def _substitute(value: Any, item: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${item}", str(item))
    if isinstance(value, list):
        return [_substitute(v, item) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, item): _substitute(v, item) for k, v in value.items()}
    return value


def _foreach_items(items: Any, workspace: Path) -> list[Any]:
    """A ``foreach`` list, or the params.yaml list a ``${section.key}`` template names."""
    if isinstance(items, str) and items.startswith("${") and items.endswith("}"):
        value: Any = yaml.safe_load((workspace / "params.yaml").read_text())
        for key in items[2:-1].split("."):
            value = value[key]
        return list(value)
    return list(items)


def dvc_stages(workspace: Path) -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages in file order, ``foreach`` stages expanded to ``name@item``."""
    spec = yaml.safe_load((Path(workspace) / "dvc.yaml").read_text())
    stages: dict[str, dict[str, Any]] = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            for item in _foreach_items(stage["foreach"], Path(workspace)):
                stages[f"{name}@{item}"] = _substitute(stage["do"], item)
        else:
            stages[name] = stage
    return stages


def stage_outputs(stage: dict[str, Any]) -> list[Path]:
    """A stage's ``outs`` paths."""
    return _paths(stage.get("outs"))


def stage_plots(workspace: Path) -> dict[str, list[Path]]:
    """Stage name -> its plots files from dvc.yaml."""
    return {name: _paths(stage.get("plots")) for name, stage in dvc_stages(workspace).items()}


def stage_reports(workspace: Path) -> dict[str, Path | None]:
    """Stage name -> its report (the first metrics file) from dvc.yaml, in DAG order."""
    return {
        name: next(iter(_paths(stage.get("metrics"))), None) for name, stage in dvc_stages(workspace).items()
    }


def uncached_outputs(workspace: Path) -> list[Path]:
    """Every ``cache: false`` output, metric and plot: they live in git, not in the DVC cache."""
    found: list[Path] = []
    for stage in dvc_stages(workspace).values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                if isinstance(entry, dict):
                    path, opts = next(iter(entry.items()))
                    if (opts or {}).get("cache", True) is False:
                        found.append(Path(path))
    return list(dict.fromkeys(found))
