"""Why a pod is not making progress, in words, from the pod's own status.

Covers what users of GPU clusters hit most: no node with free GPUs (the scheduler's
message), image pull errors, a missing Secret, OOMKilled, eviction and preemption,
crash loops and plain non-zero exits. ``blocking`` problems stop the pod from ever
starting; the launcher gives up on those after a timeout. The others end a pod and
the Job decides about the retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fourm.launch.k8s_objects import CONFIG_ERROR_EXIT

_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class PodProblem:
    kind: (
        str  # unschedulable | image-pull | container-config | crash-loop | oom | disrupted | config | failed
    )
    message: str
    blocking: bool  # the pod cannot start until someone changes something

    def describe(self, pod_name: str) -> str:
        return f"pod {pod_name}: {self.message}"


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def _condition(pod: Any, kind: str) -> Any:
    for cond in _get(pod, "status", "conditions") or []:
        if cond.type == kind:
            return cond
    return None


def diagnose(pod: Any) -> PodProblem | None:
    """The pod's problem (a ``kubernetes.client.V1Pod``), or None when it is fine or done."""
    status = pod.status
    phase = _get(status, "phase")
    disrupted = _condition(pod, "DisruptionTarget")
    if (
        disrupted is not None
        and disrupted.status == "True"
        or _get(status, "reason")
        in {
            "Evicted",
            "Preempting",
        }
    ):
        reason = (disrupted.reason if disrupted is not None else None) or status.reason
        detail = (disrupted.message if disrupted is not None else None) or status.message or ""
        return PodProblem(
            "disrupted",
            f"{_disruption_words(reason)} ({reason}{': ' + detail if detail else ''}); "
            "the Job replaces it and training resumes from the latest checkpoint",
            blocking=False,
        )
    scheduled = _condition(pod, "PodScheduled")
    if (
        phase == "Pending"
        and scheduled is not None
        and scheduled.status == "False"
        and scheduled.reason == "Unschedulable"
    ):
        return PodProblem(
            "unschedulable",
            f"cannot be scheduled: {scheduled.message or 'no node fits'} (free GPUs, lower "
            "pretrain.kubernetes.nodes/gpus_per_node, or fix node_selector/tolerations)",
            blocking=True,
        )
    for container in _get(status, "container_statuses") or []:
        waiting = _get(container, "state", "waiting")
        terminated = _get(container, "state", "terminated") or _get(container, "last_state", "terminated")
        if waiting is not None and waiting.reason in _PULL_REASONS:
            return PodProblem(
                "image-pull",
                f"image {container.image!r} cannot be pulled ({waiting.reason}: {waiting.message or ''}); "
                "check the image name, tag and imagePullSecrets (setting FOURM_K8S_IMAGE)",
                blocking=True,
            )
        if waiting is not None and waiting.reason in _CONFIG_REASONS:
            return PodProblem(
                "container-config",
                f"container cannot be created ({waiting.reason}: {waiting.message or ''}); "
                "a Secret or ConfigMap it needs is probably missing",
                blocking=True,
            )
        if waiting is not None and waiting.reason == "CrashLoopBackOff":
            code = _get(terminated, "exit_code")
            return PodProblem(
                "crash-loop", f"crash loop (last exit status {code}): {waiting.message or ''}", blocking=True
            )
        if phase == "Failed" and terminated is not None:
            return _terminated(terminated)
    if phase == "Failed":
        return PodProblem("failed", f"failed ({_get(status, 'reason') or 'no reason given'})", blocking=False)
    return None


def _terminated(terminated: Any) -> PodProblem:
    code = terminated.exit_code
    if terminated.reason == "OOMKilled":
        return PodProblem(
            "oom",
            f"ran out of memory (OOMKilled, exit status {code}); raise pretrain.kubernetes.memory "
            "or lower batch_size / loader_workers",
            blocking=False,
        )
    if code == CONFIG_ERROR_EXIT:
        return PodProblem(
            "config", f"refused its configuration (exit status {code}); see its log", blocking=False
        )
    signal = f", killed by signal {code - 128}" if code and code > 128 else ""
    return PodProblem(
        "failed", f"exited with status {code}{signal} ({terminated.reason or 'Error'})", blocking=False
    )


def _disruption_words(reason: str | None) -> str:
    return {
        "PreemptionByScheduler": "preempted by a higher-priority pod",
        "PreemptionByKubeScheduler": "preempted by a higher-priority pod",
        "EvictionByEvictionAPI": "evicted",
        "Evicted": "evicted (node under resource pressure)",
        "DeletionByTaintManager": "removed from a tainted node",
        "DeletionByPodGC": "removed by pod garbage collection (node lost)",
        "TerminationByKubelet": "terminated by the kubelet (node shutdown)",
    }.get(reason or "", "disrupted")
