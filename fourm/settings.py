"""Where things are and how to reach them: endpoints, credentials, paths.

Settings come from the environment (prefix ``FOURM_``) or a ``.env`` file; they
never change results (that is params.yaml's job). Secrets are ``SecretStr`` and
are masked whenever settings are shown.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Buckets(BaseModel):
    """S3 bucket names, one per kind of object."""

    datasets: str = "fourm-datasets"
    tokens: str = "fourm-tokens"
    checkpoints: str = "fourm-checkpoints"
    dvc: str = "fourm-dvc"

    def all(self) -> list[str]:
        return [self.datasets, self.tokens, self.checkpoints, self.dvc]


class Settings(BaseSettings):
    """Effective settings; build with ``Settings()`` to read the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FOURM_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
    )

    home: Path = Field(Path(".fourm"), description="Working state: services, caches, the registry.")
    pipeline_parallel_stages: int = Field(
        2,
        ge=1,
        description="DVC stages a pipeline run executes at once where the DAG allows (the tokenizers); "
        "each gets cores / N threads. 1 runs them one by one.",
    )
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_access_key: str = "fourm"
    s3_secret_key: SecretStr = SecretStr("fourm-local-secret")
    s3_region: str = "us-east-1"
    buckets: Buckets = Buckets()
    # Ports of the SeaweedFS processes behind the local S3 endpoint (master, volume, filer).
    s3_internal_ports: tuple[int, int, int] = (9333, 8380, 8888)
    s3_niceness: int = Field(
        19,
        ge=0,
        le=19,
        description="CPU priority (nice) of the local S3 server: SeaweedFS can spin at ~10% of a core "
        "while idle, which slowed training steps on 2 cores by ~12% at 0 and ~3% at 19 (docs/benchmarks.md).",
    )
    registry_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite under home.")
    prefect_api_url: str | None = Field(
        None,
        description="Prefect API for flows and `fourm serve` when Prefect has none configured; "
        "default: the local server of `fourm services up` while it runs.",
    )
    prefect_port: int = Field(4200, description="Port of the local Prefect server (`fourm services up`).")
    k8s_namespace: str = "fourm"
    k8s_image: str = "fourm:latest"
    k8s_config: Path | None = Field(
        None, description="kubeconfig file; default KUBECONFIG or ~/.kube/config."
    )
    k8s_context: str | None = Field(None, description="kubeconfig context; default its current one.")
    wandb_mode: str = "offline"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def services_dir(self) -> Path:
        return self.home_dir / "services"

    @property
    def effective_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.home_dir / 'registry.db'}"

    @property
    def s3_host(self) -> str:
        """``host:port`` of the S3 endpoint, as the minio SDK wants it."""
        return urlparse(self.s3_endpoint).netloc

    @property
    def s3_port(self) -> int:
        return urlparse(self.s3_endpoint).port or 80

    @property
    def s3_secure(self) -> bool:
        return urlparse(self.s3_endpoint).scheme == "https"

    def masked(self) -> dict[str, object]:
        """Settings as a flat dict for display, with every secret masked."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                shown[name] = "**********" if value.get_secret_value() else ""
            elif name == "buckets":
                shown.update({f"buckets.{k}": v for k, v in value.items()})
            else:
                shown[name] = value
        shown["home"] = str(self.home_dir)
        shown["registry_url"] = _mask_url_password(self.effective_registry_url)
        return shown


def _mask_url_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":**********@")
    return url


def get_settings() -> Settings:
    """Read settings afresh (cheap; callers that need one snapshot keep theirs)."""
    return Settings()
