"""The ``fourm-pipeline`` flow: one run of the DVC pipeline in a workspace of its own.

A run gets a git worktree of the checkout's commit (``fourm.run_workspace``) with
the run's parameters, which are the flow's typed parameters (one pydantic model
per params.yaml section, defaults from the checkout's params.yaml, so the Prefect
UI renders a form), written to its params.yaml, and a DVC cache shared with the
checkout. Each task runs one stage with ``dvc repro --single-item`` there, so DVC
decides what is skipped or restored from the cache, streams the stage's output to
the Prefect run log and publishes its report as artifacts (a failed validation
publishes the failure's). A stage starts once the stages it reads from are done;
independent ones (the tokenizers) run side by side, ``pipeline_parallel_stages`` at a
time, sharing the cores (``fourm.stage_schedule``). Then ``dvc push`` stores the
outputs in the S3 remote, params.yaml + dvc.lock + the reports are committed to ``refs/fourm-runs/<run>``,
and the registered model version is tagged with that ref (``fourm reproduce``
rebuilds it from there). Two runs share nothing but the cache and the registry.

Run locally: ``python -m flows.pipeline`` (what ``make demo`` does).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.artifacts import (
    publish_evaluation,
    publish_image,
    publish_pretrain,
    publish_quarantine,
    publish_stage_report,
    publish_stage_times,
    publish_tokenizer_eval,
    publish_validation,
)
from flows.retries import retry_only_on
from fourm.cli import TRANSIENT_EXIT
from fourm.data.ingest import QUARANTINE
from fourm.dvc_spec import dvc_stages, stage_outputs, stage_plots, stage_reports, stage_upstreams
from fourm.io import canonical_json, sha256_bytes
from fourm.params import (
    EvaluateParams,
    GenerateParams,
    IngestParams,
    LabelParams,
    Params,
    PretrainParams,
    RegisterParams,
    SourceParams,
    TokenizeParams,
    TokenizersParams,
    ValidateParams,
    load_params,
)
from fourm.registry.api import Registry
from fourm.registry.hooks import FLOW_RUN_ENV
from fourm.run_workspace import (
    RunWorkspace,
    commit_run_ref,
    create_run_workspace,
    order_lock_stages,
    stage_env,
    write_dvc_ignores,
)
from fourm.settings import get_settings
from fourm.stage_schedule import StageScheduler, thread_env
from fourm.stage_times import StageTime, restored_from_cache, stage_time_rows, stage_times_line, timeline_png
from fourm.summary import model_lines, pipeline_summary, validation_line
from fourm.validation.stage import failure_report_path

REGISTER_REPORT = Path("reports/register.json")
TIMELINE = Path("reports/pipeline_timeline.png")  # not a DVC output: it stays out of the run's ref


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero (bad data or a bug: not retried)."""


class TransientStageFailure(StageFailed):
    """A stage failed because S3 or a service did not answer: retried with backoff."""


def _checkout_params() -> Params:
    """The form's defaults: params.yaml of the directory the flow is served or run from."""
    path = Path("params.yaml")
    return load_params(path) if path.exists() else Params()


_DEFAULTS = _checkout_params()
# params.yaml sections a run may set (the flow's parameters, in DAG order); attribute names differ
# from the section names where a section shadows a pydantic attribute (validate, register)
SECTIONS = ("source", "generate", "ingest", "validate", "label", "tokenizers", "tokenize", "pretrain",
            "evaluate", "register")  # fmt: skip


FLOW_PARAMETER = {"validate": "validation", "register": "registration"}  # the rest: the section's name


def sections_of(params: Params) -> dict[str, BaseModel]:
    """params.yaml section name -> its model in ``params``."""
    return {name: getattr(params, name if name in Params.model_fields else f"{name}_") for name in SECTIONS}


def flow_parameters(params: Params) -> dict[str, BaseModel]:
    """The flow's section parameters taken from a Params (e.g. a workspace's params.yaml)."""
    return {FLOW_PARAMETER.get(name, name): model for name, model in sections_of(params).items()}


def _default(name: str) -> Any:
    return sections_of(_DEFAULTS)[name]


def _env(workspace: Path, threads: int | None = None) -> dict[str, str]:
    # the stages record which flow run they belong to with their registry run
    return {
        **stage_env(workspace, get_settings().home_dir),
        FLOW_RUN_ENV: str(flow_run.id or ""),
        **thread_env(threads),
    }


