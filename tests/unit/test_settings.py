"""Settings: environment and .env are read; secrets never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fourm.settings import Settings

pytestmark = pytest.mark.unit


def test_env_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOURM_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("FOURM_WANDB_MODE", raising=False)  # conftest disables W&B for the suite
    monkeypatch.setenv("FOURM_S3_ENDPOINT", "http://127.0.0.1:9999")
    monkeypatch.setenv("FOURM_BUCKETS__DATASETS", "my-data")
    s = Settings()
    assert s.home_dir == (tmp_path / "h").resolve()
    assert (s.s3_host, s.s3_port, s.s3_secure) == ("127.0.0.1:9999", 9999, False)
    assert s.buckets.datasets == "my-data"
    assert s.effective_registry_url == f"sqlite:///{(tmp_path / 'h').resolve()}/registry.db"
    assert s.wandb_mode == "offline"


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FOURM_K8S_NAMESPACE=research\n")
    assert Settings().k8s_namespace == "research"


def test_masked_hides_secrets_and_url_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOURM_S3_SECRET_KEY", "s3cr3t-value")
    monkeypatch.setenv("FOURM_REGISTRY_URL", "postgresql+psycopg://u:pw-value@127.0.0.1/db")
    shown = Settings().masked()
    text = repr(shown)
    assert "s3cr3t-value" not in text and "pw-value" not in text
    assert shown["s3_secret_key"] == "**********"
    assert "s3cr3t-value" not in repr(Settings())


def test_cli_prints_settings_without_secret(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fourm", "settings"],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "FOURM_S3_SECRET_KEY": "very-secret-string",
            "FOURM_HOME": str(tmp_path),
            "COLUMNS": "200",
        },
    )
    assert "very-secret-string" not in proc.stdout + proc.stderr
    assert "s3_secret_key" in proc.stdout and "**********" in proc.stdout


def test_parallel_stages_default_two_and_refuse_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.delenv("FOURM_PIPELINE_PARALLEL_STAGES", raising=False)
    assert Settings().pipeline_parallel_stages == 2
    monkeypatch.setenv("FOURM_PIPELINE_PARALLEL_STAGES", "0")
    with pytest.raises(ValidationError, match="pipeline_parallel_stages"):
        Settings()


def test_the_s3_server_starts_at_the_niceness_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fourm import services

    monkeypatch.setenv("FOURM_S3_NICENESS", "0")
    plain = Settings(home=tmp_path)
    assert services._command(plain, services._paths(plain))[0] == services.weed_binary()
    niced = Settings(home=tmp_path, s3_niceness=19)
    assert services._command(niced, services._paths(niced))[:4] == [
        "nice",
        "-n",
        "19",
        services.weed_binary(),
    ]
    with pytest.raises(ValueError, match="s3_niceness"):
        Settings(home=tmp_path, s3_niceness=20)
