"""Publish stage reports as Prefect artifacts (tables and markdown). Presentation only."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def publish_validation(report: dict[str, Any], stage: str) -> None:
    """A table of rules (checked, failed, examples) plus a markdown verdict."""
    rows = [
        {
            "rule": r["rule"],
            "description": r["description"],
            "checked": r["checked"],
            "failed": r["failed"],
            "examples": ", ".join(f"{e['id']}={e['value']}" for e in r["examples"][:3]),
        }
        for r in report["rules"]
    ]
    verdict = "passed" if report["passed"] else "FAILED"
    create_table_artifact(
        key=artifact_key(stage, "rules"),
        table=rows,
        description=(
            f"{report['suite']} validation {verdict}: {report['num_bad']}/{report['num_samples']} "
            f"samples quarantined (limit {report['max_bad_fraction']:.2%})"
        ),
    )
    lines = [
        f"# {stage}: {verdict}",
        "",
        f"- dataset: `{report['dataset']}`",
        f"- samples: {report['num_samples']}, quarantined: {report['num_bad']} "
        f"({report['bad_fraction']:.2%}, limit {report['max_bad_fraction']:.2%})",
        f"- data docs: `{report.get('docs')}`",
    ]
    if report["quarantined"]:
        lines += ["", "| sample | shard | rules |", "|---|---|---|"]
        lines += [
            f"| {q['id']} | {q['shard']} | {', '.join(q['rules'])} |" for q in report["quarantined"][:20]
        ]
    create_markdown_artifact(key=artifact_key(stage, "summary"), markdown="\n".join(lines))


def publish_quarantine(entries: list[dict[str, Any]], stage: str, limit: int = 200) -> None:
    """Rejected inputs (ingest's quarantine.json) as a table: what, where, which rule, why."""
    rows = [
        {
            "id": q.get("id") or "",
            "source": q.get("source", ""),
            "member": q.get("member") or "",
            "rules": ", ".join(q.get("rules", [])),
            "reason": q.get("reason", ""),
        }
        for q in entries[:limit]
    ]
    shown = f" (first {limit})" if len(entries) > limit else ""
    create_table_artifact(
        key=artifact_key(stage, "quarantine"),
        table=rows or [{"id": "", "source": "", "member": "", "rules": "", "reason": "nothing quarantined"}],
        description=f"{stage}: {len(entries)} inputs quarantined{shown}",
    )


def publish_image(path: Path, stage: str, title: str, key_suffix: str = "preview") -> None:
    """A PNG as a markdown artifact: embedded (data URI) and with its path."""
    data = base64.b64encode(path.read_bytes()).decode()
    create_markdown_artifact(
        key=artifact_key(stage, key_suffix),
        markdown=f"# {title}\n\n`{path}`\n\n![{title}](data:image/png;base64,{data})",
        description=title,
    )


def publish_stage_times(rows: list[dict[str, Any]], timeline: Path) -> None:
    """Where a pipeline run's time went: a table of the stages' spans and their timeline chart."""
    create_table_artifact(
        key="pipeline-stage-times", table=rows, description="each stage's start, seconds and threads"
    )
    publish_image(timeline, "pipeline", "where the run's time went", key_suffix="timeline")


def publish_stage_report(report: dict[str, Any], stage: str) -> None:
    """Any other stage report as a two-column table."""
    rows = [
        {"field": k, "value": v if isinstance(v, str | int | float) else json.dumps(v)}
        for k, v in report.items()
    ]
    create_table_artifact(key=artifact_key(stage, "report"), table=rows, description=f"{stage} report")


def publish_tokenizer_eval(report: dict[str, Any], stage: str) -> None:
    """One table row per tokenizer with its reconstruction metrics and codebook usage."""
    rows = []
    for name, metrics in report["tokenizers"].items():
        row: dict[str, Any] = {"tokenizer": name}
        row.update({k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "samples"})
        rows.append(row)
    create_table_artifact(
        key=artifact_key(stage, "metrics"),
        table=rows,
        description=f"tokenize -> detokenize on the {report['split']} split",
    )


def publish_pretrain(report: dict[str, Any], stage: str) -> None:
    """Validation loss per modality beside its unigram baseline, and the ratio (lower is better)."""
    rows = [
        {
            "modality": name,
            "val loss (nats)": round(loss, 4),
            "unigram baseline": round(report["baseline"].get(name, float("nan")), 4),
            "val / baseline": round(report["below_baseline"].get(name, float("nan")), 3),
        }
        for name, loss in report["val_losses"].items()
    ]
    create_table_artifact(
        key=artifact_key(stage, "validation"),
        table=rows,
        description=(
            f"4M after {report['steps']} steps ({report['parameters'] / 1e6:.1f}M parameters): "
            f"val loss {report['val_loss']:.3f}"
        ),
    )


def publish_evaluation(report: dict[str, Any], stage: str, report_md: Path | None = None) -> None:
    """Every task's metrics beside the baseline's as a table, and the markdown report."""
    rows = [
        {
            "task": task,
            "metric": name,
            "model": value["model"],
            "baseline": value["baseline"],
            "better": "yes" if value["better"] else "no",
        }
        for task, result in report["tasks"].items()
        for name, value in result["metrics"].items()
    ]
    beaten = sum(report["beats_baseline"].values())
    create_table_artifact(
        key=artifact_key(stage, "metrics"),
        table=rows,
        description=f"{beaten}/{len(report['beats_baseline'])} tasks beat their baseline "
        f"({report['samples']} {report['split']} samples)",
    )
    if report_md is not None and report_md.exists():
        create_markdown_artifact(key=artifact_key(stage, "report"), markdown=report_md.read_text())
