"""RestClient, TokenBucket, RetryPolicy and row parsing against the local fake vendor server."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import pickle
import socket
import threading

import polars as pl
import pytest
import structlog
from pydantic import SecretStr

from quanto.data.rest import (
    Column,
    RestClient,
    RetryPolicy,
    TokenBucket,
    VendorError,
    VendorRequestError,
    limiter_for,
    retry_after_s,
    split_rows,
    split_timeframe,
)
from quanto.errors import InputError
from tests.fakes.vendor_http import (
    ALPACA_KEY_ID,
    ALPACA_SECRET_KEY,
    POLYGON_API_KEY,
    FakeVendorServer,
    Faults,
    VirtualTime,
)

TICKER_PATH = "/v3/reference/tickers/AAPL"
SECRETS = (POLYGON_API_KEY, ALPACA_KEY_ID, ALPACA_SECRET_KEY)


def polygon(base_url: str, vt: VirtualTime | None = None, **kw) -> RestClient:
    """A Polygon client on the fake; with `vt`, every wait (limiter and backoff) is virtual."""
    vt = vt or VirtualTime()
    limiter = kw.pop("limiter", None) or TokenBucket(1000, 1000, clock=vt.clock, sleep=vt.sleep)
    return RestClient(
        "polygon",
        base_url,
        limiter=limiter,
        sleep=vt.sleep,
        seed=1,
        **FakeVendorServer.credentials("polygon"),
        **kw,
    )


# --- TokenBucket ---------------------------------------------------------------------------------


async def test_token_bucket_paces_acquires_at_the_rate():
    vt = VirtualTime()
    bucket = TokenBucket(10, 5, clock=vt.clock, sleep=vt.sleep)
    for _ in range(5):  # the burst goes at once
        await bucket.acquire()
    assert vt.now == 0
    for _ in range(30):
        await bucket.acquire()
    assert vt.now == pytest.approx(3.0)  # 30 more tokens at 10/s


async def test_token_bucket_counts_concurrent_acquires_in_virtual_time():
    vt = VirtualTime()
    bucket = TokenBucket(4, 2, clock=vt.clock, sleep=vt.sleep)
    done: list[float] = []

    async def one():
        await bucket.acquire()
        done.append(vt.now)

    await asyncio.gather(*(one() for _ in range(22)))
    assert len(done) == 22
    # In any window of 1 virtual second at most burst + rate acquires complete.
    for t in done:
        assert sum(1 for u in done if t <= u < t + 1.0) <= 2 + 4
    assert max(done) == pytest.approx((22 - 2) / 4, abs=0.3)


def test_token_bucket_is_shared_safely_by_threads():
    frozen = VirtualTime()  # the clock never moves: only the burst is available
    bucket = TokenBucket(1e-6, 4000, clock=frozen.clock)
    granted = []

    def take():
        granted.append(sum(1 for _ in range(1000) if bucket._take() == 0.0))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 4000  # never more tokens than the burst, whatever the interleaving


async def test_penalize_pauses_the_bucket_and_never_shortens_a_pause():
    vt = VirtualTime()
    bucket = TokenBucket(100, 10, clock=vt.clock, sleep=vt.sleep)
    bucket.penalize(5)
    bucket.penalize(2)
    await bucket.acquire()
    assert vt.now == pytest.approx(5.0)
    await bucket.acquire()  # after a pause, the rest refill at the rate (no burst into the server)
    assert vt.now == pytest.approx(5.01)


def test_limiter_for_returns_one_bucket_per_vendor_and_settings():
    assert limiter_for("v-test", 5, 2) is limiter_for("v-test", 5.0, 2)
    assert limiter_for("v-test", 5, 2) is not limiter_for("v-test", 6, 2)
    assert limiter_for("v-test", 5, 2) is not limiter_for("w-test", 5, 2)


def test_token_bucket_rejects_bad_settings():
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(0, 1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1, 0)


# --- Retry policy ------------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date():
    now = dt.datetime(2024, 1, 2, 12, 0, tzinfo=dt.UTC)
    later = email.utils.format_datetime(now + dt.timedelta(seconds=12), usegmt=True)
    assert retry_after_s("3", now) == 3.0
    assert retry_after_s(later, now) == pytest.approx(12.0)
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_backoff_is_full_jitter_under_the_cap():
    import random

    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0)
    rng = random.Random(3)
    for attempt, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        waits = [policy.backoff(attempt, rng) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= cap
        assert max(waits) > cap / 2  # spread over the range, not a constant
    assert RetryPolicy(jitter=False, backoff_base_s=0.5).backoff(3, rng) == 2.0


# --- RestClient against the fake ------------------------------------------------------------------


async def test_429_retry_after_is_honoured_and_pauses_the_vendor():
    vt = VirtualTime()
    with FakeVendorServer(Faults(throttle_every=2, retry_after="7")) as server:
        async with polygon(server.base_url, vt) as client:
            for _ in range(3):
                got = await client.get_json(TICKER_PATH)
                assert got["results"]["ticker"] == "AAPL"
        throttled = server.counters.throttled
    assert throttled >= 2 and client.stats.throttled == throttled
    assert client.stats.retries == throttled
    # Each 429 paused the bucket for at least Retry-After before the next request went out.
    assert vt.now >= 7 * throttled
    assert sum(1 for s in vt.sleeps if s >= 7) == throttled


async def test_server_error_burst_then_success_with_bounded_backoff():
    vt = VirtualTime()
    policy = RetryPolicy(max_attempts=4, backoff_base_s=0.5, backoff_max_s=1.5)
    with FakeVendorServer(Faults(server_errors=3, error_status=502)) as server:
        async with polygon(server.base_url, vt, retry=policy) as client:
            got = await client.get_json(TICKER_PATH)
    assert got["results"]["ticker"] == "AAPL"
    assert client.stats.server_errors == 3 and client.stats.retries == 3 and client.stats.requests == 4
    assert len(vt.sleeps) == 3
    for attempt, wait in enumerate(vt.sleeps, start=1):
        assert 0 <= wait <= min(1.5, 0.5 * 2 ** (attempt - 1))


async def test_burst_longer_than_max_attempts_raises_vendor_error():
    with FakeVendorServer(Faults(server_errors=5, error_status=503)) as server:
        async with polygon(server.base_url, retry=RetryPolicy(max_attempts=3)) as client:
            with pytest.raises(VendorError) as info:
                await client.get_json(TICKER_PATH)
        assert server.counters.requests == 3
    err = info.value
    assert not isinstance(err, InputError)  # retryable: the activity may try again later
    assert err.vendor == "polygon" and err.status == 503
    assert str(err).startswith(
        "polygon GET /v3/reference/tickers/AAPL?apiKey=***: gave up after 3 attempts: 503"
    )
    assert POLYGON_API_KEY not in str(err)


async def test_timeout_is_retried():
    with FakeVendorServer(Faults(slow_s=1.0)) as server:
        async with polygon(server.base_url, timeout_s=0.2) as client:
            got = await client.get_json(TICKER_PATH)
    assert got["results"]["ticker"] == "AAPL"
    assert client.stats.timeouts == 1 and client.stats.requests == 2


async def test_truncated_json_is_retried():
    with FakeVendorServer(Faults(malformed=True)) as server:
        async with polygon(server.base_url) as client:
            got = await client.get_json(TICKER_PATH)
            assert got["results"]["ticker"] == "AAPL"
        assert server.counters.malformed == 1
    assert client.stats.malformed == 1 and client.stats.retries == 1


async def test_connection_errors_are_retried_then_reported():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with polygon(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(VendorError, match="gave up after 2 attempts: connection error"):
            await client.get_json(TICKER_PATH)
    assert client.stats.connection_errors == 2


async def test_retry_after_beyond_the_limit_fails_at_once():
    policy = RetryPolicy(retry_after_max_s=60)
    with FakeVendorServer(Faults(throttle_every=1, retry_after="3600")) as server:
        async with polygon(server.base_url, retry=policy) as client:
            with pytest.raises(VendorError, match="asks to wait 3600 s"):
                await client.get_json(TICKER_PATH)
        assert server.counters.requests == 1


async def test_bad_key_raises_vendor_request_error_without_the_secret():
    with FakeVendorServer() as server:
        vt = VirtualTime()
        limiter = TokenBucket(100, 100, clock=vt.clock, sleep=vt.sleep)
        bad = "wrong-polygon-key-XYZ"
        async with RestClient(
            "polygon", server.base_url, limiter=limiter, params={"apiKey": SecretStr(bad)}
        ) as c:
            with pytest.raises(VendorRequestError) as info:
                await c.get_json(TICKER_PATH)
        headers = {"APCA-API-KEY-ID": "wrong-id-123", "APCA-API-SECRET-KEY": "wrong-secret-456"}
        async with RestClient("alpaca", server.base_url, limiter=limiter, headers=headers) as c:
            with pytest.raises(VendorRequestError) as alpaca_info:
                await c.get_json(
                    "/v2/stocks/bars", {"symbols": "AAPL", "timeframe": "1Min", "start": "2024-01-02"}
                )
        assert server.counters.requests == 2  # no retry: it cannot help
    err = info.value
    assert isinstance(err, InputError) and err.status == 401
    assert "Unknown API Key" in str(err) and "check POLYGON_API_KEY" in str(err)
    assert bad not in str(err) and "apiKey=***" in str(err)
    msg = str(alpaca_info.value)
    assert msg.startswith("alpaca GET /v2/stocks/bars")
    assert "403 forbidden" in msg and "check ALPACA_API_KEY_ID/ALPACA_API_SECRET_KEY" in msg
    assert "wrong-id-123" not in msg and "wrong-secret-456" not in msg


async def test_not_found_is_a_vendor_request_error():
    with FakeVendorServer() as server:
        async with polygon(server.base_url) as client:
            with pytest.raises(VendorRequestError, match=r"404 not found: Ticker not found") as info:
                await client.get_json("/v3/reference/tickers/NOPE")
    assert info.value.status == 404


async def test_secrets_never_reach_logs_or_stats():
    faults = Faults(throttle_every=3, retry_after="0", server_errors=1)
    with FakeVendorServer(faults) as server, structlog.testing.capture_logs() as logs:
        async with polygon(server.base_url) as client:
            for path in (TICKER_PATH, "/v3/reference/tickers/MSFT", "/v3/reference/tickers/SPY"):
                await client.get_json(path)
    assert len(logs) >= 3 and all(e["vendor"] == "polygon" for e in logs)
    assert any("apiKey=***" in e["url"] for e in logs)
    assert not any(secret in repr(logs) for secret in SECRETS)
    stats = client.stats.as_dict()
    assert stats["retries"] == len(logs) and stats["server_errors"] == 3
    assert all(isinstance(v, int | float) for v in stats.values())
    assert not any(secret in repr(stats) for secret in SECRETS)


async def test_absolute_urls_of_another_host_are_refused():
    with FakeVendorServer() as server:
        async with polygon(server.base_url) as client:
            with pytest.raises(VendorRequestError, match="another host"):
                await client.get_json("http://203.0.113.9/v3/reference/tickers?cursor=abc")
            same = await client.get_json(server.base_url + TICKER_PATH)  # apiKey re-added: not a 401
        assert same["results"]["ticker"] == "AAPL"
        assert server.counters.requests == 1


async def test_concurrency_is_bounded():
    with FakeVendorServer(latency_s=0.05) as server:
        async with polygon(server.base_url, concurrency=3) as client:
            await asyncio.gather(*(client.get_json(TICKER_PATH) for _ in range(12)))
        assert server.counters.requests == 12
        assert server.counters.max_in_flight == 3


async def test_client_must_be_opened():
    client = polygon("http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="async with"):
        await client.get_json(TICKER_PATH)


def test_vendor_errors_pickle_with_their_fields():
    for cls in (VendorError, VendorRequestError):
        err = pickle.loads(pickle.dumps(cls("alpaca", "/v2/stocks/bars", 403, "403 forbidden")))
        assert type(err) is cls and (err.vendor, err.path, err.status) == ("alpaca", "/v2/stocks/bars", 403)
        assert str(err) == "alpaca GET /v2/stocks/bars: 403 forbidden"


# --- Row parsing ---------------------------------------------------------------------------------

COLUMNS = (
    Column("ts", "t", "iso"),
    Column("open", "o"),
    Column("volume", "v"),
    Column("trades", "n", "int", required=False),
)


def test_split_rows_rejects_each_bad_row_once_with_field_and_value():
    rows = [
        {"t": "2024-01-02T14:30:00Z", "o": 1.5, "v": 100, "n": 3},
        {"t": "2024-01-02T14:31:00Z", "o": None, "v": 100},
        {"t": "2024-01-02T14:32:00Z", "o": 1.5, "v": "100"},
        {"t": "2024-01-02T14:33:00Z", "o": True, "v": 100},
        {"t": "yesterday", "o": 1.5, "v": 100},
        {"t": "2024-01-02T14:35:00Z", "v": 100},
        {"t": "2024-01-02T14:36:00+05:30", "o": 2, "v": 1, "n": 2.5},
        {"t": "2024-01-02T14:37:00Z", "o": 2, "v": 1, "n": None},
    ]
    frame, rejected = split_rows(rows, COLUMNS, symbol="AAPL", ts_key="t")
    assert len(frame) + len(rejected) == len(rows)
    assert frame["ts"].dt.to_string("%H:%M").to_list() == ["14:30", "14:37"]
    assert frame["trades"].to_list() == [3, None]
    assert rejected["reason"].to_list() == [
        "o is null",
        'v = "100": expected a number',
        "o = true: expected a number",
        't = "yesterday": expected an ISO 8601 timestamp with offset',
        "o is missing",
        "n = 2.5: expected an integer",
    ]
    assert rejected["ts"][0] == "2024-01-02T14:31:00Z" and rejected["symbol"].unique().to_list() == ["AAPL"]
    assert '"v":"100"' in rejected["raw"][1]


def test_split_rows_checks_see_typed_columns():
    rows = [{"a": 1, "b": 2}, {"a": 0, "b": 2}]
    checks = [(pl.col("a") <= 0, pl.format("a = {}: must be > 0", pl.col("a")))]
    frame, rejected = split_rows(rows, (Column("a", "a"), Column("b", "b")), symbol="X", checks=checks)
    assert frame["a"].to_list() == [1.0] and rejected["reason"].to_list() == ["a = 0.0: must be > 0"]


def test_split_timeframe():
    assert split_timeframe("5min") == (5, "min") and split_timeframe("1h") == (1, "h")
    assert split_timeframe("3mo") == (3, "mo")
    for bad in ("0min", "1m", "min", "1 d", "", None):
        with pytest.raises(InputError, match="unknown timeframe"):
            split_timeframe(bad)
