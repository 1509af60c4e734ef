"""Registry migrations (both backends) and the CLI's handling of bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from typer.testing import CliRunner

from fourm.cli import app
from fourm.registry.api import Registry
from fourm.registry.db import alembic_config, current_revision, head_revision, make_engine
from fourm.registry.errors import RegistryError
from fourm.registry.models import Base

pytestmark = pytest.mark.integration


def test_upgrade_from_empty_database_matches_the_models(registry_url: str) -> None:
    engine = make_engine(registry_url)
    assert current_revision(engine) is None
    Registry(registry_url, engine=engine)
    assert current_revision(engine) == head_revision() == "0003"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    engine.dispose()


def test_upgrade_from_previous_head_keeps_data(registry_url: str) -> None:
    engine = make_engine(registry_url)
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO artifact (kind, name, uri, sha256, size, created_at, metadata) "
                "VALUES ('dataset', 'old', 'data/raw', :sha, 7, CURRENT_TIMESTAMP, '{}')"
            ),
            {"sha": "a" * 64},
        )
    reg = Registry(registry_url, engine=engine)  # migrates 0001 -> head on open
    assert current_revision(engine) == head_revision()
    old = reg.find_artifacts("aaaaaa")[0]
    assert (old.name, old.size) == ("old", 7)
    version = reg.register_model_version("m", old.id)
    assert version.version == 1
    reg.close()


def test_newer_database_is_refused(registry_url: str) -> None:
    Registry(registry_url).close()
    engine = make_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(RegistryError, match="'9999_future', newer than this fourm knows .* upgrade fourm"):
        Registry(registry_url, engine=engine)
    engine.dispose()


def _cli(*args: str, url: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["registry", *args, "--url", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_cli_reports_bad_input_in_one_line(registry_url: str) -> None:
    reg = Registry(registry_url)
    ck = reg.register_artifact("checkpoint", "c", "s3://b/c.pt", "c" * 64, 1)
    reg.register_model_version("demo", ck.id, metrics={"loss": 1.0})
    reg.close()
    for args, expected in [
        (("show", "nope"), "unknown model 'nope'"),
        (("show", "demo:5"), "has no version 5"),
        (("show", "demo@champion"), "no alias 'champion'"),
        (("show", "demo::1"), "malformed model reference"),
        (("promote", "demo:1", "--to", "gold"), "unknown stage 'gold'"),
        (("promote", "demo:1", "--to", "production", "--force"), "--force needs a --reason"),
        (("lineage", "demo", "--format", "svg"), "--format must be text, dot or mermaid"),
        (("alias", "rm", "demo", "x"), "no alias 'x'"),
    ]:
        code, output = _cli(*args, url=registry_url)
        assert code == 1, (args, output)
        assert expected in output and "Traceback" not in output
        assert len(output.strip().splitlines()) == 1, output
    code, output = _cli("show", "demo", "--json", url=registry_url)
    assert code == 0 and json.loads(output)["metrics"] == {"loss": 1.0}
    code, output = _cli(
        "promote", "demo:1", "--to", "production", "--reason", "ok", "--by", "ci", url=registry_url
    )
    assert code == 0 and "none → production" in output and "by ci" in output
    code, output = _cli("ls", "--json", url=registry_url)
    assert json.loads(output)[0]["production"] == [1]
    code, output = _cli("lineage", "demo", "--format", "mermaid", url=registry_url)
    assert code == 0 and output.startswith("flowchart LR")


def test_cli_runs_lists_stage_runs_with_how_long_they_took(registry_url: str) -> None:
    reg = Registry(registry_url)
    done = reg.start_run("pretrain", {"steps": 10}, git_commit="a" * 40)
    reg.finish_run(done, "succeeded")
    reg.start_run("evaluate")  # still running
    reg.close()
    code, output = _cli("runs", "--json", url=registry_url)
    assert code == 0
    rows = {r["stage"]: r for r in json.loads(output)}
    took = dt.datetime.fromisoformat(rows["pretrain"]["finished_at"]) - dt.datetime.fromisoformat(
        rows["pretrain"]["started_at"]
    )
    assert rows["pretrain"]["seconds"] == pytest.approx(took.total_seconds()) and took.total_seconds() >= 0
    assert rows["evaluate"]["status"] == "running" and rows["evaluate"]["seconds"] is None
    result = CliRunner().invoke(
        app, ["registry", "runs", "--stage", "pretrain", "--url", registry_url], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "stage" in line)
    assert header.index("started") < header.index("seconds") < header.index("commit")
    assert "succeeded" in result.output and "aaaaaaaaaa" in result.output and "evaluate" not in result.output


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", "unreachable"),
        ("not a url", "is not a valid SQLAlchemy URL"),
        ("sqlite:////proc/forbidden/registry.db", "registry database"),
        ("postgresql+psycopg://u:pw@127.0.0.1:notaport/db", "not a valid SQLAlchemy URL"),
        ("postgresql+psycopg//u:s3cret-pw@host/db", "not a valid SQLAlchemy URL"),
    ],
)
def test_cli_unusable_database_is_one_line_not_a_traceback(url: str, expected: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fourm", "registry", "ls", "--url", url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "300"},
        check=False,
    )
    assert proc.returncode == 1
    assert expected in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout


def test_cli_register_from_files(registry_url: str, tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"weights")
    (tmp_path / "text.json").write_text("{}")
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": 1.25, "baselines": {"loss": 3.0}}))
    result = CliRunner().invoke(
        app,
        [
            "registry",
            "register",
            "tiny",
            "--checkpoint",
            str(tmp_path / "last.pt"),
            "--tokenizer",
            str(tmp_path / "text.json"),
            "--evaluation",
            str(tmp_path / "metrics.json"),
            "--url",
            registry_url,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    version = json.loads(result.output)
    assert version["version"] == 1 and version["metrics"]["loss"] == 1.25
    assert version["checkpoint"]["sha256"] == __import__("hashlib").sha256(b"weights").hexdigest()
    assert [t["name"] for t in version["tokenizers"]] == ["text.json"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, output = _cli(
        "register",
        "tiny",
        "--checkpoint",
        str(tmp_path / "last.pt"),
        "--evaluation",
        str(tmp_path / "bad.json"),
        url=registry_url,
    )
    assert code == 1 and "metrics must be a JSON object" in output
    code, output = _cli("register", "tiny", "--checkpoint", str(tmp_path / "missing.pt"), url=registry_url)
    assert code == 1 and "missing.pt" in output and "Traceback" not in output
