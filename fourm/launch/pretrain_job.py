"""Pretraining on Kubernetes: the token set and outputs travel through S3, the pods run torchrun.

``run_pretrain_on_kubernetes`` publishes the token set to S3 (unchanged parts are not
sent again), launches one pod per node (``fourm.launch.node`` → torchrun →
``fourm.train.worker``), streams rank 0's log, and when the Job completes downloads
the model and reports rank 0 uploaded. Checkpoints always go to S3 here, so a retried
pod resumes from the latest one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from kubernetes import client

from fourm.launch.k8s_objects import (
    FLOW_RUN_LABEL,
    RUN_LABEL,
    WORKSPACE,
    IndexedJobSpec,
    clean_labels,
    job_name,
)
from fourm.launch.kubernetes import KubernetesLauncher, LineSink, WatchTimeouts, api_client, stderr_sink
from fourm.launch.pod_params import pod_spec_fields
from fourm.params import PretrainParams
from fourm.settings import Settings
from fourm.storage.object_store import ObjectStore

NODE_COMMAND = ("python", "-m", "fourm.launch.node")


def publish_tokens(store: ObjectStore, tokens: Path | str, settings: Settings) -> str:
    """The token set's ``s3://`` location: ``tokens`` itself, or where the local set was published
    (``s3://<tokens bucket>/sets/<sha256 of tokens.json>``)."""
    from fourm.data.token_set import publish_token_set
    from fourm.data.token_shards import TOKENS_CARD

    if str(tokens).startswith("s3://"):
        return str(tokens)
    digest = hashlib.sha256((Path(tokens) / TOKENS_CARD).read_bytes()).hexdigest()[:16]
    uri = f"s3://{settings.buckets.tokens}/sets/{digest}"
    publish_token_set(store, tokens, uri)
    return uri


def pretrain_job_spec(
    params: PretrainParams,
    tokens_uri: str,
    outputs_uri: str,
    settings: Settings,
    *,
    name: str | None = None,
    resume: bool = True,
    labels: Mapping[str, str | None] | None = None,
) -> IndexedJobSpec:
    """The Indexed Job that trains ``params`` on ``nodes`` pods."""
    k8s = params.kubernetes
    params = params.model_copy(update={"launcher": "kubernetes", "upload_checkpoints": True})
    name = name or job_name(f"pretrain-{params.model.size}")
    worker = [
        "--pretrain-inline", params.model_dump_json(),
        "--tokens", tokens_uri,
        "--out", f"{WORKSPACE}/out/model",
        "--reports", f"{WORKSPACE}/out/reports",
        "--publish-outputs", outputs_uri,
        *([] if resume else ["--no-resume"]),
    ]  # fmt: skip
    node = [
        "--nnodes", str(k8s.nodes),
        "--nproc-per-node", str(k8s.nproc_per_node),
        "--master-addr", f"{name}-0.{name}",
        "--master-port", str(k8s.rendezvous_port),
    ]  # fmt: skip
    return IndexedJobSpec(
        name=name,
        command=NODE_COMMAND,
        args=[*node, "--", *worker],
        completions=k8s.nodes,
        shm_size=k8s.shm_size,
        labels=clean_labels({"app.kubernetes.io/name": "fourm-pretrain", **(labels or {})}),
        # A pod failure takes its peers down with it (their collectives fail), so one
        # incident costs up to ``nodes`` counted failures.
        backoff_limit=k8s.max_retries * k8s.nodes,
        rendezvous_port=k8s.rendezvous_port,
        **pod_spec_fields(k8s, settings, k8s.nproc_per_node),
    )


def run_pretrain_on_kubernetes(
    params: PretrainParams,
    tokens: Path | str,
    out_dir: Path,
    reports_dir: Path,
    settings: Settings,
    *,
    resume: bool = True,
    run_id: int | str | None = None,
    flow_run_id: str | None = None,
    api: client.ApiClient | None = None,
    sink: LineSink | None = None,
) -> str:
    """Train on Kubernetes and bring the model and reports back to ``out_dir`` / ``reports_dir``.

    Returns the Job's name."""
    from fourm.train.outputs import fetch_outputs

    sink = sink or stderr_sink
    store = ObjectStore.from_settings(settings)
    tokens_uri = publish_tokens(store, tokens, settings)
    name = job_name(f"pretrain-{params.model.size}")
    outputs_uri = f"s3://{settings.buckets.checkpoints}/outputs/{name}"
    spec = pretrain_job_spec(
        params,
        tokens_uri,
        outputs_uri,
        settings,
        name=name,
        resume=resume,
        labels={RUN_LABEL: str(run_id) if run_id is not None else None, FLOW_RUN_LABEL: flow_run_id},
    )
    k8s = params.kubernetes
    launcher = KubernetesLauncher(
        api or api_client(settings.k8s_config, settings.k8s_context),
        WatchTimeouts(pending_s=k8s.pending_timeout_s, stall_s=k8s.stall_timeout_s),
    )
    sink(f"[kubernetes] job {spec.namespace}/{name}: {k8s.nodes} pods x {k8s.nproc_per_node} processes")
    launcher.launch(spec).wait(sink)
    fetch_outputs(store, outputs_uri, Path(out_dir), Path(reports_dir))
    return name
