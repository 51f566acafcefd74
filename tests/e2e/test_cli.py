"""The CLI as a user runs it: `quanto demo --json` twice, bad job files, schemas, server management."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pypdf import PdfReader

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.e2e


def quanto(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `quanto ARGS` the way a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path) -> Path:
    """A working folder with the shipped job files, as after a clone."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


def test_demo_starts_a_server_runs_and_reruns_warm(project, pg_dsn):
    ui_port = free_port()
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "QUANTO_UI_PORT": str(ui_port)}
    try:
        first = quanto("demo", "--json", cwd=project, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        out = json.loads(first.stdout)
        assert set(out) >= {
            "workflow_id",
            "status",
            "ui_url",
            "report_html",
            "report_pdf",
            "metrics",
            "stages",
        }
        assert out["status"] == "completed" and out["workflow_id"].startswith("pipeline-demo-")
        assert [s["name"] for s in out["stages"]] == [
            "ingest", "validate", "features", "labels", "train", "walk_forward", "backtest", "report",
        ]  # fmt: skip
        assert not any(s["skipped"] for s in out["stages"])
        assert set(out["metrics"]) >= {"total_return", "annual_return", "sharpe", "sortino", "max_drawdown",
                                       "win_rate", "profit_factor", "trades"}  # fmt: skip
        html, pdf = Path(out["report_html"]), Path(out["report_pdf"])
        assert html.is_file() and "Sharpe" in html.read_text()
        assert len(PdfReader(pdf).pages) >= 2
        assert (project / ".quanto" / "temporal.db").is_file()  # the dev server persists to SQLite
        # The run is visible in the Web UI the demo started (served locally, no internet).
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ui_port}/namespaces/default/workflows", timeout=10
        ) as r:
            assert r.status == 200
        assert out["ui_url"].startswith(
            f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/{out['workflow_id']}/"
        )

        second = quanto("demo", "--json", cwd=project, env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        again = json.loads(second.stdout)
        assert len(again["stages"]) == 8 and all(s["skipped"] for s in again["stages"])
        assert again["metrics"] == out["metrics"] and again["workflow_id"] == out["workflow_id"]

        listed = json.loads(quanto("pipeline", "ls", "--json", cwd=project, env=env).stdout)
        assert [p["workflow_id"] for p in listed["pipelines"]].count(out["workflow_id"]) == 2
        status = json.loads(
            quanto("pipeline", "status", out["workflow_id"], "--json", cwd=project, env=env).stdout
        )
        assert status["status"] == "COMPLETED"
    finally:
        stopped = quanto("server", "stop", "--json", cwd=project, env=env)
    assert json.loads(stopped.stdout) == {"stopped": True}


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("name: x\nuniverse: {symbols: [AAPL], start: 2010-01-01, end: 2011-01-01, colour: red}\n",
         "universe.colour: Extra inputs are not permitted (got 'red')"),
        ("name: x\nuniverse: {symbols: [AAPL], start: 2011-01-01, end: 2010-01-01}\n",
         "universe: end (2010-01-01) must be after start (2011-01-01)"),
        ("name: x\nuniverse: {symbols: [AAPL], start: 2010-01-01, end: 2011-01-01}\nwalk_forward: {test_bars: -5}\n",
         "walk_forward.test_bars: Input should be greater than or equal to 1 (got -5)"),
        ("name: x\nuniverse: {symbols: [AAPL], start: 2010-01-01, end: 2011-01-01}\nfeatures: {names: [rsi_14, rsi_41]}\n",
         "features.names: unknown feature 'rsi_41'"),
        ("name: x\nuniverse: {symbols: [AAPL], start: 2010-01-01, end: 2011-01-01}\nmodel: {params: {n_estimators: many}}\n",
         "model: params for lightgbm: n_estimators: Input should be a valid integer"),
    ],
)  # fmt: skip
def test_bad_job_files_exit_2_naming_file_key_and_value(tmp_path, yaml_text, expected):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    res = quanto("pipeline", "run", "-c", str(path), "--json", cwd=tmp_path, env={})
    assert res.returncode == 2
    assert f"{path}: {expected}" in res.stderr
    assert json.loads(res.stdout)["exit_code"] == 2


