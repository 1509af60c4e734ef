"""The Kubernetes launcher: an Indexed Job (+ headless Service), watched until it ends.

``KubernetesLauncher.launch(spec) -> KubernetesHandle`` with ``wait``, ``logs`` and
``cancel``, like the local launcher. ``wait``:

- streams pod 0's log (global rank 0 under torchrun) to the caller, following each
  replacement pod;
- reports every pod's phase change and, with the pod's own reason, what went wrong
  (``k8s_diagnose``);
- gives up, deleting the Job, when a pod cannot start for ``pending_timeout_s`` (no free
  GPUs, image pull error, missing Secret) or nothing changes for ``stall_timeout_s``;
- raises ``JobFailed`` when the Job fails (a config error fails it at once through the
  pod failure policy; other failures are retried by the Job up to its backoff limit),
  leaving the finished Job for inspection until its ``ttlSecondsAfterFinished``;
- deletes the Job, its pods and its Service in every other case of stopping early: the
  caller interrupted (Ctrl-C, SIGTERM from a Prefect cancellation), a timeout, an error.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fourm.launch.k8s_diagnose import PodProblem, diagnose
from fourm.launch.k8s_objects import JOB_LABEL, IndexedJobSpec, build_job, build_service
from fourm.launch.local import LaunchError

LineSink = Callable[[str], None]
# Answers worth polling again: rate limiting and server-side trouble (an API server restart).
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def stderr_sink(line: str) -> None:
    sys.stderr.write(line if line.endswith("\n") else line + "\n")
    sys.stderr.flush()


def api_client(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """An API client: in-cluster credentials inside a pod, else the kubeconfig (and context)."""
    import os

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig else None,
            context=context,
            client_configuration=configuration,
        )
    except (config.ConfigException, OSError) as err:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise LaunchError(
            f"no usable Kubernetes config at {where} (context {context or 'current'}): {err}; "
            "set FOURM_K8S_CONFIG / FOURM_K8S_CONTEXT"
        ) from err
    return client.ApiClient(configuration)


class JobFailed(LaunchError):
    """The Job itself failed (backoff limit reached, a FailJob rule matched)."""


@dataclass(frozen=True)
class WatchTimeouts:
    pending_s: float = 600.0
    stall_s: float = 3600.0
    poll_s: float = 1.0


class KubernetesLauncher:
    name = "kubernetes"

    def __init__(self, api: client.ApiClient, timeouts: WatchTimeouts | None = None):
        self.api = api
        self.timeouts = timeouts or WatchTimeouts()

    def launch(self, spec: IndexedJobSpec) -> KubernetesHandle:
        """Create the Job, then (owned by it) the headless Service when the spec has a port."""
        batch = client.BatchV1Api(self.api)
        try:
            job = batch.create_namespaced_job(spec.namespace, build_job(spec))
            if spec.rendezvous_port:
                client.CoreV1Api(self.api).create_namespaced_service(spec.namespace, build_service(spec, job))
        except ApiException as err:
            handle = KubernetesHandle(self.api, spec, self.timeouts)
            handle.cancel()
            raise LaunchError(f"cannot create job {spec.namespace}/{spec.name}: {_api_reason(err)}") from err
        return KubernetesHandle(self.api, spec, self.timeouts)


def _api_reason(err: ApiException) -> str:
    import json

    try:
        return json.loads(err.body or "{}").get("message") or f"{err.status} {err.reason}"
    except ValueError:
        return f"{err.status} {err.reason}"


class _LogFollower(threading.Thread):
    """Follows one pod's log until the pod ends, queueing each line for the watching thread
    (so the caller's sink runs, and may raise, in the caller's own thread)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, pod: str, lines: queue.Queue[str]):
        super().__init__(daemon=True, name=f"log-{pod}")
        self.core, self.namespace, self.pod, self.lines = core, namespace, pod, lines
        self.last_line_at = time.monotonic()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the pod may vanish (deleted, GC): the log just ends
            resp = self.core.read_namespaced_pod_log(
                self.pod, self.namespace, follow=True, _preload_content=False
            )
            pending = ""
            for chunk in resp.stream(4096):
                pending += chunk.decode("utf-8", "replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    self._emit(line)
            if pending:
                self._emit(pending)

    def _emit(self, line: str) -> None:
        self.last_line_at = time.monotonic()
        self.lines.put(line)


class KubernetesHandle:
    def __init__(self, api: client.ApiClient, spec: IndexedJobSpec, timeouts: WatchTimeouts):
        self.api, self.spec, self.timeouts = api, spec, timeouts
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.events: list[str] = []  # what was reported, in order (phase changes, problems)
        self._phases: dict[str, str] = {}
        self._problems: dict[str, str] = {}
        self._blocked_since: dict[str, float] = {}
        self._follower: _LogFollower | None = None
        self._followed: set[str] = set()
        self._lines: queue.Queue[str] = queue.Queue()

    # -- reading the cluster ------------------------------------------------------------

    def pods(self) -> list[client.V1Pod]:
        found = self.core.list_namespaced_pod(
            self.spec.namespace, label_selector=f"{JOB_LABEL}={self.spec.name}"
        )
        return sorted(found.items, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name))

    def job(self) -> client.V1Job:
        return self.batch.read_namespaced_job(self.spec.name, self.spec.namespace)

    def logs(self, pod: str, tail_lines: int | None = None) -> Iterator[str]:
        """One pod's log lines so far."""
        text = self.core.read_namespaced_pod_log(pod, self.spec.namespace, tail_lines=tail_lines)
        yield from text.splitlines()

    # -- watching -----------------------------------------------------------------------

    def wait(self, sink: LineSink = stderr_sink) -> client.V1Job:
        """Stream rank 0's log and pod events to ``sink`` until the Job completes; raise
        ``LaunchError`` (after deleting the Job) when it fails or cannot progress."""
        previous = _raise_on_sigterm()
        try:
            return self._watch(sink)
        except JobFailed:
            raise  # its pods have ended; the Job stays for inspection until its TTL removes it
        except BaseException:
            self.cancel()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _report(self, sink: LineSink, message: str) -> None:
        self.events.append(message)
        sink(f"[kubernetes] {message}")

    def _watch(self, sink: LineSink) -> client.V1Job:
        last_change = time.monotonic()
        unreachable_since: float | None = None
        while True:
            try:
                job = self.job()
                pods = self.pods()
            except ApiException as err:
                if err.status == 404:
                    raise LaunchError(
                        f"job {self.spec.namespace}/{self.spec.name} was deleted by someone else"
                    ) from err
                if err.status not in _TRANSIENT_STATUS:
                    raise
                unreachable_since = self._api_trouble(sink, unreachable_since, f"{err.status} {err.reason}")
                continue
            except (urllib3.exceptions.HTTPError, OSError) as err:
                unreachable_since = self._api_trouble(sink, unreachable_since, str(err))
                continue
            if unreachable_since is not None:
                self._report(sink, "API server reachable again")
                unreachable_since = None
            if self._observe(pods, sink):
                last_change = time.monotonic()
            self._follow_rank0(pods, sink)
            if self._follower is not None:
                last_change = max(last_change, self._follower.last_line_at)
            conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
            if "Complete" in conditions:
                self._finish_logs(sink)
                self._report(sink, f"job {self.spec.name} complete")
                return job
            if "Failed" in conditions:
                self._finish_logs(sink)
                raise JobFailed(self._failure_message(conditions["Failed"], pods))
            now = time.monotonic()
            for pod, since in self._blocked_since.items():
                if now - since > self.timeouts.pending_s:
                    raise LaunchError(
                        f"job {self.spec.name} cannot progress: pod {pod} has not started in "
                        f"{self.timeouts.pending_s:.0f} s: {self._problems[pod]}"
                    )
            if now - last_change > self.timeouts.stall_s:
                raise LaunchError(
                    f"job {self.spec.name}: no pod changed state and no log line came for "
                    f"{self.timeouts.stall_s:.0f} s; giving up"
                )
            self._pass_lines(sink, self.timeouts.poll_s)

    def _api_trouble(self, sink: LineSink, since: float | None, what: str) -> float:
        """A failed poll: say so once, keep passing log lines, give up after the stall timeout."""
        now = time.monotonic()
        if since is None:
            self._report(sink, f"API server did not answer ({what}); retrying")
            since = now
        elif now - since > self.timeouts.stall_s:
            raise LaunchError(
                f"job {self.spec.name}: the API server has not answered for "
                f"{self.timeouts.stall_s:.0f} s ({what})"
            )
        self._pass_lines(sink, self.timeouts.poll_s)
        return since

    def _observe(self, pods: list[client.V1Pod], sink: LineSink) -> bool:
        changed = False
        live = set()
        for pod in pods:
            name = pod.metadata.name
            live.add(name)
            phase = pod.status.phase or "Pending"
            if self._phases.get(name) != phase:
                before = self._phases.get(name, "created")
                self._phases[name] = phase
                self._report(sink, f"pod {name} ({_index(pod)}): {before} -> {phase}")
                changed = True
            problem = diagnose(pod)
            text = problem.describe(name) if problem else None
            if text and self._problems.get(name) != text:
                self._problems[name] = text
                self._report(sink, text)
                changed = True
            self._track_blocking(name, problem)
        for gone in set(self._blocked_since) - live:
            del self._blocked_since[gone]
        return changed

    def _track_blocking(self, name: str, problem: PodProblem | None) -> None:
        if problem is not None and problem.blocking:
            self._blocked_since.setdefault(name, time.monotonic())
        else:
            self._blocked_since.pop(name, None)

    def _follow_rank0(self, pods: list[client.V1Pod], sink: LineSink) -> None:
        if self._follower is not None and self._follower.is_alive():
            return
        for pod in reversed(pods):  # newest first: the current pod of index 0
            if _index(pod) == "0" and pod.status.phase in {"Running", "Succeeded", "Failed"}:
                if pod.metadata.name not in self._followed:
                    self._followed.add(pod.metadata.name)
                    self._follower = _LogFollower(
                        self.core, self.spec.namespace, pod.metadata.name, self._lines
                    )
                    self._follower.start()
                return

    def _pass_lines(self, sink: LineSink, seconds: float) -> None:
        """Hand queued log lines to ``sink`` for up to ``seconds`` (the poll interval)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                sink(self._lines.get(timeout=left))
            except queue.Empty:
                return

    def _finish_logs(self, sink: LineSink) -> None:
        if self._follower is not None:
            self._follower.join(timeout=10)
        while not self._lines.empty():
            sink(self._lines.get_nowait())

    def _failure_message(self, condition: client.V1JobCondition, pods: list[client.V1Pod]) -> str:
        lines = [f"job {self.spec.name} failed: {condition.reason}: {condition.message or ''}".rstrip()]
        for pod in pods:
            problem = diagnose(pod)
            if problem is None:
                continue
            lines.append(f"  {problem.describe(pod.metadata.name)}")
            with contextlib.suppress(ApiException):
                tail = list(self.logs(pod.metadata.name, tail_lines=8))
                lines.extend(f"    | {line}" for line in tail)
        return "\n".join(lines)

    # -- stopping -----------------------------------------------------------------------

    def cancel(self, timeout_s: float = 60.0) -> None:
        """Delete the Job (foreground: its pods first) and its Service; wait for the pods to go."""
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        with contextlib.suppress(ApiException):
            self.batch.delete_namespaced_job(self.spec.name, self.spec.namespace, body=body)
        if self.spec.rendezvous_port:
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_service(self.spec.service_name, self.spec.namespace)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not self.pods():
                    return
            except ApiException:
                return
            time.sleep(0.5)


def _index(pod: client.V1Pod) -> str:
    annotations = pod.metadata.annotations or {}
    labels = pod.metadata.labels or {}
    return annotations.get("batch.kubernetes.io/job-completion-index") or labels.get(
        "batch.kubernetes.io/job-completion-index", "?"
    )


def _raise_on_sigterm():  # noqa: ANN202 - returns the previous handler (any of signal's types)
    """SIGTERM (a Prefect cancellation, a pod shutdown) raises KeyboardInterrupt so ``wait``
    cleans up; only possible from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _interrupt(signum, frame):  # noqa: ANN001, ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, _interrupt)
