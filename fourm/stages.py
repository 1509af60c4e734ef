"""Stage front-ends: run a stage function and record the run in the registry.

The CLI (and so ``dvc.yaml``) and the Prefect flows both call these, so every
stage run, however started, is recorded with its params, code version, inputs
and outputs. The ML code (``run_generate``, ``run_label``, ``run_validate``)
knows nothing of the registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fourm.data.samples import DatasetInputs
from fourm.data.token_shards import TOKENS_CARD
from fourm.io import canonical_json, sha256_bytes, sha256_file
from fourm.modalities import get_modality
from fourm.params import (
    EvaluateParams,
    GenerateParams,
    IngestParams,
    LabelParams,
    Params,
    PretrainParams,
    TokenizeParams,
    TokenizersParams,
    ValidateParams,
)
from fourm.registry.hooks import ArtifactSpec, dataset_artifact, file_artifact, recorded_run
from fourm.settings import Settings, get_settings
from fourm.tokenizers.base import CONFIG_FILE, directory_fingerprint

# Each stage imports its own module when it runs: a `fourm` stage command is a process of its
# own (under DVC), and importing every stage's libraries (GX, torchmetrics, torch) for each
# cost 4-9 s of start-up per stage.
if TYPE_CHECKING:
    from fourm.data.generate import GenerateReport
    from fourm.data.ingest import IngestReport
    from fourm.data.tokenize import TokenizeReport
    from fourm.labelers.stage import LabelReport
    from fourm.tokenizers.stage import TrainTokenizerReport
    from fourm.validation.stage import Suite, ValidationReport


def stage_name(default: str) -> str:
    """The DVC stage running us (DVC sets ``DVC_STAGE``), else the stage's own name."""
    return os.environ.get("DVC_STAGE") or default


