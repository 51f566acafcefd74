"""AlpacaBars against the fake server: paging, timeframes, [start, end), bad rows, credentials."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from quanto.data.alpaca import AlpacaBars, alpaca_credentials_from_env, alpaca_timeframe
from quanto.data.rest import RestClient, TokenBucket, VendorRequestError
from quanto.data.schemas import BAR_SCHEMA, check_columns
from quanto.errors import InputError
from tests.fakes.vendor_http import BadBar, FakeVendorServer, Faults, VirtualTime

UTC = dt.UTC
START, END = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 6, tzinfo=UTC)


def client(server: FakeVendorServer, **kw) -> RestClient:
    vt = VirtualTime()
    limiter = TokenBucket(1000, 1000, clock=vt.clock, sleep=vt.sleep)
    return RestClient(
        "alpaca",
        server.base_url,
        limiter=limiter,
        sleep=vt.sleep,
        **FakeVendorServer.credentials("alpaca"),
        **kw,
    )


def expected(server: FakeVendorServer, symbols, timeframe, start=START, end=END) -> pl.DataFrame:
    return pl.concat([server.expected_bars("alpaca", s, timeframe, start, end) for s in sorted(symbols)])


async def test_pages_through_every_symbol_and_equals_the_oracle():
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await AlpacaBars(c, page_limit=700).fetch_bars(["MSFT", "AAPL"], "1min", START, END)
        pages = server.counters.by_path["/v2/stocks/bars"]
    want = expected(server, ["AAPL", "MSFT"], "1min")
    assert len(want) == 2 * 4 * 390  # Jan 2-5 2024: four full sessions
    assert pages == -(-len(want) // 700)  # the token chain was followed to the end
    check_columns(got.frame, BAR_SCHEMA, "test")
    assert got.frame.equals(want)
    assert got.rejected.is_empty()


@pytest.mark.parametrize("timeframe", ["5min", "1h", "1d"])
async def test_aggregated_timeframes_equal_the_oracle(timeframe):
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await AlpacaBars(c).fetch_bars(["AAPL"], timeframe, START, END)
    assert got.frame.equals(expected(server, ["AAPL"], timeframe))
    assert got.frame["timeframe"].unique().to_list() == [timeframe]


async def test_window_is_start_inclusive_end_exclusive():
    start = dt.datetime(2024, 1, 3, 15, 0, tzinfo=UTC)
    end = dt.datetime(2024, 1, 3, 15, 30, tzinfo=UTC)  # Alpaca's end is inclusive: the 15:30 bar comes back
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await AlpacaBars(c).fetch_bars(["AAPL"], "1min", start, end)
    ts = got.frame["ts"]
    assert len(got.frame) == 30 and ts.min() == start and ts.max() == end - dt.timedelta(minutes=1)


async def test_daily_bars_are_stamped_at_the_open_and_kept_when_start_is_after_midnight():
    start = dt.datetime(2024, 1, 3, 10, 0, tzinfo=UTC)  # 05:00 ET: after the vendor's midnight stamp
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await AlpacaBars(c).fetch_bars(["AAPL"], "1d", start, END)
    stamps = got.frame["ts"].dt.to_string("%Y-%m-%d %H:%M").to_list()
    assert stamps == ["2024-01-03 14:30", "2024-01-04 14:30", "2024-01-05 14:30"]  # 09:30 ET
    assert got.frame.equals(expected(server, ["AAPL"], "1d", start))


async def test_bad_rows_are_rejected_with_a_reason_not_dropped():
    bad = (
        BadBar("AAPL", dt.datetime(2024, 1, 2, 15, 0, tzinfo=UTC), "null_price"),
        BadBar("MSFT", dt.datetime(2024, 1, 4, 20, 59, tzinfo=UTC), "string_volume"),
    )
    with FakeVendorServer(Faults(bad_bars=bad)) as server:
        async with client(server) as c:
            got = await AlpacaBars(c, page_limit=1000).fetch_bars(["AAPL", "MSFT"], "1min", START, END)
    want = expected(server, ["AAPL", "MSFT"], "1min")
    assert len(got.frame) + len(got.rejected) == len(want)
    keys = pl.DataFrame({"symbol": [b.symbol for b in bad], "ts": [b.ts for b in bad]}).cast(
        {"ts": pl.Datetime("ns", "UTC")}
    )
    assert got.frame.equals(want.join(keys, on=["symbol", "ts"], how="anti"))
    rejected = got.rejected.sort("symbol")
    assert rejected["symbol"].to_list() == ["AAPL", "MSFT"]
    assert rejected["ts"].to_list() == ["2024-01-02T15:00:00Z", "2024-01-04T20:59:00Z"]
    assert rejected["reason"][0] == "o is null"
    assert rejected["reason"][1].startswith('v = "') and rejected["reason"][1].endswith(
        '": expected a number'
    )
    assert '"o":null' in rejected["raw"][0]


async def test_empty_range_gives_an_empty_canonical_frame():
    saturday, sunday = dt.datetime(2024, 1, 6, tzinfo=UTC), dt.datetime(2024, 1, 7, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await AlpacaBars(c).fetch_bars(["AAPL"], "1min", saturday, sunday)
    assert got.frame.is_empty() and got.frame.schema == expected(server, ["AAPL"], "1min").schema


async def test_feed_the_vendor_refuses_is_a_request_error():
    with FakeVendorServer() as server:
        async with client(server) as c:
            with pytest.raises(
                VendorRequestError, match=r"alpaca GET /v2/stocks/bars\?.*422 unprocessable entity"
            ):
                await AlpacaBars(c, feed="boats").fetch_bars(["AAPL"], "1min", START, END)


def test_timeframe_mapping():
    cases = {"1min": "1Min", "45min": "45Min", "1h": "1Hour", "23h": "23Hour", "1d": "1Day", "1w": "1Week",
             "6mo": "6Month", "12mo": "12Month"}  # fmt: skip
    assert {tf: alpaca_timeframe(tf) for tf in cases} == cases
    for bad in ("60min", "24h", "2d", "2w", "5mo", "1m", "1Min"):
        with pytest.raises(InputError, match="alpaca|unknown timeframe"):
            alpaca_timeframe(bad)


async def test_bad_arguments_are_input_errors():
    with FakeVendorServer() as server:
        async with client(server) as c:
            bars = AlpacaBars(c)
            with pytest.raises(InputError, match="timezone-aware"):
                await bars.fetch_bars(["AAPL"], "1min", dt.datetime(2024, 1, 2), END)
            with pytest.raises(InputError, match="before end"):
                await bars.fetch_bars(["AAPL"], "1min", END, START)
            with pytest.raises(InputError, match="bad"):
                await bars.fetch_bars(["AAPL", "no spaces"], "1min", START, END)
        assert server.counters.requests == 0
    for kwargs in ({"feed": "x"}, {"adjustment": "y"}, {"page_limit": 10_001}):
        with pytest.raises(InputError):
            AlpacaBars(None, **kwargs)  # type: ignore[arg-type]


def test_credentials_from_env(monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY_ID", "id-value-123")
    monkeypatch.delenv("ALPACA_API_SECRET_KEY", raising=False)
    with pytest.raises(InputError, match="ALPACA_API_SECRET_KEY") as info:
        alpaca_credentials_from_env()
    assert "id-value-123" not in str(info.value)
    monkeypatch.setenv("ALPACA_API_SECRET_KEY", "secret-value-456")
    creds = alpaca_credentials_from_env()
    assert creds.key_id.get_secret_value() == "id-value-123"
    assert "secret-value-456" not in repr(creds)
    assert set(creds.headers()) == {"APCA-API-KEY-ID", "APCA-API-SECRET-KEY"}
