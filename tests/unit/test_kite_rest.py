"""KiteRest against the fake server, with the official kiteconnect SDK as an independent oracle."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io

import polars as pl
import pytest
from kiteconnect import KiteConnect
from pydantic import SecretStr

from quanto.data.kite import (
    MAX_DAYS,
    KiteCredentials,
    KiteRest,
    kite_chunks,
    kite_credentials_from_env,
    kite_interval,
    parse_instruments,
    resolve_tokens,
)
from quanto.data.rest import RestClient, TokenBucket, VendorRequestError
from quanto.data.schemas import BAR_SCHEMA, INSTRUMENT_SCHEMA, check_columns
from quanto.errors import InputError
from tests.fakes.vendor_http import (
    KITE_ACCESS_TOKEN,
    KITE_API_KEY,
    KITE_CSV_HEADER,
    KITE_INSTRUMENTS,
    BadBar,
    FakeVendorServer,
    Faults,
    VirtualTime,
)

UTC = dt.UTC
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
INFY = 408065
CREDS = KiteCredentials(SecretStr(KITE_API_KEY), SecretStr(KITE_ACCESS_TOKEN))


def client(server: FakeVendorServer, creds: KiteCredentials = CREDS) -> RestClient:
    vt = VirtualTime()
    limiter = TokenBucket(1000, 1000, clock=vt.clock, sleep=vt.sleep)
    return RestClient("kite", server.base_url, limiter=limiter, sleep=vt.sleep, headers=creds.headers())


def sdk(server: FakeVendorServer) -> KiteConnect:
    """The official synchronous SDK pointed at the fake."""
    return KiteConnect(api_key=KITE_API_KEY, access_token=KITE_ACCESS_TOKEN, root=server.base_url)


async def test_minute_candles_are_utc_and_match_the_sdk_and_the_oracle():
    start, end = dt.datetime(2024, 1, 2, 3, 45, tzinfo=UTC), dt.datetime(2024, 1, 4, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await KiteRest(c).fetch_bars("NSE:INFY", "1min", start, end)
        oracle = await asyncio.to_thread(
            sdk(server).historical_data, INFY, start.astimezone(IST), end.astimezone(IST), "minute"
        )
    check_columns(got.frame, BAR_SCHEMA, "test")
    assert got.frame.equals(server.expected_bars("kite", "NSE:INFY", "1min", start, end))
    # 09:15 IST is 03:45 UTC: the first candle of the session.
    assert got.frame["ts"][0] == dt.datetime(2024, 1, 2, 3, 45, tzinfo=UTC)
    sdk_ts = [r["date"].astimezone(UTC) for r in oracle if r["date"].astimezone(UTC) < end]
    assert got.frame["ts"].to_list() == sdk_ts
    assert got.frame["close"].to_list() == [r["close"] for r in oracle][: len(sdk_ts)]
    assert got.frame["vwap"].is_null().all() and got.frame["trades"].is_null().all()


async def test_long_ranges_are_split_within_kite_limits():
    start, end = dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 4, 20, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await KiteRest(c).fetch_bars("INFY", "1min", start, end, instrument_token=INFY)
        # The fake answers 400 InputException to any request over 60 days: none was made.
        assert server.counters.by_path[f"/instruments/historical/{INFY}/minute"] == 2
    assert got.frame.equals(server.expected_bars("kite", "NSE:INFY", "1min", start, end))


@pytest.mark.parametrize("timeframe", ["15min", "1h", "1d"])
async def test_aggregated_candles_equal_the_oracle(timeframe):
    start, end = dt.datetime(2024, 2, 1, tzinfo=UTC), dt.datetime(2024, 3, 1, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await KiteRest(c).fetch_bars("NSE:TCS", timeframe, start, end)
    assert got.frame.equals(server.expected_bars("kite", "NSE:TCS", timeframe, start, end))
    if timeframe == "1d":  # stamped at the 09:15 IST open, not at IST midnight
        assert set(got.frame["ts"].dt.to_string("%H:%M").to_list()) == {"03:45"}
    if timeframe == "1h":  # Kite's hourly candles start at the open: 09:15, 10:15, ... IST
        assert got.frame["ts"].dt.minute().unique().to_list() == [45]


async def test_bad_candles_are_rejected_with_a_reason():
    start, end = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC)
    bad = (BadBar("NSE:INFY", dt.datetime(2024, 1, 2, 4, 0, tzinfo=UTC), "null_price"),)
    with FakeVendorServer(Faults(bad_bars=bad)) as server:
        async with client(server) as c:
            got = await KiteRest(c).fetch_bars("NSE:INFY", "1min", start, end, instrument_token=INFY)
    assert len(got.frame) + len(got.rejected) == 375
    row = got.rejected.row(0, named=True)
    assert row == {
        "symbol": "NSE:INFY",
        "ts": "2024-01-02T09:30:00+0530",
        "raw": row["raw"],
        "reason": "[1] is null",
    }
    assert row["raw"].startswith('["2024-01-02T09:30:00+0530",null,')


async def test_instruments_csv_matches_the_sdk_parser():
    with FakeVendorServer() as server:
        async with client(server) as c:
            got = await KiteRest(c).instruments("NFO")
            everything = await c.get_text("/instruments")
    check_columns(got.frame, INSTRUMENT_SCHEMA, "test")
    oracle = KiteConnect(api_key="unused")._parse_instruments(everything.encode())
    ours = parse_instruments(everything).frame
    assert len(ours) == len(oracle) == len(KITE_INSTRUMENTS)
    by_token = {r["instrument_token"]: r for r in oracle}
    for row in ours.iter_rows(named=True):
        want = by_token[row["instrument_token"]]
        assert row["symbol"] == f"{want['exchange']}:{want['tradingsymbol']}"
        for key in ("exchange_token", "name", "last_price", "strike", "tick_size", "lot_size", "segment"):
            assert row[key] == (int(want[key]) if key == "exchange_token" else want[key]), key
        assert row["expiry"] == (want["expiry"] or None)
    assert got.frame["symbol"].to_list() == ["NFO:NIFTY24JAN21500CE", "NFO:NIFTY24JANFUT"]
    assert ours.filter(pl.col("symbol") == "NSE:BAJFINANCE")["name"].item() == "BAJAJ FINANCE, LTD"


def test_bad_instrument_rows_are_rejected():
    text = (
        "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,lot_size,"
        "instrument_type,segment,exchange\n"
        "408065,1594,INFY,INFOSYS,1500.5,,0,0.05,1,EQ,NSE,NSE\n"
        "abc,1595,BAD,BAD CO,1.0,,0,0.05,1,EQ,NSE,NSE\n"
        "408066,1596,LATE,LATE CO,1.0,2024-13-45,0,0.05,1,EQ,NSE,NSE\n"
    )
    got = parse_instruments(text)
    assert got.frame["symbol"].to_list() == ["NSE:INFY"]
    assert got.rejected["symbol"].to_list() == ["NSE:BAD", "NSE:LATE"]
    assert got.rejected["reason"].to_list() == [
        'instrument_token = "abc": expected an integer',
        'expiry = "2024-13-45": expected a YYYY-MM-DD date',
    ]


def test_resolve_tokens():
    instruments = parse_instruments(_csv()).frame
    assert resolve_tokens(instruments, ["NSE:INFY", "BSE:INFY"]) == {
        "NSE:INFY": 408065,
        "BSE:INFY": 128053508,
    }
    with pytest.raises(InputError, match=r"\['NSE:NOPE', 'XYZ'\].*EXCHANGE:TRADINGSYMBOL"):
        resolve_tokens(instruments, ["NSE:INFY", "NSE:NOPE", "XYZ"])


async def test_token_lookup_downloads_each_exchange_once():
    start, end = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server) as c:
            kite = KiteRest(c, exchange="NSE")
            parts = await asyncio.gather(
                *(kite.fetch_bars(s, "1d", start, end) for s in ("INFY", "NSE:TCS", "BSE:INFY"))
            )
            with pytest.raises(InputError, match="NSE:NOPE"):
                await kite.fetch_bars("NOPE", "1d", start, end)
        assert (
            server.counters.by_path["/instruments/NSE"] == 1
            and server.counters.by_path["/instruments/BSE"] == 1
        )
    assert [p.frame["symbol"].to_list() for p in parts] == [["NSE:INFY"], ["NSE:TCS"], ["BSE:INFY"]]


async def test_expired_token_names_the_variable_and_hides_the_secret():
    expired = KiteCredentials(SecretStr(KITE_API_KEY), SecretStr("stale-token-789"))
    start, end = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC)
    with FakeVendorServer() as server:
        async with client(server, expired) as c:
            with pytest.raises(VendorRequestError) as info:
                await KiteRest(c).fetch_bars("NSE:INFY", "1min", start, end, instrument_token=INFY)
    msg = str(info.value)
    assert info.value.status == 403 and "TokenException" in msg and "KITE_ACCESS_TOKEN" in msg
    assert "access tokens expire every day" in msg  # the scheme word "token" is not redacted
    assert "stale-token-789" not in msg and KITE_API_KEY not in msg


def test_chunks_cover_the_window_within_limits():
    start, end = dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC)
    for interval, days in MAX_DAYS.items():
        chunks = kite_chunks(start, end, interval)
        assert chunks[0][0] == start and chunks[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
        assert all(hi - lo <= dt.timedelta(days=days) for lo, hi in chunks)


def test_intervals():
    assert [kite_interval(t) for t in ("1min", "3min", "15min", "60min", "1h", "1d")] == [
        "minute", "3minute", "15minute", "60minute", "60minute", "day"
    ]  # fmt: skip
    for bad in ("2min", "2h", "1w"):
        with pytest.raises(InputError, match="kite has no"):
            kite_interval(bad)


def test_credentials(monkeypatch):
    monkeypatch.delenv("KITE_API_KEY", raising=False)
    monkeypatch.setenv("KITE_ACCESS_TOKEN", "tok-123")
    with pytest.raises(InputError, match="KITE_API_KEY") as info:
        kite_credentials_from_env()
    assert "tok-123" not in str(info.value)
    monkeypatch.setenv("KITE_API_KEY", "key-456")
    headers = kite_credentials_from_env().headers()
    assert headers["X-Kite-Version"] == "3"
    assert headers["Authorization"].get_secret_value() == "token key-456:tok-123"
    assert "tok-123" not in repr(headers)


def _csv() -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(KITE_CSV_HEADER)
    writer.writerows(KITE_INSTRUMENTS)
    return out.getvalue()
