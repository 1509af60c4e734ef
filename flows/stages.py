"""One Prefect flow per stage, calling the stage's plain function in ``fourm``.

Parameters are the typed models of params.yaml (so the Prefect UI renders a
form); left empty they default to the workspace's params.yaml. These flows run
a stage directly, outside DVC (each run is still recorded in the registry): for
reproducible runs use ``fourm-pipeline``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.artifacts import publish_stage_report, publish_validation
from fourm import stages
from fourm.params import GenerateParams, LabelParams, ValidateParams, load_params
from fourm.validation.stage import ValidationFailed


@task(name="generate")
def generate_task(params: GenerateParams, out_dir: str) -> dict:
    return stages.generate(params, Path(out_dir)).to_dict()


@flow(name="fourm-generate")
def generate_flow(params: GenerateParams | None = None, out_dir: str = "data/raw") -> dict:
    """Render the synthetic dataset into raw shards."""
    report = generate_task(params or load_params().generate, out_dir)
    publish_stage_report(report, "generate")
    return report


@task(name="label")
def label_task(params: LabelParams, raw_dir: str, accepted: str, out_dir: str) -> dict:
    return stages.label(params, Path(raw_dir), Path(accepted), Path(out_dir)).to_dict()


@flow(name="fourm-label")
def label_flow(
    params: LabelParams | None = None,
    raw_dir: str = "data/raw",
    accepted: str = "data/raw_validated/manifest.parquet",
    out_dir: str = "data/labels",
) -> dict:
    """Pseudo-label the accepted raw samples."""
    report = label_task(params or load_params().label, raw_dir, accepted, out_dir)
    publish_stage_report(report, "label")
    return report


@task(name="validate")
def validate_task(
    suite: str, params: ValidateParams, dataset: str, out_dir: str, source_manifest: str | None
) -> dict:
    try:
        return stages.validate(
            suite,  # type: ignore[arg-type]
            params,
            Path(dataset),
            Path(out_dir),
            Path(source_manifest) if source_manifest else None,
        ).to_dict()
    except ValidationFailed as failure:
        publish_validation(failure.report.to_dict(), f"validate-{suite}")
        raise


@flow(name="fourm-validate")
def validate_flow(
    suite: str = "raw",
    params: ValidateParams | None = None,
    dataset: str = "data/raw",
    out_dir: str = "data/raw_validated",
    source_manifest: str | None = None,
) -> dict:
    """Validate a raw or labeled dataset; quarantine bad samples."""
    report = validate_task(suite, params or load_params().validate_, dataset, out_dir, source_manifest)
    publish_validation(report, f"validate-{suite}")
    return report
