"""Run validation rules as a Great Expectations (Core 1.x) suite; build Data Docs.

An ephemeral context with in-memory stores and one Data Docs site in a directory
we choose, progress bars off, so GX writes nothing outside that directory.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from fourm.validation.rules import Rule  # noqa: E402

_SITE = "fourm"


@dataclass
class RuleResult:
    rule: str
    description: str
    checked: int
    failed: int
    failing_ids: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "description": self.description,
            "checked": self.checked,
            "failed": self.failed,
            "examples": self.examples,
        }


def _expectation(rule: Rule) -> gxe.Expectation:
    if rule.check == "unique":
        exp = gxe.ExpectColumnValuesToBeUnique(column=rule.column)
    elif rule.check == "in_set":
        exp = gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.value_set or ()))
    else:
        exp = gxe.ExpectColumnValuesToBeBetween(
            column=rule.column,
            min_value=rule.min_value,
            max_value=rule.max_value,
            strict_min=rule.strict_min,
        )
    exp.meta = {"rule": rule.name}
    exp.notes = rule.description
    return exp


def _context(docs_dir: Path | None) -> Any:
    sites = {}
    if docs_dir is not None:
        sites[_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def run_suite(
    suite_name: str,
    rules: list[Rule],
    stats: list[dict[str, Any]],
    docs_dir: Path | None = None,
    max_examples: int = 10,
) -> list[RuleResult]:
    """Validate ``stats`` rows against ``rules``; return one result per rule."""
    frame = pd.DataFrame(stats)
    context = _context(docs_dir)
    batch = (
        context.data_sources.add_pandas("fourm")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(
        gx.ExpectationSuite(name=suite_name, expectations=[_expectation(r) for r in rules])
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]},
    )
    if docs_dir is not None:
        shutil.rmtree(docs_dir, ignore_errors=True)  # one run's pages, not an accumulation
        context.build_data_docs(site_names=[_SITE])

    by_rule = {r.expectation_config.meta["rule"]: r for r in result.results}
    out = []
    for rule in rules:
        res = by_rule[rule.name]
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"validation rule {rule.name} could not run: {res.exception_info.get('exception_message')}"
            )
        detail = res.result or {}
        failing = [_plain(row["id"]) for row in detail.get("unexpected_index_list") or []]
        examples = [
            {"id": _plain(row["id"]), "value": _plain(row.get(rule.column, row["id"]))}
            for row in (detail.get("unexpected_index_list") or [])[:max_examples]
        ]
        out.append(
            RuleResult(
                rule=rule.name,
                description=rule.description,
                checked=int(detail.get("element_count", len(frame)))
                - int(detail.get("missing_count", 0) or 0),
                failed=len(failing),
                failing_ids=failing,
                examples=examples,
            )
        )
    return out
