"""The Temporal Web UI as a user sees it: headless Chromium opens a completed pipeline's page and finds
every stage there; the screenshots stay in tests/artifacts/ (web_ui_<workflow id>.png).

The module starts its own dev server WITH the Web UI (`quanto server start`, UI on a free port: the
session's shared server is headless), a `quanto worker` for it, and runs the small daily job with
`quanto pipeline run --wait`, whose printed `ui_url` is the page the browser opens.

What it needs beyond `make setup` (which installs the Python package `playwright`; its driver ships in
the wheel, and no browser is ever downloaded — never run `playwright install`):

- Debian's Chromium at /usr/bin/chromium: `sudo apt-get install chromium` (`.ci/run` installs it in CI
  when it is missing). Elsewhere, point `QUANTO_CHROMIUM` at a Chromium or Chrome binary.
- PostgreSQL on 127.0.0.1:5432, as for every integration test.

A missing browser fails the test with that instruction; it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from quanto.contracts import PIPELINE_STAGES
from quanto.workflows.pipeline import TRAINING_STAGE
from tests.conftest import REPO, free_port, start_worker
from tests.e2e.test_cli import quanto
from tests.integration.conftest import DAILY, stop_process_group, write_config

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("QUANTO_CHROMIUM", "/usr/bin/chromium")
# No sandbox (CI runs as root), no GPU, and none of Chromium's own traffic (updates, sync, QUIC probes),
# which would only knock on a closed network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1600, "height": 1200}
# Upper bound for the single-page app to fetch and draw a history; a page that renders passes at once.
RENDER_MS = 30_000
# Any request that would leave this machine (the UI is served on 127.0.0.1): refused, never waited on.
OFF_MACHINE = re.compile(r"^(https?|wss?)://(?!127\.0\.0\.1[:/])")
# The walk-forward stage runs as a child workflow of this type, one activity per fold.
TRAINING_WORKFLOW = "TrainingWorkflow"
FOLD_ACTIVITIES = ("training.plan", "training.fold", "training.finalize")


@pytest.fixture(scope="module")
def ui_run(pg_dsn, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A completed daily pipeline on a dev server of this module with its Web UI on:
    the `quanto pipeline run --json` output plus `ui_base` (the UI's address)."""
    project = tmp_path_factory.mktemp("web-ui")
    ui_port = free_port()
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "QUANTO_UI_PORT": str(ui_port)}
    started = quanto("server", "start", "--json", cwd=project, env=env, timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    worker = None
    try:
        worker = start_worker(project / "worker.log", env=env)
        path, _ = write_config(project, "web-ui", DAILY)
        res = quanto("pipeline", "run", "-c", str(path), "--wait", "--json", cwd=project, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout)
        assert out["status"] == "completed"
        yield {**out, "ui_base": f"http://127.0.0.1:{ui_port}"}
    finally:
        if worker is not None:
            stop_process_group(worker, signal.SIGINT, wait_s=20)
        quanto("server", "stop", "--json", cwd=project, env=env, timeout=60)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright (Debian's build; nothing downloaded)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install it with `sudo apt-get install chromium` (Debian), "
            "or set QUANTO_CHROMIUM to a Chromium binary; never `playwright install`"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser tab that cannot reach beyond this machine."""
    context = browser.new_context(viewport=VIEWPORT)
    context.route(OFF_MACHINE, lambda route: route.abort())
    tab = context.new_page()
    tab.set_default_timeout(RENDER_MS)
    yield tab
    context.close()


def shown(locator) -> None:
    """Wait until the locator's element is drawn (the UI fetches histories after the page loads)."""
    from playwright.sync_api import expect

    expect(locator).to_be_visible(timeout=RENDER_MS)


def timeline_events(page, names: list[str]) -> None:
    """Every name is a completed event on the page's timeline (one button per activity or child)."""
    for name in names:
        shown(page.get_by_role("button", name=f"Event {name}: Completed", exact=True).first)


def keep_screenshot(page, name: str) -> Path:
    """Full-page screenshot at tests/artifacts/web_ui_<name>.png; checks it is a real picture."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"web_ui_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= VIEWPORT["width"] and img.height >= VIEWPORT["height"]
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)  # None: more than that many
        assert colours is None or len(colours) > 100, f"{path} is nearly blank ({len(colours)} colours)"
    return path


def test_web_ui_lists_every_stage_of_a_completed_pipeline(page, ui_run):
    workflow_id = ui_run["workflow_id"]
    assert ui_run["ui_url"].startswith(f"{ui_run['ui_base']}/namespaces/default/workflows/{workflow_id}/")
    stage_activities = [s.activity for s in PIPELINE_STAGES if s.name != TRAINING_STAGE]
    assert len(stage_activities) == len(PIPELINE_STAGES) - 1

    # The link the CLI prints opens the event history: one "Activity Type …" per scheduled stage.
    page.goto(ui_run["ui_url"])
    shown(page.get_by_role("heading", name=workflow_id))
    shown(page.get_by_role("status").filter(has_text="Completed").first)
    for activity_type in stage_activities:
        shown(page.get_by_role("cell", name=f"Activity Type {activity_type}", exact=True))
    shown(page.get_by_role("cell", name=f"Workflow Type Name {TRAINING_WORKFLOW}", exact=True).first)

    # The timeline, as a user clicks to it: every stage a completed bar, walk-forward as the child.
    page.get_by_role("tab", name="Timeline").click()
    timeline_events(page, [*stage_activities, TRAINING_WORKFLOW])
    keep_screenshot(page, workflow_id)


def test_web_ui_leads_from_the_pipeline_to_its_walk_forward_folds(page, ui_run):
    workflow_id = ui_run["workflow_id"]
    page.goto(f"{ui_run['ui_base']}/namespaces/default/workflows/{workflow_id}")
    page.get_by_role("tab", name=re.compile(r"^Relationships")).click()
    child = page.get_by_role("link", name=re.compile(rf"^{re.escape(workflow_id)}-training-"))
    shown(child)
    child.click()
    page.wait_for_url(re.compile(rf"/workflows/{re.escape(workflow_id)}-training-"))
    timeline_events(page, list(FOLD_ACTIVITIES))
    folds = page.get_by_role("button", name="Event training.fold: Completed", exact=True)
    assert folds.count() >= 2  # the daily job walks forward over several folds
    keep_screenshot(page, f"{workflow_id}-training")
