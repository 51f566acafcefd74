"""Vendor streams: parsing documented messages, reconnects with backoff, gaps, rejects, micro-batches."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import orjson
import polars as pl
import pytest
import structlog.testing
from polars.testing import assert_frame_equal

from quanto.data.aggregate import BarAggregator
from quanto.data.kite_ticker import KiteTickerProtocol
from quanto.data.schemas import BAR_SCHEMA, QUOTE_SCHEMA, TRADE_SCHEMA, check_columns
from quanto.data.streams import (
    AlpacaStreamProtocol,
    GapDetector,
    MicroBatcher,
    PolygonStreamProtocol,
    ReconnectPolicy,
    RejectedMessage,
    StreamAuthError,
    StreamBatch,
    StreamUnavailableError,
    redact,
    run_stream,
)
from quanto.errors import InputError
from tests.fakes.vendor_ws import FakeAlpacaServer, FakeKiteServer, FakePolygonServer

UTC = dt.UTC
START = dt.datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
NO_JITTER = ReconnectPolicy(initial_s=0.5, max_s=4.0, multiplier=2.0, jitter=False)


def minute(k: int) -> dt.datetime:
    return START + dt.timedelta(minutes=k)


# --- parsing documented messages -------------------------------------------------------------------

ALPACA_FRAME = orjson.dumps(
    [
        {"T": "b", "S": "AAPL", "o": 130.52, "h": 130.6, "l": 130.5, "c": 130.55, "v": 4120, "t": "2021-02-22T15:51:00Z", "n": 37, "vw": 130.5501},
        {"T": "u", "S": "AAPL", "o": 130.52, "h": 130.6, "l": 130.5, "c": 130.56, "v": 4320, "t": "2021-02-22T15:51:00Z", "n": 38, "vw": 130.5512},
        {"T": "t", "S": "AAPL", "i": 52983525029461, "x": "V", "p": 130.55, "s": 100, "t": "2021-02-22T15:51:44.208123456Z", "c": ["@", "I"], "z": "C"},
        {"T": "q", "S": "AAPL", "bx": "V", "bp": 130.54, "bs": 2, "ax": "V", "ap": 130.56, "as": 3, "t": "2021-02-22T15:51:45.335689322Z", "c": ["R"], "z": "C"},
        {"T": "subscription", "trades": ["AAPL"], "quotes": ["AAPL"], "bars": ["AAPL"]},
        {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading Halt", "t": "2021-02-22T15:52:00Z"},
    ]
)  # fmt: skip


def test_alpaca_parse_documented_messages():
    batch = AlpacaStreamProtocol().parse(ALPACA_FRAME)
    assert not batch.rejected
    check_columns(batch.bars, BAR_SCHEMA, "bars")
    check_columns(batch.trades, TRADE_SCHEMA, "trades")
    check_columns(batch.quotes, QUOTE_SCHEMA, "quotes")
    bar, updated = batch.bars.to_dicts()
    assert bar["ts"] == dt.datetime(2021, 2, 22, 15, 51, tzinfo=UTC) and bar["timeframe"] == "1min"
    assert (bar["open"], bar["close"], bar["volume"], bar["vwap"], bar["trades"]) == (
        130.52,
        130.55,
        4120,
        130.5501,
        37,
    )
    assert (updated["close"], updated["volume"], updated["vendor"], updated["imputed"]) == (
        130.56,
        4320,
        "alpaca",
        False,
    )
    trade = batch.trades.row(0, named=True)
    assert trade["trade_id"] == "52983525029461" and trade["conditions"] == "@ I"
    assert batch.trades["ts"].cast(pl.Int64).item() % 1_000_000_000 == 208_123_456  # nanoseconds kept
    quote = batch.quotes.row(0, named=True)
    assert (quote["bid_px"], quote["bid_sz"], quote["ask_px"], quote["ask_sz"]) == (130.54, 2, 130.56, 3)
    assert [s["T"] for s in batch.status] == ["subscription", "s"]  # control + unsupported: kept


def test_alpaca_handshake_events():
    p = AlpacaStreamProtocol()
    assert p.handshake_event({"T": "success", "msg": "connected"}) == "connected"
    assert p.handshake_event({"T": "success", "msg": "authenticated"}) == "authenticated"
    assert p.handshake_event({"T": "error", "code": 402, "msg": "auth failed"}) == "auth_failed"
    assert p.handshake_event({"T": "error", "code": 406, "msg": "connection limit exceeded"}) == "error"
    assert orjson.loads(p.subscribe_messages(["AAPL"], ["bars", "trades"])[0]) == {
        "action": "subscribe",
        "bars": ["AAPL"],
        "updatedBars": ["AAPL"],
        "trades": ["AAPL"],
    }


def test_polygon_parse_documented_messages():
    frame = orjson.dumps(
        [
            {"ev": "AM", "sym": "GTE", "v": 4110, "av": 9470157, "op": 0.4372, "vw": 0.4488, "o": 0.4488, "c": 0.4486, "h": 0.4489, "l": 0.4486, "a": 0.4352, "z": 685, "s": 1610144640000, "e": 1610144700000},
            {"ev": "T", "sym": "MSFT", "x": 4, "i": "12345", "z": 3, "p": 114.125, "s": 100, "c": [0, 12], "t": 1536036818784, "q": 3681328},
            {"ev": "Q", "sym": "MSFT", "bx": 4, "bp": 114.125, "bs": 100, "ax": 7, "ap": 114.128, "as": 160, "c": 0, "t": 1536036818784, "q": 50385480, "z": 3},
            {"ev": "status", "status": "success", "message": "subscribed to: AM.GTE"},
        ]
    )  # fmt: skip
    batch = PolygonStreamProtocol(symbol_map={"GTE": "GTE.US"}).parse(frame)
    assert not batch.rejected
    bar = batch.bars.row(0, named=True)
    assert bar["symbol"] == "GTE.US" and bar["ts"] == dt.datetime.fromtimestamp(1610144640, UTC)
    assert bar["vwap"] == 0.4488 and bar["trades"] is None  # the window's own vwap, not "a"
    trade = batch.trades.row(0, named=True)
    assert trade["ts"] == dt.datetime(2018, 9, 4, 4, 53, 38, 784000, tzinfo=UTC)
    assert (trade["price"], trade["size"], trade["trade_id"], trade["conditions"]) == (
        114.125,
        100,
        "12345",
        "0 12",
    )
    assert batch.quotes.row(0, named=True)["ask_sz"] == 160
    assert batch.status == [{"ev": "status", "status": "success", "message": "subscribed to: AM.GTE"}]
    p = PolygonStreamProtocol()
    assert p.handshake_event({"ev": "status", "status": "auth_failed"}) == "auth_failed"
    assert orjson.loads(p.subscribe_messages(["AAPL"], ["bars", "trades"])[0]) == {
        "action": "subscribe",
        "params": "AM.AAPL,T.AAPL",
    }


def test_bad_messages_are_rejected_with_raw_text_and_the_rest_kept():
    p = PolygonStreamProtocol()
    good = {"ev": "T", "sym": "A", "p": 1.5, "s": 10, "t": 1_700_000_000_000}
    frame = orjson.dumps(
        [
            good,
            {"ev": "T", "sym": "A", "p": "1.5", "s": 10, "t": 1},  # wrong type
            {"ev": "T", "sym": "A", "s": 10, "t": 1},  # missing price
            {"ev": "T", "sym": "A", "p": None, "s": 10, "t": 1},  # null price
            7,  # not an object
            {**good, "p": 2.5},
        ]
    )
    batch = p.parse(frame)
    assert batch.trades["price"].to_list() == [1.5, 2.5]
    reasons = {r.raw: r.reason for r in batch.rejected}
    assert len(reasons) == 4
    assert "trades" in reasons[orjson.dumps({"ev": "T", "sym": "A", "p": "1.5", "s": 10, "t": 1}).decode()]
    assert "price" in reasons[orjson.dumps({"ev": "T", "sym": "A", "p": None, "s": 10, "t": 1}).decode()]
    assert "type field" in reasons["7"]
    for raw in (b'[{"ev":"T",', b'"x"', b"\xff\xfe"):
        bad = p.parse(raw)
        assert len(bad.rejected) == 1 and bad.data_rows() == 0
    assert p.parse(b"\xff\xfe").rejected[0].raw == "hex:fffe"
    alpaca = AlpacaStreamProtocol().parse(
        orjson.dumps([{"T": "t", "S": "A", "p": 1.0, "s": 1, "t": "yesterday"}])
    )
    assert "ts" in alpaca.rejected[0].reason and alpaca.trades.height == 0
    frame = StreamBatch("polygon", rejected=batch.rejected).rejected_frame()
    assert frame.columns == ["raw", "reason", "vendor"] and frame.height == 4


# --- backoff policy and gap detector ---------------------------------------------------------------


def test_backoff_grows_exponentially_to_the_cap_with_bounded_jitter():
    assert [NO_JITTER.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    jittered = ReconnectPolicy(initial_s=1.0, max_s=8.0)
    rng = random.Random(3)
    for n in range(1, 10):
        d = min(8.0, 2 ** (n - 1))
        assert d / 2 <= jittered.delay(n, rng) <= d


def test_gap_detector_reports_only_after_a_disconnect():
    def frame(symbol: str, k: int) -> pl.DataFrame:
        return pl.DataFrame({"symbol": [symbol], "ts": [minute(k)]})

    bars = GapDetector("1min", boundaries=False)
    assert bars.observe(frame("A", 0)) == [] and bars.observe(frame("A", 5)) == []  # vendor skipped minutes
    bars.disconnected()
    assert bars.observe(frame("A", 4)) == []  # a correction of an old bar says nothing yet
    gaps = bars.observe(frame("A", 9))
    ns = [int(minute(k).timestamp()) * 1_000_000_000 for k in (6, 9)]
    assert gaps == [("A", ns[0], ns[1])]
    assert bars.observe(frame("A", 20)) == []  # reported once
    bars.disconnected()
    assert bars.observe(frame("A", 21)) == []  # next minute: nothing missed
    trades = GapDetector("1min", boundaries=True)
    trades.observe(frame("A", 0))
    trades.disconnected()
    gaps = trades.observe(frame("A", 2))
    assert gaps == [("A", int(minute(0).timestamp()) * 10**9, int(minute(3).timestamp()) * 10**9)]


def test_redact_scrubs_values_and_query_credentials():
    text = "failed wss://x?api_key=abc123&access_token=zzz9 with secret s3cr3t"
    out = redact(text, ["s3cr3t"])
    assert "abc123" not in out and "zzz9" not in out and "s3cr3t" not in out


# --- run_stream against the fake servers -----------------------------------------------------------


class Harness:
    """Runs run_stream against a fake server until the last step arrives; records everything."""

    def __init__(self, server, protocol, channels, policy=NO_JITTER):
        self.server, self.protocol, self.channels, self.policy = server, protocol, channels, policy
        self.batches: list[StreamBatch] = []
        self.gaps: list[tuple[str, dt.datetime, dt.datetime]] = []
        self.delays: list[float] = []
        self.states: list[str] = []
        self.stop = asyncio.Event()
        self.aggregator = BarAggregator("1min", server.vendor)

    async def on_batch(self, batch: StreamBatch) -> None:
        self.batches.append(batch)
        self.aggregator.add_trade_frame(batch.trades)
        self.aggregator.add_tick_frame(batch.ticks)
        if self.server.saw_final(batch):
            self.stop.set()

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)

    def on_state(self, state: str, info: dict) -> None:
        self.states.append(state)

    async def run(self, credentials=None, timeout=20):
        return await asyncio.wait_for(
            run_stream(
                self.protocol,
                credentials=credentials or self.server.credentials,
                symbols=self.server.symbols,
                channels=self.channels,
                on_batch=self.on_batch,
                on_gap=lambda s, a, b: self.gaps.append((s, a, b)),
                stop=self.stop,
                reconnect=self.policy,
                sleep=self.sleep,
                on_state=self.on_state,
            ),
            timeout,
        )

    def bars(self) -> pl.DataFrame:
        frames = [b.bars for b in self.batches if b.bars.height]
        # Updated bars replace the bar with the same key: keep the last, as MicroBatcher does.
        return (
            pl.concat(frames)
            .unique(["symbol", "timeframe", "ts"], keep="last", maintain_order=True)
            .sort("symbol", "ts")
        )


def gap_bars(gaps, step=dt.timedelta(minutes=1)) -> set[tuple[str, dt.datetime]]:
    """(symbol, bar open) for every bar inside the reported gaps."""
    out = set()
    for symbol, lo, hi in gaps:
        t = lo
        while t < hi:
            out.add((symbol, t))
            t += step
    return out


def keys(frame: pl.DataFrame) -> set[tuple[str, dt.datetime]]:
    return set(frame.select("symbol", "ts").rows())


async def test_alpaca_stream_survives_faults_and_reports_exactly_the_outage_gaps():
    server = FakeAlpacaServer(
        ["AAPL", "MSFT"],
        START,
        12,
        refuse_first=2,
        outages={3: 2},
        truncate_at={7},
        malformed_at={5: 3},
        update_every=3,  # corrects AAPL's bars of minutes 5 and 8 (those of 2 and 7 were never sent)
    )
    with server:
        h = Harness(server, AlpacaStreamProtocol(url=server.url), ["bars", "trades", "quotes"])
        stats = await h.run()
    # Two refused connections back off 0.5 then 1.0; each drop after data restarts from 0.5.
    assert h.delays == [0.5, 1.0, 0.5, 0.5]
    assert stats.reconnects == 2 and stats.connections == 3 and stats.failures == 4
    # Malformed frames (3) and the truncated frame (1) are rejected, not fatal.
    assert stats.rejected == server.stats["malformed_sent"] + 1 == 4
    assert sum(len(b.rejected) for b in h.batches) == 4
    # Gaps cover exactly the bars the stream never carried; together they are the vendor's full history.
    assert (
        gap_bars(h.gaps)
        == keys(server.skipped_bars())
        == {(s, minute(k)) for s in ("AAPL", "MSFT") for k in (3, 4, 7)}
    )
    assert stats.gaps == len(h.gaps) == 4
    got = h.bars()
    assert_frame_equal(got, server.sent_bars())
    assert keys(got) | keys(server.skipped_bars()) == keys(server.all_bars())
    # Each updated bar (a correction) replaced the original one.
    aapl = pl.col("symbol") == "AAPL"
    for k in (5, 8):
        versions = (
            pl.concat(b.bars for b in h.batches).filter(aapl, pl.col("ts") == minute(k))["volume"].to_list()
        )
        assert len(versions) == 2 and versions[1] == versions[0] + 100
        assert got.filter(aapl, pl.col("ts") == minute(k))["volume"].item() == versions[1]
    # Bars built from the streamed trades equal the streamed bars (the corrections aside).
    from_trades = h.aggregator.flush()
    assert keys(from_trades) == keys(got)
    corrected = aapl & pl.col("ts").is_in([minute(5), minute(8)])
    assert_frame_equal(
        from_trades.filter(~corrected), got.filter(~corrected), check_exact=False, rel_tol=1e-12
    )
    assert h.states[0] == "connecting" and h.states[-1] == "stopped" and "backoff" in h.states


async def test_no_gap_and_no_reconnect_without_a_disconnect():
    server = FakePolygonServer(["AAPL", "MSFT", "NVDA"], START, 6, trades_per_bar=3)
    with server:
        h = Harness(server, PolygonStreamProtocol(url=server.url), ["bars", "trades", "quotes"])
        stats = await h.run()
    assert h.gaps == [] and stats.reconnects == 0 and stats.gaps == 0 and h.delays == []
    assert_frame_equal(h.bars(), server.sent_bars())
    assert (stats.bars, stats.trades, stats.quotes) == (18, 54, 18)
    assert stats.messages == 18 + 54 + 18 + stats.status


async def test_polygon_outage_gap_matches_skipped_bars():
    server = FakePolygonServer(["AAPL", "MSFT"], START, 10, outages={2: 4})
    with server:
        h = Harness(server, PolygonStreamProtocol(url=server.url), ["bars"])
        stats = await h.run()
    assert (
        gap_bars(h.gaps)
        == keys(server.skipped_bars())
        == {(s, minute(k)) for s in ("AAPL", "MSFT") for k in range(2, 6)}
    )
    assert [(s, a, b) for s, a, b in h.gaps] == [
        ("AAPL", minute(2), minute(6)),
        ("MSFT", minute(2), minute(6)),
    ]
    assert stats.reconnects == 1 and h.delays == [0.5]


async def test_refused_connections_back_off_exponentially_up_to_the_cap():
    server = FakeAlpacaServer(["AAPL"], START, 2, refuse_first=7)
    with server:
        h = Harness(server, AlpacaStreamProtocol(url=server.url), ["bars"])
        stats = await h.run()
    assert h.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert stats.connections == 1 and server.stats["refused"] == 7


async def test_max_consecutive_failures_gives_up_when_set():
    server = FakeAlpacaServer(["AAPL"], START, 2, refuse_first=10)
    policy = ReconnectPolicy(jitter=False, max_consecutive_failures=3)
    with server:
        h = Harness(server, AlpacaStreamProtocol(url=server.url), ["bars"], policy)
        with pytest.raises(StreamUnavailableError):
            await h.run()
    assert len(h.delays) == 2


@pytest.mark.parametrize("vendor", ["alpaca", "polygon", "kite"])
async def test_auth_failure_stops_with_stream_auth_error_and_never_logs_secrets(vendor):
    if vendor == "alpaca":
        server = FakeAlpacaServer(["AAPL"], START, 3)
        protocol, channels = lambda: AlpacaStreamProtocol(url=server.url), ["bars"]
        wrong = {"key": "AKWRONGKEY999", "secret": "wrong-secret-value-77"}
    elif vendor == "polygon":
        server = FakePolygonServer(["AAPL"], START, 3)
        protocol, channels = lambda: PolygonStreamProtocol(url=server.url), ["bars"]
        wrong = {"key": "wrong-polygon-key-55"}
    else:
        server = FakeKiteServer(["NSE:INFY"], START, 3)
        protocol, channels = lambda: KiteTickerProtocol(server.token_to_symbol, url=server.url), ["full"]
        wrong = {"api_key": "wrongkitekey", "access_token": "wrong-kite-token-31"}
    with server, structlog.testing.capture_logs() as logs:
        h = Harness(server, protocol(), channels)  # the URL is known once the server listens
        with pytest.raises(StreamAuthError) as err:
            await h.run(credentials=wrong)
    assert server.stats["auth_failures"] == 3 and len(h.delays) == 2
    assert h.states.count("auth_failed") == 3 and h.states[-1] == "failed"
    assert logs, "the failures were logged"
    secrets = list(wrong.values()) + list(server.credentials.values())
    text = repr(logs) + str(err.value) + repr(h.states)
    for secret in secrets:
        assert secret not in text
    assert isinstance(err.value, InputError)


async def test_kite_stream_ticks_to_bars_with_outage():
    server = FakeKiteServer(["NSE:INFY", "NSE:TCS"], START, 10, outages={4: 2}, malformed_at={7: 3})
    with server:
        protocol = KiteTickerProtocol(server.token_to_symbol, url=server.url)
        h = Harness(server, protocol, ["full"])
        stats = await h.run()
    assert stats.rejected == 3 and stats.depth == stats.ticks > 0
    # Bars built from trades/ticks: the gap includes the bars at both cuts (they may be partial).
    assert gap_bars(h.gaps) >= keys(server.skipped_bars())
    assert gap_bars(h.gaps) == {(s, minute(k)) for s in ("NSE:INFY", "NSE:TCS") for k in range(3, 6)}
    # Away from the gaps (which the REST backfill replaces), bars from ticks equal the vendor's bars.
    in_gaps = pl.DataFrame(
        sorted(gap_bars(h.gaps)), orient="row", schema={"symbol": pl.String, "ts": pl.Datetime("ns", "UTC")}
    )
    bars = h.aggregator.flush().filter(pl.col("ts") >= START)
    outside = bars.join(in_gaps, on=["symbol", "ts"], how="anti")
    expected = server.sent_bars().join(outside.select("symbol", "ts"), on=["symbol", "ts"])
    assert outside.height == expected.height == 2 * 10 - 2 * 3
    assert_frame_equal(
        outside.sort("symbol", "ts"), expected.sort("symbol", "ts"), check_exact=False, rel_tol=1e-12
    )


async def test_callback_errors_are_counted_and_the_stream_goes_on():
    server = FakeAlpacaServer(["AAPL"], START, 4)
    with server:
        h = Harness(server, AlpacaStreamProtocol(url=server.url), ["bars"])
        calls = 0

        def flaky(batch: StreamBatch) -> None:  # sync callbacks work too
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("disk full")
            if server.saw_final(batch):
                h.stop.set()

        h.on_batch = flaky
        stats = await h.run()
    assert stats.callback_errors == 1 and stats.bars == 4


async def test_stop_during_backoff_returns_promptly():
    server = FakeAlpacaServer(["AAPL"], START, 2, refuse_first=100)
    with server:
        h = Harness(server, AlpacaStreamProtocol(url=server.url), ["bars"])

        async def sleep(delay: float) -> None:
            h.delays.append(delay)
            h.stop.set()
            await asyncio.Event().wait()  # would block forever without the stop race

        h.sleep = sleep
        stats = await h.run(timeout=5)
    assert stats.connections == 0 and h.delays == [0.5] and h.states[-1] == "stopped"


async def test_bad_configuration_fails_before_connecting():
    stop = asyncio.Event()
    common = {"on_batch": lambda b: None, "stop": stop, "symbols": ["AAPL"]}
    with pytest.raises(InputError, match="channel"):
        await run_stream(
            AlpacaStreamProtocol(), credentials={"key": "k", "secret": "s"}, channels=["bogus"], **common
        )
    with pytest.raises(InputError, match="secret"):
        await run_stream(AlpacaStreamProtocol(), credentials={"key": "k"}, channels=["bars"], **common)


# --- MicroBatcher ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bars_frame(rows: list[tuple[str, int, float]]) -> pl.DataFrame:
    """BAR_SCHEMA rows from (symbol, minute, close)."""
    batch = AlpacaStreamProtocol().parse(
        orjson.dumps(
            [
                {
                    "T": "b",
                    "S": s,
                    "o": c,
                    "h": c,
                    "l": c,
                    "c": c,
                    "v": 1,
                    "t": minute(k).isoformat().replace("+00:00", "Z"),
                }
                for s, k, c in rows
            ]
        )
    )
    return batch.bars


def test_microbatcher_flushes_by_rows_and_by_age():
    written: list[tuple[str, int]] = []
    clock = Clock()
    mb = MicroBatcher(
        lambda kind, f: written.append((kind, f.height)), flush_rows=3, flush_s=10.0, clock=clock
    )
    mb.add("bars", bars_frame([("A", 0, 1.0), ("A", 1, 1.0)]))
    assert written == [] and mb.buffered_rows("bars") == 2
    mb.add("bars", bars_frame([("A", 2, 1.0)]))
    assert written == [("bars", 3)] and mb.buffered_rows() == 0
    mb.add(
        "trades",
        AlpacaStreamProtocol()
        .parse(orjson.dumps([{"T": "t", "S": "A", "p": 1, "s": 1, "t": "2024-01-02T14:30:00Z"}]))
        .trades,
    )
    clock.now += 9.9
    mb.tick()
    assert written == [("bars", 3)]
    clock.now += 0.1
    mb.tick()
    assert written == [("bars", 3), ("trades", 1)]
    mb.add("quotes", pl.DataFrame())  # empty frames are ignored
    assert mb.buffered_rows() == 0 and mb.written == {"bars": 3, "trades": 1}


def test_microbatcher_keeps_the_last_version_of_a_bar():
    written: list[pl.DataFrame] = []
    mb = MicroBatcher(lambda kind, f: written.append(f), flush_rows=100)
    mb.add("bars", bars_frame([("A", 0, 1.0), ("B", 0, 5.0)]))
    mb.add("bars", bars_frame([("A", 0, 1.5), ("A", 1, 2.0)]))  # updated bar for (A, 0)
    mb.flush_all()
    (out,) = written
    assert out.select("symbol", "close").rows() == [("B", 5.0), ("A", 1.5), ("A", 2.0)]
    assert mb.replaced == 1


def test_microbatcher_never_loses_rows_when_the_write_fails():
    attempts: list[int] = []
    fail = [True]

    def write(kind: str, frame: pl.DataFrame) -> None:
        attempts.append(frame.height)
        if fail[0]:
            raise OSError("lake unavailable")

    mb = MicroBatcher(write, flush_rows=2)
    with pytest.raises(OSError):
        mb.add("bars", bars_frame([("A", 0, 1.0), ("A", 1, 1.0)]))
    assert mb.buffered_rows("bars") == 2
    with pytest.raises(OSError):
        mb.add("bars", bars_frame([("A", 2, 1.0)]))
    fail[0] = False
    mb.flush_all()
    assert attempts == [2, 3, 3] and mb.buffered_rows() == 0 and mb.written == {"bars": 3}


def test_microbatcher_add_batch_buffers_every_kind_and_rejects():
    written: dict[str, int] = {}
    mb = MicroBatcher(lambda kind, f: written.__setitem__(kind, f.height), flush_rows=1000)
    batch = AlpacaStreamProtocol().parse(ALPACA_FRAME)
    batch.rejected.append(RejectedMessage("{x", "malformed JSON frame"))
    mb.add_batch(batch)
    mb.flush_all()
    assert written == {"bars": 1, "trades": 1, "quotes": 1, "rejected": 1}  # the updated bar replaced "b"
