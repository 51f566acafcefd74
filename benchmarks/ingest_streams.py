"""Benchmark: stream messages → minute bars, ours vs the plain approach a user writes.

Input: N trade messages (N = $QUANTO_BENCH_MSGS, default 300,000) over 500 symbols and ten minutes
of event time, pre-encoded as vendor frames of 100 messages: Polygon `T` (epoch-ms times, condition
codes) and Alpaca `t` (RFC 3339 times). Seeded, built once.

- ours: `StreamProtocol.parse` (orjson, validated canonical TRADE_SCHEMA frames, bad messages kept
  as rejects) + `BarAggregator.add_trade_frame` + `close_until()` after every frame (bars come out
  as soon as their minute closes) + `flush()` at the end.
- peer "json+pandas": the common hand-written collector: `json.loads` per frame, append symbol, time,
  price and size of each trade message to Python lists, then at the end one pandas frame,
  `floor("1min")` and `groupby([symbol, bar])` for OHLC (`.ohlc()`), volume, vwap and count. It
  validates nothing and emits no bar before the end of the run.
- websocket case (`stream_trades_to_bars_ws`): the same work through a real local socket: the fake
  Polygon server (tests.fakes.vendor_ws; 500 symbols x 20 trades per minute, one frame per minute)
  → `run_stream` → aggregator, vs a plain `websockets` client feeding the peer collector. The server
  runs in a thread of this process (frames pre-encoded by a warm-up replay), so both sides pay for
  its sends.

On the warm-up run ours and the peer must agree on every bar (OHLC, volume and count exact, vwap to
1e-9), or the benchmark fails. Reps alternate ours/peer; medians of REPS ($QUANTO_BENCH_REPS,
default 3) after one warm-up. Prints one JSON line per case (DESIGN.md section 9); progress goes to
stderr. Goal: unit_rate (ours, messages/s) >= 100,000.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fakes for the websocket case

from quanto.data.aggregate import BarAggregator  # noqa: E402
from quanto.data.streams import (  # noqa: E402
    AlpacaStreamProtocol,
    PolygonStreamProtocol,
    ReconnectPolicy,
    StreamProtocol,
    run_stream,
)

N = int(os.environ.get("QUANTO_BENCH_MSGS", 300_000))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
PER_FRAME = 100
SYMBOLS = [f"S{i:03d}" for i in range(500)]
START = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)
SPAN_MS = 10 * 60_000
WS_TRADES_PER_BAR = 20


def log(msg: str) -> None:
    print(f"[ingest_streams] {msg}", file=sys.stderr, flush=True)


def build_frames(vendor: str, n: int) -> list[bytes]:
    """n trade messages for `vendor`, 100 per frame, times rising over ten minutes."""
    rng = np.random.default_rng(5)
    sym = rng.integers(0, len(SYMBOLS), n)
    t_ms = int(START.timestamp() * 1000) + np.sort(rng.integers(0, SPAN_MS, n))
    price = np.round(50 + sym * 0.5 + rng.normal(0, 0.2, n), 2)
    size = rng.integers(1, 50, n) * 10
    if vendor == "polygon":
        msgs = [
            {"ev": "T", "sym": SYMBOLS[s], "x": 4, "i": str(i), "z": 3, "p": p, "s": q, "c": [12, 37], "t": t, "q": i}
            for i, (s, t, p, q) in enumerate(zip(sym.tolist(), t_ms.tolist(), price.tolist(), size.tolist(), strict=True))
        ]  # fmt: skip
    else:
        stamps = np.datetime_as_string(t_ms.astype("datetime64[ms]"), unit="ms").tolist()
        msgs = [
            {"T": "t", "S": SYMBOLS[s], "i": i, "x": "V", "p": p, "s": q, "t": ts + "Z", "c": ["@"], "z": "C"}
            for i, (s, ts, p, q) in enumerate(zip(sym.tolist(), stamps, price.tolist(), size.tolist(), strict=True))
        ]  # fmt: skip
    return [orjson.dumps(msgs[i : i + PER_FRAME]) for i in range(0, n, PER_FRAME)]


# --- ours ------------------------------------------------------------------------------------------


def ours(protocol: StreamProtocol, frames: list[bytes]) -> pl.DataFrame:
    """Parse every frame, aggregate, close bars as their minute ends."""
    agg = BarAggregator("1min", protocol.vendor)
    out = []
    for frame in frames:
        batch = protocol.parse(frame)
        agg.add_trade_frame(batch.trades)
        closed = agg.close_until()
        if closed.height:
            out.append(closed)
    out.append(agg.flush())
    return pl.concat(out)


# --- peer ------------------------------------------------------------------------------------------


class PeerCollector:
    """json.loads + per-message list appends; pandas groupby at the end."""

    def __init__(self, type_key: str, trade_type: str, sym_key: str, time_unit: str | None) -> None:
        self.type_key, self.trade_type, self.sym_key, self.time_unit = (
            type_key,
            trade_type,
            sym_key,
            time_unit,
        )
        self.sym: list[str] = []
        self.ts: list = []
        self.px: list[float] = []
        self.sz: list[float] = []

    def feed(self, frame: str | bytes) -> None:
        for m in json.loads(frame):
            if m.get(self.type_key) == self.trade_type:
                self.sym.append(m[self.sym_key])
                self.ts.append(m["t"])
                self.px.append(m["p"])
                self.sz.append(m["s"])

    def bars(self) -> pd.DataFrame:
        if self.time_unit:
            ts = pd.to_datetime(self.ts, unit=self.time_unit, utc=True)
        else:
            ts = pd.to_datetime(self.ts, utc=True, format="ISO8601")
        df = pd.DataFrame({"symbol": self.sym, "ts": ts, "price": self.px, "size": self.sz})
        df["bar"] = df["ts"].dt.floor("1min")
        df["pv"] = df["price"] * df["size"]
        g = df.groupby(["symbol", "bar"], sort=True)
        out = g["price"].ohlc()
        out["volume"] = g["size"].sum()
        out["vwap"] = g["pv"].sum() / out["volume"]
        out["trades"] = g.size()
        return out.reset_index()


def peer_collector(vendor: str) -> PeerCollector:
    if vendor == "polygon":
        return PeerCollector("ev", "T", "sym", "ms")
    return PeerCollector("T", "t", "S", None)


def peer(vendor: str, frames: list[bytes]) -> pd.DataFrame:
    collector = peer_collector(vendor)
    for frame in frames:
        collector.feed(frame)
    return collector.bars()


def check_same(got: pl.DataFrame, want: pd.DataFrame, case: str) -> None:
    """Ours and the peer must produce the same bars."""
    a = got.sort("symbol", "ts")
    b = want.sort_values(["symbol", "bar"]).reset_index(drop=True)
    if a.height != len(b):
        raise AssertionError(f"{case}: {a.height} bars (ours) vs {len(b)} (peer)")
    same_keys = a["symbol"].to_list() == b["symbol"].tolist() and np.array_equal(
        a["ts"].cast(pl.Int64).to_numpy(), b["bar"].astype("datetime64[ns, UTC]").astype("int64").to_numpy()
    )
    exact = all(
        np.array_equal(a[c].to_numpy(), b[c].to_numpy())
        for c in ("open", "high", "low", "close", "volume", "trades")
    )
    close = np.allclose(a["vwap"].to_numpy(), b["vwap"].to_numpy(), rtol=1e-9, atol=0)
    if not (same_keys and exact and close):
        raise AssertionError(
            f"{case}: ours and the peer disagree (keys {same_keys}, exact {exact}, vwap {close})"
        )


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def emit(bench: str, case: str, n: int, ours_s: list[float], peer_s: list[float], peer_name: str) -> None:
    o, p = statistics.median(ours_s[1:]), statistics.median(peer_s[1:])
    print(json.dumps({
        "bench": bench, "case": case, "n": n, "ours_s": round(o, 4), "peer": peer_name, "peer_s": round(p, 4),
        "ratio": round(p / o, 2), "unit_rate": round(n / o, 1), "peer_unit_rate": round(n / p, 1),
        "goal": "unit_rate >= 100000 msgs/s", "reps": REPS,
    }), flush=True)  # fmt: skip


def bench_parse(vendor: str) -> None:
    frames = build_frames(vendor, N)
    protocol = PolygonStreamProtocol() if vendor == "polygon" else AlpacaStreamProtocol()
    log(f"{vendor}: {N:,} messages in {len(frames):,} frames ({sum(map(len, frames)) / 1e6:.1f} MB)")
    ours_s, peer_s = [], []
    for rep in range(REPS + 1):
        t_ours, got = timed(lambda: ours(protocol, frames))
        t_peer, want = timed(lambda: peer(vendor, frames))
        ours_s.append(t_ours)
        peer_s.append(t_peer)
        log(f"{vendor} rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {t_ours:.2f} s, peer {t_peer:.2f} s")
        if rep == 0:
            check_same(got, want, vendor)  # type: ignore[arg-type]
    emit("stream_trades_to_bars", vendor, N, ours_s, peer_s, "json+pandas")


# --- through a real local WebSocket ----------------------------------------------------------------


async def ws_ours(server) -> tuple[int, pl.DataFrame]:
    stop = asyncio.Event()
    agg = BarAggregator("1min", "polygon")
    out: list[pl.DataFrame] = []

    def on_batch(batch) -> None:
        agg.add_trade_frame(batch.trades)
        closed = agg.close_until()
        if closed.height:
            out.append(closed)
        if server.saw_final(batch):
            stop.set()

    stats = await run_stream(
        PolygonStreamProtocol(url=server.url),
        credentials=server.credentials,
        symbols=server.symbols,
        channels=["trades"],
        on_batch=on_batch,
        stop=stop,
        reconnect=ReconnectPolicy(jitter=False),
    )
    out.append(agg.flush())
    return stats.trades, pl.concat(out)


async def ws_peer(server) -> tuple[int, pd.DataFrame]:
    from websockets.asyncio.client import connect

    collector = peer_collector("polygon")
    final_ms = int(server.final_ts.timestamp() * 1000)
    async with connect(server.url, max_size=2**24) as ws:
        await ws.recv()
        await ws.send(json.dumps({"action": "auth", "params": server.credentials["key"]}))
        await ws.recv()
        await ws.send(
            json.dumps({"action": "subscribe", "params": ",".join(f"T.{s}" for s in server.symbols)})
        )
        await ws.recv()
        async for frame in ws:
            collector.feed(frame)
            if collector.ts and collector.ts[-1] >= final_ms:
                break
    return len(collector.ts), collector.bars()


def bench_websocket() -> None:
    from tests.fakes.vendor_ws import FakePolygonServer

    steps = max(2, N // (len(SYMBOLS) * WS_TRADES_PER_BAR))
    server = FakePolygonServer(SYMBOLS, START, steps, trades_per_bar=WS_TRADES_PER_BAR)
    with server:
        n = steps * len(SYMBOLS) * WS_TRADES_PER_BAR
        log(f"websocket: {n:,} messages in {steps} frames through ws://127.0.0.1:{server.port}")
        ours_s, peer_s = [], []
        for rep in range(REPS + 1):
            server.reset()
            t_ours, (n_ours, got) = timed(lambda: asyncio.run(ws_ours(server)))
            server.reset()
            t_peer, (n_peer, want) = timed(lambda: asyncio.run(ws_peer(server)))
            ours_s.append(t_ours)
            peer_s.append(t_peer)
            log(
                f"websocket rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {t_ours:.2f} s, peer {t_peer:.2f} s"
            )
            if rep == 0:
                if not n_ours == n_peer == n:
                    raise AssertionError(f"websocket: received {n_ours} (ours) / {n_peer} (peer) of {n}")
                check_same(got, want, "websocket")  # type: ignore[arg-type]
    emit("stream_trades_to_bars_ws", "polygon", n, ours_s, peer_s, "websockets+json+pandas")


def main() -> None:
    import logging

    import structlog

    # run_stream's info lines go to stderr (stdout carries only the JSON results), warnings only.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    bench_parse("polygon")
    bench_parse("alpaca")
    bench_websocket()


if __name__ == "__main__":
    main()
