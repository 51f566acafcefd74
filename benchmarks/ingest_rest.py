"""Benchmark: REST bar ingestion through `AlpacaBars` + `RestClient` vs the plain loop a user writes.

Input: N requests (N = $QUANTO_BENCH_REQUESTS, default 240): one session of 1-minute bars (390 bars,
one page) for each of 12 symbols x 20 sessions, served by the local fake vendor server
(tests/fakes/vendor_http.py, in a process of its own) with 20 ms latency per request.
Ours: `AlpacaBars.fetch_bars` for every (symbol, session), run concurrently in one event loop through a
`RestClient` with concurrency 16 and a token bucket of 1000 requests/s (burst 16): retries, redaction,
row validation and canonical frames included. Peer ("httpx_sequential"): a synchronous `httpx.Client`
loop, one request after the other, `response.json()` then `pl.DataFrame(bars)` per response.
Both must return the same number of bars (sanity). Reps alternate ours/peer; medians of REPS after one
warm-up each. Prints one JSON line (DESIGN.md section 9); progress goes to stderr. Goal: >= 200 req/s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for tests.fakes

from tests.fakes.vendor_http import FakeVendorServer  # noqa: E402

from quanto.data.alpaca import AlpacaBars  # noqa: E402
from quanto.data.rest import RestClient, RetryPolicy, TokenBucket  # noqa: E402

N = int(os.environ.get("QUANTO_BENCH_REQUESTS", 240))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
LATENCY_S = 0.020
CONCURRENCY = 16
RATE_PER_S = 1000.0
SYMBOLS = [f"S{i:02d}" for i in range(12)]
FIRST_SESSION = dt.date(2024, 1, 2)


def log(msg: str) -> None:
    print(f"[ingest_rest] {msg}", file=sys.stderr, flush=True)


def jobs(n: int) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """n (symbol, session start, session end) requests over weekdays from FIRST_SESSION."""
    days, day = [], FIRST_SESSION
    while len(days) * len(SYMBOLS) < n:
        if day.weekday() < 5 and day != dt.date(2024, 1, 15):  # MLK day: no session
            days.append(day)
        day += dt.timedelta(days=1)
    out = []
    for d in days:
        start = dt.datetime.combine(d, dt.time(14, 30), dt.UTC)
        out += [(s, start, start + dt.timedelta(hours=6, minutes=30)) for s in SYMBOLS]
    return out[:n]


async def ours(base_url: str, work: list) -> int:
    limiter = TokenBucket(RATE_PER_S, CONCURRENCY)
    credentials = FakeVendorServer.credentials("alpaca")
    async with RestClient(
        "alpaca", base_url, limiter=limiter, retry=RetryPolicy(), concurrency=CONCURRENCY, **credentials
    ) as client:
        bars = AlpacaBars(client)
        got = await asyncio.gather(*(bars.fetch_bars([s], "1min", a, b) for s, a, b in work))
    if any(len(g.rejected) for g in got):
        raise AssertionError("ours rejected rows from clean data")
    return sum(len(g.frame) for g in got)


def peer(base_url: str, work: list) -> int:
    """The plain loop: one request at a time, JSON to a frame."""
    rows = 0
    with httpx.Client(base_url=base_url, **FakeVendorServer.credentials("alpaca")) as client:
        for symbol, start, end in work:
            params = {"symbols": symbol, "timeframe": "1Min", "limit": 10000, "feed": "iex",
                      "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
            response = client.get("/v2/stocks/bars", params=params)
            response.raise_for_status()
            frame = pl.DataFrame(response.json()["bars"].get(symbol, []))
            rows += len(frame.filter(pl.col("t") < params["end"])) if len(frame) else 0
    return rows


def main() -> None:
    work = jobs(N)
    ours_s, peer_s = [], []
    # The fake runs in a process of its own, as a real vendor would: its CPU time is not the client's.
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.vendor_http", "--latency-s", str(LATENCY_S)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = fake.stdout.readline().strip()  # type: ignore[union-attr]
        log(f"fake vendor at {base_url}: {len(work)} requests, {LATENCY_S * 1000:.0f} ms latency each")
        for rep in range(REPS + 1):  # rep 0 warms up (and fills the fake's bar cache)
            t = time.perf_counter()
            ours_rows = asyncio.run(ours(base_url, work))
            ours_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            peer_rows = peer(base_url, work)
            peer_s.append(time.perf_counter() - t)
            log(
                f"rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {ours_s[-1]:.2f} s "
                f"({len(work) / ours_s[-1]:.0f} req/s), peer {peer_s[-1]:.2f} s ({len(work) / peer_s[-1]:.0f} req/s)"
            )
            if ours_rows != peer_rows:
                raise AssertionError(f"ours returned {ours_rows} bars, the peer {peer_rows}")
    finally:
        fake.stdin.close()  # type: ignore[union-attr]  # the fake stops when its stdin closes
        fake.wait(timeout=30)
    ours_med, peer_med = statistics.median(ours_s[1:]), statistics.median(peer_s[1:])
    print(json.dumps({
        "bench": "rest_alpaca_bars", "n": len(work), "ours_s": round(ours_med, 3), "peer": "httpx_sequential",
        "peer_s": round(peer_med, 3), "ratio": round(peer_med / ours_med, 2),
        "unit_rate": round(len(work) / ours_med, 1), "bars": ours_rows, "latency_ms": LATENCY_S * 1000,
        "concurrency": CONCURRENCY, "goal": "unit_rate >= 200 req/s", "reps": REPS,
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
