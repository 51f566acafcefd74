"""`quanto data validate` end to end: ingest + validate through Temporal, records in PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from quanto.store.db import connect as db_connect
from tests.conftest import REPO
from tests.integration.conftest import DAILY, write_config

pytestmark = pytest.mark.integration

# Synthetic minute bars with bad ticks: quarantined ticks leave one-minute holes that repair fills.
DIRTY = {
    "vendor": "synthetic",
    "symbols": ["DV0", "DV1"],
    "timeframe": "1min",
    "start": "2023-11-20",
    "end": "2023-11-28",  # includes Thanksgiving (closed) and the half day after it
    "synthetic": {"seed": 9, "bad_tick_rate": 0.004},
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quanto.starter.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_data_validate_quarantines_repairs_and_audits(session_worker, tmp_path):
    path, cfg = write_config(tmp_path, "it-validate", DAILY, universe=DIRTY)
    res = run_cli("data", "validate", "-c", str(path), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["workflow_id"].startswith("validate-it-validate-")
    assert [s["name"] for s in out["stages"]] == ["ingest", "validate"]
    c = out["counters"]
    assert c["rows_in"] == c["accepted"] + c["quarantined"] + c["duplicates_dropped"]
    assert c["quarantined"] > 0 and c["duplicates_dropped"] > 0 and c["imputed"] > 0
    rules = {q["rule"]: q for q in out["quality"]}
    assert {"ohlc", "price_positive", "volume_nonnegative", "duplicate_conflict", "gap"} <= set(rules)
    assert rules["ohlc"]["policy"] == "quarantine" and rules["gap"]["policy"] == "warn"
    assert "gap" in rules and "(filled)" in rules["gap"]["example"]

    quarantine = pl.read_parquet(out["files"]["quarantine"])
    assert quarantine.height == c["quarantined"] and quarantine["reason"].null_count() == 0
    audit = pl.read_parquet(out["files"]["imputation_audit"])
    assert audit.height == 5 * c["imputed"]  # open, high, low, close, volume of every imputed bar
    # No gap is reported on Thanksgiving or after the 13:00 ET close of the half day.
    gaps = audit.filter(pl.col("column") == "close")["ts"].dt.convert_time_zone("America/New_York")
    assert not (gaps.dt.date().cast(pl.String) == "2023-11-23").any()
    half_day = gaps.filter(gaps.dt.date().cast(pl.String) == "2023-11-24")
    assert (half_day.dt.hour() < 13).all()

    with db_connect() as conn:
        n_audit = conn.execute(
            "SELECT count(*) FROM imputation_audit a JOIN manifests m ON m.key = a.stage_key"
            " WHERE m.workflow_id = %s AND m.stage = 'validate'",
            (out["workflow_id"],),
        ).fetchone()[0]
        policies = dict(
            conn.execute(
                "SELECT DISTINCT q.rule, q.policy FROM data_quality q JOIN manifests m ON m.key = q.stage_key"
                " WHERE m.workflow_id = %s",
                (out["workflow_id"],),
            ).fetchall()
        )
    assert n_audit == audit.height
    assert policies["ohlc"] == "quarantine" and policies["gap"] == "warn"


def test_data_validate_fail_policy_stops_with_the_rule_named(session_worker, tmp_path):
    path, _ = write_config(
        tmp_path, "it-validate-fail", DAILY, universe=DIRTY, validation={"bars": {"ohlc": {"policy": "fail"}}}
    )
    res = run_cli("data", "validate", "-c", str(path), "--json")
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert out["status"] == "failed" and "rule 'ohlc' (policy fail)" in out["error"]
