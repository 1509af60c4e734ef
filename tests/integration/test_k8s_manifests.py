"""The Kubernetes manifests, the work pool's job template and prefect.yaml, checked offline.

Both kustomize overlays are rendered with the real ``kubectl kustomize`` and every object
is validated against the Kubernetes OpenAPI schema (tests/k8s_schema.py, strict); then the
properties that matter and that a schema cannot see: resources, non-root pods, least-
privilege RBAC, placeholder-only Secrets whose names and keys match every reference,
Services that select real pods, the buckets fourm uses, the GPU variables of the base job
template, and deployments whose entrypoints are real flows. No cluster, no Docker.
"""

from __future__ import annotations

import base64
import copy
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_schema import KUBERNETES_VERSION, ManifestInvalid, validate_objects

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
OVERLAYS = ("local", "gpu-cluster")
NAMESPACE = "fourm"
TEMPLATE = K8S / "work-pool" / "base-job-template.json"
PLACEHOLDER = "CHANGE-ME"
# Secret keys that are configuration, not credentials (anything else must be a placeholder).
NOT_CREDENTIALS = {"FOURM_S3_ENDPOINT", "POSTGRES_USER", "POSTGRES_DB"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# The most any Role may grant, per (apiGroup, resource).
# Exactly what fourm/launch/kubernetes.py calls: create/read/delete the Job, create/delete its
# Service, list and read pods, follow pod logs.
LAUNCHER_RULES = {
    ("batch", "jobs"): {"create", "get", "delete"},
    ("batch", "jobs/finalizers"): {"update"},  # a Service owned by its Job, blockOwnerDeletion
    ("", "services"): {"create", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
}
# Exactly what the Prefect worker's Role grants (prefect-kubernetes watches jobs, pods, events).
WORKER_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch"},
}


# -- rendering --------------------------------------------------------------------------


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: these tests render infra/k8s with `kubectl kustomize` "
            "(kubectl >= 1.27, kustomize v5 built in; no cluster needed). Install kubectl and rerun."
        )
    return kubectl


