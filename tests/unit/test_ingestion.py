"""Ingestion core without Temporal: partitions, routing, incremental top-ups, flat files over a real
local S3 server, local files, the DuckDB catalog and the no-double-count rule."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from quanto.config.ingest import IngestConfig
from quanto.data.catalog import dataset_files, list_datasets, run_sql
from quanto.data.ingestion import RunContext, ingest_sync, merge_ranges, missing_ranges
from quanto.data.partitions import choose_route, natural_period, plan, trading_days
from quanto.lake.storage import Lake
from tests.fakes.s3 import fake_s3, make_flat_files

D = dt.date
TODAY = D(2026, 11, 20)


def cfg_for(tmp_path: Path, **over) -> IngestConfig:
    base = {
        "name": "t",
        "lake_root": str(tmp_path / "lake"),
        "vendor": "sample",
        "symbols": ["AAPL", "MSFT"],
        "timeframe": "1d",
        "start": "2010-01-01",
        "end": "2010-04-01",
    }
    return IngestConfig.model_validate({**base, **over})


def test_ranges_missing_and_merge():
    covered = [(D(2024, 1, 1), D(2024, 1, 10)), (D(2024, 1, 15), D(2024, 1, 20))]
    assert missing_ranges(covered, (D(2024, 1, 1), D(2024, 2, 1))) == [
        (D(2024, 1, 10), D(2024, 1, 15)),
        (D(2024, 1, 20), D(2024, 2, 1)),
    ]
    assert missing_ranges(covered, (D(2024, 1, 2), D(2024, 1, 9))) == []
    assert missing_ranges([], (D(2024, 1, 2), D(2024, 1, 9))) == [(D(2024, 1, 2), D(2024, 1, 9))]
    assert merge_ranges([*covered, (D(2024, 1, 10), D(2024, 1, 15))]) == [(D(2024, 1, 1), D(2024, 1, 20))]


def test_partitions_align_to_periods_and_skip_closed_months(tmp_path):
    cfg = cfg_for(tmp_path, start="2010-01-15", end="2010-03-10")
    p = plan(cfg, TODAY)
    months = [(x.symbols[0], x.start, x.end, x.fetch_start, x.fetch_end) for x in p.partitions]
    assert months[:3] == [
        ("AAPL", D(2010, 1, 1), D(2010, 2, 1), D(2010, 1, 15), D(2010, 2, 1)),
        ("AAPL", D(2010, 2, 1), D(2010, 3, 1), D(2010, 2, 1), D(2010, 3, 1)),
        ("AAPL", D(2010, 3, 1), D(2010, 4, 1), D(2010, 3, 1), D(2010, 3, 10)),
    ]
    # Identity is the period, not the fetch window: a wider request finds the same partitions.
    wider = plan(cfg_for(tmp_path, start="2010-01-01", end="2010-04-01"), TODAY)
    assert {x.id for x in p.partitions} == {x.id for x in wider.partitions}
    assert natural_period(D(2024, 12, 5), "month") == (D(2024, 12, 1), D(2025, 1, 1))
    # end unset = today (exclusive): today's bars belong to the stream.
    open_ended = plan(cfg_for(tmp_path, start="2026-11-02", end=None), TODAY)
    assert open_ended.end == TODAY and max(x.fetch_end for x in open_ended.partitions) == TODAY


def test_trading_days_skip_weekends_and_holidays():
    days = trading_days("XNYS", D(2023, 7, 1), D(2023, 7, 8))
    assert days == [D(2023, 7, 3), D(2023, 7, 5), D(2023, 7, 6), D(2023, 7, 7)]


def test_router_decisions_are_explained(tmp_path):
    flat = {"flat_files": {"root": str(tmp_path)}}
    small = cfg_for(
        tmp_path, vendor="polygon", timeframe="1min", polygon=flat, start="2024-01-02", end="2024-01-10"
    )
    d = choose_route(small, small.end)
    assert d.route == "rest" and "symbol-days" in d.reason and d.symbol_days == 2 * 6
    big = small.model_copy(update={"symbols": [f"S{i}" for i in range(400)]})
    d = choose_route(big, big.end)
    assert d.route == "flat_files" and "2400 symbol-days >= routing.flat_files_min_symbol_days" in d.reason
    no_flat = cfg_for(tmp_path, vendor="polygon", timeframe="1min", start="2024-01-02", end="2024-01-10")
    assert choose_route(no_flat, no_flat.end).reason == "no flat files configured for this vendor"
    hourly = small.model_copy(update={"timeframe": "1h", "symbols": big.symbols})
    assert choose_route(hourly, hourly.end).route == "rest"
    forced = cfg_for(tmp_path, vendor="alpaca", routing={"mode": "rest"})
    assert choose_route(forced, forced.end).reason == "routing.mode is rest"


def test_rerun_is_noop_and_topup_fetches_only_new_dates(tmp_path):
    cfg = cfg_for(tmp_path, end="2010-03-15")
    ctx = RunContext(lake=Lake(cfg.lake_root), record=False)
    first = ingest_sync(plan(cfg, TODAY).partitions, cfg, ctx)
    assert [o.status for o in first] == ["fetched"] * 6
    assert [o.status for o in ingest_sync(plan(cfg, TODAY).partitions, cfg, ctx)] == ["skipped"] * 6
    later = cfg.model_copy(update={"end": D(2010, 4, 1)})
    topped = ingest_sync(plan(later, TODAY).partitions, later, ctx)
    assert [o.status for o in topped] == ["skipped", "skipped", "fetched"] * 2
    march = json.loads(
        next(Lake(cfg.lake_root).abspath("manifests/ingest_partition").rglob("*.json")).read_text()
    )
    assert march["covered"] in (
        [["2010-01-01", "2010-02-01"]],
        [["2010-02-01", "2010-03-01"]],
        [["2010-03-01", "2010-04-01"]],
    )
    from quanto.data.sample import load_sample_bars

    want = load_sample_bars(["AAPL", "MSFT"], D(2010, 1, 1), D(2010, 4, 1), "raw")
    got = run_sql(Lake(cfg.lake_root), "SELECT count(*), count(DISTINCT (symbol, ts)) FROM bars")["rows"][0]
    assert got == (len(want), len(want))


def test_orphan_files_from_a_killed_run_are_never_read(tmp_path):
    cfg = cfg_for(tmp_path)
    lake = Lake(cfg.lake_root)
    ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    rows = run_sql(lake, "SELECT count(*) FROM bars")["rows"][0][0]
    # A file written by an attempt that died before its manifest: present on disk, in no manifest.
    part = plan(cfg, TODAY).partitions[0]
    stray = pl.read_parquet(next(lake.abspath(part.folder()).glob("*.parquet")))
    lake.write_table(part.folder(), stray.head(5).to_arrow(), role="bars")
    assert run_sql(lake, "SELECT count(*) FROM bars")["rows"][0][0] == rows


@pytest.fixture(scope="module")
def s3():
    with fake_s3() as server:
        yield server


def test_flat_files_from_s3_land_once_with_bad_rows_quarantined(tmp_path, s3, monkeypatch):
    days = trading_days("XNYS", D(2024, 3, 4), D(2024, 3, 9))
    files = make_flat_files(days, ["AAPL", "MSFT", "NVDA"], "1min", seed=3, bad_rows=2, minutes=30)
    s3.upload(files)
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    cfg = cfg_for(
        tmp_path,
        vendor="polygon",
        symbols=[],
        timeframe="1min",
        start="2024-03-04",
        end="2024-03-09",
        polygon={"flat_files": {"root": f"s3://{s3.bucket}", "endpoint_url": s3.endpoint_url}},
    )
    p = plan(cfg, TODAY)
    assert p.decision.route == "flat_files" and len(p.partitions) == 5
    lake = Lake(cfg.lake_root)
    out = ingest_sync(p.partitions, cfg, RunContext(lake=lake, record=False))
    assert sum(o.rejected for o in out) == 2 * 5
    got = pl.from_arrow(lake_bars(lake)).sort("symbol", "ts")
    want = files.bars.sort("symbol", "ts")
    assert got.height == want.height and got.equals(want.select(got.columns))
    rejected = run_sql(lake, "SELECT count(*), min(reason) FROM rejected")["rows"][0]
    assert rejected[0] == 10 and rejected[1]
    # One file per day under date=<day>: never one file per symbol-day of a 3,000-ticker file.
    assert all("/date=2024-03-0" in p for p in dataset_files(lake)["bars"].paths)
    assert [o.status for o in ingest_sync(p.partitions, cfg, RunContext(lake=lake, record=False))] == [
        "skipped"
    ] * 5


def lake_bars(lake: Lake):
    import duckdb

    from quanto.data.catalog import open_catalog

    con: duckdb.DuckDBPyConnection = open_catalog(lake)
    return con.sql("SELECT * FROM bars").arrow()


def test_overlapping_flat_file_partitions_are_deduplicated(tmp_path):
    days = trading_days("XNYS", D(2024, 3, 4), D(2024, 3, 6))
    files = make_flat_files(days, ["AAPL", "MSFT"], "1min", seed=4, minutes=10)
    files.write_local(tmp_path / "flat")
    common = {
        "vendor": "polygon",
        "timeframe": "1min",
        "start": "2024-03-04",
        "end": "2024-03-06",
        "polygon": {"flat_files": {"root": str(tmp_path / "flat")}},
    }
    lake = Lake(tmp_path / "lake")
    for symbols in (["AAPL"], []):  # first one ticker, then every ticker of the same days
        cfg = cfg_for(tmp_path, symbols=symbols, routing={"mode": "flat_files"}, **common)
        ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    assert dataset_files(lake)["bars"].overlapping
    got = run_sql(lake, "SELECT count(*), count(DISTINCT (symbol, ts)) FROM bars")["rows"][0]
    assert got == (files.bars.height, files.bars.height)
    listing = {(r["symbol"], r["rows"]) for r in list_datasets(lake) if r["dataset"] == "bars"}
    assert listing == {("AAPL", 20), ("MSFT", 20)}


def test_local_files_import_by_symbol(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text(
        "Date,Ticker,Open,High,Low,Close,Volume\n"
        "2024-01-02 09:30:00,AAA,10,11,9,10.5,100\n"
        "2024-01-02 09:31:00,AAA,10.5,11,10,10.7,50\n"
        "2024-01-02 09:30:00,BBB,20,21,19,20.5,10\n"
        "2024-01-02 09:31:00,BBB,oops,21,19,20.5,10\n"
    )
    cfg = cfg_for(
        tmp_path,
        vendor="files",
        symbols=[],
        timeframe="1min",
        start="2024-01-01",
        end="2024-02-01",
        files={
            "paths": [str(csv)],
            "columns": {
                "ts": "Date",
                "symbol": "Ticker",
                "open": "Open",
                "high": "High",
                "low": "Low",
                "close": "Close",
                "volume": "Volume",
            },  # fmt: skip
            "timezone": "America/New_York",
            "timeframe": "1min",
        },
    )
    lake = Lake(cfg.lake_root)
    out = ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    assert out[0].rows == 3 and out[0].rejected == 1
    rows = run_sql(lake, "SELECT symbol, count(*), min(ts) FROM bars GROUP BY 1 ORDER BY 1")["rows"]
    assert [(s, n) for s, n, _ in rows] == [("AAA", 2), ("BBB", 1)]
    assert rows[0][2] == dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)  # 09:30 New York = 14:30 UTC
    reason = run_sql(lake, "SELECT reason FROM rejected")["rows"][0][0]
    assert reason == "Open: 'oops' is not a number"  # the file's own column name


def test_job_file_errors_name_the_key(tmp_path):
    from quanto.config.loading import ConfigError, parse_config

    with pytest.raises(ConfigError, match="vendor 'alpaca' has no dataset 'fundamentals'"):
        parse_config(
            IngestConfig, {**_raw(tmp_path), "vendor": "alpaca", "dataset": "fundamentals"}, "x.yaml"
        )
    with pytest.raises(ConfigError, match="routing.mode flat_files needs polygon.flat_files"):
        parse_config(
            IngestConfig, {**_raw(tmp_path), "vendor": "polygon", "routing": {"mode": "flat_files"}}, "x.yaml"
        )
    with pytest.raises(ConfigError, match=r"x.yaml: alpaca.feed: .*\(got 'pro'\)"):
        parse_config(
            IngestConfig, {**_raw(tmp_path), "vendor": "alpaca", "alpaca": {"feed": "pro"}}, "x.yaml"
        )


def _raw(tmp_path: Path) -> dict:
    return {
        "name": "t",
        "lake_root": str(tmp_path),
        "symbols": ["AAPL"],
        "start": "2024-01-01",
        "end": "2024-02-01",
    }


def test_pipeline_reads_the_ingested_lake_adjusted_by_ingested_dividends(tmp_path, monkeypatch):
    from quanto.config.models import UniverseConfig
    from quanto.data.ingest import read_lake_bars
    from tests.fakes.vendor_http import POLYGON_API_KEY, FakeVendorServer

    monkeypatch.setenv("POLYGON_API_KEY", POLYGON_API_KEY)
    lake = Lake(tmp_path / "lake")
    with FakeVendorServer() as rest:
        for dataset in ("bars", "corporate_actions"):
            cfg = cfg_for(
                tmp_path,
                vendor="polygon",
                dataset=dataset,
                symbols=["AAPL"],
                start="2024-01-02",
                end="2024-03-01",
                polygon={"rest": {"base_url": rest.base_url}},
            )
            ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    universe = {
        "vendor": "lake",
        "source": "polygon",
        "symbols": ["AAPL"],
        "start": "2024-01-02",
        "end": "2024-03-01",
    }
    raw, note = read_lake_bars(lake, UniverseConfig.model_validate({**universe, "adjustment": "raw"}))
    adj, note = read_lake_bars(lake, UniverseConfig.model_validate(universe))
    sessions = len(trading_days("XNYS", D(2024, 1, 2), D(2024, 3, 1)))
    assert raw.height == adj.height == sessions and note["actions_applied"] >= 1
    # AAPL paid $0.24 with ex-date 2024-02-09: earlier closes scale by 1 - 0.24 / (close of 02-08).
    ex = dt.datetime(2024, 2, 9, 5, tzinfo=dt.UTC)
    prev_close = raw.filter(pl.col("ts") < ex)["close"][-1]
    before = (adj.filter(pl.col("ts") < ex)["close"] / raw.filter(pl.col("ts") < ex)["close"]).unique()
    after = (adj.filter(pl.col("ts") >= ex)["close"] / raw.filter(pl.col("ts") >= ex)["close"]).unique()
    assert (before - (1 - 0.24 / prev_close)).abs().max() < 1e-12
    assert after.to_list() == [1.0]


def test_daily_flat_files_are_stamped_at_the_session_open_like_rest(tmp_path):
    days = trading_days("XNYS", D(2024, 7, 1), D(2024, 7, 6))  # includes the 3rd (half day), not the 4th
    files = make_flat_files(days, ["AAPL"], "1d", seed=2)
    files.write_local(tmp_path / "flat")
    cfg = cfg_for(
        tmp_path, vendor="polygon", symbols=["AAPL"], timeframe="1d", start="2024-07-01", end="2024-07-06",
        routing={"mode": "flat_files"}, polygon={"flat_files": {"root": str(tmp_path / "flat")}},
    )  # fmt: skip
    lake = Lake(cfg.lake_root)
    ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    stamps = [r[0] for r in run_sql(lake, "SELECT ts FROM bars ORDER BY ts")["rows"]]
    assert [t.astimezone(dt.UTC) for t in stamps] == [
        dt.datetime(d.year, d.month, d.day, 13, 30, tzinfo=dt.UTC)
        for d in days  # 09:30 EDT
    ]


def test_a_flat_file_not_yet_published_is_fetched_by_the_next_run(tmp_path):
    days = trading_days("XNYS", D(2024, 3, 4), D(2024, 3, 7))  # Mon..Wed
    files = make_flat_files(days, ["AAPL", "MSFT"], "1min", seed=5, minutes=5)
    files.write_local(tmp_path / "flat")
    late = tmp_path / "flat" / files[days[-1]].key
    late.unlink()  # Wednesday's file is published the next morning
    cfg = cfg_for(
        tmp_path, vendor="polygon", symbols=[], timeframe="1min", start="2024-03-04", end="2024-03-07",
        polygon={"flat_files": {"root": str(tmp_path / "flat")}},
    )  # fmt: skip
    lake = Lake(cfg.lake_root)
    first = ingest_sync(
        plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False, today=D(2024, 3, 7))
    )
    assert [o.rows for o in first] == [10, 10, 0]
    files.write_local(tmp_path / "flat")  # now published
    again = ingest_sync(
        plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False, today=D(2024, 3, 8))
    )
    assert [o.status for o in again] == ["skipped", "skipped", "fetched"] and again[2].rows == 10
    assert run_sql(lake, "SELECT count(*) FROM bars")["rows"][0][0] == 30
    # Long past, an empty answer is final: a day that never had a file stays covered and is not asked again.
    late.unlink()
    old = cfg.model_copy(update={"end": D(2024, 3, 7)})
    skipped = ingest_sync(
        plan(old, TODAY).partitions, old, RunContext(lake=lake, record=False, today=D(2024, 6, 1))
    )
    assert [o.status for o in skipped] == ["skipped"] * 3
