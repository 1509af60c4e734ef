"""Where stages run on Kubernetes: pod resources and placement, and shard-parallel launching."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fourm.params.base import StrictModel


class TolerationParams(StrictModel):
    """A Kubernetes toleration for the training pods (e.g. of a GPU node taint)."""

    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class PodParams(StrictModel):
    """What every fourm pod on Kubernetes gets: resources, placement, credentials, retries.

    Where the cluster is (context, namespace, image) are settings, not params.
    """

    cpu: str = Field("4", description="CPU request and limit per pod.")
    memory: str = Field("16Gi", description="Memory request and limit per pod.")
    gpus_per_node: int = Field(0, ge=0, description="nvidia.com/gpu per pod; 0 = CPU pods.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[TolerationParams] = Field(default_factory=list)
    priority_class: str | None = None
    service_account: str = "fourm-trainer"
    s3_secret: str = Field("fourm-s3", description="Secret with FOURM_S3_ENDPOINT/ACCESS_KEY/SECRET_KEY.")
    wandb_secret: str | None = Field("fourm-wandb", description="Secret with WANDB_API_KEY (optional).")
    volume_claim: str | None = Field(
        None, description="A ReadWriteMany PVC mounted at volume_mount (inputs shared with the caller)."
    )
    volume_mount: str = "/data"
    max_retries: int = Field(3, ge=0, description="Pod restarts after failures before the Job fails.")
    ttl_seconds_after_finished: int = Field(3600, ge=0)
    pending_timeout_s: float = Field(600, gt=0, description="Give up on a pod that cannot start this long.")
    stall_timeout_s: float = Field(3600, gt=0, description="Give up when nothing changes this long.")


class KubernetesParams(PodParams):
    """Shape of a pretraining job on Kubernetes: one pod per node, torchrun in each."""

    nodes: int = Field(2, ge=1, description="Pods (an Indexed Job), one per node.")
    gpus_per_node: int = Field(8, ge=0, description="nvidia.com/gpu per pod; 0 = CPU pods.")
    procs_per_node: int | None = Field(
        None, ge=1, description="torchrun processes per pod (default: gpus_per_node, or 1 on CPU)."
    )
    cpu: str = Field("32", description="CPU request and limit per pod.")
    memory: str = Field("256Gi", description="Memory request and limit per pod.")
    shm_size: str = Field("32Gi", description="Size of /dev/shm (a memory emptyDir) for loader workers.")
    tolerations: list[TolerationParams] = Field(
        default_factory=lambda: [TolerationParams(key="nvidia.com/gpu", effect="NoSchedule")]
    )
    max_retries: int = Field(
        3, ge=0, description="Whole-group restarts after pod failures (Job backoffLimit = this x nodes)."
    )
    rendezvous_port: int = Field(29400, ge=1024, le=65535)

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


class ShardParallelParams(StrictModel):
    """Where a shard-parallel stage runs: here, or as a Kubernetes Indexed Job of ``parts`` pods."""

    launcher: Literal["local", "kubernetes"] = Field(
        "local", description="kubernetes: one pod per range of shards, then this process assembles."
    )
    parts: int = Field(4, ge=1, description="Kubernetes launcher: pods (ranges of shards).")
    kubernetes: PodParams = PodParams()
