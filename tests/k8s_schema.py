"""Offline Kubernetes schema validation for tests, with kubernetes-validate's bundled schemas.

``validate_objects(objs, version)`` checks plain dicts — YAML-loaded manifests, or
``ApiClient().sanitize_for_serialization(obj)`` of kubernetes client models — against the
OpenAPI schema of one Kubernetes version, in strict mode (an unknown field is an error, as
it is for ``kubectl apply --validate=strict``). No cluster, no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The Kubernetes version manifests are checked against (kubernetes-validate 1.37 bundles
# 1.25 ... 1.37); docs/kubernetes.md names it.
KUBERNETES_VERSION = "1.32"


class ManifestInvalid(AssertionError):
    """One or more objects do not match the Kubernetes schema; the message lists every problem."""


def object_label(obj: Mapping[str, Any]) -> str:
    """``Kind/name`` of an object, for messages (generateName when it has no name yet)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    return f"{obj.get('kind', '<no kind>')}/{name}"


def schema_problems(obj: Mapping[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    """What is wrong with one object (empty when it is valid)."""
    import kubernetes_validate

    label = object_label(obj) if isinstance(obj, Mapping) else repr(obj)[:60]
    if not isinstance(obj, Mapping) or "apiVersion" not in obj or "kind" not in obj:
        return [f"{label}: not a Kubernetes object (a mapping with apiVersion and kind)"]
    try:
        # validate() reads the dict only; a copy keeps the caller's object out of its reach
        kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(part) for part in e.path) or "<root>"
        return [f"{label}: {where}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{label}: {e.message}"]
    return []


def validate_objects(objs: Iterable[Mapping[str, Any]], version: str = KUBERNETES_VERSION) -> None:
    """Raise ``ManifestInvalid`` naming every object (and field) that breaks the schema."""
    objs = list(objs)
    problems = [problem for obj in objs for problem in schema_problems(obj, version)]
    if problems:
        raise ManifestInvalid(
            f"{len(problems)} of {len(objs)} objects fail the Kubernetes {version} schema (strict):\n  "
            + "\n  ".join(problems)
        )
