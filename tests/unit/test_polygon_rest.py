"""PolygonRest against the fake server: aggregates, grouped daily, reference data, financials, options."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quanto.data.polygon import PolygonRest, parse_occ, polygon_timespan
from quanto.data.rest import RestClient, TokenBucket, VendorRequestError
from quanto.data.schemas import (
    BAR_SCHEMA,
    CORPORATE_ACTION_SCHEMA,
    FUNDAMENTAL_SCHEMA,
    OPTION_BAR_SCHEMA,
    OPTION_SNAPSHOT_SCHEMA,
    TICKER_SCHEMA,
    check_columns,
)
from quanto.errors import InputError
from tests.fakes.vendor_http import STATEMENT_FIELDS, BadBar, FakeVendorServer, Faults, VirtualTime

UTC = dt.UTC
START, END = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 9, tzinfo=UTC)
OPTION = "O:AAPL240119C00190000"


def client(server: FakeVendorServer) -> RestClient:
    vt = VirtualTime()
    limiter = TokenBucket(1000, 1000, clock=vt.clock, sleep=vt.sleep)
    return RestClient(
        "polygon", server.base_url, limiter=limiter, sleep=vt.sleep, **FakeVendorServer.credentials("polygon")
    )


async def test_minute_bars_follow_next_url_and_equal_the_oracle():
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await PolygonRest(c, page_limit=1000).fetch_bars("AAPL", "1min", START, END)
        counters = server.counters
    want = server.expected_bars("polygon", "AAPL", "1min", START, END)
    assert len(want) == 5 * 390
    assert got.frame.equals(want) and got.rejected.is_empty()
    # Two pages came from next_url: the apiKey was re-added, or the fake would have answered 401.
    assert counters.requests == 2 and counters.unauthorized == 0


@pytest.mark.parametrize("timeframe", ["15min", "1h", "1d"])
async def test_aggregated_bars_equal_the_oracle(timeframe):
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await PolygonRest(c).fetch_bars("MSFT", timeframe, START, END)
    check_columns(got.frame, BAR_SCHEMA, "test")
    assert got.frame.equals(server.expected_bars("polygon", "MSFT", timeframe, START, END))


async def test_bad_aggregate_rows_are_rejected():
    bad = (BadBar("AAPL", dt.datetime(2024, 1, 3, 16, 0, tzinfo=UTC), "string_volume"),)
    with FakeVendorServer(Faults(bad_bars=bad)) as server:
        async with client(server) as c:
            got = await PolygonRest(c).fetch_bars("AAPL", "1min", START, END)
    assert len(got.frame) == 5 * 390 - 1 and len(got.rejected) == 1
    row = got.rejected.row(0, named=True)
    assert row["symbol"] == "AAPL" and row["ts"] == str(int(bad[0].ts.timestamp() * 1000))
    assert row["reason"].startswith('v = "') and "expected a number" in row["reason"]


async def test_grouped_daily_has_every_active_ticker_at_the_open():
    day = dt.date(2024, 1, 3)
    with FakeVendorServer() as server:
        async with client(server) as c:
            polygon = PolygonRest(c)
            got = await polygon.grouped_daily(day)
            holiday = await polygon.grouped_daily(dt.date(2024, 1, 15))  # Martin Luther King Jr. Day
    assert got.frame["symbol"].to_list() == ["AAPL", "BRK.B", "MSFT", "SPY"]
    start = dt.datetime(2024, 1, 3, tzinfo=UTC)
    want = pl.concat(
        server.expected_bars("polygon", s, "1d", start, start + dt.timedelta(days=1))
        for s in ["AAPL", "BRK.B", "MSFT", "SPY"]
    )
    assert got.frame.equals(want)
    assert holiday.frame.is_empty() and holiday.rejected.is_empty()


async def test_tickers_page_and_details():
    with FakeVendorServer() as server:
        async with client(server) as c:
            polygon = PolygonRest(c)
            active = await polygon.tickers(limit=2)
            delisted = await polygon.tickers(active=False)
            one = await polygon.ticker_details("BRK.B")
            with pytest.raises(VendorRequestError, match="404"):
                await polygon.ticker_details("ZZZZ")
        assert server.counters.by_path["/v3/reference/tickers"] == 2 + 1  # 4 active tickers in pages of 2
    check_columns(active.frame, TICKER_SCHEMA, "test")
    assert active.frame["symbol"].to_list() == ["AAPL", "BRK.B", "MSFT", "SPY"]
    aapl = active.frame.row(0, named=True)
    assert aapl["list_date"] == dt.date(1980, 12, 12) and aapl["cik"] == "0000320193"
    assert aapl["currency"] == "usd" and aapl["active"] is True and aapl["delisted_utc"] is None
    twtr = delisted.frame.row(0, named=True)
    assert twtr["symbol"] == "TWTR" and twtr["delisted_utc"] == dt.datetime(2022, 10, 28, tzinfo=UTC)
    assert one.frame["name"].to_list() == ["Berkshire Hathaway Inc. Class B"]


async def test_splits_and_dividends_become_corporate_actions():
    with FakeVendorServer() as server:
        async with client(server) as c:
            polygon = PolygonRest(c)
            splits = await polygon.splits("AAPL")
            dividends = await polygon.dividends("AAPL")
            none = await polygon.splits("SPY")
    for got in (splits, dividends):
        check_columns(got.frame, CORPORATE_ACTION_SCHEMA, "test")
    assert splits.frame.select("ex_date", "kind", "ratio").rows() == [
        (dt.date(2014, 6, 9), "split", 7.0),
        (dt.date(2020, 8, 31), "split", 4.0),
    ]
    assert dividends.frame["cash"].to_list() == [0.24, 0.24, 0.24, 0.25]
    assert dividends.frame["ex_date"].is_sorted() and dividends.frame["ratio"].is_null().all()
    assert none.frame.is_empty()


async def test_financials_long_form_with_conservative_filed_at():
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await PolygonRest(c).financials("AAPL")
    lines = sum(len(f) for f in STATEMENT_FIELDS.values())
    check_columns(got.frame, FUNDAMENTAL_SCHEMA, "test")
    assert len(got.frame) == 3 * lines  # three filings with a filing date
    # The filing without a filing_date cannot be placed in time: each of its lines is rejected.
    assert len(got.rejected) == lines and set(got.rejected["reason"]) == {"filing_date is missing"}
    q3 = got.frame.filter(pl.col("fiscal_period") == "2023Q3")
    assert set(q3["field"]) == {f for fields in STATEMENT_FIELDS.values() for f in fields}
    # Filed 2023-08-04: public from 20:00 New York time (EDT) = 00:00 UTC the next day.
    assert q3["filed_at"].unique().to_list() == [dt.datetime(2023, 8, 5, 0, 0, tzinfo=UTC)]
    fy = got.frame.filter(pl.col("fiscal_period") == "FY2023")
    assert fy["period_end"].unique().to_list() == [dt.date(2023, 9, 30)]
    q1 = got.frame.filter(pl.col("fiscal_period") == "2024Q1")
    assert q1["filed_at"].unique().to_list() == [dt.datetime(2024, 2, 3, 1, 0, tzinfo=UTC)]  # EST
    revenue = q3.filter(pl.col("field") == "revenues")["value"].item()
    assert revenue == server.financial_value("AAPL", "2023-07-01", "revenues")


async def test_option_chain_snapshot_pages_and_parses_contracts():
    as_of = dt.datetime(2024, 1, 5, 20, 0, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await PolygonRest(c, page_limit=5).option_chain_snapshot("AAPL", as_of)
        assert server.counters.requests == 3  # 12 contracts, 5 per page
    check_columns(got.frame, OPTION_SNAPSHOT_SCHEMA, "test")
    frame = got.frame
    assert len(frame) == len(server.option_contracts("AAPL")) == 12 and got.rejected.is_empty()
    assert frame["ts"].unique().to_list() == [as_of] and frame["underlying"].unique().to_list() == ["AAPL"]
    row = frame.filter(pl.col("symbol") == "AAPL  240119C00190000").row(0, named=True)
    assert (row["expiry"], row["strike"], row["right"]) == (dt.date(2024, 1, 19), 190.0, "C")
    assert row["underlying_price"] == 192.5 and row["delta"] == 0.5 and row["bid"] < row["ask"]
    deep = frame.filter(pl.col("symbol") == "AAPL  240119C00180000").row(0, named=True)
    assert deep["delta"] is None  # no greeks shipped for this one
    assert sorted(frame["right"].unique().to_list()) == ["C", "P"]


async def test_option_bars_carry_the_contract_terms():
    start, end = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 4, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await PolygonRest(c).option_bars(OPTION, "1min", start, end)
    check_columns(got.frame, OPTION_BAR_SCHEMA, "test")
    want = server.expected_bars("polygon", OPTION, "1min", start, end)
    columns = ["ts", "open", "high", "low", "close", "volume", "vwap", "trades"]
    assert got.frame.select(columns).equals(want.select(columns))
    terms = got.frame.select("underlying", "symbol", "expiry", "strike", "right").unique().rows()
    assert terms == [("AAPL", "AAPL  240119C00190000", dt.date(2024, 1, 19), 190.0, "C")]


def test_occ_parsing():
    assert parse_occ("O:SPY240621P00475500").symbol == "SPY   240621P00475500"
    assert parse_occ("O:SPY240621P00475500").strike == 475.5
    assert parse_occ("BRK.B240119C00350000").underlying == "BRK.B"
    for bad in ("AAPL", "O:AAPL240119X00190000", "O:AAPL241319C00190000"):
        with pytest.raises(InputError, match="not an OCC option ticker"):
            parse_occ(bad)


def test_timespans():
    assert polygon_timespan("1min") == (1, "minute") and polygon_timespan("4h") == (4, "hour")
    assert polygon_timespan("1d") == (1, "day") and polygon_timespan("1w") == (1, "week")
    with pytest.raises(InputError):
        polygon_timespan("1s")
