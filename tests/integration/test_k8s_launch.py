"""The Kubernetes launcher against the stand-in API server (tests/kube_standin.py).

No Kubernetes API server can run on this machine. The stand-in is a small HTTP server
written for these tests: the endpoints the launcher uses, a Job controller (Indexed
Jobs, backoffLimit, podFailurePolicy, garbage collection) and a "kubelet" that runs each
pod as a local process. What it cannot show (images, real DNS, GPUs, cgroups) is listed
in its docstring. Everything else here is real: the official kubernetes client, torchrun
with gloo over loopback, the S3 server, checkpoints, the registry.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from kubernetes import client

from fourm.data.token_set import TokenSet
from fourm.launch.k8s_objects import JOB_LABEL, RUN_LABEL, IndexedJobSpec
from fourm.launch.kubernetes import KubernetesLauncher, WatchTimeouts
from fourm.launch.local import LaunchError
from fourm.launch.pretrain_job import run_pretrain_on_kubernetes
from fourm.params import PretrainParams
from fourm.registry.api import Registry
from fourm.settings import Settings
from fourm.storage.object_store import ObjectStore
from fourm.train.checkpoint import CheckpointStore
from fourm.train.distributed import DistInfo
from fourm.train.loop import run_fingerprint, train_4m
from fourm.train.outputs import load_model
from tests.conftest import REPO, settings_env
from tests.kube_cluster import NAMESPACE, fourm_standin
from tests.kube_standin import KubeStandIn
from tests.token_data import tiny_token_set

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny(**over) -> PretrainParams:
    """A debug-size model on two CPU pods of one process each."""
    base = {
        "model": {"size": "debug", "inputs": ["rgb", "caption"], "targets": ["depth", "semseg", "caption"]},
        "masking": {"input_budget": 24, "target_budget": 24, "alphas": [0.5, 1.0]},
        "steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
        "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4, "loader_workers": 0,
        "buffer_size": 16, "bf16": False, "launcher": "kubernetes",
        "kubernetes": {
            "nodes": 2, "gpus_per_node": 0, "cpu": "1", "memory": "2Gi", "shm_size": "64Mi",
            "tolerations": [], "wandb_secret": None, "pending_timeout_s": 90,
            "rendezvous_port": free_port(),
        },
    }  # fmt: skip
    kube = {**base["kubernetes"], **over.pop("kubernetes", {})}
    return PretrainParams.model_validate({**base, **over, "kubernetes": kube})


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig for the stand-in, as users point fourm at a cluster."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {}}],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "tester"}}],
                "current-context": "standin",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_token_set(tmp_path_factory.mktemp("k8s-tokens") / "tokens-tiny")


@pytest.fixture()
def kube(tmp_path: Path, s3_settings: Settings):
    with fourm_standin(tmp_path / "kube", s3_settings, retry_delay=1.0) as standin:
        yield standin


def leftovers(kube: KubeStandIn) -> dict[str, int]:
    api = kube.api_client()
    return {
        "jobs": len(client.BatchV1Api(api).list_namespaced_job(NAMESPACE).items),
        "pods": len(client.CoreV1Api(api).list_namespaced_pod(NAMESPACE).items),
        "services": len(client.CoreV1Api(api).list_namespaced_service(NAMESPACE).items),
        "processes": len(kube.live_processes()),
    }


def history_losses(reports: Path) -> list[float]:
    rows = (reports / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    return [float(r.split(",")[header.index("loss")]) for r in rows[1:]]


def test_train_cli_runs_two_node_torchrun_on_pods_and_matches_one_process(
    kube: KubeStandIn, tokens: Path, tmp_path: Path, s3_settings: Settings
):
    """`fourm train --launcher kubernetes` through a kubeconfig: an Indexed Job of 2 pods runs
    2-node torchrun (gloo, loopback) to the end; the model and reports come back, the run is in
    the registry and the pods carry its id; the losses equal one local process's."""
    params = tiny()
    ws = tmp_path / "ws"
    ws.mkdir()
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["pretrain"] = params.model_dump(mode="json")
    (ws / "params.yaml").write_text(yaml.safe_dump(doc))
    registry_url = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {
        **os.environ,
        **settings_env(s3_settings),
        "FOURM_REGISTRY_URL": registry_url,
        "FOURM_K8S_CONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", kube.url)),
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "fourm", "train", "--launcher", "kubernetes", "--tokens", str(tokens),
           "--out", "models/pretrain", "--reports", "reports/pretrain"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stderr
    assert "node 0 of 2" in log  # rank 0's pod log streamed to the caller
    assert "-> Running" in log and "-> Succeeded" in log and "complete" in log
    metrics = json.loads((ws / "reports/pretrain/metrics.json").read_text())
    assert metrics["steps"] == 8
    model, extra = load_model(ws / "models/pretrain/model.pt")
    assert model.config.dim == 32 and extra["step"] == 8

    runs = Registry(registry_url).runs(stage="pretrain")
    assert len(runs) == 1 and runs[0].status == "succeeded"
    pods = kube.pods()
    assert len(pods) == 2 and {p["metadata"]["labels"][RUN_LABEL] for p in pods} == {str(runs[0].id)}

    # Same global batches, same loss normalisation: 2 nodes x 1 process == 1 process.
    torch.set_num_threads(1)
    local = params.model_copy(update={"launcher": "local", "upload_checkpoints": False})
    one = train_4m(
        local,
        TokenSet.open(tokens),
        CheckpointStore(tmp_path / "one"),
        DistInfo(0, 1, 0, torch.device("cpu")),
    )
    assert history_losses(ws / "reports/pretrain") == pytest.approx(
        [h["loss"] for h in one.history], rel=1e-4
    )


