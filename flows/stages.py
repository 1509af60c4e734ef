"""One Prefect flow per stage, calling the stage's plain function in ``fourm``.

Parameters are the typed models of params.yaml (so the Prefect UI renders a
form); left empty they default to the workspace's params.yaml. These flows run
a stage directly, outside DVC (each run is still recorded in the registry): for
reproducible runs use ``fourm-pipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from pydantic import BaseModel

from flows.artifacts import (
    publish_evaluation,
    publish_image,
    publish_pretrain,
    publish_quarantine,
    publish_stage_report,
    publish_tokenizer_eval,
    publish_validation,
)
from flows.retries import retry_only_on
from fourm import stages
from fourm.data.samples import DatasetInputs
from fourm.params import (
    EvaluateParams,
    GenerateParams,
    IngestParams,
    LabelParams,
    PretrainParams,
    TokenizeParams,
    TokenizersParams,
    ValidateParams,
    load_params,
)
from fourm.storage.object_store import StorageError
from fourm.validation.stage import ValidationFailed


class DatasetPaths(BaseModel):
    """The accepted labeled samples a tokenizer stage reads (paths relative to the workspace)."""

    raw: str = "data/raw"
    labels: str = "data/labels"
    accepted: str = "data/labels_validated/manifest.parquet"

    def resolve(self) -> DatasetInputs:
        return DatasetInputs(Path(self.raw), Path(self.labels), Path(self.accepted))


# S3 trouble (network, 5xx after the store's own retries) is retried; bad data never
only_transient_errors = retry_only_on(StorageError)


@task(name="generate")
def generate_task(params: GenerateParams, out_dir: str) -> dict:
    return stages.generate(params, Path(out_dir)).to_dict()


@flow(name="fourm-generate")
def generate_flow(params: GenerateParams | None = None, out_dir: str = "data/raw") -> dict:
    """Render the synthetic dataset into raw shards."""
    report = generate_task(params or load_params().generate, out_dir)
    publish_stage_report(report, "generate")
    return report


@task(name="ingest")
def ingest_task(params: IngestParams, source: str, out_dir: str) -> dict:
    return stages.ingest(params, source, Path(out_dir)).to_dict()


@flow(name="fourm-ingest")
def ingest_flow(source: str, params: IngestParams | None = None, out_dir: str = "data/raw") -> dict:
    """Ingest your images (a folder, .tar shards or an s3:// prefix) into raw shards; bad files are
    quarantined with their reason (a table artifact), never fatal."""
    report = ingest_task(params or load_params().ingest, source, out_dir)
    publish_stage_report(report, "ingest")
    quarantine = Path(out_dir) / "quarantine.json"
    if quarantine.exists():
        publish_quarantine(json.loads(quarantine.read_text()), "ingest")
    return report


@task(name="label")
def label_task(params: LabelParams, raw_dir: str, accepted: str, out_dir: str) -> dict:
    """With ``launcher: kubernetes`` the parts' pod events and first pod's log go to this task's log."""
    log = get_run_logger().info
    return stages.label(params, Path(raw_dir), Path(accepted), Path(out_dir), log=log).to_dict()


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


@task(name="train-tokenizer", task_run_name="train-tokenizer-{name}")
def train_tokenizer_task(name: str, params: TokenizersParams, inputs: DatasetPaths, out_dir: str) -> dict:
    return stages.train_tokenizer(name, params, inputs.resolve(), Path(out_dir)).to_dict()


@flow(name="fourm-train-tokenizer")
def train_tokenizer_flow(
    name: str = "rgb",
    params: TokenizersParams | None = None,
    inputs: DatasetPaths | None = None,
    out_dir: str | None = None,
) -> dict:
    """Train one tokenizer (rgb, depth, normal, semseg or text) on the train split."""
    report = train_tokenizer_task(
        name,
        params or load_params().tokenizers,
        inputs or DatasetPaths(),
        out_dir or f"data/tokenizers/{name}",
    )
    publish_stage_report(report, f"train-tokenizer-{name}")
    return report


@task(name="eval-tokenizers")
def eval_tokenizers_task(
    params: TokenizersParams, inputs: DatasetPaths, tokenizers: str, preview_dir: str
) -> dict:
    return stages.eval_tokenizers(params, inputs.resolve(), Path(tokenizers), Path(preview_dir))


@flow(name="fourm-eval-tokenizers")
def eval_tokenizers_flow(
    params: TokenizersParams | None = None,
    inputs: DatasetPaths | None = None,
    tokenizers: str = "data/tokenizers",
    preview_dir: str = "reports/tokenizers/recon",
) -> dict:
    """Tokenize -> detokenize the evaluation split; metrics table and reconstruction grids."""
    report = eval_tokenizers_task(
        params or load_params().tokenizers, inputs or DatasetPaths(), tokenizers, preview_dir
    )
    publish_tokenizer_eval(report, "eval-tokenizers")
    for name in report["tokenizers"]:
        png = Path(preview_dir) / f"recon_{name}.png"
        if png.exists():
            publish_image(
                png, "eval-tokenizers", f"{name}: input | reconstruction", key_suffix=f"recon-{name}"
            )
    return report


@task(name="tokenize", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=only_transient_errors)
def tokenize_task(params: TokenizeParams, inputs: DatasetPaths, tokenizers: str, out_dir: str) -> dict:
    """With ``launcher: kubernetes`` the parts' pod events and first pod's log go to this task's log."""
    log = get_run_logger().info
    return stages.tokenize(params, inputs.resolve(), Path(tokenizers), Path(out_dir), log=log).to_dict()


@flow(name="fourm-tokenize")
def tokenize_flow(
    params: TokenizeParams | None = None,
    inputs: DatasetPaths | None = None,
    tokenizers: str = "data/tokenizers",
    out_dir: str = "data/tokens",
) -> dict:
    """Encode every accepted sample into token shards and publish them to S3 (resumable)."""
    report = tokenize_task(params or load_params().tokenize, inputs or DatasetPaths(), tokenizers, out_dir)
    publish_stage_report(report, "tokenize")
    return report


@task(name="pretrain", retries=1, retry_delay_seconds=[10], retry_condition_fn=only_transient_errors)
def pretrain_task(
    params: PretrainParams, tokens: str, out_dir: str, reports_dir: str, processes: int | None
) -> dict:
    """A retry resumes from the run's latest checkpoint (same params and token set). On Kubernetes,
    rank 0's log and the pods' events go to this task's log."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    return stages.pretrain(
        params,
        Path(tokens),
        Path(out_dir),
        Path(reports_dir),
        processes=processes,
        log=logger.info,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
    )


@flow(name="fourm-pretrain")
def pretrain_flow(
    params: PretrainParams | None = None,
    tokens: str = "data/tokens",
    out_dir: str = "models/pretrain",
    reports_dir: str = "reports/pretrain",
    processes: int | None = None,
) -> dict:
    """Pretrain 4M on a token set; val loss per modality vs. the unigram baseline, loss curves."""
    metrics = pretrain_task(params or load_params().pretrain, tokens, out_dir, reports_dir, processes)
    publish_pretrain(metrics, "pretrain")
    png = Path(reports_dir) / "loss.png"
    if png.exists():
        publish_image(png, "pretrain", "pretraining loss and validation per modality", key_suffix="loss")
    return metrics


@task(name="evaluate")
def evaluate_task(
    params: EvaluateParams, model: str, tokenizers: str, inputs: DatasetPaths, out_dir: str
) -> dict:
    """``model``: a model file or a registry reference (NAME:VERSION, NAME@STAGE)."""
    from fourm.inference import resolve_model

    return stages.evaluate(params, resolve_model(model), Path(tokenizers), inputs.resolve(), Path(out_dir))


@flow(name="fourm-evaluate")
def evaluate_flow(
    model: str = "models/pretrain/model.pt",
    params: EvaluateParams | None = None,
    tokenizers: str = "data/tokenizers",
    inputs: DatasetPaths | None = None,
    out_dir: str = "reports/evaluate",
) -> dict:
    """Score a model on the held-out split (every task beside its trivial baseline, plus transfer);
    metrics table, markdown report and galleries as artifacts."""
    report = evaluate_task(
        params or load_params().evaluate, model, tokenizers, inputs or DatasetPaths(), out_dir
    )
    publish_evaluation(report, "evaluate", Path(out_dir) / "report.md")
    for name in ("gallery.png", "gallery_caption.png"):
        png = Path(out_dir) / name
        if png.exists():
            publish_image(png, "evaluate", f"evaluation: {name}", key_suffix=png.stem.replace("_", "-"))
    return report
