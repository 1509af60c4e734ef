"""The ``validate`` stage: check a raw or labeled dataset, quarantine bad samples.

Outputs (all or nothing) in ``out_dir``: ``manifest.parquet`` with the accepted
samples' manifest rows (what downstream stages read), ``quarantine.json`` with
every rejected sample and the rules it broke, and ``report.json``; GX Data Docs
go to a separate ``docs_dir``. Above ``max_bad_fraction`` the stage writes nothing and raises
``ValidationFailed`` naming the rules that failed.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fourm.data.format import Dataset, read_manifest_rows, write_manifest
from fourm.io import atomic_output_dir, atomic_write_json, sha256_file
from fourm.params import ValidateParams
from fourm.validation import stats as sample_stats
from fourm.validation.gx_suite import RuleResult, run_suite
from fourm.validation.rules import label_rules, raw_rules

Suite = Literal["raw", "labeled"]


@dataclass
class ValidationReport:
    suite: str
    dataset: str
    num_samples: int
    num_bad: int
    bad_fraction: float
    max_bad_fraction: float
    passed: bool
    seconds: float
    rules: list[RuleResult]
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    docs: str | None = None

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if r.failed]

    def summary(self) -> str:
        head = (
            f"{self.suite} validation of {self.dataset}: {self.num_samples - self.num_bad}/"
            f"{self.num_samples} samples pass; {self.num_bad} quarantined "
            f"({self.bad_fraction:.2%}, limit {self.max_bad_fraction:.2%})"
        )
        lines = [head]
        for r in self.failed_rules:
            shown = ", ".join(f"{e['id']}={e['value']!r}" for e in r.examples[:3])
            lines.append(f"  rule {r.rule} ({r.description}): {r.failed} failed, e.g. {shown}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "dataset": self.dataset,
            "num_samples": self.num_samples,
            "num_bad": self.num_bad,
            "bad_fraction": self.bad_fraction,
            "max_bad_fraction": self.max_bad_fraction,
            "passed": self.passed,
            "rules": [r.to_dict() for r in self.rules],
            "quarantined": self.quarantined,
            "docs": self.docs,
        }


def failure_report_path(report_path: Path) -> Path:
    """Where a failed run's report goes: beside the report it would have written.

    It is not a DVC output, so a failed stage still leaves no outputs behind, yet
    flows and people find the reason next to the usual report.
    """
    return report_path.with_name(report_path.stem + ".failed.json")


class ValidationFailed(RuntimeError):
    """Too many bad samples; carries the report so callers can publish it."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


def _quarantine(rows: list[dict[str, Any]], results: list[RuleResult]) -> list[dict[str, Any]]:
    broken: dict[str, list[str]] = defaultdict(list)
    for r in results:
        for sample_id in dict.fromkeys(r.failing_ids):
            broken[sample_id].append(r.rule)
    shard_of = {row["id"]: row["shard"] for row in rows}
    return [{"id": i, "shard": shard_of.get(i), "rules": rules} for i, rules in sorted(broken.items())]


def _common_clip_shape(rows_stats: list[dict[str, Any]]) -> str | None:
    """The CLIP feature-map shape most samples have: the one every sample must have."""
    shapes = Counter(r["clip_shape"] for r in rows_stats if r.get("clip_shape"))
    return shapes.most_common(1)[0][0] if shapes else None


def run_validate(
    suite: Suite,
    params: ValidateParams,
    dataset_dir: Path,
    out_dir: Path,
    source_manifest: Path | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate ``dataset_dir`` with the ``suite`` rules; write accepted manifest to ``out_dir``.

    For the labeled suite, ``source_manifest`` is the accepted raw manifest the
    labels must belong to. GX Data Docs go to ``docs_dir`` (built also when the
    validation fails, since that is when people read them); they are a view, not
    an output, because GX stamps them with times and random ids.
    """
    start = time.perf_counter()
    ds = Dataset.open(dataset_dir)
    resolution = int(ds.card.get("resolution") or 0)
    if suite == "raw":
        rules = raw_rules(params, resolution)
        rows_stats = sample_stats.raw_stats(ds)
    else:
        if source_manifest is None:
            raise ValueError("the labeled suite needs the accepted raw manifest (source_manifest)")
        source_ids = {r["id"] for r in read_manifest_rows(source_manifest)}
        members = tuple(m for m in sample_stats.OPTIONAL_LABEL_MEMBERS if m in ds.card.get("modalities", []))
        rows_stats = sample_stats.label_stats(ds, source_ids, resolution, members)
        rules = label_rules(params, resolution, members, _common_clip_shape(rows_stats))

    rows = ds.rows
    with atomic_output_dir(out_dir) as scratch:
        results = run_suite(f"{suite}_samples", rules, rows_stats, docs_dir, params.max_examples)
        quarantined = _quarantine(rows, results)
        bad_ids = {q["id"] for q in quarantined}
        n = len(rows)
        bad_fraction = len(bad_ids) / n if n else 0.0
        report = ValidationReport(
            suite=suite,
            dataset=str(dataset_dir),
            num_samples=n,
            num_bad=len(bad_ids),
            bad_fraction=round(bad_fraction, 6),
            max_bad_fraction=params.max_bad_fraction,
            passed=bad_fraction <= params.max_bad_fraction and n > 0,
            seconds=0.0,
            rules=results,
            quarantined=quarantined,
            docs=str(Path(docs_dir) / "index.html") if docs_dir else None,
        )
        report.seconds = round(time.perf_counter() - start, 3)
        if not report.passed:
            raise ValidationFailed(report)
        write_manifest(scratch / "manifest.parquet", [r for r in rows if r["id"] not in bad_ids])
        atomic_write_json(scratch / "quarantine.json", quarantined)
        atomic_write_json(
            scratch / "source.json",
            {"dataset": str(dataset_dir), "dataset_sha256": sha256_file(Path(dataset_dir) / "dataset.json")},
        )
        atomic_write_json(scratch / "report.json", report.to_dict())
    return report