def test_missing_file_and_unknown_schema_kind_exit_2(tmp_path):
    res = quanto("pipeline", "run", "-c", "nope.yaml", cwd=tmp_path, env={})
    assert res.returncode == 2 and "nope.yaml: file not found" in res.stderr
    res = quanto("config", "schema", "trading-robot", "--json", cwd=tmp_path, env={})
    assert res.returncode == 2 and "unknown job-file kind" in res.stderr


def test_config_schema_describes_every_section(tmp_path):
    res = quanto("config", "schema", "pipeline", "--json", cwd=tmp_path, env={})
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert schema["additionalProperties"] is False
    assert {"universe", "features", "label", "model", "walk_forward", "backtest", "report"} <= set(
        schema["properties"]
    )


def test_server_status_reports_a_missing_server(tmp_path):
    res = quanto(
        "server", "status", "--json", cwd=tmp_path, env={"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    )
    assert res.returncode == 1 and json.loads(res.stdout)["healthy"] is False


def test_demo_with_postgres_unreachable_fails_fast_and_says_where(project):
    env = {"QUANTO_PG_DSN": f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/quanto",
           "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}  # fmt: skip
    res = quanto("demo", "--json", cwd=project, env=env, timeout=120)
    assert res.returncode == 1
    assert "PostgreSQL at" in res.stderr and "is not usable" in res.stderr
    assert "hunter2" not in res.stderr + res.stdout  # the password never reaches the output


def test_server_that_cannot_start_is_a_clear_error(project):
    with socket.socket() as busy:  # the Web UI port is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "QUANTO_UI_PORT": str(busy.getsockname()[1])}
        res = quanto("server", "start", "--json", cwd=project, env=env, timeout=120)
    assert res.returncode == 1
    assert "temporal server on" in res.stderr and "temporal-server.log" in res.stderr
    assert "Traceback" not in res.stderr


def test_features_ls_lists_the_registry_with_families(tmp_path):
    res = quanto("features", "ls", "--json", cwd=tmp_path, env={})
    assert res.returncode == 0
    rows = json.loads(res.stdout)["features"]
    assert {"name", "family", "params", "lookback", "version", "description"} <= set(rows[0])
    families = {r["family"] for r in rows}
    assert {"technical", "statistical", "alpha158", "talib", "risk"} <= families
    only = json.loads(quanto("features", "ls", "--family", "alpha158", "--json", cwd=tmp_path, env={}).stdout)
    assert len(only["features"]) == 158
    bad = quanto("features", "ls", "--family", "astrology", cwd=tmp_path, env={})
    assert bad.returncode == 2 and "unknown family" in bad.stderr


def test_check_lookahead_passes_clean_features_and_catches_a_leaky_user_feature(tmp_path):
    (tmp_path / "my_features.py").write_text(
        "from quanto.features.spec import register\n\n"
        "@register('peek_next_close', family='user', inputs=('close',), lookback=0,\n"
        "          description='tomorrow close over today: uses the future')\n"
        "def peek(bars):\n"
        "    return (bars['close'].shift(-1) / bars['close']).to_numpy()\n"
    )
    env = {"QUANTO_FEATURE_MODULES": "my_features", "PYTHONPATH": str(tmp_path)}
    ok = quanto("features", "check-lookahead", "rsi_14", "talib:BBANDS(timeperiod=30).upperband", "--json",
                cwd=tmp_path, env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    leaky = quanto(
        "features", "check-lookahead", "rsi_14", "peek_next_close", "--json", cwd=tmp_path, env=env
    )
    assert leaky.returncode == 1
    out = json.loads(leaky.stdout)
    assert out["passed"] is False
    assert {r["name"]: r["ok"] for r in out["features"]} == {"rsi_14": True, "peek_next_close": False}