def test_killed_pod_is_retried_and_training_resumes_from_the_s3_checkpoint(
    kube: KubeStandIn, tokens: Path, tmp_path: Path, s3_settings: Settings
):
    """SIGKILL one pod mid-run: the launcher reports it, the Job retries, the new pods (empty
    disks) resume from the latest checkpoint in S3 and finish at the same final step."""
    params = tiny(steps=40, checkpoint_every=4, eval_every=20)
    fingerprint = run_fingerprint(params, TokenSet.open(tokens), world_size=2)
    store = ObjectStore.from_settings(s3_settings)
    latest = f"pretrain-{fingerprint}/latest.json"
    killed: list[str] = []

    def kill_after_first_checkpoint() -> None:
        kube.wait_for(
            lambda: store.exists(s3_settings.buckets.checkpoints, latest), timeout=300, interval=0.2
        )
        pod = next(
            p
            for p in kube.pods()
            if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"
        )
        kube.kill_pod(pod["metadata"]["name"])
        killed.append(pod["metadata"]["name"])

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    lines: list[str] = []
    name = run_pretrain_on_kubernetes(
        params, tokens, tmp_path / "model", tmp_path / "reports", s3_settings, api=kube.api_client(),
        sink=lines.append,
    )  # fmt: skip
    killer.join(timeout=5)
    assert killed, "the pod was never killed"
    text = "\n".join(lines)
    assert f"pod {killed[0]}: exited with status 137, killed by signal 9" in text
    resumed = [
        int(line.split("resuming from step ")[1].split()[0]) for line in lines if "resuming from step" in line
    ]
    assert resumed and 4 <= resumed[0] < 40
    assert json.loads((tmp_path / "reports/metrics.json").read_text())["steps"] == 40
    job = client.BatchV1Api(kube.api_client()).read_namespaced_job(name, NAMESPACE)
    assert job.status.failed >= 1 and job.status.succeeded == 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no free GPU", r"cannot be scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu"),
        (
            "image not pullable",
            r"image 'registry.example/fourm:missing' cannot be pulled \((ErrImagePull|ImagePullBackOff)",
        ),
        ("secret missing", r"CreateContainerConfigError: .*fourm-s3"),
    ],
)
def test_pods_that_cannot_start_give_their_reason_and_leave_nothing(
    kube: KubeStandIn, tokens: Path, tmp_path: Path, s3_settings: Settings, case: str, reason: str
):
    """The caller never hangs on a Job that cannot progress: after pending_timeout_s it stops
    with the pod's own reason and deletes the Job."""
    settings, k8s = s3_settings, {"pending_timeout_s": 3}
    if case == "no free GPU":
        k8s |= {"gpus_per_node": 1, "procs_per_node": 1}
    elif case == "image not pullable":
        kube.unpullable_images.add("registry.example/fourm:missing")
        settings = s3_settings.model_copy(update={"k8s_image": "registry.example/fourm:missing"})
    else:
        client.CoreV1Api(kube.api_client()).delete_namespaced_secret("fourm-s3", NAMESPACE)
    with pytest.raises(LaunchError, match=r"has not started in 3 s: pod .*" + reason):
        run_pretrain_on_kubernetes(
            tiny(kubernetes=k8s), tokens, tmp_path / "m", tmp_path / "r", settings, api=kube.api_client(),
            sink=print,
        )  # fmt: skip
    assert leftovers(kube) == {"jobs": 0, "pods": 0, "services": 0, "processes": 0}
    assert not (tmp_path / "m").exists()