def render(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` as a list of objects."""
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path.relative_to(REPO)} failed:\n{proc.stderr}")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def placeholder_secrets() -> list[dict[str, Any]]:
    return render(K8S / "secrets")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def prefect_project() -> dict[str, Any]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def by_kind(objs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [obj for obj in objs if obj["kind"] in kinds]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(``Kind/name``, pod template) of every workload."""
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"])
        for o in by_kind(objs, *WORKLOAD_KINDS)
    ]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def secret_refs(pod_spec: dict[str, Any]) -> tuple[set[tuple[str, str]], set[str]]:
    """(secret, key) pairs of secretKeyRef env, and names of envFrom secretRefs (optional ones too)."""
    keys, whole = set(), set()
    for c in containers(pod_spec):
        env = c.get("env")
        for item in env if isinstance(env, list) else []:  # the job template's env is "{{ env }}"
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                keys.add((ref["name"], ref["key"]))
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                whole.add(src["secretRef"]["name"])
    return keys, whole


# -- schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_matches_the_kubernetes_schema(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    validate_objects(objs, KUBERNETES_VERSION)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "Job", "Role", "RoleBinding"} <= kinds
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "fourm", obj["metadata"]["name"]
        if obj["kind"] not in ("Namespace", "Secret"):
            assert labels.get("app.kubernetes.io/name"), f"{obj['kind']}/{obj['metadata']['name']}"


def test_validate_objects_is_strict_and_takes_client_model_dicts() -> None:
    from kubernetes import client

    job = client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(name="train", namespace=NAMESPACE),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=2,
            parallelism=2,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[
                        client.V1Container(
                            name="trainer",
                            image="fourm:latest",
                            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "8"}),
                        )
                    ],
                )
            ),
        ),
    )
    as_dict = client.ApiClient().sanitize_for_serialization(job)
    validate_objects([as_dict])

    unknown = copy.deepcopy(as_dict)
    unknown["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8
    wrong_type = copy.deepcopy(as_dict)
    wrong_type["spec"]["completions"] = "two"
    with pytest.raises(ManifestInvalid) as caught:
        validate_objects([as_dict, unknown, wrong_type])
    message = str(caught.value)
    assert "2 of 3 objects" in message
    assert "Job/train: spec.template.spec.containers.0: Additional properties" in message
    assert "'gpus' was unexpected" in message
    assert "Job/train: spec.completions:" in message
    with pytest.raises(ManifestInvalid, match="not a Kubernetes object"):
        validate_objects([{"metadata": {"name": "x"}}])


# -- pods -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered, overlay: str) -> None:
    for where, tpl in pod_templates(rendered[overlay]):
        for c in containers(tpl["spec"]):
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind) or {}), f"{where} {c['name']}: {kind} {res}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_without_privileges(rendered, overlay: str) -> None:
    for where, tpl in pod_templates(rendered[overlay]):
        pod = tpl["spec"]
        psc = pod.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True, where
        assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, where
        assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        for c in containers(pod):
            csc = c.get("securityContext") or {}
            label = f"{where} {c['name']}"
            assert csc.get("allowPrivilegeEscalation") is False, label
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], label
            assert not csc.get("capabilities", {}).get("add"), label
            assert csc.get("readOnlyRootFilesystem") is True, label
            assert not csc.get("privileged"), label
            assert csc.get("runAsUser", psc["runAsUser"]) > 0, label
            assert csc.get("runAsNonRoot", True) is True, label
        mounted = {m["name"] for c in containers(pod) for m in c.get("volumeMounts") or []}
        declared = {v["name"] for v in pod.get("volumes") or []}
        assert declared <= mounted, f"{where}: volumes nobody mounts: {declared - mounted}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_that_exist(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    templates = pod_templates(objs)
    services = by_kind(objs, "Service")
    assert {s["metadata"]["name"] for s in services} == {"minio", "postgres", "prefect-server"}
    for svc in services:
        selector = svc["spec"].get("selector") or {}
        assert selector, f"Service/{svc['metadata']['name']} selects nothing"
        matches = [
            (where, tpl)
            for where, tpl in templates
            if selector.items() <= (tpl["metadata"].get("labels") or {}).items()
        ]
        assert len(matches) == 1, f"Service/{svc['metadata']['name']} {selector} matches {len(matches)} pods"
        where, tpl = matches[0]
        assert not where.startswith("Job/"), f"Service/{svc['metadata']['name']} selects a Job's pods"
        port_names = {p.get("name") for c in tpl["spec"]["containers"] for p in c.get("ports") or []}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in port_names, f"{svc['metadata']['name']}: {target}"
    # workload selectors select their own templates
    for obj in by_kind(objs, "Deployment", "StatefulSet"):
        match = obj["spec"]["selector"]["matchLabels"]
        assert match.items() <= obj["spec"]["template"]["metadata"]["labels"].items(), obj["metadata"]["name"]
    for sts in by_kind(objs, "StatefulSet"):
        assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in services}


# -- RBAC -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_least_privilege(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    assert not by_kind(objs, "ClusterRole", "ClusterRoleBinding"), "no cluster-wide RBAC"

    def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), role["metadata"]["name"]
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "*" not in (group, resource, *rule["verbs"]), (
                        f"wildcard in {role['metadata']['name']}"
                    )
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
        return granted

    roles = {r["metadata"]["name"]: grants(r) for r in by_kind(objs, "Role")}
    assert set(roles) == {"prefect-worker", "fourm-launcher"}
    assert roles["prefect-worker"] == WORKER_RULES
    assert roles["fourm-launcher"] == LAUNCHER_RULES

    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objs, "ServiceAccount")}
    assert set(accounts) == {"prefect-worker", "fourm-flow-runner", "fourm-trainer"}
    assert accounts["fourm-trainer"].get("automountServiceAccountToken") is False
    bound: dict[str, str] = {}
    for binding in by_kind(objs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] in roles
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts, subject
            assert subject.get("namespace") == NAMESPACE
            bound[subject["name"]] = binding["roleRef"]["name"]
    assert bound == {"prefect-worker": "prefect-worker", "fourm-flow-runner": "fourm-launcher"}

    # only the worker's pods carry an API token
    for where, tpl in pod_templates(objs):
        account = tpl["spec"].get("serviceAccountName", "default")
        if where == "Deployment/prefect-worker":
            assert account == "prefect-worker"
        else:
            assert tpl["spec"].get("automountServiceAccountToken") is False, where


# -- Secrets ----------------------------------------------------------------------------


def test_secrets_are_placeholders_with_the_names_and_keys_fourm_reads(
    rendered, placeholder_secrets, template
) -> None:
    from fourm.settings import Settings

    assert not by_kind(rendered["gpu-cluster"], "Secret"), (
        "the gpu-cluster overlay must not overwrite Secrets"
    )
    secrets = {s["metadata"]["name"]: secret_values(s) for s in placeholder_secrets}
    assert secrets == {s["metadata"]["name"]: secret_values(s) for s in by_kind(rendered["local"], "Secret")}
    for name, values in secrets.items():
        for key, value in values.items():
            if key in NOT_CREDENTIALS:
                assert PLACEHOLDER not in value and value, f"{name}.{key}"
            else:
                assert PLACEHOLDER in value, (
                    f"{name}.{key} must be a {PLACEHOLDER} placeholder, not a real value"
                )

    # the keys are fourm's own settings (env prefix FOURM_) and W&B's
    prefix = Settings.model_config["env_prefix"]
    s3_fields = ("s3_endpoint", "s3_access_key", "s3_secret_key")
    assert set(s3_fields) | {"registry_url"} <= set(Settings.model_fields)
    assert set(secrets["fourm-s3"]) == {f"{prefix}{field}".upper() for field in s3_fields}
    assert set(secrets["fourm-registry"]) == {f"{prefix}REGISTRY_URL"}
    assert set(secrets["fourm-wandb"]) == {"WANDB_API_KEY"}
    endpoint = secrets["fourm-s3"]["FOURM_S3_ENDPOINT"]
    assert re.fullmatch(r"http://minio:9000", endpoint), endpoint

    # the URLs agree with the passwords PostgreSQL is initialised with
    pg = secrets["fourm-postgres"]
    prefect_url = secrets["fourm-prefect-db"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_url == f"postgresql+asyncpg://prefect:{pg['PREFECT_DB_PASSWORD']}@postgres:5432/prefect"
    registry_url = secrets["fourm-registry"]["FOURM_REGISTRY_URL"]
    assert registry_url == (
        f"postgresql+psycopg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )

    # every Secret (and key) a pod or the work pool's Job refers to exists
    refs: set[tuple[str, str]] = set()
    whole: set[str] = set()
    pod_specs = [tpl["spec"] for _, tpl in pod_templates(rendered["local"])]
    pod_specs.append(template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"])
    for spec in pod_specs:
        keys, names = secret_refs(spec)
        refs |= keys
        whole |= names
    for name, key in refs:
        assert key in secrets.get(name, {}), f"secretKeyRef {name}/{key} has no placeholder"
    assert whole <= set(secrets), whole - set(secrets)


def test_launcher_defaults_name_this_namespace_and_these_secrets_and_accounts(
    rendered, placeholder_secrets
) -> None:
    from fourm.params import KubernetesParams, PodParams
    from fourm.settings import Settings

    assert Settings.model_fields["k8s_namespace"].default == NAMESPACE
    secrets = {s["metadata"]["name"] for s in placeholder_secrets}
    accounts = {sa["metadata"]["name"] for sa in by_kind(rendered["gpu-cluster"], "ServiceAccount")}
    for params in (PodParams(), KubernetesParams()):
        assert {params.s3_secret, params.wandb_secret} <= secrets
        assert params.service_account == "fourm-trainer" and params.service_account in accounts


# -- MinIO buckets ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bucket_job_creates_the_buckets_fourm_uses(rendered, overlay: str) -> None:
    from fourm.settings import Settings

    objs = rendered[overlay]
    job = named(objs, "Job", "minio-buckets")
    (mc,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in mc["env"]}
    expected = Settings.model_fields["buckets"].default.all()
    assert env["BUCKETS"].split() == expected
    assert env["MINIO_URL"] == "http://minio:9000"

    # the script it runs is the one in the repo, and it creates every bucket in $BUCKETS
    script_volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    config = named(objs, "ConfigMap", script_volume["configMap"]["name"])
    script = config["data"]["create-buckets.sh"]
    assert script == (K8S / "base" / "minio" / "create-buckets.sh").read_text()
    assert mc["command"] == ["/bin/sh", "/scripts/create-buckets.sh"]
    assert re.search(r'for bucket in \$BUCKETS; do\n\s+mc mb --ignore-existing "fourm/\$bucket"', script)


def test_shell_scripts_parse() -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check infra/k8s/smoke-kind.sh"
    smoke = K8S / "smoke-kind.sh"
    assert smoke.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in smoke.read_text()
    for script, shell in [
        (smoke, bash),
        (K8S / "base" / "minio" / "create-buckets.sh", "sh"),
        (K8S / "base" / "postgres" / "init-prefect-db.sh", "sh"),
    ]:
        proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{script.relative_to(REPO)}: {proc.stderr}"


# -- the work pool's base job template ----------------------------------------------------


def render_job(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The Job the Kubernetes worker would submit: Prefect's templating of the template's
    defaults and ``values``, then the worker's own touches (env as a list, args as a list)."""
    from prefect.utilities.templating import apply_values

    variables = {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if spec.get("default") is not None
    }
    env = {**variables.get("env", {}), **values.get("env", {})}
    variables.update(values)
    variables["env"] = env
    config = apply_values(copy.deepcopy(template["job_configuration"]), variables)
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container.get("env", {}).items()]
    container["args"] = ["prefect", "flow-run", "execute"]
    job["metadata"]["labels"] = job["metadata"].get("labels") or {}
    return job


def without_prefect_pod_fields(job: dict[str, Any]) -> dict[str, Any]:
    """prefect-kubernetes insists on ``parallelism``/``completions`` inside the pod spec (its
    default template has them there and its validator requires them); the API server drops
    them as unknown fields. Strip them before a strict schema check."""
    job = copy.deepcopy(job)
    for field in ("parallelism", "completions"):
        job["spec"]["template"]["spec"].pop(field)
    return job


def test_base_job_template_wires_gpu_variables_into_the_job(template) -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    # accepted by the Prefect server (every placeholder is a declared variable)
    WorkPoolCreate(name="fourm-k8s", type="kubernetes", base_job_template=template)

    props = template["variables"]["properties"]
    assert {"gpus", "node_selector", "tolerations"} <= set(props)
    for name in ("gpus", "node_selector", "tolerations"):
        assert props[name]["default"] is None, f"{name}: a CPU pod unless asked"
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert pod["nodeSelector"] == "{{ node_selector }}"
    assert pod["tolerations"] == "{{ tolerations }}"
    assert props["namespace"]["default"] == NAMESPACE
    assert props["service_account_name"]["default"] == "fourm-flow-runner"

    # what prefect-kubernetes' validator requires of a job manifest (its _get_base_job_manifest)
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert {"annotations", "labels"} <= set(manifest["metadata"])
    assert pod["parallelism"] == 1 and pod["completions"] == 1 and pod["restartPolicy"] == "Never"
    assert container["name"] == "prefect-job"

    gpu_values = {
        "name": "fourm-pretrain",
        "labels": {"prefect.io/flow-run-id": "0f0e"},
        "annotations": {},
        "image": "registry.example.com/fourm:0.1.0",
        "gpus": 8,
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": {"FOURM_WANDB_MODE": "online"},
    }
    job = render_job(template, gpu_values)
    gpu_pod = job["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert gpu_pod["nodeSelector"] == gpu_values["node_selector"]
    assert gpu_pod["tolerations"] == gpu_values["tolerations"]
    env = {e["name"]: e["value"] for e in gpu_pod["containers"][0]["env"]}
    assert env["FOURM_WANDB_MODE"] == "online" and env["FOURM_HOME"] == "/workspace/.fourm"
    assert job["metadata"]["namespace"] == NAMESPACE and job["metadata"]["generateName"] == "fourm-pretrain-"

    cpu_job = render_job(template, {"name": "fourm-pretrain", "labels": {}, "annotations": {}})
    cpu_pod = cpu_job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu_pod and "tolerations" not in cpu_pod
    assert cpu_pod["containers"][0]["image"] == "fourm:latest"

    validate_objects([without_prefect_pod_fields(job), without_prefect_pod_fields(cpu_job)])
    # the flow-run pod meets the same bar as the cluster's own pods
    for rendered_pod in (gpu_pod, cpu_pod):
        psc = rendered_pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        csc = rendered_pod["containers"][0]["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(rendered_pod["containers"][0]["resources"]["requests"])


def test_the_worker_serves_this_template_on_the_pool_prefect_yaml_names(rendered, prefect_project) -> None:
    objs = rendered["gpu-cluster"]
    worker = named(objs, "Deployment", "prefect-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    pool = args[args.index("--pool") + 1]
    assert args[args.index("--type") + 1] == "kubernetes"
    k8s_pools = {d["work_pool"]["name"] for d in prefect_project["deployments"] if d["name"].endswith("-k8s")}
    assert k8s_pools == {pool} == {"fourm-k8s"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == NAMESPACE
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"

    template_path = Path(args[args.index("--base-job-template") + 1])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == template_path.parent]
    volume = next(v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config = named(objs, "ConfigMap", volume["configMap"]["name"])
    filename = template_path.name
    assert json.loads(config["data"][filename]) == json.loads(TEMPLATE.read_text())


def test_prefect_images_match_one_prefect_version(rendered, prefect_project) -> None:
    import tomllib

    from packaging.specifiers import SpecifierSet

    objs = rendered["gpu-cluster"]
    versions = {}
    for name in ("prefect-server", "prefect-worker"):
        (container,) = named(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        m = re.fullmatch(r"prefecthq/prefect:(\d+\.\d+\.\d+)-python3\.11(-kubernetes)?", container["image"])
        assert m, f"{name}: pin an exact prefecthq/prefect:X.Y.Z-python3.11 tag, not {container['image']}"
        assert bool(m.group(2)) == (name == "prefect-worker"), "the worker needs the -kubernetes image"
        versions[name] = m.group(1)
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (REPO / "infra" / "docker" / dockerfile).read_text()
        m = re.search(r"^ARG PREFECT_VERSION=(\S+)$", text, re.M)
        assert m, dockerfile
        versions[dockerfile] = m.group(1)
    versions["prefect.yaml"] = str(prefect_project["prefect-version"])
    assert len(set(versions.values())) == 1, versions
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"prefect\b", d)).removeprefix("prefect")
    assert versions["prefect-server"] in SpecifierSet(spec), (versions["prefect-server"], spec)


def test_training_dockerfile_pins_cuda_torch_and_runs_as_uid_1000() -> None:
    text = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu22\.04$", text, re.M)
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.M)
    assert re.search(r"^ARG TORCH_CUDA=cu\d+$", text, re.M)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in text
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert re.search(r"^WORKDIR /workspace$", text, re.M)
    assert text.rstrip().endswith('ENTRYPOINT ["fourm"]')
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", text)
    torch_cuda = re.search(r"^ARG TORCH_CUDA=cu(\d+)$", text, re.M).group(1)
    assert torch_cuda == cuda.group(1) + cuda.group(2), "torch's CUDA build and the base image's CUDA differ"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", ".fourm", ".dvc/cache", "models", "reports"} <= set(ignored)


# -- prefect.yaml -----------------------------------------------------------------------


def test_prefect_yaml_deployments_are_real_flows_with_valid_parameters(prefect_project, template) -> None:
    import jsonschema
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    deployments = {d["name"]: d for d in prefect_project["deployments"]}
    validated: dict[str, dict[str, Any]] = {}
    # the other fourm-local deployments (one per stage) are checked by tests/integration/test_serve.py
    assert {"fourm-pipeline", "fourm-pretrain", "fourm-pretrain-k8s"} <= set(deployments)
    assert deployments["fourm-pretrain"]["work_pool"]["name"] == "fourm-local"
    assert deployments["fourm-pipeline"]["work_pool"]["name"] == "fourm-local"

    for name, deployment in deployments.items():
        path, _, function = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file(), f"{name}: {path} does not exist"
        flow = load_flow_from_entrypoint(f"{REPO / path}:{function}")
        assert isinstance(flow, Flow), f"{name}: {deployment['entrypoint']} is not a Prefect flow"
        accepted = set(inspect.signature(flow.fn).parameters)
        parameters = deployment.get("parameters") or {}
        assert set(parameters) <= accepted, (
            f"{name}: {set(parameters) - accepted} are not parameters of {function}"
        )
        if parameters:  # none given: each run gives them (fourm-ingest's `source` has no default)
            validated[name] = flow.validate_parameters(parameters)

        for step in deployment.get("pull") or prefect_project["pull"]:
            ((step_name, _),) = step.items()
            assert step_name == "prefect.deployments.steps.set_working_directory"

    k8s = deployments["fourm-pretrain-k8s"]
    assert validated["fourm-pretrain-k8s"]["params"].launcher == "kubernetes", (
        "training must leave the flow pod"
    )
    (k8s_pull,) = k8s["pull"]
    assert k8s_pull["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/fourm"
    variables = k8s["work_pool"]["job_variables"]
    schema = template["variables"]
    assert set(variables) <= set(schema["properties"]), set(variables) - set(schema["properties"])
    jsonschema.validate(variables, schema)
    assert {"image", "namespace", "service_account_name", "gpus", "node_selector", "tolerations"} <= set(
        variables
    )
    assert variables["namespace"] == NAMESPACE
    assert variables["service_account_name"] == "fourm-flow-runner"
    # the flow pod only launches training: it must not hold GPUs of its own
    assert not variables["gpus"]
    job = render_job(template, {"name": "fourm-pretrain-k8s", "labels": {}, "annotations": {}, **variables})
    validate_objects([without_prefect_pod_fields(job)])
