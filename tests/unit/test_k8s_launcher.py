"""The Kubernetes launcher's pure parts: the objects it builds, how it explains pod problems,
the pod entry point's refusals. (Behaviour against an API server: tests/integration/test_k8s_launch.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client

from fourm.launch import node
from fourm.launch.k8s_diagnose import diagnose
from fourm.launch.k8s_objects import (
    CONFIG_ERROR_EXIT,
    JOB_LABEL,
    build_job,
    build_service,
    clean_labels,
    job_name,
    to_dict,
)
from fourm.launch.pretrain_job import pretrain_job_spec
from fourm.params import KubernetesParams, PretrainParams
from fourm.settings import Settings

pytestmark = pytest.mark.unit


def _params(**k8s) -> PretrainParams:
    return PretrainParams(
        steps=10,
        warmup_steps=1,
        batch_size=32,
        launcher="kubernetes",
        kubernetes=KubernetesParams(**{"nodes": 2, "gpus_per_node": 8, **k8s}),
    )


def _spec(**k8s):
    settings = Settings(k8s_image="registry.example/fourm:1.2", k8s_namespace="ml")
    return pretrain_job_spec(
        _params(**k8s),
        "s3://fourm-tokens/sets/abc",
        "s3://fourm-checkpoints/outputs/x",
        settings,
        name="pretrain-demo-ab12c",
        labels={"fourm.dev/run-id": "17", "fourm.dev/flow-run-id": None},
    )


def test_pretrain_job_is_an_indexed_job_with_one_pod_per_node_and_gpus_as_limits():
    job = to_dict(build_job(_spec()))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 3 * 2  # max_retries x nodes: one incident fails every pod
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == "pretrain-demo-ab12c"
    assert pod["serviceAccountName"] == "fourm-trainer"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/fourm:1.2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["command"] == ["python", "-m", "fourm.launch.node"]
    args = container["args"]
    assert args[: args.index("--")] == [
        "--nnodes", "2", "--nproc-per-node", "8",
        "--master-addr", "pretrain-demo-ab12c-0.pretrain-demo-ab12c", "--master-port", "29400",
    ]  # fmt: skip
    worker = args[args.index("--") + 1 :]
    sent = PretrainParams.model_validate_json(worker[worker.index("--pretrain-inline") + 1])
    assert sent.upload_checkpoints and sent.kubernetes.world_size == 16  # resume needs S3 checkpoints
    assert {"secretRef": {"name": "fourm-s3", "optional": False}} in container["envFrom"]
    assert {"secretRef": {"name": "fourm-wandb", "optional": True}} in container["envFrom"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    labels = spec["template"]["metadata"]["labels"]
    assert labels[JOB_LABEL] == "pretrain-demo-ab12c" and labels["fourm.dev/run-id"] == "17"
    assert "fourm.dev/flow-run-id" not in labels  # None values are left out


def test_no_secret_value_is_in_the_job():
    text = json.dumps(to_dict(build_job(_spec())))
    assert Settings().s3_secret_key.get_secret_value() not in text
    assert "FOURM_S3_SECRET_KEY" not in text  # credentials only through the Secret reference


def test_failure_policy_fails_fast_on_config_errors_and_ignores_disruptions():
    rules = to_dict(build_job(_spec()))["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [CONFIG_ERROR_EXIT]
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_service_is_headless_owned_by_the_job_and_selects_its_pods():
    spec = _spec()
    job = build_job(spec)
    job.metadata.uid = "0f6b7c1e-1111-2222-3333-444455556666"
    service = to_dict(build_service(spec, job))
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {JOB_LABEL: spec.name}
    owner = service["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Job", job.metadata.uid)


def test_cpu_pods_have_no_gpu_limit_and_one_thread_per_core():
    spec = _spec(gpus_per_node=0, procs_per_node=2, cpu="8")
    container = to_dict(build_job(spec))["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "4"


def test_batch_must_divide_over_every_process_of_the_cluster():
    with pytest.raises(ValueError, match="launcher kubernetes"):
        _params(nodes=3, gpus_per_node=8)  # 32 % 24


def test_names_and_labels_are_valid_kubernetes_names():
    name = job_name("Pretrain_demo/XL run")
    assert name.startswith("pretrain-demo-xl-run-") and len(name) <= 46
    assert clean_labels({"a": "x" * 80, "b": "weird value!", "c": None}) == {
        "a": "x" * 63,
        "b": "weird-value",
    }


def _pod(phase="Pending", conditions=(), statuses=(), reason=None, message=None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="p-0-abc"),
        status=client.V1PodStatus(
            phase=phase,
            reason=reason,
            message=message,
            conditions=list(conditions),
            container_statuses=list(statuses),
        ),
    )


def _status(waiting=None, terminated=None) -> client.V1ContainerStatus:
    return client.V1ContainerStatus(
        name="main",
        image="fourm:nope",
        image_id="",
        ready=False,
        restart_count=0,
        state=client.V1ContainerState(waiting=waiting, terminated=terminated),
    )


def test_diagnose_unschedulable_quotes_the_scheduler():
    msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    cond = client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=msg)
    problem = diagnose(_pod(conditions=[cond]))
    assert problem.kind == "unschedulable" and problem.blocking and msg in problem.message


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_diagnose_image_pull_names_the_image(reason):
    waiting = client.V1ContainerStateWaiting(reason=reason, message="manifest unknown")
    problem = diagnose(_pod(statuses=[_status(waiting=waiting)]))
    assert problem.kind == "image-pull" and problem.blocking and "fourm:nope" in problem.message


def test_diagnose_missing_secret():
    waiting = client.V1ContainerStateWaiting(
        reason="CreateContainerConfigError", message='secret "fourm-s3" not found'
    )
    problem = diagnose(_pod(statuses=[_status(waiting=waiting)]))
    assert problem.kind == "container-config" and problem.blocking and "fourm-s3" in problem.message


def test_diagnose_oom_and_plain_exit_and_config_exit():
    oom = client.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    assert diagnose(_pod("Failed", statuses=[_status(terminated=oom)])).kind == "oom"
    sigkill = client.V1ContainerStateTerminated(exit_code=137)
    killed = diagnose(_pod("Failed", statuses=[_status(terminated=sigkill)]))
    assert killed.kind == "failed" and "signal 9" in killed.message and not killed.blocking
    config = client.V1ContainerStateTerminated(exit_code=CONFIG_ERROR_EXIT, reason="Error")
    assert diagnose(_pod("Failed", statuses=[_status(terminated=config)])).kind == "config"


@pytest.mark.parametrize(
    ("reason", "words"),
    [("PreemptionByScheduler", "preempted"), ("EvictionByEvictionAPI", "evicted")],
)
def test_diagnose_disruptions_say_the_job_will_retry(reason, words):
    cond = client.V1PodCondition(type="DisruptionTarget", status="True", reason=reason, message="m")
    problem = diagnose(_pod("Failed", conditions=[cond]))
    assert problem.kind == "disrupted" and words in problem.message and "resumes" in problem.message


def test_diagnose_evicted_by_kubelet_and_healthy_pods():
    problem = diagnose(_pod("Failed", reason="Evicted", message="The node was low on resource: memory."))
    assert problem.kind == "disrupted" and "low on resource" in problem.message
    running = client.V1ContainerStateRunning()
    healthy = _pod("Running", statuses=[client.V1ContainerStatus(
        name="main", image="i", image_id="", ready=True, restart_count=0,
        state=client.V1ContainerState(running=running),
    )])  # fmt: skip
    assert diagnose(healthy) is None


def test_pod_entry_refuses_bad_config_with_the_config_exit_status(tmp_path: Path, capsys):
    code = node.main(
        ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "h", "--",
         "--pretrain-inline", '{"steps": -1}', "--tokens", str(tmp_path)]
    )  # fmt: skip
    assert code == CONFIG_ERROR_EXIT
    assert "configuration error" in capsys.readouterr().err


def test_pod_entry_refuses_a_missing_token_set(tmp_path: Path):
    problem = node.preflight(["--pretrain-inline", "{}", "--tokens", str(tmp_path / "nope")])
    assert problem is not None and "nope" in problem


def test_pod_entry_runs_torchrun_as_the_pods_node_rank():
    import argparse

    ns = argparse.Namespace(nnodes=4, nproc_per_node=8, master_addr="j-0.j", master_port=29400)
    cmd = node.torchrun_args(ns, 3, ["--tokens", "s3://b/t"])
    assert "--node-rank=3" in cmd and "--nnodes=4" in cmd and "--max-restarts=0" in cmd
    assert cmd[-3:] == ["fourm.train.worker", "--tokens", "s3://b/t"]


def test_every_object_the_launcher_builds_passes_the_kubernetes_schema():
    """Offline OpenAPI validation (strict: unknown fields fail) for the documented version."""
    from fourm.launch.shard_job import shard_job_spec
    from fourm.params import PodParams
    from tests.k8s_schema import validate_objects

    spec = _spec()
    job = build_job(spec)
    job.metadata.uid = "0f6b7c1e-1111-2222-3333-444455556666"
    shards = shard_job_spec(
        "tokenize", ["--out", "/data/tokens"], 4, PodParams(volume_claim="fourm-data"), Settings()
    )
    cpu = _spec(gpus_per_node=0, procs_per_node=2, priority_class="batch-low", node_selector={"pool": "cpu"})
    validate_objects(
        [to_dict(job), to_dict(build_service(spec, job)), to_dict(build_job(shards)), to_dict(build_job(cpu))]
    )


def test_shard_job_runs_one_range_per_pod_from_the_shared_volume():
    from fourm.launch.shard_job import shard_job_spec
    from fourm.params import PodParams

    spec = shard_job_spec(
        "tokenize", ["--out", "/data/t"], 4, PodParams(volume_claim="fourm-data"), Settings()
    )
    job = to_dict(build_job(spec))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["fourm"]
    assert container["args"] == ["tokenize", "--out", "/data/t", "--part", "$(JOB_COMPLETION_INDEX)/4"]
    assert job["spec"]["completions"] == 4 and "subdomain" not in job["spec"]["template"]["spec"]
    shared = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "shared")
    assert shared["persistentVolumeClaim"] == {"claimName": "fourm-data"}
    assert {"name": "shared", "mountPath": "/data"} in container["volumeMounts"]
