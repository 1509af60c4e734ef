"""The Kubernetes stand-in, driven through the real ``kubernetes`` client as the launcher drives it."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.kube_standin import (
    KubeStandIn,
    expand,
    index_ranges,
    label_selector_matches,
    parse_quantity,
)

pytestmark = pytest.mark.unit

NS = "fourm-test"
UNPULLABLE = "registry.invalid/fourm:missing"


@pytest.fixture()
def kube(tmp_path: Path) -> Iterator[KubeStandIn]:
    standin = KubeStandIn(
        tmp_path / "cluster",
        extra_env={"OMP_NUM_THREADS": "1"},
        unpullable_images={UNPULLABLE},
        retry_delay=0.1,
        tick=0.05,
    )
    with standin:
        yield standin
    assert standin.errors == []
    assert standin.live_processes() == []


@pytest.fixture()
def core(kube: KubeStandIn) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


@pytest.fixture()
def batch(kube: KubeStandIn) -> client.BatchV1Api:
    return client.BatchV1Api(kube.api_client())


def job_body(
    name: str,
    code: str,
    *args: str,
    completions: int = 1,
    container: dict | None = None,
    pod: dict | None = None,
    **spec: object,
) -> client.V1Job:
    """An Indexed Job whose pods run ``python -c code args...``; the dicts override its parts."""
    main = {"name": "main", "image": "fourm:test", "command": [sys.executable, "-c", code, *args]}
    pod_spec = {"restartPolicy": "Never", "containers": [main | (container or {})]} | (pod or {})
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "fourm"}},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "template": {"metadata": {"labels": {"app": "fourm"}}, "spec": pod_spec},
        }
        | spec,
    }
    return client.V1Job.from_dict(body)


def wait_job(kube: KubeStandIn, batch: client.BatchV1Api, name: str, timeout: float = 10) -> client.V1Job:
    """The Job once it has a Complete or Failed condition."""

    def finished() -> client.V1Job | None:
        job = batch.read_namespaced_job_status(name, NS)
        types = {c.type for c in job.status.conditions or [] if c.status == "True"}
        return job if types & {"Complete", "Failed"} else None

    return kube.wait_for(finished, timeout)


def condition(job: client.V1Job, type_: str) -> client.V1JobCondition:
    return next(c for c in job.status.conditions if c.type == type_)


def only_pod(kube: KubeStandIn, job: str, timeout: float = 5) -> dict:
    return kube.wait_for(lambda: (pods := kube.pods(job)) and len(pods) == 1 and pods[0], timeout)


def waiting_reason(kube: KubeStandIn, job: str) -> str | None:
    statuses = only_pod(kube, job)["status"].get("containerStatuses") or [{}]
    return statuses[0].get("state", {}).get("waiting", {}).get("reason")


def test_quantities_expansion_ranges_selectors() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("4Gi") == 4 * 2**30
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("2") == 2 and parse_quantity("1e3") == 1000
    with pytest.raises(ValueError):
        parse_quantity("lots")
    assert expand("a-$(X)-$(Y)-$$(X)-$", {"X": "1"}) == "a-1-$(Y)-$(X)-$"
    assert index_ranges([0, 1]) == "0,1"
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7,8"
    labels = {"job-name": "a", "app": "fourm"}
    assert label_selector_matches(labels, "job-name=a,app==fourm")
    assert label_selector_matches(labels, "app in (x, fourm),!missing,job-name!=b")
    assert not label_selector_matches(labels, "job-name notin (a)")


def test_indexed_job_env_secret_dns_logs_and_garbage_collection(
    kube: KubeStandIn,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOURM_NOT_FOR_PODS", "leak")  # the test's environment is not inherited
    secret = {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    core.create_namespaced_secret(NS, client.V1Secret.from_dict(secret))
    code = (
        "import os, sys; e = os.environ;"
        "print('index', e['JOB_COMPLETION_INDEX'], e['TOKEN'], e['OMP_NUM_THREADS'],"
        "      e.get('FOURM_NOT_FOR_PODS'));"
        "print('args', *sys.argv[1:]); print('host', e['HOSTNAME'])"
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "GREETING", "value": "hi-$(TOKEN)-$$(TOKEN)"},
    ]
    body = job_body(
        "train",
        code,
        "$(GREETING)",
        "--rdzv=train-0.train:29400",
        "train.fourm-test.svc.cluster.local:1",
        "train",
        completions=2,
        container={"env": env},
        pod={"subdomain": "train"},
    )
    job = batch.create_namespaced_job(NS, body)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": job.metadata.uid}
    service = {"metadata": {"name": "train", "ownerReferences": [owner]}, "spec": {"clusterIP": "None"}}
    core.create_namespaced_service(NS, client.V1Service.from_dict(service))

    job = wait_job(kube, batch, "train")
    assert condition(job, "Complete").status == "True"
    assert (job.status.succeeded, job.status.failed, job.status.active) == (2, None, None)
    assert job.status.completed_indexes == "0,1"
    assert job.status.start_time is not None and job.status.completion_time is not None

    pods = core.list_namespaced_pod(NS, label_selector="job-name=train,app=fourm").items
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == [
        "0",
        "1",
    ]
    for pod in pods:
        index = pod.metadata.labels["batch.kubernetes.io/job-completion-index"]
        assert pod.metadata.name.startswith(f"train-{index}-")
        assert pod.metadata.owner_references[0].uid == job.metadata.uid
        assert (pod.spec.hostname, pod.spec.subdomain) == (f"train-{index}", "train")
        assert pod.status.phase == "Succeeded"
        assert pod.status.container_statuses[0].state.terminated.reason == "Completed"
        log = core.read_namespaced_pod_log(pod.metadata.name, NS, container="main")
        assert log.splitlines() == [
            f"index {index} s3cr3t 1 None",
            "args hi-s3cr3t-$(TOKEN) --rdzv=127.0.0.1:29400 127.0.0.1:1 train",
            f"host train-{index}",
        ]
        streamed = core.read_namespaced_pod_log(pod.metadata.name, NS, follow=True, _preload_content=False)
        assert b"".join(streamed.stream()).decode() == log
        assert core.read_namespaced_pod_log(pod.metadata.name, NS, tail_lines=1) == f"host train-{index}\n"

    batch.delete_namespaced_job("train", NS, propagation_policy="Background")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_service("train", NS)
    assert err.value.status == 404
    kube.wait_for(lambda: not core.list_namespaced_pod(NS).items)
    assert core.read_namespaced_secret("creds", NS).data == {"token": "czNjcjN0"}  # not owned: kept


def test_follow_streams_lines_while_the_pod_runs(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    code = "import time; print('first', flush=True); time.sleep(1.0); print('second')"
    batch.create_namespaced_job(NS, job_body("slow", code))
    pod = kube.wait_for(lambda: (p := only_pod(kube, "slow"))["status"].get("phase") == "Running" and p)
    stream = core.read_namespaced_pod_log(pod["metadata"]["name"], NS, follow=True, _preload_content=False)
    chunks = stream.stream(decode_content=True)
    first = next(chunks)
    assert first == b"first\n"
    assert only_pod(kube, "slow")["status"]["phase"] == "Running"  # the first line came while it ran
    assert b"".join(chunks) == b"second\n"
    assert wait_job(kube, batch, "slow").status.succeeded == 1
    # kubernetes.watch follows logs too (line by line).
    lines = watch.Watch().stream(core.read_namespaced_pod_log, pod["metadata"]["name"], NS)
    assert list(lines) == ["first", "second"]


def test_killed_pod_is_retried_and_counted(
    kube: KubeStandIn, batch: client.BatchV1Api, tmp_path: Path
) -> None:
    marker = tmp_path / "first-run"
    code = (
        "import pathlib, sys, time; m = pathlib.Path(sys.argv[1]); m.exists() or (m.touch(), time.sleep(60))"
    )
    batch.create_namespaced_job(NS, job_body("flaky", code, str(marker)))
    first = kube.wait_for(lambda: marker.exists() and only_pod(kube, "flaky"))
    pid = kube.pod_pid(first["metadata"]["name"])
    kube.kill_pod(first["metadata"]["name"])
    job = wait_job(kube, batch, "flaky")
    assert condition(job, "Complete").status == "True"
    assert (job.status.failed, job.status.succeeded) == (1, 1)
    pods = {p["metadata"]["name"]: p for p in kube.pods("flaky")}
    assert len(pods) == 2
    terminated = pods[first["metadata"]["name"]]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "Error")
    assert pid not in kube.live_processes()


def test_oom_killed_pod_with_backoff_limit_zero_fails_the_job(
    kube: KubeStandIn, batch: client.BatchV1Api
) -> None:
    batch.create_namespaced_job(NS, job_body("oom", "import time; time.sleep(60)", backoffLimit=0))
    pod = kube.wait_for(
        lambda: kube.pod_pid(only_pod(kube, "oom")["metadata"]["name"]) and only_pod(kube, "oom")
    )
    kube.oom_kill_pod(pod["metadata"]["name"])
    job = wait_job(kube, batch, "oom")
    failed = condition(job, "Failed")
    assert (failed.reason, failed.message) == (
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    assert condition(job, "FailureTarget").reason == "BackoffLimitExceeded"
    assert job.status.failed == 1 and job.status.succeeded is None
    terminated = kube.pods("oom")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


POLICY = {
    "rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}},
    ]
}


def test_pod_failure_policy_fail_job_on_exit_code(kube: KubeStandIn, batch: client.BatchV1Api) -> None:
    batch.create_namespaced_job(NS, job_body("exit3", "raise SystemExit(3)", podFailurePolicy=POLICY))
    job = wait_job(kube, batch, "exit3")
    failed = condition(job, "Failed")
    pod = kube.pods("exit3")[0]["metadata"]["name"]
    assert failed.reason == "PodFailurePolicy"
    assert failed.message == (
        f"Container main for pod {NS}/{pod} failed with exit code 3 matching FailJob rule at index 1"
    )
    assert len(kube.pods("exit3")) == 1 and job.status.failed == 1


def test_evicted_and_disrupted_pods_are_ignored_by_the_pod_failure_policy(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"  # one "x" per run: runs 1 and 2 wait to be disrupted, run 3 succeeds
    code = (
        "import pathlib, sys, time; m = pathlib.Path(sys.argv[1]);"
        "n = len(m.read_text()) if m.exists() else 0;"
        "m.write_text('x' * (n + 1)); n < 2 and time.sleep(60)"
    )
    body = job_body("evicted", code, str(runs), backoffLimit=0, podFailurePolicy=POLICY)
    batch.create_namespaced_job(NS, body)

    def running_pod(run: int) -> str | None:
        pods = [p for p in kube.pods("evicted") if p["status"].get("phase") == "Running"]
        started = runs.exists() and len(runs.read_text()) == run
        return pods[0]["metadata"]["name"] if started and len(pods) == 1 else None

    evicted = kube.wait_for(lambda: running_pod(1))
    eviction = client.V1Eviction.from_dict({"metadata": {"name": evicted, "namespace": NS}})
    core.create_namespaced_pod_eviction(evicted, NS, eviction)
    disrupted = kube.wait_for(lambda: running_pod(2))
    kube.disrupt_pod(disrupted)
    job = wait_job(kube, batch, "evicted")
    assert condition(job, "Complete").status == "True"
    assert job.status.failed is None  # both ignored, so backoffLimit 0 was not exceeded
    pods = {p["metadata"]["name"]: p for p in kube.pods("evicted")}
    assert evicted not in pods and len(pods) == 2  # an evicted pod is deleted; a disrupted one stays
    assert pods[disrupted]["status"]["phase"] == "Failed"
    reasons = {c["type"]: c.get("reason") for c in pods[disrupted]["status"]["conditions"]}
    assert reasons["DisruptionTarget"] == "TerminationByKubelet"


def test_active_deadline_fails_the_job_and_kills_its_pods(
    kube: KubeStandIn, batch: client.BatchV1Api
) -> None:
    batch.create_namespaced_job(NS, job_body("late", "import time; time.sleep(60)", activeDeadlineSeconds=1))
    pid = kube.wait_for(lambda: kube.pod_pid(only_pod(kube, "late")["metadata"]["name"]))
    job = wait_job(kube, batch, "late")
    assert condition(job, "Failed").reason == "DeadlineExceeded"
    assert pid not in kube.live_processes()
    assert job.status.failed == 1 and kube.pods("late") == []  # the Job controller deleted it


def test_gpu_pod_stays_pending_until_the_node_has_one(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    resources = {"limits": {"nvidia.com/gpu": "1", "memory": "512Mi"}, "requests": {"cpu": "500m"}}
    batch.create_namespaced_job(NS, job_body("gpu", "print('ran')", container={"resources": resources}))
    message = (
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: "
        "1 No preemption victims found for incoming pod."
    )

    def unschedulable() -> dict | None:
        pod = only_pod(kube, "gpu")
        scheduled = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
        return pod if scheduled and scheduled[0]["reason"] == "Unschedulable" else None

    pod = kube.wait_for(unschedulable)
    name = pod["metadata"]["name"]
    api_pod = core.read_namespaced_pod(name, NS)
    assert api_pod.status.phase == "Pending"
    assert (api_pod.status.conditions[0].status, api_pod.status.conditions[0].message) == ("False", message)
    events = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    assert [(e.reason, e.message, e.type) for e in events] == [("FailedScheduling", message, "Warning")]

    kube.set_capacity({"nvidia.com/gpu": "1"})
    assert condition(wait_job(kube, batch, "gpu"), "Complete").status == "True"


def test_unpullable_image_and_missing_secret_keep_the_pod_waiting(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    batch.create_namespaced_job(NS, job_body("nopull", "print(1)", container={"image": UNPULLABLE}))
    kube.wait_for(lambda: waiting_reason(kube, "nopull") == "ErrImagePull")
    kube.wait_for(lambda: waiting_reason(kube, "nopull") == "ImagePullBackOff")
    status = core.read_namespaced_pod(only_pod(kube, "nopull")["metadata"]["name"], NS).status
    assert UNPULLABLE in status.container_statuses[0].state.waiting.message

    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "key"}}}]
    batch.create_namespaced_job(NS, job_body("nosecret", "print(1)", container={"env": env}))
    kube.wait_for(lambda: waiting_reason(kube, "nosecret") == "CreateContainerConfigError")
    name = only_pod(kube, "nosecret")["metadata"]["name"]
    waiting = core.read_namespaced_pod(name, NS).status.container_statuses[0].state.waiting
    assert waiting.message == 'secret "late" not found'
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log(name, NS)
    assert err.value.status == 400 and "is waiting to start: CreateContainerConfigError" in err.value.body
    # As the kubelet does, it starts once the Secret exists.
    core.create_namespaced_secret(
        NS, client.V1Secret.from_dict({"metadata": {"name": "late"}, "data": {"key": "eA=="}})
    )
    assert condition(wait_job(kube, batch, "nosecret"), "Complete").status == "True"
    batch.delete_namespaced_job("nopull", NS, propagation_policy="Background")


def test_foreground_delete_kills_the_process_and_removes_the_pods(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    batch.create_namespaced_job(NS, job_body("sleeper", "import time; time.sleep(60)", completions=2))

    def sleeper_pids() -> list[int | None]:
        return [kube.pod_pid(p["metadata"]["name"]) for p in kube.pods("sleeper")]

    pids = kube.wait_for(lambda: len(pids := sleeper_pids()) == 2 and all(pids) and pids)
    assert set(pids) <= set(kube.live_processes())
    batch.delete_namespaced_job("sleeper", NS, body=client.V1DeleteOptions(propagation_policy="Foreground"))
    kube.wait_for(lambda: not set(pids) & set(kube.live_processes()))
    kube.wait_for(lambda: not core.list_namespaced_pod(NS, label_selector="job-name=sleeper").items)
    kube.wait_for(lambda: not batch.list_namespaced_job(NS).items)


def test_api_errors_and_volumes(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api, tmp_path: Path
) -> None:
    with pytest.raises(ApiException) as err:
        batch.read_namespaced_job("missing", NS)
    assert err.value.status == 404 and 'jobs.batch \\"missing\\" not found' in err.value.body
    secret = client.V1Secret.from_dict({"metadata": {"name": "dup"}, "stringData": {"a": "b"}})
    core.create_namespaced_secret(NS, secret)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret(NS, secret)
    assert err.value.status == 409
    bad = job_body("bad", "print(1)", pod={"restartPolicy": None})
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(NS, bad)
    assert err.value.status == 422 and "spec.template.spec.restartPolicy: Required value" in err.value.body

    # emptyDir and workingDir live under the pod's sandbox; their paths are rewritten in args.
    code = (
        "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ok');"
        "pathlib.Path(os.environ['DATA'], 'shared.txt').write_text('pvc');"
        "print(os.getcwd()); print(sys.argv[1]); print(os.path.isdir('/dev/shm'))"
    )
    mounts = [
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "shared", "mountPath": "/data"},
    ]
    env = [{"name": "DATA", "value": "/data"}]
    container = {"workingDir": "/workspace", "volumeMounts": mounts, "env": env}
    volumes = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "shared", "persistentVolumeClaim": {"claimName": "datasets"}},
    ]
    body = job_body("vols", code, "/scratch/out.txt", container=container, pod={"volumes": volumes})
    batch.create_namespaced_job(NS, body)
    assert condition(wait_job(kube, batch, "vols"), "Complete").status == "True"
    name = kube.pods("vols")[0]["metadata"]["name"]
    sandbox = kube.workdir / name
    assert (sandbox / "volumes" / "scratch" / "out.txt").read_text() == "ok"
    assert (kube.workdir / "pvc" / "datasets" / "shared.txt").read_text() == "pvc"
    assert core.read_namespaced_pod_log(name, NS).splitlines() == [
        str(sandbox / "root" / "workspace"),
        str(sandbox / "volumes" / "scratch" / "out.txt"),
        "True",
    ]
    # A finished Job with ttlSecondsAfterFinished is deleted with its pods.
    batch.create_namespaced_job(NS, job_body("ttl", "print(1)", ttlSecondsAfterFinished=0))
    kube.wait_for(lambda: not batch.list_namespaced_job(NS, field_selector="metadata.name=ttl").items)
    kube.wait_for(lambda: not kube.pods("ttl"))
    assert client.VersionApi(kube.api_client()).get_code().git_version.endswith("-fourm-standin")

    # Jobs orphan their pods unless told otherwise, as batch/v1 does.
    batch.delete_namespaced_job("vols", NS)
    pod = core.read_namespaced_pod(name, NS)
    assert pod.metadata.owner_references in (None, [])
    core.delete_namespaced_pod(name, NS)
    kube.wait_for(lambda: not core.list_namespaced_pod(NS).items)


def test_non_indexed_job_config_map_and_pod_deletion_with_grace(
    kube: KubeStandIn, core: client.CoreV1Api, batch: client.BatchV1Api, tmp_path: Path
) -> None:
    config = {"metadata": {"name": "settings"}, "data": {"MODE": "fast"}}
    core.create_namespaced_config_map(NS, client.V1ConfigMap.from_dict(config))
    marker = tmp_path / "first-run"
    code = (
        "import os, pathlib, signal, sys, time; m = pathlib.Path(sys.argv[1]); first = not m.exists();"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); m.touch(); print(os.environ['CFG_MODE'], flush=True);"
        "first and time.sleep(60)"
    )
    container = {"envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}]}
    body = job_body("plain", code, str(marker), container=container, completionMode="NonIndexed")
    batch.create_namespaced_job(NS, body)
    first = kube.wait_for(lambda: marker.exists() and only_pod(kube, "plain"))["metadata"]["name"]
    assert "-" not in first.removeprefix("plain-")  # NonIndexed pods are <job>-<suffix>
    assert core.read_namespaced_pod_log(first, NS) == "fast\n"
    start = time.monotonic()
    deleted = core.delete_namespaced_pod(first, NS, grace_period_seconds=1)
    assert deleted.metadata.deletion_timestamp is not None
    job = wait_job(kube, batch, "plain")
    assert time.monotonic() - start >= 1.0  # SIGTERM was ignored, so SIGKILL came after the grace period
    assert (job.status.succeeded, job.status.failed, job.status.completed_indexes) == (1, 1, None)
    assert first not in [p["metadata"]["name"] for p in kube.pods("plain")]
