"""Every dataset a job file can ask of Polygon and Kite, fetched through `Sources` from the fake vendor
server into the lake and read back through the catalog (the wiring between job file, adapter, schema,
partition and view)."""

from __future__ import annotations

import datetime as dt

import pytest

from quanto.config.ingest import IngestConfig
from quanto.data.catalog import run_sql
from quanto.data.ingestion import RunContext, ingest_sync
from quanto.data.partitions import plan
from quanto.lake.storage import Lake
from tests.fakes.vendor_http import KITE_ACCESS_TOKEN, KITE_API_KEY, POLYGON_API_KEY, FakeVendorServer

TODAY = dt.date(2024, 3, 1)


@pytest.fixture(scope="module")
def rest():
    with FakeVendorServer() as server:
        yield server


def ingest(tmp_path, rest, **job) -> Lake:
    cfg = IngestConfig.model_validate(
        {
            "name": "d",
            "lake_root": str(tmp_path / "lake"),
            "start": "2024-01-02",
            "end": "2024-01-06",
            "polygon": {"rest": {"base_url": rest.base_url, "rate_per_s": 100, "burst": 100}},
            "kite": {"rest": {"base_url": rest.base_url, "rate_per_s": 100, "burst": 100}},
            **job,
        }
    )
    lake = Lake(cfg.lake_root)
    ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    return lake


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("POLYGON_API_KEY", POLYGON_API_KEY)
    monkeypatch.setenv("KITE_API_KEY", KITE_API_KEY)
    monkeypatch.setenv("KITE_ACCESS_TOKEN", KITE_ACCESS_TOKEN)


def test_polygon_reference_datasets(tmp_path, rest):
    lake = ingest(tmp_path, rest, vendor="polygon", dataset="corporate_actions", symbols=["AAPL", "MSFT"])
    actions = run_sql(
        lake, "SELECT symbol, kind, count(*) FROM corporate_actions GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert actions["rows"] == [
        ("AAPL", "dividend", 4),
        ("AAPL", "split", 2),
        ("MSFT", "dividend", 2),
        ("MSFT", "split", 1),
    ]
    lake = ingest(tmp_path / "f", rest, vendor="polygon", dataset="fundamentals", symbols=["AAPL"])
    filed = run_sql(
        lake, "SELECT count(DISTINCT period_end), bool_and(filed_at > period_end) FROM fundamentals"
    )
    assert filed["rows"][0][0] >= 1 and filed["rows"][0][1]
    # AAPL's oldest filing has no filing date: point-in-time joins cannot use it, so it is rejected.
    assert run_sql(lake, "SELECT count(*) FROM rejected")["rows"][0][0] >= 1
    lake = ingest(tmp_path / "t", rest, vendor="polygon", dataset="tickers", symbols=[])
    assert run_sql(lake, "SELECT count(*) FROM tickers WHERE symbol = 'BRK.B'")["rows"][0][0] == 1


def test_polygon_options(tmp_path, rest):
    lake = ingest(tmp_path, rest, vendor="polygon", dataset="option_chain", symbols=["AAPL"])
    chain = run_sql(lake, "SELECT count(*), count(DISTINCT expiry), min(underlying) FROM option_chain")[
        "rows"
    ][0]
    assert chain[0] == len(rest.option_contracts("AAPL")) and chain[1] == 2 and chain[2] == "AAPL"
    contract = rest.option_contracts("AAPL")[0]
    lake = ingest(
        tmp_path / "b", rest, vendor="polygon", dataset="option_bars", symbols=[contract], timeframe="1d"
    )
    bars = run_sql(lake, 'SELECT count(*), min(underlying), min("right") FROM option_bars')["rows"][0]
    want = rest.expected_bars(
        "polygon",
        contract,
        "1d",
        dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 6, tzinfo=dt.UTC),
    )
    assert bars == (want.height, "AAPL", contract[-9]) and want.height == 4


def test_kite_candles_and_instruments(tmp_path, rest):
    lake = ingest(
        tmp_path, rest, vendor="kite", dataset="bars", symbols=["NSE:INFY", "NSE:TCS"], timeframe="1min",
        calendar="XBOM",
    )  # fmt: skip
    got = run_sql(lake, "SELECT symbol, count(*), min(ts) FROM bars GROUP BY 1 ORDER BY 1")["rows"]
    want = rest.expected_bars(
        "kite",
        "NSE:INFY",
        "1min",
        dt.datetime(2024, 1, 1, 18, 30, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 5, 18, 30, tzinfo=dt.UTC),
    )  # fmt: skip  (IST days 2024-01-02..05)
    assert [r[0] for r in got] == ["NSE:INFY", "NSE:TCS"] and got[0][1] == want.height
    assert got[0][2] == dt.datetime(2024, 1, 2, 3, 45, tzinfo=dt.UTC)  # 09:15 IST
    lake = ingest(tmp_path / "i", rest, vendor="kite", dataset="instruments", symbols=[], calendar="XBOM")
    assert run_sql(lake, "SELECT count(*) FROM instruments WHERE symbol = 'NSE:INFY'")["rows"][0][0] == 1


def test_polygon_grouped_daily_is_the_bulk_route_without_flat_files(tmp_path, rest):
    job = {"vendor": "polygon", "dataset": "bars", "symbols": ["AAPL", "MSFT"], "timeframe": "1d",
           "routing": {"flat_files_min_symbol_days": 4}}  # fmt: skip
    cfg = IngestConfig.model_validate({"name": "g", "start": "2024-01-02", "end": "2024-01-06", **job})
    assert plan(cfg, TODAY).decision.route == "grouped_daily"
    lake = ingest(tmp_path, rest, **job)
    got = run_sql(lake, "SELECT symbol, ts, close FROM bars ORDER BY symbol, ts")["rows"]
    start, end = dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.datetime(2024, 1, 6, tzinfo=dt.UTC)
    want = [
        (s, ts, close)
        for s in ("AAPL", "MSFT")
        for ts, close in rest.expected_bars("polygon", s, "1d", start, end).select("ts", "close").rows()
    ]
    assert [(s, ts.astimezone(dt.UTC), c) for s, ts, c in got] == [
        (s, ts.astimezone(dt.UTC), c) for s, ts, c in want
    ]
    grouped = sum(n for path, n in rest.counters.by_path.items() if path.startswith("/v2/aggs/grouped"))
    assert grouped == 4  # one request per session for both symbols
