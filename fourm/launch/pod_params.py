"""From params and settings to the parts of an ``IndexedJobSpec`` every fourm pod shares."""

from __future__ import annotations

from typing import Any

from fourm.launch.k8s_objects import WORKSPACE, Toleration
from fourm.params import PodParams
from fourm.settings import Settings


def pod_env(settings: Settings, threads: str = "1") -> dict[str, str]:
    """Plain (non-secret) environment of a fourm pod: its home, buckets, W&B mode."""
    buckets = settings.buckets
    return {
        "FOURM_HOME": f"{WORKSPACE}/.fourm",
        "FOURM_WANDB_MODE": settings.wandb_mode,
        "FOURM_BUCKETS__DATASETS": buckets.datasets,
        "FOURM_BUCKETS__TOKENS": buckets.tokens,
        "FOURM_BUCKETS__CHECKPOINTS": buckets.checkpoints,
        "FOURM_BUCKETS__DVC": buckets.dvc,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
    }


def threads_per_process(cpu: str, procs: int) -> str:
    """OMP threads for each of ``procs`` processes sharing a pod's ``cpu`` ("8", "500m")."""
    try:
        cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:
        return "1"
    return str(max(1, int(cores) // procs))


def pod_spec_fields(pod: PodParams, settings: Settings, procs: int = 1) -> dict[str, Any]:
    """``IndexedJobSpec`` keyword arguments from ``pod`` params and the cluster settings."""
    secrets = [(pod.s3_secret, False)] + ([(pod.wandb_secret, True)] if pod.wandb_secret else [])
    return {
        "image": settings.k8s_image,
        "namespace": settings.k8s_namespace,
        "cpu": pod.cpu,
        "memory": pod.memory,
        "gpus": pod.gpus_per_node,
        "env": pod_env(settings, threads_per_process(pod.cpu, procs)),
        "secret_env": secrets,
        "node_selector": pod.node_selector,
        "tolerations": [Toleration(t.key, t.operator, t.value, t.effect) for t in pod.tolerations],
        "priority_class": pod.priority_class,
        "service_account": pod.service_account,
        "ttl_seconds_after_finished": pod.ttl_seconds_after_finished,
        "volume_claim": pod.volume_claim,
        "volume_mount": pod.volume_mount,
    }
