"""A stand-in Kubernetes API server, written for fourm's tests.

No Kubernetes API server can run where fourm's tests run, so the Kubernetes
launcher (``fourm/launch/kubernetes.py``, which uses the official
``kubernetes`` Python client) is tested against this double. It is a small
HTTP server (``http.server``, 127.0.0.1, a random port) that implements only
the endpoints the launcher uses, with the JSON shapes, status codes and
``Status`` errors of the real API, and a one-node "cluster" behind them:

- REST: Secrets, ConfigMaps and Services (create, get, list, delete), Jobs
  (``batch/v1``: create, get, list, delete with ``propagationPolicy``, the
  ``status`` subresource), Pods (get, list, delete, ``log`` with ``follow``
  streamed by chunked transfer encoding, ``eviction``), Events (list), and a
  minimal ``/version``, ``/api``, ``/apis``. List endpoints filter by
  ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, exists) and
  ``fieldSelector`` (``=``, ``!=`` on dotted paths such as ``status.phase``).
- A Job controller (a background thread, one tick every ``tick`` seconds):
  ``Indexed`` and ``NonIndexed`` completion modes, ``completions``,
  ``parallelism``, ``backoffLimit``, ``podFailurePolicy`` (FailJob, Ignore,
  Count; ``onExitCodes``, ``onPodConditions``), ``activeDeadlineSeconds``,
  ``ttlSecondsAfterFinished``, ``suspend``, the status fields and conditions
  (``FailureTarget``/``SuccessCriteriaMet`` first, ``Failed``/``Complete``
  once no pod of the Job is still running, as Kubernetes 1.31+ does), and
  garbage collection through ``metadata.ownerReferences``. As in Kubernetes,
  deleting a Job without a ``propagationPolicy`` orphans its pods. A failed
  index is retried after a constant ``retry_delay`` (Kubernetes: 10 s, doubling),
  and only once the failed pod has terminated.
- A "kubelet": each pod runs as one local process (``command`` + ``args`` of
  its only container, in a new process group), its stdout and stderr going to
  ``workdir/<pod>/log``. Exit 0 is Succeeded, anything else Failed; a signal
  gives exit code 128+n; ``oom_kill_pod`` gives reason ``OOMKilled``. Deleting
  or evicting a pod sends SIGTERM to its process group, then SIGKILL after the
  grace period. When a pod's main process ends its whole group is killed, as
  the container runtime tears the container down.
- Scheduling is only a capacity check: the pods' resource requests (limits
  where no request is given) against ``node_capacity``, less what the other
  scheduled pods hold. A pod that does not fit stays Pending with the
  scheduler's ``Unschedulable`` condition and a ``FailedScheduling`` event.
- Environment: the pod's process does NOT inherit the test's environment,
  only PATH, HOME, PYTHONPATH, LANG, then ``extra_env``, ``HOSTNAME``, then the
  container's ``envFrom`` and ``env`` (``value`` with ``$(VAR)`` expansion,
  ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``); ``$(VAR)`` is expanded
  in ``command`` and ``args``; ``JOB_COMPLETION_INDEX`` is added to Indexed
  Job pods as Kubernetes does. A missing Secret or key keeps the pod Pending
  with ``CreateContainerConfigError``.

What it does NOT emulate, so that nobody mistakes it for a cluster:

- Images: the image is never pulled or run, only its name is checked against
  ``unpullable_images`` (``ErrImagePull`` then ``ImagePullBackOff``). The
  process runs on this machine with this machine's Python and files, so every
  container needs an explicit ``command`` (a Job without one is rejected, 422).
- Filesystems: there is no container root. Each ``emptyDir`` (also ``secret``
  and ``configMap``) volume is a fresh directory ``workdir/<pod>/volumes/<vol>``
  and the mount path is replaced by that directory wherever it starts a path
  in env values, ``command``, ``args`` and ``workingDir``; a ``workingDir``
  outside the volumes becomes ``workdir/<pod>/root/<workingDir>`` (same
  replacement), and with none the process starts in ``workdir/<pod>/root``,
  so pods never write into the checkout. ``/dev/shm`` is the host's. A
  ``persistentVolumeClaim`` volume is the directory ``workdir/pvc/<claimName>``,
  shared by all pods (as a ReadWriteMany volume; the claim object is neither
  served nor checked). Other volume types keep the pod in ``ContainerCreating``.
- Bare pods: pods are made only by the Job controller (POST of a Pod is 405).
- Networking and DNS: every pod is 127.0.0.1 (``status.podIP``). Instead of
  DNS, host names of a Service that exists in the pod's namespace when the pod
  starts are replaced by ``127.0.0.1`` in env values, ``command`` and
  ``args``: ``<host>.<svc>``, ``<svc>.<ns>``, ``<svc>.<ns>.svc``,
  ``<svc>.<ns>.svc.cluster.local`` (with or without ``<host>.``) anywhere they
  stand as a whole host name (also ``host:port``), and a bare ``<svc>`` only
  as ``<svc>:<port>`` (so that a job name used as an id survives). Since the
  names are rewritten once, at start, a pod whose ``spec.subdomain`` Service
  does not exist yet waits up to ``dns_grace`` seconds for it (a cluster's DNS
  would resolve the name whenever the Service appears), then starts anyway.
  Pods of one Job share the host's ports; ``gethostname()`` is the host's.
- Scheduling beyond that capacity check (no node selectors, affinities,
  taints, priorities or preemption, one node), cgroups and resource limits
  (a process may use any memory or CPU), devices (no GPU is attached whatever
  ``nvidia.com/gpu`` says), probes, restarts in place (``restartPolicy`` must
  be ``Never``), sidecars and init containers (one container per pod),
  watches, PATCH/PUT, authentication and RBAC, admission beyond the few checks
  in ``_admit_*``.
- Pod deletion through the API adds no ``DisruptionTarget`` condition (as in
  Kubernetes, where only eviction, preemption, taints, pod GC and the kubelet
  add it); the eviction endpoint adds it (``EvictionByEvictionAPI``), and the
  test hook ``disrupt_pod`` emulates the kubelet terminating a pod
  (``TerminationByKubelet``). There are no PodDisruptionBudgets.

Tests drive it through the ``kubernetes`` client (``api_client()``) and
inspect it through Python hooks: ``pods``, ``pod_pid``, ``kill_pod``,
``oom_kill_pod``, ``disrupt_pod``, ``set_capacity``, ``events``, ``wait_for``,
``live_processes``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil

NODE_NAME = "standin-node"
POD_IP = "127.0.0.1"
DEFAULT_CAPACITY = {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "0"}
INHERITED_ENV = ("PATH", "HOME", "PYTHONPATH", "LANG")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
# resource plural -> (API group, apiVersion, kind)
RESOURCES = {
    "secrets": ("", "v1", "Secret"),
    "configmaps": ("", "v1", "ConfigMap"),
    "services": ("", "v1", "Service"),
    "pods": ("", "v1", "Pod"),
    "events": ("", "v1", "Event"),
    "jobs": ("batch", "batch/v1", "Job"),
}
_REACHED = "Reached expected number of succeeded pods"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated suffixes
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class ApiError(Exception):
    """An API error, answered as a ``Status`` object with its HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure"}
        body |= {"message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def invalid(kind: str, name: str, problems: list[tuple[str, str]]) -> ApiError:
    """A 422 ``Invalid`` error listing (field, message) problems, worded like the API server."""
    group = "batch" if kind == "Job" else ""
    causes = [{"reason": "FieldValueInvalid", "field": f, "message": m} for f, m in problems]
    text = ", ".join(f"{f}: {m}" for f, m in problems)
    full = f"{kind}{'.' + group if group else ''} {json.dumps(name)} is invalid: {text}"
    return ApiError(422, "Invalid", full, {"name": name, "group": group, "kind": kind, "causes": causes})


def timestamp(when: float | None = None) -> str:
    """RFC 3339 in UTC with a ``Z``, as the API server writes times."""
    return datetime.fromtimestamp(time.time() if when is None else when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")
_SUFFIX: dict[str | None, int | Fraction] = {f"{p}i": 2 ** (10 * n) for n, p in enumerate("KMGTPE", 1)}
_SUFFIX |= {
    p: Fraction(10) ** (3 * n) for n, p in enumerate(["n", "u", "m", None, "k", "M", "G", "T", "P", "E"], -3)
}


def parse_quantity(quantity: str | int | float) -> Fraction:
    """A Kubernetes quantity ("500m", "2", "4Gi", "1e3") as an exact number."""
    m = _QUANTITY.fullmatch(str(quantity).strip())
    if not m:
        raise ValueError(f"quantities must match the regular expression {_QUANTITY.pattern!r}")
    value = Fraction(m[1]) * (Fraction(10) ** int(m[2]) if m[2] else 1)
    return value * _SUFFIX[m[3]]


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` is ``$``."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(variables.get(name, text[i : end + 1]))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def index_ranges(indexes: Iterable[int]) -> str:
    """Completed indexes as the Job status writes them: "1,3-5,7"; a pair is "0,1"."""
    parts, run = [], []
    for i in sorted(set(indexes)):
        if run and i != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(i)
    if run:
        parts.append(run)
    out = []
    for r in parts:
        out.append(str(r[0]) if len(r) == 1 else f"{r[0]},{r[1]}" if len(r) == 2 else f"{r[0]}-{r[-1]}")
    return ",".join(out)


def _split_selector(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


_REQUIREMENT = re.compile(
    r"(?P<neg>!)?(?P<key>[\w./-]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?"
)


def label_selector_matches(labels: Mapping[str, str], selector: str | None) -> bool:
    """Whether ``labels`` satisfy a label selector (equality, set and existence requirements)."""
    for req in _split_selector(selector or ""):
        m = _REQUIREMENT.fullmatch(req)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {req!r}")
        key, present = m["key"], m["key"] in labels
        if m["neg"]:
            ok = not present
        elif m["op"]:
            ok = labels.get(key) != m["value"] if m["op"] == "!=" else (present and labels[key] == m["value"])
        elif m["set"]:
            values = {v.strip() for v in m["values"].split(",")}
            ok = labels.get(key) not in values if m["set"] == "notin" else (present and labels[key] in values)
        else:
            ok = present
        if not ok:
            return False
    return True


def field_selector_matches(obj: Mapping, selector: str | None) -> bool:
    """Whether ``obj`` satisfies a field selector such as ``status.phase=Running,metadata.name!=x``."""
    for req in _split_selector(selector or ""):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", req)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {req!r}")
        value: Any = obj
        for part in m[1].split("."):
            value = value.get(part, "") if isinstance(value, Mapping) else ""
        if (str(value) == m[3]) != (m[2] != "!="):
            return False
    return True


def _labels(obj: Mapping) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _terminal(pod: Mapping) -> bool:
    return pod["status"].get("phase") in ("Succeeded", "Failed")


def _condition(
    obj: dict, type_: str, status: str, reason: str | None = None, message: str | None = None
) -> None:
    """Set a condition (replacing one of the same type); its transition time moves only on change."""
    conditions = obj["status"].setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == type_), None)
    new = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": timestamp()}
    new |= {k: v for k, v in (("reason", reason), ("message", message)) if v is not None}
    if old is not None:
        if old["status"] == status:
            new["lastTransitionTime"] = old["lastTransitionTime"]
        conditions[conditions.index(old)] = new
    else:
        conditions.append(new)


def _has_condition(obj: Mapping, type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in obj["status"].get("conditions", []))


class _ConfigError(Exception):
    """A pod cannot start yet: (container waiting reason, message, event reason)."""

    def __init__(self, reason: str, message: str, event: str = "Failed"):
        super().__init__(message)
        self.reason, self.message, self.event = reason, message, event


@dataclass
class _PodRuntime:
    """What the kubelet keeps about a pod outside its API object."""

    sandbox: Path
    created: float = field(default_factory=time.monotonic)
    popen: subprocess.Popen | None = None
    oom: bool = False
    kill_at: float | None = None
    pull_failed_at: float | None = None
    tree: dict[int, Any] = field(default_factory=dict)  # pid -> psutil.Process of every descendant seen

    def track(self) -> None:
        """Remember the main process's descendants: some (torchrun's workers) start sessions of
        their own, and a container's teardown must still reach them."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                self.tree.setdefault(child.pid, child)

    def signal(self, sig: int) -> None:
        """Signal the whole container: the main process group and every descendant."""
        if self.popen is None:
            return
        self.track()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)
        for proc in list(self.tree.values()):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    def alive(self) -> bool:
        if self.popen is not None:
            self.popen.poll()
            try:
                os.killpg(self.popen.pid, 0)
                return True
            except ProcessLookupError:
                pass
        return any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in self.tree.values())


@dataclass
class _JobRuntime:
    """What the Job controller keeps about a Job (Kubernetes keeps it in finalizers and status)."""

    accounted: set[str] = field(default_factory=set)
    succeeded_indexes: set[int] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    last_failure: dict[int | None, float] = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    failure: tuple[str, str] | None = None


@dataclass
class _LogStream:
    """A followed log: the handler streams ``path`` until the pod's process has ended."""

    path: Path
    pod_uid: str
    tail: int | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, as urllib3 expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else None
            result = self.server.standin.handle(method, url.path, query, body)
        except ApiError as e:
            result = (e.code, e.status())
        except json.JSONDecodeError as e:
            result = (400, ApiError(400, "BadRequest", f"invalid JSON body: {e}").status())
        except Exception as e:  # a bug in the stand-in: say so, loudly
            traceback.print_exc()
            self.server.standin.errors.append(e)
            result = (500, ApiError(500, "InternalError", f"kube stand-in bug: {e!r}").status())
        if isinstance(result, _LogStream):
            self._stream(result)
            return
        code, payload = result
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, log: _LogStream) -> None:
        """Send the log so far, then each new piece as it is written, until the process ends."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        standin = self.server.standin

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        try:
            with open(log.path, "rb") as f:
                first = f.read()
                if log.tail is not None:
                    first = b"".join(first.splitlines(keepends=True)[-log.tail :] if log.tail else [])
                if first:
                    chunk(first)
                while True:
                    data = f.read(65536)
                    if data:
                        chunk(data)
                        continue
                    if standin.process_ended(log.pod_uid):
                        if rest := f.read():
                            chunk(rest)
                        break
                    time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: KubeStandIn


class KubeStandIn:
    """The stand-in API server and its one-node cluster; see the module docstring.

    ``with KubeStandIn(tmp_path) as kube: api = kubernetes.client.BatchV1Api(kube.api_client())``
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        node_capacity: Mapping[str, str] | None = None,
        unpullable_images: Iterable[str] = (),
        extra_env: Mapping[str, str] | None = None,
        retry_delay: float = 0.5,
        dns_grace: float = 2.0,
        tick: float = 0.2,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kube-standin-")).resolve()
        self.capacity = dict(DEFAULT_CAPACITY if node_capacity is None else node_capacity)
        self.unpullable_images = set(unpullable_images)
        self.extra_env = dict(extra_env or {})
        self.retry_delay, self.dns_grace, self.tick = retry_delay, dns_grace, tick
        self.errors: list[BaseException] = []  # bugs of the stand-in itself (tests assert none)
        self._lock = threading.RLock()
        self._store: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES if r != "events"}
        self._events: list[dict] = []
        self._pods: dict[str, _PodRuntime] = {}  # by pod uid, kept after the pod is gone
        self._jobs: dict[str, _JobRuntime] = {}  # by job uid
        self._version = 0
        self._unavailable_until = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> KubeStandIn:
        """Serve on 127.0.0.1 (a random port) and start the controllers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="kube-standin-http", daemon=True
            ),
            threading.Thread(target=self._control_loop, name="kube-standin-controllers", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving and controlling, and SIGKILL every pod's process group."""
        self._stopping.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            for rt in self._pods.values():
                if rt.popen is not None:
                    rt.signal(signal.SIGKILL)
                    rt.popen.wait()

    def __enter__(self) -> KubeStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server (no authentication)."""
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.url))

    # ---------------------------------------------------------------- test hooks

    def pods(self, job: str | None = None, namespace: str | None = None) -> list[dict]:
        """Copies of the pods (of one Job, by name), oldest first."""
        with self._lock:
            pods = [
                copy.deepcopy(p)
                for (ns, _), p in self._store["pods"].items()
                if (namespace is None or ns == namespace)
                and (job is None or _labels(p).get("job-name") == job)
            ]
        return pods  # the store keeps creation order

    def pod_pid(self, name: str) -> int | None:
        """The pid (and process group id) of a pod's process; None before it starts."""
        with self._lock:
            rt = self._pods.get(self._find_pod(name)["metadata"]["uid"])
            return rt.popen.pid if rt and rt.popen else None

    def kill_pod(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the pod (its group and all descendants, also those in sessions
        of their own), as a node losing the container would."""
        with self._lock:
            rt = self._pods.get(self._find_pod(name)["metadata"]["uid"])
        if rt is None or rt.popen is None:
            raise RuntimeError(f"pod {name} has no process")
        rt.signal(sig)
        self._wake.set()

    def oom_kill_pod(self, name: str) -> None:
        """Kill the pod as the kernel's OOM killer would: exit code 137, reason ``OOMKilled``."""
        with self._lock:
            self._pods[self._find_pod(name)["metadata"]["uid"]].oom = True
        self.kill_pod(name, signal.SIGKILL)

    def disrupt_pod(self, name: str, reason: str = "TerminationByKubelet") -> None:
        """Terminate the pod as the kubelet does on node shutdown: ``DisruptionTarget`` condition, SIGTERM."""
        with self._lock:
            pod = self._find_pod(name)
            _condition(
                pod,
                "DisruptionTarget",
                "True",
                reason,
                "Pod was terminated in response to imminent node shutdown.",
            )
            self._delete_pod(pod, grace=None, remove=False)
        self._wake.set()

    def outage(self, seconds: float) -> None:
        """Answer every request with 503 for ``seconds`` (an API server restart); pods keep running."""
        self._unavailable_until = time.monotonic() + seconds

    def set_capacity(self, capacity: Mapping[str, str]) -> None:
        """Change the node's capacity (merged into the current one); pending pods are re-checked."""
        with self._lock:
            self.capacity.update(capacity)
        self._wake.set()

    def events(self, name: str | None = None) -> list[dict]:
        """Copies of the events (about one object, by name)."""
        with self._lock:
            return [
                copy.deepcopy(e) for e in self._events if name is None or e["involvedObject"]["name"] == name
            ]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``predicate`` until it returns something truthy (returned); TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if value := predicate():
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
            time.sleep(interval)

    def live_processes(self) -> list[int]:
        """Pids of pods (also deleted ones) with a live process: in the main process group or
        any descendant seen."""
        with self._lock:
            runtimes = [rt for rt in self._pods.values() if rt.popen is not None]
        return [rt.popen.pid for rt in runtimes if rt.alive()]

    def process_ended(self, pod_uid: str) -> bool:
        """Whether the pod's process has exited (or will never run): followed logs end then."""
        with self._lock:
            rt = self._pods.get(pod_uid)
            return rt is None or rt.popen is None or rt.popen.poll() is not None or self._stopping.is_set()

    def _find_pod(self, name: str) -> dict:
        found = [p for (_, n), p in self._store["pods"].items() if n == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} pods named {name!r}")
        return found[0]

    # ------------------------------------------------------------------ REST API

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        """Answer one request: (code, JSON object or text) or a ``_LogStream``."""
        if time.monotonic() < self._unavailable_until:
            raise ApiError(503, "ServiceUnavailable", "the API server is restarting (stand-in outage)")
        if method == "GET" and path.rstrip("/") == "/version":
            return 200, {
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.0-fourm-standin",
                "gitCommit": "",
                "gitTreeState": "clean",
                "buildDate": timestamp(0),
                "goVersion": "",
                "compiler": "",
                "platform": "linux/amd64",
            }
        if method == "GET" and path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if method == "GET" and path == "/apis":
            version = {"groupVersion": "batch/v1", "version": "v1"}
            group = {"name": "batch", "versions": [version], "preferredVersion": version}
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        m = re.fullmatch(
            r"/(?:api/v1|apis/(?P<group>batch)/v1)(?:/namespaces/(?P<ns>[^/]+))?"
            r"/(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?",
            path,
        )
        if query.get("watch") in ("true", "1"):
            raise ApiError(400, "BadRequest", "the kube stand-in does not implement watches")
        if not m or m["res"] not in RESOURCES or RESOURCES[m["res"]][0] != (m["group"] or ""):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res, ns, name, sub = m["res"], m["ns"], m["name"], m["sub"]
        with self._lock:
            if name is None and method == "GET":
                return 200, self._list(res, ns, query)
            if (
                name is None
                and method == "POST"
                and ns
                and res in ("secrets", "configmaps", "services", "jobs")
            ):
                created = self._create(res, ns, body or {})
                self._wake.set()
                return 201, created
            if name is not None and ns and res != "events":
                if method == "GET" and (sub is None or (sub == "status" and res == "jobs")):
                    return 200, copy.deepcopy(self._get(res, ns, name))
                if sub is None and method == "DELETE":
                    result = self._delete_request(res, ns, name, query, body or {})
                    self._wake.set()
                    return 200, result
                if sub == "log" and res == "pods" and method == "GET":
                    return self._log(ns, name, query)
                if sub == "eviction" and res == "pods" and method == "POST":
                    pod = self._get("pods", ns, name)
                    _condition(
                        pod, "DisruptionTarget", "True", "EvictionByEvictionAPI", "Eviction API: evicting"
                    )
                    self._delete_pod(pod, grace=None, remove=True)
                    self._wake.set()
                    return 201, {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"the kube stand-in does not implement {method} {path}")

    def _qualified(self, res: str) -> str:
        group = RESOURCES[res][0]
        return f"{res}.{group}" if group else res

    def _get(self, res: str, ns: str, name: str) -> dict:
        try:
            return self._store[res][(ns, name)]
        except KeyError:
            raise ApiError(
                404,
                "NotFound",
                f'{self._qualified(res)} "{name}" not found',
                {"name": name, "group": RESOURCES[res][0], "kind": res},
            ) from None

    def _list(self, res: str, ns: str | None, query: Mapping[str, str]) -> dict:
        objects = self._events if res == "events" else list(self._store[res].values())
        items = [
            copy.deepcopy(o)
            for o in objects
            if (ns is None or o["metadata"]["namespace"] == ns)
            and label_selector_matches(_labels(o), query.get("labelSelector"))
            and field_selector_matches(o, query.get("fieldSelector"))
        ]
        _, api_version, kind = RESOURCES[res]
        meta = {"resourceVersion": str(self._version)}
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": meta, "items": items}

    def _bump(self, obj: dict) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _create(self, res: str, ns: str, body: dict) -> dict:
        _, api_version, kind = RESOURCES[res]
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            message = "the namespace of the provided object does not match the namespace sent on the request"
            raise ApiError(400, "BadRequest", message)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_CHARS, k=5))
        name = meta.get("name") or ""
        pattern, limit = (_DNS_LABEL, 63) if res in ("services", "jobs") else (_DNS_SUBDOMAIN, 253)
        problems = []
        if not name:
            problems.append(("metadata.name", "Required value: name or generateName is required"))
        elif not pattern.fullmatch(name) or len(name) > limit:
            rule = f"must be a DNS-1123 name of at most {limit} characters"
            problems.append(("metadata.name", f'Invalid value: "{name}": {rule}'))
        for value in (meta.get("labels") or {}).values():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                rule = "a valid label must be 63 characters or less, alphanumeric, '-', '_' or '.'"
                problems.append(("metadata.labels", f"Invalid value: {json.dumps(value)}: {rule}"))
        admit = getattr(self, f"_admit_{res}", None)
        if admit and not problems:
            problems += admit(obj)
        if problems:
            raise invalid(kind, name, problems)
        if (ns, name) in self._store[res]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{self._qualified(res)} "{name}" already exists',
                {"name": name, "group": RESOURCES[res][0], "kind": res},
            )
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta |= {"namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": timestamp(), "generation": 1}
        self._bump(obj)
        if res == "jobs":
            self._default_job(obj)
        self._store[res][(ns, name)] = obj
        return copy.deepcopy(obj)

    def _admit_secrets(self, secret: dict) -> list[tuple[str, str]]:
        data = secret.setdefault("data", {}) or {}
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except Exception:
                return [(f"data[{key}]", "Invalid value: not base64")]
        for key, value in (secret.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        secret["data"] = data
        secret.setdefault("type", "Opaque")
        return []

    def _admit_services(self, service: dict) -> list[tuple[str, str]]:
        spec = service.setdefault("spec", {})
        if any("port" not in p for p in spec.get("ports") or []):
            return [("spec.ports[0].port", "Required value")]
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("clusterIP", f"10.96.{random.randrange(256)}.{random.randrange(1, 255)}")
        return []

    def _admit_jobs(self, job: dict) -> list[tuple[str, str]]:
        spec = job.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        problems: list[tuple[str, str]] = []
        policy = pod.get("restartPolicy")
        if policy not in ("Never", "OnFailure"):
            how = "Required value" if policy is None else f'Unsupported value: "{policy}"'
            problems.append(
                ("spec.template.spec.restartPolicy", f'{how}: supported values: "OnFailure", "Never"')
            )
        elif policy == "OnFailure":
            problems.append(("spec.template.spec.restartPolicy", "the kube stand-in emulates only Never"))
        if spec.get("completionMode") == "Indexed" and spec.get("completions") is None:
            problems.append(("spec.completions", "Required value: when completion mode is Indexed"))
        containers = pod.get("containers") or []
        if len(containers) != 1 or pod.get("initContainers"):
            problems.append(("spec.template.spec.containers", "the kube stand-in runs one container per pod"))
        for i, c in enumerate(containers):
            where = f"spec.template.spec.containers[{i}]"
            if not c.get("name"):
                problems.append((f"{where}.name", "Required value"))
            if not c.get("command"):
                why = "the kube stand-in runs no images, so each container needs a command"
                problems.append((f"{where}.command", f"Required value: {why}"))
            for kind in ("limits", "requests"):
                for key, q in ((c.get("resources") or {}).get(kind) or {}).items():
                    try:
                        parse_quantity(q)
                    except ValueError as e:
                        problems.append((f"{where}.resources.{kind}[{key}]", f'Invalid value: "{q}": {e}'))
        for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            if rule.get("action") not in ("FailJob", "Ignore", "Count"):
                why = f'Unsupported value: "{rule.get("action")}" (the stand-in has FailJob, Ignore, Count)'
                problems.append((f"spec.podFailurePolicy.rules[{i}].action", why))
            codes = rule.get("onExitCodes")
            if codes and codes.get("operator") not in ("In", "NotIn"):
                problems.append(
                    (f"spec.podFailurePolicy.rules[{i}].onExitCodes.operator", "Unsupported value")
                )
        return problems

    def _default_job(self, job: dict) -> None:
        spec, meta = job["spec"], job["metadata"]
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault(
            "podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
        )
        uid_labels = {"controller-uid": meta["uid"], "batch.kubernetes.io/controller-uid": meta["uid"]}
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}}
        tmeta = spec["template"].setdefault("metadata", {})
        name_labels = {"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]}
        tmeta["labels"] = (tmeta.get("labels") or {}) | uid_labels | name_labels
        job["status"] = {}
        self._jobs[meta["uid"]] = _JobRuntime()

    def _delete_request(self, res: str, ns: str, name: str, query: Mapping[str, str], body: Mapping) -> dict:
        obj = self._get(res, ns, name)
        policy = query.get("propagationPolicy") or body.get("propagationPolicy")
        if policy is None and body.get("orphanDependents") is not None:
            policy = "Orphan" if body["orphanDependents"] else "Background"
        policy = policy or ("Orphan" if res == "jobs" else "Background")  # batch/v1 Jobs orphan by default
        if policy not in ("Orphan", "Background", "Foreground"):
            message = f'propagationPolicy "{policy}" is not one of Orphan, Background, Foreground'
            raise ApiError(400, "BadRequest", message)
        grace = query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        self._delete(res, obj, policy, None if grace is None else float(grace))
        if res in ("pods", "services") or obj["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(obj)
        details = {"name": name, "group": RESOURCES[res][0], "kind": res, "uid": obj["metadata"]["uid"]}
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "details": details}

    def _delete(self, res: str, obj: dict, policy: str, grace: float | None = None) -> None:
        """Delete an object and (unless orphaned) everything it owns, as the garbage collector does."""
        meta = obj["metadata"]
        for dep_res, objects in self._store.items():
            for dep in list(objects.values()):
                refs = dep["metadata"].get("ownerReferences") or []
                owned = any(r.get("uid") == meta["uid"] for r in refs)
                if not owned or dep["metadata"]["namespace"] != meta["namespace"]:
                    continue
                if policy == "Orphan":
                    dep["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != meta["uid"]]
                    self._bump(dep)
                else:
                    self._delete(dep_res, dep, "Background", grace)
        if res == "pods":
            self._delete_pod(obj, grace, remove=True)
        elif res == "jobs" and policy == "Foreground":
            meta.setdefault("deletionTimestamp", timestamp())  # removed once its pods are gone
            meta["finalizers"] = ["foregroundDeletion"]
            self._bump(obj)
        else:
            self._store[res].pop((meta["namespace"], meta["name"]), None)

    def _log(self, ns: str, name: str, query: Mapping[str, str]) -> Any:
        pod = self._get("pods", ns, name)
        container = pod["spec"]["containers"][0]["name"]
        if query.get("container") not in (None, container):
            raise ApiError(400, "BadRequest", f"container {query['container']} is not valid for pod {name}")
        rt = self._pods.get(pod["metadata"]["uid"])
        if rt is None or rt.popen is None or not (rt.sandbox / "log").exists():
            statuses = pod["status"].get("containerStatuses") or [{}]
            waiting = statuses[0].get("state", {}).get("waiting", {}).get("reason", "ContainerCreating")
            message = f'container "{container}" in pod "{name}" is waiting to start: {waiting}'
            raise ApiError(400, "BadRequest", message)
        tail = int(query["tailLines"]) if "tailLines" in query else None
        if query.get("follow") == "true":
            return _LogStream(rt.sandbox / "log", pod["metadata"]["uid"], tail)
        text = (rt.sandbox / "log").read_text(errors="replace")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:] if tail else [])
        return 200, text

    def _event(self, obj: dict, type_: str, reason: str, message: str, component: str) -> None:
        """Record an event about ``obj``; a repeat of the same one only raises its count."""
        meta = obj["metadata"]
        for e in self._events:
            if (e["involvedObject"]["uid"], e["reason"], e["message"]) == (meta["uid"], reason, message):
                e["count"] += 1
                e["lastTimestamp"] = timestamp()
                return
        self._version += 1
        ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"]}
        ref |= {"namespace": meta["namespace"], "uid": meta["uid"]}
        now = timestamp()
        self._events.append(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "involvedObject": ref,
                "type": type_,
                "reason": reason,
                "message": message,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": component},
                "reportingComponent": component,
                "metadata": {
                    "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                    "namespace": meta["namespace"],
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": now,
                    "resourceVersion": str(self._version),
                },
            }
        )

    # ----------------------------------------------------------- the controllers

    def _control_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.tick)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                with self._lock:
                    self._sync()
            except Exception as e:  # a stand-in bug: keep going, but make it visible
                traceback.print_exc(file=sys.stderr)
                self.errors.append(e)

    def _sync(self) -> None:
        now = time.monotonic()
        for pod in list(self._store["pods"].values()):
            before = json.dumps(pod["status"], sort_keys=True)
            self._kubelet(pod, now)
            if json.dumps(pod["status"], sort_keys=True) != before:
                self._bump(pod)
        for job in list(self._store["jobs"].values()):
            before = json.dumps(job["status"], sort_keys=True)
            self._job_controller(job, now)
            if json.dumps(job["status"], sort_keys=True) != before:
                self._bump(job)
        # Deleted pods leave once terminated and (for a live Job) counted: the job-tracking finalizer.
        for key, pod in list(self._store["pods"].items()):
            if pod["metadata"].get("deletionTimestamp") and _terminal(pod):
                job = self._owner_job(pod)
                if job is None or pod["metadata"]["uid"] in self._jobs[job["metadata"]["uid"]].accounted:
                    del self._store["pods"][key]
        for key, job in list(self._store["jobs"].items()):
            if job["metadata"].get("deletionTimestamp") and not self._job_pods(job):
                del self._store["jobs"][key]

    # --- kubelet and scheduler

    def _kubelet(self, pod: dict, now: float) -> None:
        if _terminal(pod):
            return
        meta, status = pod["metadata"], pod["status"]
        rt = self._pods.setdefault(meta["uid"], _PodRuntime(self.workdir / meta["name"]))
        container = pod["spec"]["containers"][0]
        if rt.popen is not None:
            if rt.kill_at is not None and now >= rt.kill_at:
                rt.signal(signal.SIGKILL)
            rt.track()
            code = rt.popen.poll()
            if code is None:
                return
            rt.signal(signal.SIGKILL)  # the runtime tears the whole container down
            code = 128 - code if code < 0 else code
            reason = "OOMKilled" if rt.oom else "Completed" if code == 0 else "Error"
            started = status["containerStatuses"][0]["state"]["running"]["startedAt"]
            terminated = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": timestamp()}
            self._finish_pod(pod, terminated | {"containerID": f"standin://{rt.popen.pid}"})
            return
        if meta.get("deletionTimestamp"):  # deleted before it started
            message = "The container could not be located when the pod was terminated"
            self._finish_pod(pod, {"exitCode": 137, "reason": "ContainerStatusUnknown", "message": message})
            return
        if not pod["spec"].get("nodeName"):
            if problem := self._unschedulable(pod):
                _condition(pod, "PodScheduled", "False", "Unschedulable", problem)
                self._event(pod, "Warning", "FailedScheduling", problem, "default-scheduler")
                return
            pod["spec"]["nodeName"] = NODE_NAME
            status |= {"hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "startTime": timestamp()}
            _condition(pod, "PodScheduled", "True")
            message = f"Successfully assigned {meta['namespace']}/{meta['name']} to {NODE_NAME}"
            self._event(pod, "Normal", "Scheduled", message, "default-scheduler")
        image = container.get("image", "")
        if image in self.unpullable_images:
            if rt.pull_failed_at is None:
                rt.pull_failed_at = now
                self._event(pod, "Warning", "Failed", f'Failed to pull image "{image}": not found', "kubelet")
            if now - rt.pull_failed_at < 1.0:  # then it waits to retry, as the kubelet does
                reason, message = "ErrImagePull", f'failed to pull and unpack image "{image}": not found'
            else:
                reason, message = "ImagePullBackOff", f'Back-off pulling image "{image}"'
                self._event(pod, "Normal", "BackOff", message, "kubelet")
            self._waiting(pod, reason, message)
            return
        # A pod whose subdomain's Service does not exist yet waits a little for it: this stands in for
        # DNS, which in a cluster resolves whenever the Service appears (host names are rewritten at start).
        subdomain = pod["spec"].get("subdomain")
        no_service = subdomain and (meta["namespace"], subdomain) not in self._store["services"]
        if no_service and now - rt.created < self.dns_grace:
            self._waiting(pod, "ContainerCreating", f'waiting for Service "{subdomain}"')
            return
        try:
            argv, env, cwd = self._prepare(pod, rt)
        except _ConfigError as e:
            self._waiting(pod, e.reason, e.message)
            message = f"Error: {e.message}" if e.event == "Failed" else e.message
            self._event(pod, "Warning", e.event, message, "kubelet")
            return
        with open(rt.sandbox / "log", "ab") as log:
            try:
                rt.popen = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                message = f"failed to create containerd task: exec: {argv[0]!r}: {e.strerror}"
                self._finish_pod(pod, {"exitCode": 128, "reason": "StartError", "message": message})
                return
        state = {"running": {"startedAt": timestamp()}}
        status |= {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}
        container_id = {"containerID": f"standin://{rt.popen.pid}"}
        status["containerStatuses"] = [self._container_status(pod, state, ready=True) | container_id]
        for type_ in ("Initialized", "Ready", "ContainersReady"):
            _condition(pod, type_, "True")
        self._event(pod, "Normal", "Started", f"Started container {container['name']}", "kubelet")

    def _container_status(self, pod: dict, state: dict, ready: bool) -> dict:
        c = pod["spec"]["containers"][0]
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
            "lastState": {},
        }

    def _waiting(self, pod: dict, reason: str, message: str) -> None:
        state = {"waiting": {"reason": reason, "message": message}}
        pod["status"]["containerStatuses"] = [self._container_status(pod, state, ready=False)]
        unready = f"containers with unready status: [{pod['spec']['containers'][0]['name']}]"
        _condition(pod, "Initialized", "True")
        for type_ in ("Ready", "ContainersReady"):
            _condition(pod, type_, "False", "ContainersNotReady", unready)

    def _finish_pod(self, pod: dict, terminated: dict) -> None:
        status = pod["status"]
        status["phase"] = "Succeeded" if terminated["exitCode"] == 0 else "Failed"
        status["containerStatuses"] = [self._container_status(pod, {"terminated": terminated}, ready=False)]
        reason = "PodCompleted" if status["phase"] == "Succeeded" else "PodFailed"
        for type_ in ("Ready", "ContainersReady"):
            _condition(pod, type_, "False", reason)

    def _delete_pod(self, pod: dict, grace: float | None, remove: bool) -> None:
        """SIGTERM the pod's process group now and SIGKILL it after the grace period."""
        meta = pod["metadata"]
        if remove and not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = timestamp()
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        rt = self._pods.get(meta["uid"])
        if rt is not None and rt.popen is not None and rt.popen.poll() is None:
            meta["deletionGracePeriodSeconds"] = int(grace)
            rt.kill_at = time.monotonic() + grace
            rt.signal(signal.SIGTERM)
        elif not remove and not _terminal(pod):  # disrupted before it started
            meta["deletionTimestamp"] = timestamp()
        self._bump(pod)

    def _requests(self, pod: dict) -> dict[str, Fraction]:
        total: dict[str, Fraction] = {}
        for c in pod["spec"]["containers"]:
            resources = c.get("resources") or {}
            merged = (resources.get("limits") or {}) | (resources.get("requests") or {})
            for key, q in merged.items():
                total[key] = total.get(key, Fraction(0)) + parse_quantity(q)
        return total

    def _unschedulable(self, pod: dict) -> str | None:
        """The scheduler's message if the pod does not fit on the node next to the pods already there."""
        free = {k: parse_quantity(v) for k, v in self.capacity.items()}
        for other in self._store["pods"].values():
            if other is not pod and other["spec"].get("nodeName") and not _terminal(other):
                for key, q in self._requests(other).items():
                    free[key] = free.get(key, Fraction(0)) - q
        short = sorted(k for k, q in self._requests(pod).items() if q > free.get(k, Fraction(0)))
        if not short:
            return None
        reasons = ", ".join(f"1 Insufficient {k}" for k in short)
        return (
            f"0/1 nodes are available: {reasons}. preemption: 0/1 nodes are available: "
            "1 No preemption victims found for incoming pod."
        )

    def _prepare(self, pod: dict, rt: _PodRuntime) -> tuple[list[str], dict[str, str], Path]:
        """The process's argv, environment and directory; _ConfigError if it cannot start yet."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, c = meta["namespace"], spec["containers"][0]
        env: dict[str, str] = {}  # the container's own variables, in order: what $(VAR) sees
        for source in c.get("envFrom") or []:
            for kind, res in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
                if ref := source.get(kind):
                    values = self._source(ns, res, ref["name"], None, ref.get("optional", False)) or {}
                    env |= {source.get("prefix", "") + k: v for k, v in values.items()}
        for var in c.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
                continue
            value_from = var.get("valueFrom") or {}
            value: str | None = ""
            if ref := value_from.get("secretKeyRef"):
                value = self._source(ns, "secrets", ref["name"], ref["key"], ref.get("optional", False))
            elif ref := value_from.get("configMapKeyRef"):
                value = self._source(ns, "configmaps", ref["name"], ref["key"], ref.get("optional", False))
            elif ref := value_from.get("fieldRef"):
                value = self._field(pod, ref["fieldPath"])
            elif value_from:
                message = f"the kube stand-in does not emulate {sorted(value_from)} (env {var['name']})"
                raise _ConfigError("CreateContainerConfigError", message)
            if value is not None:
                env[var["name"]] = value
        argv = [expand(a, env) for a in [*(c.get("command") or []), *(c.get("args") or [])]]

        mounts = self._mounts(pod, rt)
        wd = c.get("workingDir")
        if wd and not any(wd == m or wd.startswith(m.rstrip("/") + "/") for m in mounts) and wd != "/":
            mounts[wd.rstrip("/")] = str(rt.sandbox / "root" / wd.lstrip("/"))
        rewrite = self._rewriter(ns, mounts)
        env = {k: rewrite(v) for k, v in env.items()}
        argv = [rewrite(a) for a in argv]
        cwd = Path(rewrite(wd)) if wd and wd != "/" else rt.sandbox / "root"
        if not cwd.is_relative_to(self.workdir):
            cwd = rt.sandbox / "root"
        cwd.mkdir(parents=True, exist_ok=True)
        base = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | self.extra_env
        base["HOSTNAME"] = spec.get("hostname") or meta["name"]
        return argv, base | env, cwd

    def _source(self, ns: str, res: str, name: str, key: str | None, optional: bool) -> Any:
        """A Secret's or ConfigMap's values (or one of them) as text, as the kubelet resolves them."""
        kind = "Secret" if res == "secrets" else "ConfigMap"
        obj = self._store[res].get((ns, name))
        if obj is None:
            if optional:
                return None
            raise _ConfigError("CreateContainerConfigError", f'{kind.lower()} "{name}" not found')
        data = obj.get("data") or {}
        if res == "secrets":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        if key is None:
            return data
        if key not in data:
            if optional:
                return None
            raise _ConfigError("CreateContainerConfigError", f"couldn't find key {key} in {kind} {ns}/{name}")
        return data[key]

    def _field(self, pod: dict, path: str) -> str:
        meta = pod["metadata"]
        if m := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path):
            return (meta.get(m[1]) or {}).get(m[2], "")
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
            "status.hostIP": POD_IP,
            "status.hostIPs": POD_IP,
        }
        if path not in simple:
            raise _ConfigError(
                "CreateContainerConfigError", f"the kube stand-in does not emulate fieldRef {path}"
            )
        return simple[path]

    def _mounts(self, pod: dict, rt: _PodRuntime) -> dict[str, str]:
        """mountPath -> local directory for the container's volume mounts (created and filled here)."""
        ns = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: dict[str, str] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise _ConfigError("CreateContainerConfigError", f'volume "{mount["name"]}" not found')
            path = rt.sandbox / "volumes" / mount["name"]
            if "emptyDir" in volume:
                if mount["mountPath"].rstrip("/") == "/dev/shm":
                    continue
            elif "persistentVolumeClaim" in volume:  # one directory, shared by every pod that claims it
                path = self.workdir / "pvc" / volume["persistentVolumeClaim"]["claimName"]
            elif "secret" in volume or "configMap" in volume:
                res, ref = (
                    ("secrets", volume["secret"])
                    if "secret" in volume
                    else ("configmaps", volume["configMap"])
                )
                name = ref.get("secretName") or ref.get("name")
                try:
                    files = self._source(ns, res, name, None, ref.get("optional", False)) or {}
                except _ConfigError as e:
                    message = f'MountVolume.SetUp failed for volume "{mount["name"]}" : {e.message}'
                    raise _ConfigError("ContainerCreating", message, "FailedMount") from None
                path.mkdir(parents=True, exist_ok=True)
                for key, text in files.items():
                    (path / key).write_text(text)
            else:
                kinds = sorted(set(volume) - {"name"})
                message = (
                    f'MountVolume.SetUp failed for volume "{mount["name"]}" : '
                    f"the kube stand-in does not emulate {kinds} volumes"
                )
                raise _ConfigError("ContainerCreating", message, "FailedMount")
            path = path / mount.get("subPath", "")
            path.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/") or "/"] = str(path)
        return mounts

    def _rewriter(self, ns: str, mounts: Mapping[str, str]) -> Callable[[str], str]:
        """Replace Service host names by 127.0.0.1 and mount paths by their local directories."""
        services = sorted((n for (sns, n) in self._store["services"] if sns == ns), key=len, reverse=True)
        host = None
        if services:
            names = "|".join(re.escape(s) for s in services)
            suffix = rf"\.{re.escape(ns)}(?:\.svc(?:\.cluster\.local)?)?"
            label = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
            host = re.compile(rf"(?<![\w.-])(?P<host>{label}\.)?(?:{names})(?P<suffix>{suffix})?(?![\w.-])")
        paths = None
        if mounts:
            alternatives = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
            paths = re.compile(rf"(?<![\w.-])(?:{alternatives})(?=/|$|[^\w.-])")

        def host_sub(m: re.Match) -> str:
            if m["host"] or m["suffix"] or re.match(r":\d", m.string[m.end() :]):
                return POD_IP
            return m[0]

        def rewrite(text: str) -> str:
            if host is not None:
                text = host.sub(host_sub, text)
            if paths is not None:
                text = paths.sub(lambda m: mounts[m[0]], text)
            return text

        return rewrite

    # --- Job controller

    def _owner_job(self, pod: dict) -> dict | None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Job":
                job = self._store["jobs"].get((pod["metadata"]["namespace"], ref["name"]))
                if job is not None and job["metadata"]["uid"] == ref.get("uid"):
                    return job
        return None

    def _job_pods(self, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self._store["pods"].values()
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    def _job_controller(self, job: dict, now: float) -> None:
        meta, spec, status = job["metadata"], job["spec"], job["status"]
        rt = self._jobs[meta["uid"]]
        indexed = spec["completionMode"] == "Indexed"
        pods = self._job_pods(job)
        finished = _has_condition(job, "Complete") or _has_condition(job, "Failed")
        if rt.started is None and not spec.get("suspend"):
            rt.started = now
            status["startTime"] = timestamp()
        for pod in pods:  # count each terminated pod once
            uid = pod["metadata"]["uid"]
            if not _terminal(pod) or uid in rt.accounted:
                continue
            rt.accounted.add(uid)
            index = int(pod["metadata"]["annotations"][INDEX_KEY]) if indexed else None
            if pod["status"]["phase"] == "Succeeded":
                rt.succeeded += index not in rt.succeeded_indexes
                if index is not None:
                    rt.succeeded_indexes.add(index)
                continue
            rt.last_failure[index] = now
            action, message = self._failure_action(job, pod)
            if action == "Ignore" and rt.failure is None and not finished:
                continue
            rt.failed += 1
            if rt.failure is None and not finished:
                if action == "FailJob":
                    rt.failure = ("PodFailurePolicy", message or "")
                elif rt.failed > spec["backoffLimit"]:
                    rt.failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        deadline = spec.get("activeDeadlineSeconds")
        running_for = -1.0 if rt.started is None else now - rt.started
        if deadline is not None and running_for >= deadline and not finished and rt.failure is None:
            rt.failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        done = (
            len(rt.succeeded_indexes) >= spec["completions"]
            if indexed
            else rt.succeeded >= spec["completions"]
        )
        running = [p for p in pods if not _terminal(p)]
        if not finished and not meta.get("deletionTimestamp"):
            if rt.failure is not None or done:
                if rt.failure is not None and not _has_condition(job, "FailureTarget"):
                    _condition(job, "FailureTarget", "True", *rt.failure)
                    self._event(job, "Warning", rt.failure[0], rt.failure[1], "job-controller")
                if rt.failure is None and not _has_condition(job, "SuccessCriteriaMet"):
                    _condition(job, "SuccessCriteriaMet", "True", "CompletionsReached", _REACHED)
                for pod in running:
                    if not pod["metadata"].get("deletionTimestamp"):
                        self._delete_pod(pod, grace=None, remove=True)
                        message = f"Deleted pod: {pod['metadata']['name']}"
                        self._event(job, "Normal", "SuccessfulDelete", message, "job-controller")
                if not running:  # the terminal condition waits for every pod to end
                    rt.finished = now
                    if rt.failure is not None:
                        _condition(job, "Failed", "True", *rt.failure)
                    else:
                        _condition(job, "Complete", "True", "CompletionsReached", _REACHED)
                        status["completionTime"] = timestamp()
                        self._event(job, "Normal", "Completed", "Job completed", "job-controller")
            elif not spec.get("suspend"):
                self._create_pods(job, rt, running, now)
        active = [
            p for p in self._job_pods(job) if not _terminal(p) and not p["metadata"].get("deletionTimestamp")
        ]
        status.pop("active", None)
        status.pop("succeeded", None)
        status.pop("failed", None)
        # Kubernetes omits zero counts (omitempty), except ready and terminating.
        counts = {"active": len(active), "succeeded": rt.succeeded, "failed": rt.failed}
        status |= {k: v for k, v in counts.items() if v}
        status["ready"] = sum(_has_condition(p, "Ready") for p in active)
        pods = self._job_pods(job)
        status["terminating"] = sum(
            1 for p in pods if not _terminal(p) and p["metadata"].get("deletionTimestamp")
        )
        status["uncountedTerminatedPods"] = {}
        if indexed:
            status["completedIndexes"] = index_ranges(rt.succeeded_indexes)
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None and rt.finished is not None and now - rt.finished >= ttl:
            self._delete("jobs", job, "Background")

    def _create_pods(self, job: dict, rt: _JobRuntime, running: list[dict], now: float) -> None:
        spec = job["spec"]
        if spec["completionMode"] == "Indexed":
            busy = {int(p["metadata"]["annotations"][INDEX_KEY]) for p in running}
            wanted = [
                i for i in range(spec["completions"]) if i not in rt.succeeded_indexes and i not in busy
            ]
        else:
            wanted = [None] * max(
                0, min(spec["parallelism"], spec["completions"] - rt.succeeded) - len(running)
            )
        slots = spec["parallelism"] - len(running)
        for index in wanted:
            if slots <= 0:
                return
            if now < rt.last_failure.get(index, -1e18) + self.retry_delay:
                continue
            slots -= 1
            pod = self._new_pod(job, index)
            self._event(
                job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", "job-controller"
            )

    def _new_pod(self, job: dict, index: int | None) -> dict:
        """A pod from the Job's template, labelled, annotated and owned as the Job controller does."""
        jmeta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        meta, spec = template.get("metadata") or {}, template["spec"]
        suffix = "".join(random.choices(_NAME_CHARS, k=5))
        name = f"{jmeta['name']}-{index}-{suffix}" if index is not None else f"{jmeta['name']}-{suffix}"
        labels, annotations = dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})
        if index is not None:
            labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
            spec["hostname"] = f"{jmeta['name']}-{index}"
            ref = {"fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}
            for c in spec["containers"]:
                c["env"] = [*(c.get("env") or []), {"name": "JOB_COMPLETION_INDEX", "valueFrom": ref}]
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": jmeta["name"], "uid": jmeta["uid"]}
        owner |= {"controller": True, "blockOwnerDeletion": True}
        self._version += 1
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": jmeta["namespace"],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": timestamp(),
                "resourceVersion": str(self._version),
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner],
                "finalizers": ["batch.kubernetes.io/job-tracking"],
            },
            "spec": spec | {"schedulerName": spec.get("schedulerName", "default-scheduler")},
            "status": {"phase": "Pending", "conditions": []},
        }
        self._store["pods"][(jmeta["namespace"], name)] = pod
        self._pods[pod["metadata"]["uid"]] = _PodRuntime(self.workdir / name)
        (self.workdir / name).mkdir(parents=True, exist_ok=True)
        return pod

    def _failure_action(self, job: dict, pod: dict) -> tuple[str, str | None]:
        """The first matching podFailurePolicy rule's action and Kubernetes' message; Count if none."""
        rules = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for i, rule in enumerate(rules):
            action = rule["action"]
            if req := rule.get("onExitCodes"):
                for cs in pod["status"].get("containerStatuses") or []:
                    term = cs.get("state", {}).get("terminated")
                    if (
                        not term
                        or term["exitCode"] == 0
                        or req.get("containerName") not in (None, cs["name"])
                    ):
                        continue
                    if (term["exitCode"] in req["values"]) == (req["operator"] == "In"):
                        code = term["exitCode"]
                        return action, (
                            f"Container {cs['name']} for pod {ns}/{name} failed with exit code {code} "
                            f"matching {action} rule at index {i}"
                        )
            for pattern in rule.get("onPodConditions") or []:
                for cond in pod["status"].get("conditions") or []:
                    if cond["type"] == pattern["type"] and cond["status"] == pattern.get("status", "True"):
                        kind = pattern["type"]
                        return (
                            action,
                            f"Pod {ns}/{name} has condition {kind} matching {action} rule at index {i}",
                        )
        return "Count", None
