"""dvc.yaml read as data: its stages in file order, their reports, plots, outputs and upstreams.

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


def _written(stage: dict[str, Any]) -> list[tuple[Path, bool]]:
    """Every path a stage writes (``outs``, ``metrics``, ``plots``) and whether DVC caches it."""
    found = []
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key) or []:
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
            found.append((Path(path), (opts or {}).get("cache", True) is not False))
    return found


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def stage_upstreams(workspace: Path) -> dict[str, list[str]]:
    """Stage name -> the stages whose outputs it reads, in file order.

    A dependency on an output, a file inside one or a directory holding one makes the
    producing stage upstream (``data/labels_validated/manifest.parquet`` depends on the
    stage writing ``data/labels_validated``). Stages with no path between them may run at
    the same time (DVC locks only the paths each one reads and writes).
    """
    stages = dvc_stages(workspace)
    produced = {name: [p for p, _ in _written(stage)] for name, stage in stages.items()}
    upstreams: dict[str, list[str]] = {}
    for name, stage in stages.items():
        deps = _paths(stage.get("deps"))
        upstreams[name] = [
            other
            for other, outs in produced.items()
            if other != name and any(_overlaps(d, o) for d in deps for o in outs)
        ]
    return upstreams


def stage_plots(workspace: Path) -> dict[str, list[Path]]:
    """Stage name -> its plots files from dvc.yaml."""
    return {name: _paths(stage.get("plots")) for name, stage in dvc_stages(workspace).items()}


def stage_reports(workspace: Path) -> dict[str, Path | None]:
    """Stage name -> its report (the first metrics file) from dvc.yaml, in DAG order."""
    return {
        name: next(iter(_paths(stage.get("metrics"))), None) for name, stage in dvc_stages(workspace).items()
    }


def ignored_outputs(workspace: Path) -> dict[Path, list[str]]:
    """The .gitignore entries DVC writes for the cached outputs: file -> ``/name`` lines, in file order.

    DVC keeps every cached output out of git with a ``/<name>`` line in the .gitignore of
    the directory holding it; ``metrics`` and ``plots`` are cached unless ``cache: false``."""
    entries: dict[Path, list[str]] = {}
    for stage in dvc_stages(workspace).values():
        for out, cached in _written(stage):
            lines = entries.setdefault(out.parent / ".gitignore", [])
            if cached and f"/{out.name}" not in lines:
                lines.append(f"/{out.name}")
    return {path: lines for path, lines in entries.items() if lines}


def uncached_outputs(workspace: Path) -> list[Path]:
    """Every ``cache: false`` output, metric and plot: they live in git, not in the DVC cache."""
    found = [p for stage in dvc_stages(workspace).values() for p, cached in _written(stage) if not cached]
    return list(dict.fromkeys(found))
