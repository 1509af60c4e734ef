"""Stage front-ends: run a stage function and record the run in the registry.

The CLI (and so ``dvc.yaml``) and the Prefect flows both call these, so every
stage run, however started, is recorded with its params, code version, inputs
and outputs. The ML code (``run_generate``, ``run_label``, ``run_validate``)
knows nothing of the registry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fourm.data.generate import GenerateReport, run_generate
from fourm.labelers.stage import LabelReport, run_label
from fourm.params import GenerateParams, LabelParams, ValidateParams
from fourm.registry.hooks import dataset_artifact, file_artifact, recorded_run
from fourm.settings import Settings, get_settings
from fourm.validation.stage import Suite, ValidationReport, run_validate


def stage_name(default: str) -> str:
    """The DVC stage running us (DVC sets ``DVC_STAGE``), else the stage's own name."""
    return os.environ.get("DVC_STAGE") or default


def _section(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def _validated(out_dir: Path) -> Any:
    """The accepted-manifest artifact of a validation output (one name for writer and readers)."""
    return file_artifact(Path(out_dir) / "manifest.parquet", "validated dataset", str(out_dir))


def generate(params: GenerateParams, out_dir: Path, settings: Settings | None = None) -> GenerateReport:
    with recorded_run(settings or get_settings(), stage_name("generate"), _section(params), []) as rec:
        report = run_generate(params, out_dir)
        rec.output(dataset_artifact(out_dir, "dataset"))
    return report


def label(
    params: LabelParams, raw: Path, accepted: Path, out_dir: Path, settings: Settings | None = None
) -> LabelReport:
    inputs = [dataset_artifact(raw, "dataset"), _validated(Path(accepted).parent)]
    with recorded_run(settings or get_settings(), stage_name("label"), _section(params), inputs) as rec:
        report = run_label(params, raw, accepted, out_dir)
        rec.output(dataset_artifact(out_dir, "label set"))
    return report


def validate(
    suite: Suite,
    params: ValidateParams,
    dataset: Path,
    out_dir: Path,
    source_manifest: Path | None = None,
    docs_dir: Path | None = None,
    settings: Settings | None = None,
) -> ValidationReport:
    inputs = [dataset_artifact(dataset, "dataset" if suite == "raw" else "label set")]
    if source_manifest is not None:
        inputs.append(_validated(Path(source_manifest).parent))
    stage = stage_name("validate" if suite == "raw" else "validate-labels")
    with recorded_run(settings or get_settings(), stage, _section(params), inputs) as rec:
        report = run_validate(suite, params, dataset, out_dir, source_manifest, docs_dir)
        rec.output(_validated(out_dir))
        rec.output(
            file_artifact(Path(out_dir) / "quarantine.json", "quarantine list", f"{out_dir}-quarantine")
        )
    return report
