"""Shard-parallel stages on Kubernetes: an Indexed Job, one pod per range of source shards.

Each pod runs the stage's own CLI command with ``--part $(JOB_COMPLETION_INDEX)/N``
(Kubernetes expands the index), publishing its shards to S3; the caller then runs the
ordinary command, which reuses every published shard and writes the result. Inputs
must be readable by the pods at the paths the caller gives: a ReadWriteMany volume
(``volume_claim``) mounted at the same path on both sides.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from fourm.launch.k8s_objects import IndexedJobSpec, clean_labels, job_name
from fourm.launch.kubernetes import KubernetesLauncher, LineSink, WatchTimeouts, api_client, stderr_sink
from fourm.launch.pod_params import pod_spec_fields
from fourm.params import PodParams, ShardParallelParams
from fourm.settings import Settings


def shard_job_spec(
    stage: str,
    stage_args: Sequence[str],
    parts: int,
    pod: PodParams,
    settings: Settings,
    labels: Mapping[str, str | None] | None = None,
) -> IndexedJobSpec:
    """``fourm <stage> <stage_args> --part i/parts`` in pod i of an Indexed Job."""
    return IndexedJobSpec(
        name=job_name(f"{stage}-parts"),
        command=["fourm"],
        args=[stage, *stage_args, "--part", f"$(JOB_COMPLETION_INDEX)/{parts}"],
        completions=parts,
        labels=clean_labels({"app.kubernetes.io/name": f"fourm-{stage}", **(labels or {})}),
        backoff_limit=pod.max_retries,
        **pod_spec_fields(pod, settings),
    )


def run_shard_job(
    spec: IndexedJobSpec,
    pod: PodParams,
    settings: Settings,
    *,
    api: client.ApiClient | None = None,
    sink: LineSink | None = None,
) -> None:
    """Launch the shard job and wait for every part (raises ``LaunchError`` on failure)."""
    sink = sink or stderr_sink
    launcher = KubernetesLauncher(
        api or api_client(settings.k8s_config, settings.k8s_context),
        WatchTimeouts(pending_s=pod.pending_timeout_s, stall_s=pod.stall_timeout_s),
    )
    sink(f"[kubernetes] job {spec.namespace}/{spec.name}: {spec.completions} parts")
    launcher.launch(spec).wait(sink)


def run_parts_on_kubernetes(
    stage: str,
    section: dict[str, Any],
    params: ShardParallelParams,
    paths: Mapping[str, Path],
    out_dir: Path,
    settings: Settings,
    api: client.ApiClient | None = None,
    sink: LineSink | None = None,
) -> None:
    """Run ``fourm <stage> --part i/N`` (N = ``params.parts``) in an Indexed Job and wait for it.

    The pods read the inputs ``paths`` (option -> path) at the same absolute paths (a shared
    volume) and this exact params ``section``, written beside the outputs on that volume."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=Path(out_dir).resolve().parent) as f:
        yaml.safe_dump({stage: section}, f)
        f.flush()
        args = ["--params", f.name] + [a for k, v in paths.items() for a in (k, str(Path(v).resolve()))]
        spec = shard_job_spec(stage, args, params.parts, params.kubernetes, settings)
        run_shard_job(spec, params.kubernetes, settings, api=api, sink=sink)
