"""The ``fourm-pipeline`` flow: run the DVC stages as Prefect tasks, then push.

Each task runs one stage with ``dvc repro --single-item`` in the workspace, so
DVC's content hashes decide what is skipped, and streams the stage's output to
the Prefect run log. After a stage, its report (the stage's metrics file in
dvc.yaml) is published as artifacts; a failed validation publishes the report
of the failure. Finally ``dvc push`` stores every output in the S3 remote.

Run locally: ``python -m flows.pipeline`` (what ``make demo`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.artifacts import (
    publish_evaluation,
    publish_image,
    publish_pretrain,
    publish_quarantine,
    publish_stage_report,
    publish_tokenizer_eval,
    publish_validation,
)
from fourm.data.ingest import QUARANTINE
from fourm.io import canonical_json, sha256_bytes
from fourm.registry.api import Registry
from fourm.registry.hooks import FLOW_RUN_ENV
from fourm.settings import get_settings
from fourm.summary import pipeline_summary, validation_line
from fourm.validation.stage import failure_report_path


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero (bad data or a bug: not retried)."""


def _env() -> dict[str, str]:
    # The stages call `fourm`; make the interpreter's bin dir win on PATH, and tell
    # them the flow run they belong to (recorded with their registry run).
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        FLOW_RUN_ENV: str(flow_run.id or ""),
    }


def _record_lock_entry(ws: Path, stage: str) -> None:
    """Attach the stage's dvc.lock entry hash to the registry run this flow run made."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text()) if (ws / "dvc.lock").exists() else {}
    entry = (lock.get("stages") or {}).get(stage)
    if entry is None or not flow_run.id:
        return
    registry = Registry(get_settings().effective_registry_url)
    try:
        registry.attach_dvc_lock_by_flow_run(stage, str(flow_run.id), sha256_bytes(canonical_json(entry)))
    finally:
        registry.close()


def _stream(cmd: list[str], cwd: Path) -> int:
    """Run ``cmd``, sending each output line to the Prefect run log as it arrives."""
    logger = get_run_logger()
    logger.info("$ %s", " ".join(cmd))
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logger.info(line.rstrip())
    return proc.returncode


def _outputs(entries: list) -> list[Path]:
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []]


def _substitute(value: Any, item: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${item}", str(item))
    if isinstance(value, list):
        return [_substitute(v, item) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, item): _substitute(v, item) for k, v in value.items()}
    return value


def _foreach_items(items: Any, workspace: Path) -> list[Any]:
    """A ``foreach`` list, or the params.yaml list a ``${section.key}`` template names."""
    if isinstance(items, str) and items.startswith("${") and items.endswith("}"):
        value: Any = yaml.safe_load((workspace / "params.yaml").read_text())
        for key in items[2:-1].split("."):
            value = value[key]
        return list(value)
    return list(items)


def dvc_stages(workspace: Path) -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages in file order, ``foreach`` stages expanded to ``name@item`` as DVC names them."""
    spec = yaml.safe_load((workspace / "dvc.yaml").read_text())
    stages: dict[str, dict[str, Any]] = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            for item in _foreach_items(stage["foreach"], workspace):
                stages[f"{name}@{item}"] = _substitute(stage["do"], item)
        else:
            stages[name] = stage
    return stages


def stage_plots(workspace: Path) -> dict[str, list[Path]]:
    """Stage name -> its plots files from dvc.yaml."""
    return {name: _outputs(stage.get("plots")) for name, stage in dvc_stages(workspace).items()}


def stage_reports(workspace: Path) -> dict[str, Path]:
    """Stage name -> its report (the first metrics file) from dvc.yaml, in DAG order."""
    return {
        name: next(iter(_outputs(stage.get("metrics"))), None)
        for name, stage in dvc_stages(workspace).items()
    }


