"""The stand-in API server (tests/kube_standin.py) set up as fourm's pods expect a cluster."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client

from fourm.settings import Settings
from tests.conftest import REPO
from tests.kube_standin import KubeStandIn

NAMESPACE = "fourm"


@contextmanager
def fourm_standin(workdir: Path, s3: Settings, **options: Any) -> Iterator[KubeStandIn]:
    """A stand-in whose pods run this checkout with this venv's Python, with the ``fourm-s3``
    Secret users create (the credentials of the test S3 server ``s3``)."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    with KubeStandIn(workdir, extra_env=env, **options) as kube:
        client.CoreV1Api(kube.api_client()).create_namespaced_secret(
            NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="fourm-s3"),
                string_data={
                    "FOURM_S3_ENDPOINT": s3.s3_endpoint,
                    "FOURM_S3_ACCESS_KEY": s3.s3_access_key,
                    "FOURM_S3_SECRET_KEY": s3.s3_secret_key.get_secret_value(),
                },
            ),
        )
        yield kube
        assert not kube.errors, kube.errors