def test_interrupting_the_caller_deletes_the_job_pods_and_service(
    kube: KubeStandIn, tokens: Path, tmp_path: Path, s3_settings: Settings
):
    """SIGTERM (what a Prefect cancellation sends; Ctrl-C alike) while the pods train: the Job,
    its pods, their processes and the Service are all gone."""
    params = tiny(steps=400)

    def interrupt_on_training_output(line: str) -> None:
        if "node 0 of 2" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        run_pretrain_on_kubernetes(
            params, tokens, tmp_path / "m", tmp_path / "r", s3_settings, api=kube.api_client(),
            sink=interrupt_on_training_output,
        )  # fmt: skip
    kube.wait_for(lambda: not kube.live_processes(), timeout=30)
    assert leftovers(kube) == {"jobs": 0, "pods": 0, "services": 0, "processes": 0}


def test_configuration_error_fails_the_job_at_once_with_the_reason(
    kube: KubeStandIn, tokens: Path, tmp_path: Path, s3_settings: Settings
):
    """A model the token set cannot feed: each pod exits 78 before torchrun, the pod failure
    policy fails the Job without retries, and the error carries the pod's own message."""
    params = tiny(model={"size": "debug", "inputs": ["rgb"], "targets": ["normal"]})
    with pytest.raises(LaunchError) as failure:
        run_pretrain_on_kubernetes(
            params, tokens, tmp_path / "m", tmp_path / "r", s3_settings, api=kube.api_client(), sink=print
        )
    message = str(failure.value)
    assert "PodFailurePolicy" in message and "configuration error" in message and "normal" in message
    assert len([p for p in kube.pods() if p["metadata"]["labels"].get(JOB_LABEL)]) <= 2  # no retries


def _sleeper(name: str, seconds: float) -> IndexedJobSpec:
    """A one-pod Job that prints, sleeps and prints again (no training needed for these cases)."""
    code = f"import time; print('started', flush=True); time.sleep({seconds}); print('finished')"
    return IndexedJobSpec(
        name=name, image="fourm:test", command=["python", "-c", code], args=[], completions=1,
        namespace=NAMESPACE, backoff_limit=0,
    )  # fmt: skip


def test_an_api_server_outage_is_waited_out(kube: KubeStandIn):
    """503s for a few seconds (an API server restart) do not cancel the Job: the watch says so,
    retries, and the Job completes."""
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        if line == "started":
            kube.outage(3)

    launcher = KubernetesLauncher(kube.api_client(), WatchTimeouts(pending_s=30, stall_s=60, poll_s=0.5))
    launcher.launch(_sleeper("outage", 5)).wait(sink)
    text = "\n".join(lines)
    assert "API server did not answer (503" in text and "API server reachable again" in text
    assert "finished" in lines and "[kubernetes] job outage complete" in lines


def test_a_job_deleted_by_someone_else_ends_the_wait_with_that_reason(kube: KubeStandIn):
    def sink(line: str) -> None:
        if line == "started":
            client.BatchV1Api(kube.api_client()).delete_namespaced_job(
                "deleted", NAMESPACE, propagation_policy="Background"
            )

    launcher = KubernetesLauncher(kube.api_client(), WatchTimeouts(pending_s=30, stall_s=60, poll_s=0.5))
    with pytest.raises(LaunchError, match="job fourm/deleted was deleted by someone else"):
        launcher.launch(_sleeper("deleted", 30)).wait(sink)
    kube.wait_for(lambda: not kube.live_processes(), timeout=30)
