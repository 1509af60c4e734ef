"""The Kubernetes objects of a fourm job: an Indexed Job and, for torch.distributed, a headless Service.

Pure builders (no API calls), so the objects can be validated offline against the
Kubernetes OpenAPI schema. One pod per index; for training one index is one node and
pod 0 hosts torchrun's rendezvous store, reached as ``<job>-0.<service>`` through the
headless Service (``publishNotReadyAddresses`` so the name resolves before readiness).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kubernetes import client

CONTAINER = "main"
WORKSPACE = "/workspace"
JOB_LABEL = "fourm.dev/job"
RUN_LABEL = "fourm.dev/run-id"
FLOW_RUN_LABEL = "fourm.dev/flow-run-id"
# Exit status a fourm pod uses for a configuration error: retrying cannot help, so the
# pod failure policy fails the Job at once (78 is EX_CONFIG in sysexits.h).
CONFIG_ERROR_EXIT = 78
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None


@dataclass(frozen=True)
class IndexedJobSpec:
    """One Indexed Job: ``completions`` pods, each running ``command + args`` in ``image``.

    ``$(JOB_COMPLETION_INDEX)`` in ``args`` is expanded by Kubernetes in each pod.
    """

    name: str
    image: str
    command: Sequence[str]
    args: Sequence[str]
    completions: int
    namespace: str = "fourm"
    cpu: str = "1"
    memory: str = "4Gi"
    gpus: int = 0
    shm_size: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Sequence[tuple[str, bool]] = ()  # (secret name, optional): all its keys as env vars
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Toleration] = ()
    priority_class: str | None = None
    service_account: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    backoff_limit: int = 3
    ttl_seconds_after_finished: int | None = 3600
    rendezvous_port: int | None = None  # set: a headless Service for torch.distributed
    volume_claim: str | None = None  # a (ReadWriteMany) PVC mounted at volume_mount in every pod
    volume_mount: str = "/data"

    @property
    def service_name(self) -> str:
        return self.name

    @property
    def rendezvous_host(self) -> str:
        """DNS name of pod 0 through the headless Service."""
        return f"{self.name}-0.{self.service_name}"


def job_name(prefix: str) -> str:
    """A fresh DNS-1123 name ``<prefix>-<5 random chars>``, short enough for pod hostnames."""
    stem = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "fourm"
    return f"{stem}-{secrets.token_hex(3)[:5]}"


def clean_labels(labels: Mapping[str, str | None]) -> dict[str, str]:
    """Labels whose values Kubernetes accepts (at most 63 chars, alphanumerics and ``-_.``)."""
    out = {}
    for key, value in labels.items():
        if value is None:
            continue
        value = re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))[:63].strip("-_.")
        if _LABEL_VALUE.match(value):
            out[key] = value
    return out


def _resources(spec: IndexedJobSpec) -> client.V1ResourceRequirements:
    amounts = {"cpu": spec.cpu, "memory": spec.memory}
    limits = dict(amounts)
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)  # extended resources: limits (requests follow)
    return client.V1ResourceRequirements(requests=amounts, limits=limits)


def _volumes(spec: IndexedJobSpec) -> tuple[list[client.V1Volume], list[client.V1VolumeMount]]:
    # The root filesystem is read-only: the workspace emptyDir is the one writable place
    # (HOME and TMPDIR point into it).
    volumes = [client.V1Volume(name="workspace", empty_dir=client.V1EmptyDirVolumeSource())]
    mounts = [client.V1VolumeMount(name="workspace", mount_path=WORKSPACE)]
    if spec.volume_claim:
        volumes.append(
            client.V1Volume(
                name="shared",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=spec.volume_claim
                ),
            )
        )
        mounts.append(client.V1VolumeMount(name="shared", mount_path=spec.volume_mount))
    if spec.shm_size:
        # torch DataLoader workers pass batches through /dev/shm; the default 64 MiB is too small.
        volumes.append(
            client.V1Volume(
                name="dshm",
                empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size),
            )
        )
        mounts.append(client.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return volumes, mounts


def _container(spec: IndexedJobSpec) -> client.V1Container:
    env = [
        client.V1EnvVar(name=k, value=v)
        for k, v in {"HOME": WORKSPACE, "TMPDIR": WORKSPACE, **spec.env}.items()
    ]
    env_from = [
        client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=name, optional=optional))
        for name, optional in spec.secret_env
    ]
    _, mounts = _volumes(spec)
    ports = (
        [client.V1ContainerPort(container_port=spec.rendezvous_port, name="rendezvous")]
        if spec.rendezvous_port
        else None
    )
    return client.V1Container(
        name=CONTAINER,
        image=spec.image,
        command=list(spec.command),
        args=list(spec.args),
        working_dir=WORKSPACE,
        env=env,
        env_from=env_from or None,
        resources=_resources(spec),
        volume_mounts=mounts,
        ports=ports,
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
    )


def _failure_policy() -> client.V1PodFailurePolicy:
    return client.V1PodFailurePolicy(
        rules=[
            client.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=CONTAINER, operator="In", values=[CONFIG_ERROR_EXIT]
                ),
            ),
            # Preemption, eviction, node drain: not the job's fault; retried without counting.
            client.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[
                    client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
        ]
    )


def build_job(spec: IndexedJobSpec) -> client.V1Job:
    """The Indexed Job (completions = parallelism = ``spec.completions``)."""
    labels = {**spec.labels, JOB_LABEL: spec.name, "app.kubernetes.io/part-of": "fourm"}
    volumes, _ = _volumes(spec)
    pod = client.V1PodSpec(
        restart_policy="Never",  # the Job, not the kubelet, retries (a pod failure policy needs Never)
        containers=[_container(spec)],
        volumes=volumes,
        subdomain=spec.service_name if spec.rendezvous_port else None,
        service_account_name=spec.service_account,
        automount_service_account_token=False,
        node_selector=dict(spec.node_selector) or None,
        tolerations=[
            client.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
            for t in spec.tolerations
        ]
        or None,
        priority_class_name=spec.priority_class,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=1000,
            run_as_group=1000,
            fs_group=1000,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(name=spec.name, namespace=spec.namespace, labels=labels),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=spec.completions,
            parallelism=spec.completions,
            backoff_limit=spec.backoff_limit,
            ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
            pod_failure_policy=_failure_policy(),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def build_service(spec: IndexedJobSpec, owner: client.V1Job | None = None) -> client.V1Service:
    """The headless Service giving pod ``i`` the name ``<job>-i.<service>``; owned by the Job
    (``owner`` with its uid) so deleting the Job deletes it."""
    if not spec.rendezvous_port:
        raise ValueError(f"job {spec.name}: a Service needs a rendezvous port")
    owners = None
    if owner is not None and owner.metadata and owner.metadata.uid:
        owners = [
            client.V1OwnerReference(
                api_version="batch/v1",
                kind="Job",
                name=owner.metadata.name,
                uid=owner.metadata.uid,
                controller=True,
                block_owner_deletion=True,
            )
        ]
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(
            name=spec.service_name,
            namespace=spec.namespace,
            labels={**spec.labels, JOB_LABEL: spec.name, "app.kubernetes.io/part-of": "fourm"},
            owner_references=owners,
        ),
        spec=client.V1ServiceSpec(
            cluster_ip="None",
            publish_not_ready_addresses=True,
            selector={JOB_LABEL: spec.name},
            ports=[client.V1ServicePort(name="rendezvous", port=spec.rendezvous_port)],
        ),
    )


def to_dict(obj: object) -> dict:
    """The object as the API server would receive it (camelCase keys, no nulls)."""
    return client.ApiClient().sanitize_for_serialization(obj)
