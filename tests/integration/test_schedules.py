"""`quanto schedule …` against the real dev server: apply is idempotent, a triggered run completes,
pause/unpause/backfill/delete act on Temporal's Schedules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quanto.contracts import IngestResult
from tests.conftest import REPO
from tests.integration.conftest import connect, wait_for

pytestmark = pytest.mark.integration


def quanto(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", *args],
        cwd=cwd,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_files(folder: Path, cron: str = "30 18 * * 1-5") -> Path:
    job = yaml.safe_load((REPO / "configs" / "ingest-sample.yaml").read_text())
    job.update({"name": "sched-sample", "lake_root": str(folder / "lake"), "symbols": ["AAPL"],
                "start": "2012-01-01", "end": "2012-03-01"})  # fmt: skip
    (folder / "ingest.yaml").write_text(yaml.safe_dump(job))
    schedules = {
        "timezone": "America/New_York",
        "schedules": [
            {"name": "it-nightly-ingest", "kind": "ingest", "config": "ingest.yaml", "cron": [cron]},
            {
                "name": "it-validate",
                "kind": "pipeline",
                "config": str(REPO / "configs" / "demo.yaml"),
                "until": "validate",
                "cron": ["0 19 * * 1-5"],
                "paused": True,
            },  # fmt: skip
        ],
    }
    path = folder / "schedules.yaml"
    path.write_text(yaml.safe_dump(schedules))
    return path


async def test_apply_is_idempotent_and_a_triggered_run_completes(session_worker, tmp_path):
    path = write_files(tmp_path)
    first = json.loads(quanto("schedule", "apply", "-c", str(path), "--json", cwd=tmp_path).stdout)
    assert first == {"created": ["it-nightly-ingest", "it-validate"], "updated": [], "unchanged": []}
    again = json.loads(quanto("schedule", "apply", "-c", str(path), "--json", cwd=tmp_path).stdout)
    assert again == {"created": [], "updated": [], "unchanged": ["it-nightly-ingest", "it-validate"]}
    write_files(tmp_path, cron="45 18 * * 1-5")
    changed = json.loads(quanto("schedule", "apply", "-c", str(path), "--json", cwd=tmp_path).stdout)
    assert changed == {"created": [], "updated": ["it-nightly-ingest"], "unchanged": ["it-validate"]}

    client = await connect()
    desc = await client.get_schedule_handle("quanto-it-nightly-ingest").describe()
    assert desc.schedule.spec.time_zone_name == "America/New_York"
    assert desc.schedule.spec.calendars[0].minute[0].start == 45  # the update reached Temporal
    listed = json.loads(quanto("schedule", "ls", "--json", cwd=tmp_path).stdout)["schedules"]
    by_name = {r["name"]: r for r in listed}
    assert by_name["it-validate"]["paused"] and not by_name["it-nightly-ingest"]["paused"]
    assert by_name["it-nightly-ingest"]["next_runs"]

    trig = quanto("schedule", "trigger", "it-nightly-ingest", "--json", cwd=tmp_path)
    assert trig.returncode == 0, trig.stderr

    async def started():
        d = await client.get_schedule_handle("quanto-it-nightly-ingest").describe()
        return d.info.recent_actions[-1].action.workflow_id if d.info.recent_actions else None

    wf_id = await wait_for(started, timeout=60, what="the triggered run")
    assert wf_id.startswith("ingest-sched-sample-scheduled")
    result = await client.get_workflow_handle(wf_id, result_type=IngestResult).result()
    # The plan fixed "today" itself (no date in the schedule) and fetched the one year partition.
    assert result.status == "completed" and result.totals["fetched"] == result.partitions == 1
    assert result.totals["rows"] == 40  # sessions in Jan and Feb 2012

    paused = quanto("schedule", "pause", "it-nightly-ingest", cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr[-3000:]
    assert (await client.get_schedule_handle("quanto-it-nightly-ingest").describe()).schedule.state.paused
    assert quanto("schedule", "unpause", "it-nightly-ingest", cwd=tmp_path).returncode == 0
    assert not (await client.get_schedule_handle("quanto-it-nightly-ingest").describe()).schedule.state.paused
    bad = quanto("schedule", "backfill", "it-nightly-ingest", "--from", "2024-01-02", "--to", "2024-01-01",
                 "--json", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "must be after" in json.loads(bad.stdout)["error"]

    refused = quanto("schedule", "backfill", "it-nightly-ingest", "--from", "2024-01-01", "--to", "2024-01-05",
                     "--json", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "fetch today again" in json.loads(refused.stdout)["error"]

    for name in ("it-nightly-ingest", "it-validate"):
        assert quanto("schedule", "delete", name, cwd=tmp_path).returncode == 0
    gone = quanto("schedule", "pause", "it-validate", "--json", cwd=tmp_path)
    assert gone.returncode == 2 and "it-validate" in json.loads(gone.stdout)["error"]
    names = [
        r["name"] for r in json.loads(quanto("schedule", "ls", "--json", cwd=tmp_path).stdout)["schedules"]
    ]
    assert "it-nightly-ingest" not in names


def test_schedule_stage_names_follow_the_pipeline():
    import typing

    from quanto.config.schedules import Stage
    from quanto.contracts import STAGE_NAMES

    assert typing.get_args(Stage) == STAGE_NAMES
