"""Human summaries of stage reports, shared by the CLI and the Prefect flows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fourm.data.format import Dataset


def dataset_line(dataset_dir: Path) -> str:
    """Where a dataset lives and how big it is."""
    ds = Dataset.open(dataset_dir)
    size = sum(s["size"] for s in ds.shards)
    return (
        f"dataset: {Path(dataset_dir).resolve()} — {ds.card['num_samples']} samples, "
        f"{len(ds.shards)} shards, {size / 1e6:.1f} MB"
    )


def validation_line(report: dict[str, Any]) -> str:
    """One line per validation report: pass count, rules, data docs."""
    failed = [r["rule"] for r in report["rules"] if r["failed"]]
    verdict = "no rule failed" if not failed else f"rules with failures: {', '.join(failed)}"
    return (
        f"{report['suite']} validation: {report['num_samples'] - report['num_bad']}/"
        f"{report['num_samples']} samples pass {len(report['rules'])} rules, "
        f"{report['num_bad']} quarantined; {verdict}; data docs: {report.get('docs')}"
    )


def pipeline_summary(dataset_dir: Path, validation_reports: list[Path]) -> list[str]:
    lines = [dataset_line(dataset_dir)]
    for path in validation_reports:
        if path.exists():
            lines.append(validation_line(json.loads(path.read_text())))
    return lines


def model_lines(registered: dict[str, Any], evaluation: dict[str, Any], reports_dir: Path) -> list[str]:
    """The registered version, each task's first metric beside its baseline, where the gallery is."""
    verdict = "beats every baseline" if registered["beats_all_baselines"] else "does NOT beat every baseline"
    lines = [f"registered model: {registered['ref']} ({verdict}); run ref {registered.get('git_ref', '-')}"]
    made_by = registered.get("version_git_ref")
    if made_by and made_by != registered.get("git_ref"):  # every stage came from the cache
        lines[0] += f"; the same model as run {made_by}, which registered it"
    for task, result in evaluation.get("tasks", {}).items():
        metric, values = next(iter(result["metrics"].items()))
        mark = "better" if values["better"] else "NOT better"
        lines.append(
            f"  {task}: {metric} {values['model']:.3g} vs baseline {values['baseline']:.3g} ({mark})"
        )
    lines.append(f"gallery: {Path(reports_dir).resolve() / 'gallery.png'}")
    lines.append(f"reproduce: fourm reproduce {registered['ref']}")
    return lines
