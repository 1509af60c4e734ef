"""A pipeline run started from the Prefect UI, in a real browser.

Real processes throughout: the S3 server and a Prefect server (``fourm services`` on free
ports, a temporary fourm home), ``fourm serve`` serving ``fourm-pipeline`` from a tiny
project (tests/workspace.py), and Debian's Chromium driven by Playwright (no browser
download). The test clicks through the UI as a user does, fills one form field, and
waits for the run to complete; the screenshot of the run page is kept under
``test-artifacts/e2e/``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fourm import services
from fourm.registry.api import Registry
from fourm.settings import Settings
from tests.conftest import REPO, s3_test_settings
from tests.integration.test_serve import FOURM_CLI, _deployment, _free_ports
from tests.waiting import wait_for
from tests.workspace import make_workspace

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "e2e"
MODEL_NAME = "fourm-from-the-ui"  # typed into the form; the project's params.yaml says otherwise


def _form_field(page: Any, label: str) -> Any:  # noqa: ANN401
    """The input of the schema form's property labelled ``label`` (the UI does not tie labels to inputs)."""
    prop = page.locator(
        f"xpath=//span[normalize-space()='{label}']"
        "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]"
    )
    return prop.locator("textarea, input").first


def _flow_runs(api_url: str, deployment_id: Any) -> list[Any]:  # noqa: ANN401
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def test_a_run_started_from_the_prefect_ui_registers_a_model(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base = _free_ports(5)  # S3 and its internals on base..base+3, Prefect on base+4
    settings = Settings(
        **{**s3_test_settings(tmp_path / "home", base).model_dump(), "prefect_port": base + 4}
    )
    ui = f"http://127.0.0.1:{settings.prefect_port}"
    api_url = f"{ui}/api"
    serve: subprocess.Popen[str] | None = None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        services.up(settings)
        services.prefect_up(settings)
        ws, env = make_workspace(tmp_path, settings, replace={"register.model_name": "fourm-default"},
                                 with_flows=True)  # fmt: skip
        env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=api_url,
            PREFECT_HOME=str(tmp_path / "prefect-client"),
            FOURM_WANDB_MODE="disabled",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        serve = subprocess.Popen(
            [str(FOURM_CLI), "serve", "--only", "fourm-pipeline", "--limit", "1"],
            cwd=ws, env=env, stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deployment = wait_for(
            "the fourm-pipeline deployment", lambda: _deployment(api_url, "fourm-pipeline/fourm-pipeline"), 90
        )

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/deployments")
            page.get_by_role("link", name="fourm-pipeline").first.click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            # the typed form: one fieldset per params.yaml section, defaults from the project's params
            field = _form_field(page, "Model Name (Optional)")
            assert field.input_value() == "fourm-default"
            assert _form_field(page, "Num Scenes (Optional)").input_value() == "24"
            field.fill(MODEL_NAME)
            page.get_by_role("button", name="Submit").click()

            runs = wait_for("the flow run the form created", lambda: _flow_runs(api_url, deployment.id), 60)
            run_id = runs[0].id

            def finished() -> Any:  # noqa: ANN401
                if serve.poll() is not None:
                    pytest.fail(
                        f"fourm serve exited ({serve.returncode}): {(tmp_path / 'serve.log').read_text()}"
                    )
                state = _flow_runs(api_url, deployment.id)[0].state
                return state if state is not None and state.is_final() else None

            started = time.monotonic()
            state = wait_for("the flow run to finish", finished, 900)
            print(f"flow run finished in {time.monotonic() - started:.0f} s: {state.type.value}")
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_text("Completed").first.wait_for(timeout=30_000)
            shot = ARTIFACTS / "pipeline-run.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert state.is_completed(), f"{state.message}\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
        assert shot.stat().st_size > 10_000

        # the form's value reached the run, its register stage and the registry
        assert runs[0].parameters["registration"]["model_name"] == MODEL_NAME
        reg = Registry(env["FOURM_REGISTRY_URL"])
        try:
            version = reg.get_version(f"{MODEL_NAME}:1")
            assert version.tags["prefect_flow_run_id"] == str(run_id)
            assert version.tags["git_ref"].startswith("refs/fourm-runs/")
            datasets = [a for a in reg.upstream_artifacts(version.ref) if a.kind == "dataset"]
            assert [a.uri for a in datasets] == ["data/raw"]
            assert datasets[0].metadata["num_samples"] == 24
        finally:
            reg.close()
    finally:
        if serve is not None and serve.poll() is None:
            serve.terminate()
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
        services.prefect_down(settings)
        services.down(settings)
