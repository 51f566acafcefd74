"""`quanto data ingest | ls | sql` as a user runs them, against the real dev server and a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def quanto(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ingest_then_ls_and_sql_over_the_lake(session_worker, tmp_path):
    job = yaml.safe_load((REPO / "configs" / "ingest-sample.yaml").read_text())
    job["lake_root"] = str(tmp_path / "lake")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    run = quanto("data", "ingest", "-c", "job.yaml", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["status"] == "completed" and out["workflow_id"].startswith(f"ingest-{job['name']}-")
    assert out["totals"]["fetched"] == out["partitions"] and out["totals"]["rows"] > 0
    assert out["ui_url"].endswith(out["workflow_id"])

    again = quanto("data", "ingest", "-c", "job.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"already in the lake {out['partitions']}" in again.stdout and "rows 0," in again.stdout

    ls = json.loads(quanto("data", "ls", "--lake", "lake", "--json", cwd=tmp_path).stdout)
    bars = {r["symbol"]: r for r in ls["datasets"] if r["dataset"] == "bars"}
    assert set(bars) == set(job["symbols"]) and sum(r["rows"] for r in bars.values()) == out["totals"]["rows"]

    sql = quanto(
        "data", "sql", "SELECT symbol, count(*) AS n FROM bars GROUP BY 1 ORDER BY 1", "--lake", "lake", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert sql.returncode == 0, sql.stderr
    rows = json.loads(sql.stdout)
    assert rows["columns"] == ["symbol", "n"] and {r[0]: r[1] for r in rows["rows"]} == {
        s: r["rows"] for s, r in bars.items()
    }
    text = quanto("data", "sql", "SELECT count(*) AS n FROM bars", "--lake", "lake", cwd=tmp_path)
    assert str(out["totals"]["rows"]) in text.stdout

    bad = quanto("data", "sql", "SELECT * FROM nope", "--lake", "lake", "--json", cwd=tmp_path)
    assert bad.returncode == 2 and "nope" in json.loads(bad.stdout)["error"] and "views: bars" in bad.stdout


def test_bad_ingest_job_exits_2_naming_the_key(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "name: x\nvendor: alpaca\nsymbols: [AAPL]\nstart: 2024-01-01\ndataset: quotes\n"
    )
    run = quanto("data", "ingest", "-c", "bad.yaml", "--json", cwd=tmp_path)
    assert run.returncode == 2 and "bad.yaml: dataset:" in json.loads(run.stdout)["error"]