def _read_lock(ws: Path) -> dict[str, Any]:
    """The workspace's dvc.lock, read under DVC's workspace lock: a stage running beside this one
    rewrites the file (in place) when it finishes, holding that lock."""
    from dvc.repo import Repo

    with Repo(str(ws), _wait_for_lock=True) as repo, repo.lock:
        path = ws / "dvc.lock"
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _record_lock_entry(ws: Path, stage: str) -> None:
    """Attach the stage's dvc.lock entry hash to the registry run this flow run made."""
    entry = (_read_lock(ws).get("stages") or {}).get(stage)
    if entry is None or not flow_run.id:
        return
    registry = Registry(get_settings().effective_registry_url)
    try:
        registry.attach_dvc_lock_by_flow_run(stage, str(flow_run.id), sha256_bytes(canonical_json(entry)))
    finally:
        registry.close()


def _stream(cmd: list[str], cwd: Path, threads: int | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, sending each output line to the Prefect run log as it arrives."""
    logger = get_run_logger()
    logger.info("$ %s%s", " ".join(cmd), f"  ({threads} threads)" if threads else "")
    lines: list[str] = []
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_env(cwd, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            logger.info(line.rstrip())
    return proc.returncode, lines


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


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_only_on(TransientStageFailure),
)
def run_stage(stage: str, workspace: str, report: str | None, threads: int | None = None) -> dict[str, Any]:
    """Reproduce one DVC stage; publish its report (or the failure's) as artifacts.

    Returns when it started and ended (epoch seconds) and whether DVC restored its outputs.

    ``threads`` caps the stage's torch/MKL threads while other stages run beside it.
    ``--wait-for-lock``: DVC holds the workspace lock while it starts and records a stage
    (not while the command runs), so a stage beside this one waits its turn for those."""
    ws = Path(workspace)
    started = time.time()
    code, lines = _stream(["dvc", "--wait-for-lock", "repro", "--single-item", stage], ws, threads)
    if code != 0:
        failed = failure_report_path(ws / report) if report else None
        if failed is not None and failed.exists() and failed.stat().st_mtime >= started:
            failure = json.loads(failed.read_text())
            _publish(failure, stage)
            raise StageFailed(f"stage {stage} failed: {validation_line(failure)}")
        if any(re.search(rf"exited with {TRANSIENT_EXIT}\b", line) for line in lines):
            raise TransientStageFailure(f"stage {stage}: S3 or a service did not answer; retrying")
        raise StageFailed(f"stage {stage} failed (exit {code}); see the log above")
    _record_lock_entry(ws, stage)
    for plot in stage_plots(ws).get(stage, []):
        pngs = sorted((ws / plot).glob("*.png")) if (ws / plot).is_dir() else [ws / plot]
        for png in pngs:
            if png.suffix == ".png" and png.exists():
                publish_image(png, stage, f"{stage}: {png.name}", key_suffix=png.stem)
    for out in stage_outputs(dvc_stages(ws)[stage]):
        if (ws / out / QUARANTINE).is_file():  # ingest's rejected files, with their reasons
            publish_quarantine(json.loads((ws / out / QUARANTINE).read_text()), stage)
    if report and (ws / report).exists():
        _publish(json.loads((ws / report).read_text()), stage, ws / report)
    return {"started": started, "ended": time.time(), "restored": restored_from_cache(lines)}


@task(name="dvc-push", retries=3, retry_delay_seconds=[2, 5, 15])
def push(workspace: str) -> None:
    """Push outputs (and DVC's run cache) to the S3 remote; network trouble is retried with backoff."""
    if _stream(["dvc", "push", "--run-cache"], Path(workspace))[0] != 0:
        raise RuntimeError("dvc push failed")


@task(name="commit-run-ref")
def commit_and_tag(ws: RunWorkspace) -> dict[str, Any]:
    """Commit the run's params.yaml + dvc.lock + reports to its ref; tag the model version with it."""
    sha = commit_run_ref(
        ws, f"fourm run {ws.name}: params.yaml, dvc.lock and reports\n\nflow run {flow_run.id}"
    )
    registered = json.loads((ws.path / REGISTER_REPORT).read_text())
    registry = Registry(get_settings().effective_registry_url)
    try:
        version = registry.get_version(registered["ref"])
        if "git_ref" not in version.tags:  # a cached register stage: the first run's ref stays
            version = registry.tag_version(
                version.ref,
                {
                    "git_ref": ws.ref,
                    "git_commit": sha,
                    "run": ws.name,
                    "prefect_flow_run_id": str(flow_run.id),
                },
            )
    finally:
        registry.close()
    get_run_logger().info("committed %s (%s) for %s", ws.ref, sha[:12], registered["ref"])
    return {**registered, "git_ref": ws.ref, "git_commit": sha, "version_git_ref": version.tags["git_ref"]}


def _cores() -> int:
    """CPUs this process may use (its affinity mask, which containers set), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_stages(workspace: Path, reports: dict[str, Path | None], slots: int) -> list[StageTime]:
    """Run every stage, each once its upstream stages are done, up to ``slots`` at a time; return
    each stage's span, from the first stage's start.

    A failed stage stops new ones from starting; those running finish, then its error is raised.
    DVC's .gitignore lines and dvc.lock's entries are put in dvc.yaml order, not finishing order,
    so a run's ref does not depend on which of two stages side by side ended first."""
    write_dvc_ignores(workspace)
    upstreams = stage_upstreams(workspace)
    scheduler = StageScheduler(
        {s: [u for u in upstreams[s] if u in reports] for s in reports}, slots, _cores()
    )
    running: dict[PrefectFuture, str] = {}
    assigned: dict[str, int | None] = {}
    spans: dict[str, dict[str, Any]] = {}
    error: BaseException | None = None
    while not scheduler.finished:
        for stage, threads in scheduler.launches():
            report = reports[stage]
            future = run_stage.submit(stage, str(workspace), str(report) if report else None, threads)
            running[future] = stage
            assigned[stage] = threads
        future = next(as_completed(list(running)))
        stage = running.pop(future)
        try:
            spans[stage] = future.result()
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the running stages end
            error = error or err
            scheduler.finish(stage, ok=False)
        else:
            scheduler.finish(stage, ok=True)
    if error is not None:
        raise error
    order_lock_stages(workspace)
    origin = min((span["started"] for span in spans.values()), default=0.0)
    return [
        StageTime(stage, span["started"] - origin, span["ended"] - origin, assigned[stage], span["restored"])
        for stage, span in spans.items()
    ]


def default_run_name() -> str:
    """UTC time and the flow run's id: sortable, unique, a valid git ref component."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{str(flow_run.id or uuid.uuid4())[:8]}"


@flow(name="fourm-pipeline", log_prints=True)
def pipeline(
    run_name: str | None = None,
    source: SourceParams = _default("source"),
    generate: GenerateParams = _default("generate"),
    ingest: IngestParams = _default("ingest"),
    validation: ValidateParams = _default("validate"),
    label: LabelParams = _default("label"),
    tokenizers: TokenizersParams = _default("tokenizers"),
    tokenize: TokenizeParams = _default("tokenize"),
    pretrain: PretrainParams = _default("pretrain"),
    evaluate: EvaluateParams = _default("evaluate"),
    registration: RegisterParams = _default("register"),
    repo: str = ".",
    push_to_remote: bool = True,
) -> list[str]:
    """Run every dvc.yaml stage in a run workspace with these parameters, push, commit the run's ref.

    ``run_name`` names the workspace and ``refs/fourm-runs/<run_name>`` (default: time and id);
    ``repo`` is the git checkout whose HEAD runs. ``validation`` and ``registration`` are the
    ``validate`` and ``register`` sections (pydantic reserves those two names)."""
    settings = get_settings()
    values = dict(zip(SECTIONS, (source, generate, ingest, validation, label, tokenizers, tokenize, pretrain,
                                 evaluate, registration), strict=True))  # fmt: skip
    sections = {name: model.model_dump(mode="json", by_alias=True) for name, model in values.items()}
    ws = create_run_workspace(
        Path(repo), run_name or default_run_name(), settings.home_dir / "runs", sections
    )
    print(f"run {ws.name}: workspace {ws.path} (commit {ws.base_commit[:12]})")
    reports = stage_reports(ws.path)
    times = run_stages(ws.path, reports, settings.pipeline_parallel_stages)
    timeline_png(times, ws.path / TIMELINE, f"run {ws.name}: stages")
    publish_stage_times(stage_time_rows(times), ws.path / TIMELINE)
    if push_to_remote:
        push(str(ws.path))
    registered = commit_and_tag(ws)
    evaluation = ws.path / "reports" / "evaluate" / "metrics.json"
    summary = pipeline_summary(
        ws.path / "data" / "raw",
        [ws.path / r for s, r in reports.items() if r is not None and s.startswith("validate")],
    ) + model_lines(registered, json.loads(evaluation.read_text()), ws.path / "reports" / "evaluate")
    summary += [stage_times_line(times), f"timeline of the stages: {ws.path / TIMELINE}"]
    create_markdown_artifact(
        key="pipeline-summary", markdown="\n".join(f"- {line}" for line in summary), description="the run"
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
    if api:
        print(
            f"Prefect UI: {prefect_ui_url()} (flow runs, their logs and artifacts; "
            "Deployments once `fourm serve` runs)"
        )