def _publish(report: dict[str, Any], stage: str, report_path: Path | None = None) -> None:
    if "tasks" in report and "beats_baseline" in report:
        publish_evaluation(report, stage, report_path.with_name("report.md") if report_path else None)
    elif "suite" in report and "rules" in report:
        publish_validation(report, stage)
    elif "tokenizers" in report and "split" in report:
        publish_tokenizer_eval(report, stage)
    elif "below_baseline" in report:
        publish_pretrain(report, stage)
    else:
        publish_stage_report(report, stage)


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, workspace: str, report: str | None) -> dict[str, Any] | None:
    """Reproduce one DVC stage; publish its report (or the failure's) as artifacts."""
    ws = Path(workspace)
    started = time.time()
    code = _stream(["dvc", "repro", "--single-item", stage], ws)
    if code != 0:
        failed = failure_report_path(ws / report) if report else None
        if failed is not None and failed.exists() and failed.stat().st_mtime >= started:
            failure = json.loads(failed.read_text())
            _publish(failure, stage)
            raise StageFailed(f"stage {stage} failed: {validation_line(failure)}")
        raise StageFailed(f"stage {stage} failed (exit {code}); see the log above")
    _record_lock_entry(ws, stage)
    for plot in stage_plots(ws).get(stage, []):
        pngs = sorted((ws / plot).glob("*.png")) if (ws / plot).is_dir() else [ws / plot]
        for png in pngs:
            if png.suffix == ".png" and png.exists():
                publish_image(png, stage, f"{stage}: {png.name}", key_suffix=png.stem)
    for out in _outputs(dvc_stages(ws)[stage].get("outs")):
        if (ws / out / QUARANTINE).is_file():  # ingest's rejected files, with their reasons
            publish_quarantine(json.loads((ws / out / QUARANTINE).read_text()), stage)
    if report and (ws / report).exists():
        data = json.loads((ws / report).read_text())
        _publish(data, stage, ws / report)
        return data
    return None


@task(name="dvc-push", retries=3, retry_delay_seconds=[2, 5, 15])
def push(workspace: str) -> None:
    """Push outputs to the S3 remote; network trouble is retried with backoff."""
    if _stream(["dvc", "push"], Path(workspace)) != 0:
        raise RuntimeError("dvc push failed")


@flow(name="fourm-pipeline", log_prints=True)
def pipeline(workspace: str = ".", push_to_remote: bool = True) -> list[str]:
    """Run every dvc.yaml stage in order (unchanged stages are skipped), then push."""
    ws = Path(workspace).resolve()
    reports = stage_reports(ws)
    for stage, report in reports.items():
        run_stage(stage, str(ws), str(report) if report else None)
    if push_to_remote:
        push(str(ws))
    summary = pipeline_summary(
        ws / "data" / "raw",
        [ws / r for s, r in reports.items() if r is not None and s.startswith("validate")],
    )
    for line in summary:
        print(line)
    return summary


def use_configured_prefect_api() -> str | None:
    """Point Prefect at fourm's Prefect server unless Prefect has an API URL of its own.

    Prefect's own settings (``PREFECT_API_URL``, a profile) win; else
    ``FOURM_PREFECT_API_URL``; else the local server that ``fourm services up``
    started, while it runs. Returns the API URL in effect; None means Prefect will
    start a temporary server of its own for this process (no UI to look at)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    from fourm.services import prefect_api_url

    current = get_current_settings().api.url
    if current:
        return current
    api_url = prefect_api_url(get_settings())
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
        refresh_global_settings_context()  # Prefect read the environment when it was imported
    return api_url


def prefect_ui_url() -> str | None:
    """The UI of the Prefect API in effect (Prefect derives it from the API URL; Cloud too)."""
    from prefect.settings import get_current_settings

    return get_current_settings().ui_url


if __name__ == "__main__":
    api = use_configured_prefect_api()
    if api:
        print(f"Prefect API {api}: watch this run in the UI at {prefect_ui_url()}")
    else:
        print("No Prefect server configured (`fourm services up` starts one): using a temporary one")
    lines = pipeline()
    print("\n== fourm pipeline: done ==", *lines, sep="\n")