def _section(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def _validated(out_dir: Path) -> Any:
    """The accepted-manifest artifact of a validation output (one name for writer and readers)."""
    return file_artifact(Path(out_dir) / "manifest.parquet", "validated dataset", str(out_dir))


def generate(params: GenerateParams, out_dir: Path, settings: Settings | None = None) -> GenerateReport:
    from fourm.data.generate import run_generate

    with recorded_run(settings or get_settings(), stage_name("generate"), _section(params), []) as rec:
        report = run_generate(params, out_dir)
        rec.output(dataset_artifact(out_dir, "dataset"))
    return report


def ingest(
    params: IngestParams, source: str, out_dir: Path, settings: Settings | None = None
) -> IngestReport:
    """Ingest real images into a raw dataset and record it (the source as the run's input)."""
    from fourm.data.ingest import run_ingest

    settings = settings or get_settings()
    record = {**_section(params), "source": str(source)}
    with recorded_run(settings, stage_name("ingest"), record, []) as rec:
        report = run_ingest(params, source, out_dir)
        rec.output(dataset_artifact(out_dir, "dataset"))
    return report


def source(params: Params, out_dir: Path, settings: Settings | None = None) -> GenerateReport | IngestReport:
    """The raw dataset from the source params.yaml selects: synthetic scenes or ingested images."""
    if params.source.kind == "images":
        return ingest(params.ingest, params.source.path, out_dir, settings)
    return generate(params.generate, out_dir, settings)


def label(
    params: LabelParams,
    raw: Path,
    accepted: Path,
    out_dir: Path,
    settings: Settings | None = None,
    *,
    part: tuple[int, int] | None = None,
    kube_api: Any = None,
    log: Callable[[str], None] | None = None,
) -> LabelReport:
    """Label (and record the label set). ``part``: only that range of raw shards, left for a
    later full run (not recorded). ``launcher: kubernetes``: the parts run as an Indexed Job
    first, then this process assembles the label set from them."""
    from fourm.labelers.stage import run_label

    settings = settings or get_settings()
    if part is not None:
        return run_label(params, raw, accepted, out_dir, part=part)
    inputs = [dataset_artifact(raw, "dataset"), _validated(Path(accepted).parent)]
    with recorded_run(settings, stage_name("label"), _section(params), inputs) as rec:
        if params.launcher == "kubernetes" and params.parts > 1:
            from fourm.launch.shard_job import run_parts_on_kubernetes

            paths = {"--raw": raw, "--accepted": accepted, "--out": out_dir}
            run_parts_on_kubernetes(
                "label", _section(params), params, paths, out_dir, settings, kube_api, log
            )
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
    from fourm.validation.stage import run_validate

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


def _inputs_artifacts(inputs: DatasetInputs) -> list[Any]:
    return [
        dataset_artifact(inputs.raw, "dataset"),
        dataset_artifact(inputs.labels, "label set"),
        _validated(Path(inputs.accepted).parent),
    ]


def tokenizer_artifact(directory: Path, name: str) -> ArtifactSpec:
    """A trained tokenizer directory: sha256 over its files, its config as metadata."""
    config = json.loads((Path(directory) / CONFIG_FILE).read_text())
    size = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    meta = {k: config.get(k) for k in ("kind", "modality", "modalities", "vocab_size", "grid_size")}
    return ArtifactSpec("tokenizer", name, str(directory), directory_fingerprint(directory), size, meta)


def token_set_artifact(directory: Path, published: str | None) -> ArtifactSpec:
    """A token set: sha256 of its card (which lists every shard file's sha256)."""
    card_path = Path(directory) / TOKENS_CARD
    card = json.loads(card_path.read_text())
    size = sum(f["size"] for s in card["shards"] for f in s["files"].values())
    meta = {
        "num_samples": card["num_samples"],
        "splits": card["splits"],
        "published": published,
        "tokenizers": card.get("tokenizers"),
    }
    return ArtifactSpec(
        "token set",
        card.get("name", Path(directory).name),
        str(directory),
        sha256_file(card_path),
        size,
        meta,
    )


def train_tokenizer(
    name: str,
    params: TokenizersParams,
    inputs: DatasetInputs,
    out_dir: Path,
    history_path: Path | None = None,
    settings: Settings | None = None,
) -> TrainTokenizerReport:
    from fourm.tokenizers.stage import run_train_tokenizer
    from fourm.tracking import make_tracker

    settings = settings or get_settings()
    section = (
        {"tokenizer": name, "text": _section(params.text)}
        if name == "text"
        else {"tokenizer": name, "vqvae": _section(params.vqvae_for(name))}
    )
    ins = _inputs_artifacts(inputs)
    # checkpoints keyed by the workspace and what the training depends on: a rerun of the same
    # training there resumes; a concurrent pipeline run (another worktree) never meets them
    key = sha256_bytes(
        canonical_json({"workspace": str(Path.cwd()), "params": section, "inputs": [a.sha256 for a in ins]})
    )[:16]
    with recorded_run(settings, stage_name(f"train-tokenizer@{name}"), section, ins) as rec:
        tracker = make_tracker(settings, "fourm-tokenizers", f"tokenizer-{name}", section)
        try:
            report = run_train_tokenizer(
                name,
                params,
                inputs,
                out_dir,
                history_path,
                checkpoint_dir=settings.home_dir / "checkpoints" / f"tokenizer-{name}-{key}",
                tracker=tracker,
            )
        finally:
            tracker.finish()
        rec.output(tokenizer_artifact(out_dir, f"tokenizer-{name}"))
    return report


def eval_tokenizers(
    params: TokenizersParams,
    inputs: DatasetInputs,
    tokenizers_root: Path,
    preview_dir: Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    from fourm.tokenizers.stage import run_eval_tokenizers

    tokenizer_dirs = [d for d in sorted(Path(tokenizers_root).iterdir()) if (d / CONFIG_FILE).exists()]
    artifacts = _inputs_artifacts(inputs) + [
        tokenizer_artifact(d, f"tokenizer-{d.name}") for d in tokenizer_dirs
    ]
    section = {"eval_split": params.eval_split}
    with recorded_run(settings or get_settings(), stage_name("eval-tokenizers"), section, artifacts):
        return run_eval_tokenizers(params, inputs, tokenizers_root, preview_dir)


def tokenize(
    params: TokenizeParams,
    inputs: DatasetInputs,
    tokenizers_root: Path,
    out_dir: Path,
    settings: Settings | None = None,
    *,
    part: tuple[int, int] | None = None,
    kube_api: Any = None,
    log: Callable[[str], None] | None = None,
) -> TokenizeReport:
    """Tokenize (and record the token set). ``part``: only that range of source shards, published
    for a later full run (not recorded). ``launcher: kubernetes``: the parts run as an Indexed
    Job first, then this process assembles the set from them."""
    from fourm.data.tokenize import run_tokenize

    settings = settings or get_settings()
    names = sorted({get_modality(m).tokenizer_name for m in params.modalities})
    artifacts = _inputs_artifacts(inputs) + [
        tokenizer_artifact(Path(tokenizers_root) / n, f"tokenizer-{n}") for n in names
    ]
    store, uri = None, None
    if params.publish:
        from fourm.storage.object_store import ObjectStore

        store = ObjectStore.from_settings(settings)
        uri = f"s3://{settings.buckets.tokens}/{Path(out_dir).name}-{_inputs_digest(artifacts)}"
    if part is not None:
        return run_tokenize(params, inputs, tokenizers_root, out_dir, uri, store, part=part)
    with recorded_run(settings, stage_name("tokenize"), _section(params), artifacts) as rec:
        if params.launcher == "kubernetes" and params.parts > 1:
            from fourm.launch.shard_job import run_parts_on_kubernetes

            paths = {
                "--raw": inputs.raw, "--labels": inputs.labels, "--accepted": inputs.accepted,
                "--tokenizers": tokenizers_root, "--out": out_dir,
            }  # fmt: skip
            run_parts_on_kubernetes(
                "tokenize", _section(params), params, paths, out_dir, settings, kube_api, log
            )
        report = run_tokenize(params, inputs, tokenizers_root, out_dir, uri, store)
        rec.output(token_set_artifact(out_dir, uri))
    return report


def _inputs_digest(artifacts: list[ArtifactSpec]) -> str:
    """12 hex digits naming a token set by what it was made from (a new prefix per new inputs)."""
    return sha256_bytes("".join(a.sha256 for a in artifacts).encode())[:12]


def pretrain(
    params: PretrainParams,
    tokens_dir: Path,
    out_dir: Path,
    reports_dir: Path,
    *,
    processes: int | None = None,
    resume: bool = True,
    settings: Settings | None = None,
    kube_api: Any = None,
    log: Callable[[str], None] | None = None,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """Pretrain 4M (in this process, under torchrun with ``processes`` > 1, or on Kubernetes pods
    with ``launcher: kubernetes``) and record the run.

    Returns the run's metrics.json. The model file is recorded as a "model checkpoint"
    artifact whose input is the token set (which names its tokenizers).
    """
    import tempfile

    from fourm.launch.local import LocalLauncher, TrainSpec
    from fourm.train.worker import pretrain_process

    settings = settings or get_settings()
    processes = processes or params.processes
    params = params.model_copy(update={"processes": processes})  # what the run really used
    inputs = [token_set_artifact(tokens_dir, None)]
    with recorded_run(settings, stage_name("pretrain"), _section(params), inputs) as rec:
        if params.launcher == "kubernetes":
            from fourm.launch.pretrain_job import run_pretrain_on_kubernetes
            from fourm.registry.hooks import FLOW_RUN_ENV

            run_pretrain_on_kubernetes(
                params,
                tokens_dir,
                out_dir,
                reports_dir,
                settings,
                resume=resume,
                run_id=rec.run_id,
                flow_run_id=flow_run_id or os.environ.get(FLOW_RUN_ENV),
                api=kube_api,
                sink=log,
            )
        elif processes == 1:
            pretrain_process(params, str(tokens_dir), out_dir, reports_dir, resume=resume, settings=settings)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                params_json = Path(tmp) / "pretrain.json"
                params_json.write_text(params.model_dump_json())
                args = [
                    "--pretrain-json", str(params_json), "--tokens", str(tokens_dir),
                    "--out", str(out_dir), "--reports", str(reports_dir),
                    *([] if resume else ["--no-resume"]),
                ]  # fmt: skip
                LocalLauncher().launch(TrainSpec(args, processes)).wait()
        metrics = json.loads((Path(reports_dir) / "metrics.json").read_text())
        meta = {"size": params.model.size, "val_loss": metrics["val_loss"], "steps": metrics["steps"]}
        rec.output(
            file_artifact(Path(out_dir) / "model.pt", "model checkpoint", f"4m-{params.model.size}", meta)
        )
    return metrics


def evaluate(
    params: EvaluateParams,
    model_path: Path,
    tokenizers: Path,
    inputs: DatasetInputs,
    out_dir: Path,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Evaluate a model on the held-out split and record the run: model, tokenizers and dataset in,
    the metrics file out (the evaluation artifact a model version points to)."""
    from fourm.evaluation.stage import METRICS_FILE, run_evaluate

    settings = settings or get_settings()
    ins = [
        file_artifact(Path(model_path), "model checkpoint"),
        _validated(Path(inputs.accepted).parent),
        *(
            tokenizer_artifact(d, d.name)
            for d in sorted(Path(tokenizers).iterdir())
            if (d / CONFIG_FILE).is_file()
        ),
    ]
    with recorded_run(settings, stage_name("evaluate"), _section(params), ins) as rec:
        report = run_evaluate(params, Path(model_path), Path(tokenizers), inputs, Path(out_dir))
        summary = {name: r["beats_baseline"] for name, r in report["tasks"].items()}
        rec.output(
            file_artifact(
                Path(out_dir) / METRICS_FILE, "evaluation report", None, {"beats_baseline": summary}
            )
        )
    return report
