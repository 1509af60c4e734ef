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
