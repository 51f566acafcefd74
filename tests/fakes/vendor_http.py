"""One local HTTP server speaking Alpaca, Polygon and Kite REST wire formats, with injectable faults.

Usage::

    with FakeVendorServer(Faults(throttle_every=5), latency_s=0.0, seed=7) as server:
        base_url = server.base_url                      # "http://127.0.0.1:<free port>"
        ...  # point RestClient(vendor, base_url, ...) at it, with the keys below
        server.counters                                 # Counters: requests, by_path, throttled, max_in_flight, ...
        server.expected_bars("alpaca", "AAPL", "1min", start, end)   # the oracle (canonical BAR_SCHEMA)

`start()` / `stop()` do the same without `with`. The server runs an aiohttp app in a background thread
with its own event loop, on 127.0.0.1 and a free port. `python -m tests.fakes.vendor_http --latency-s S`
serves from a process of its own (prints the base URL; stops when stdin closes).

Credentials (wrong or missing ones get the vendor's 401/403, so tests prove keys are sent):
ALPACA_KEY_ID / ALPACA_SECRET_KEY (headers APCA-API-KEY-ID / APCA-API-SECRET-KEY), POLYGON_API_KEY
(query `apiKey`), KITE_API_KEY / KITE_ACCESS_TOKEN (header `Authorization: token key:token` plus
`X-Kite-Version: 3`).

Data. The minute bar of (symbol, minute) is a pure function of (seed, symbol, session date): a random
walk anchored per session, generated only inside regular sessions — XNYS (exchange_calendars, holidays
and half days included, 2015-2030) for Alpaca/Polygon symbols, XBOM hours 09:15-15:30 IST (2015-2026)
for Kite symbols ("NSE:INFY"). Any range request therefore returns consistent bars. Longer bars are
aggregated from minutes (open first, close last, high max, low min, volume and trades summed, vwap
volume-weighted): intraday buckets are clock-aligned for Alpaca/Polygon and start at the session open
for Kite (as the vendors do); daily bars cover one session. Timeframes: `Nmin` (N | 60... any), `Nh`,
`1d`. Canonical stamps (expected_bars) are the bucket open, and the session open for daily bars; the
wire stamps are the vendors': Alpaca/Polygon daily bars at midnight New York time (grouped daily at the
close), Kite daily candles at midnight IST.

Endpoints:
- Alpaca `GET /v2/stocks/bars` (symbols, timeframe 1-59Min/1-23Hour/1Day, start, end inclusive, limit
  <= 10000 counted across symbols, page_token, feed, adjustment) -> {"bars": {sym: [...]}, "next_page_token"}.
- Polygon `GET /v2/aggs/ticker/{t}/range/{n}/{minute|hour|day}/{from}/{to}` (ms or YYYY-MM-DD,
  inclusive; `limit`; `next_url` with a `cursor`), also for option tickers like O:AAPL240119C00190000;
  `/v2/aggs/grouped/locale/us/market/stocks/{date}`; `/v3/reference/tickers[/{t}]`;
  `/v3/reference/splits|dividends?ticker=`; `/vX/reference/financials?ticker=` (AAPL's oldest filing
  has no filing_date); `/v3/snapshot/options/{AAPL|SPY}` (`limit`, next_url). Small fixed data:
  US_TICKERS, SPLITS, DIVIDENDS, OPTION_EXPIRIES x OPTION_STRIKES.
- Kite `GET /instruments[/{exchange}]` (CSV of KITE_INSTRUMENTS) and
  `/instruments/historical/{token}/{interval}?from&to` (IST, inclusive; spans over MAX_DAYS answer
  400 InputException like Kite).

`FakeVendorServer.credentials(vendor)` gives RestClient keyword arguments with the valid keys;
`VirtualTime` is a fake clock/sleep pair for rate-limit and backoff tests.

Faults (`Faults`, deterministic): every k-th request overall answers 429 with Retry-After; then, per
distinct URL (path + query without credentials), the first `server_errors` attempts answer
`error_status`, the next attempt waits `slow_s` before answering (when slow_s > 0), and the next one
gets a truncated JSON body (when `malformed`); `bad_bars` corrupts given bars on the wire (null open,
or volume shipped as a string). `latency_s` delays every answer.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import hashlib
import io
import re
import socket
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd
import polars as pl
from aiohttp import web

from quanto.data.schemas import BAR_SCHEMA, conform

ALPACA_KEY_ID = "fake-alpaca-key-id-0001"
ALPACA_SECRET_KEY = "fake-alpaca-secret-key-0001"
POLYGON_API_KEY = "fake-polygon-api-key-0001"
KITE_API_KEY = "fake-kite-api-key-0001"
KITE_ACCESS_TOKEN = "fake-kite-access-token-0001"

NY, IST = ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")
_CALENDARS = {"alpaca": ("XNYS", 2015, 2030), "polygon": ("XNYS", 2015, 2030), "kite": ("XBOM", 2015, 2026)}
_TZ = {"alpaca": NY, "polygon": NY, "kite": IST}
_NS_MIN = 60_000_000_000
_NS_DAY = 86_400_000_000_000

KITE_MAX_DAYS = {
    "minute": 60,
    "3minute": 100,
    "5minute": 100,
    "10minute": 100,
    "15minute": 200,
    "30minute": 200,
    "60minute": 400,
    "day": 2000,
}
_KITE_INTERVALS = {
    "minute": "1min",
    "3minute": "3min",
    "5minute": "5min",
    "10minute": "10min",
    "15minute": "15min",
    "30minute": "30min",
    "60minute": "60min",
    "day": "1d",
}
KITE_CSV_HEADER = [
    "instrument_token",
    "exchange_token",
    "tradingsymbol",
    "name",
    "last_price",
    "expiry",
    "strike",
    "tick_size",
    "lot_size",
    "instrument_type",
    "segment",
    "exchange",
]
KITE_INSTRUMENTS = [
    (408065, 1594, "INFY", "INFOSYS", 1523.45, "", 0.0, 0.05, 1, "EQ", "NSE", "NSE"),
    (2953217, 11536, "TCS", "TATA CONSULTANCY SERV LT", 3712.1, "", 0.0, 0.05, 1, "EQ", "NSE", "NSE"),
    (738561, 2885, "RELIANCE", "RELIANCE INDUSTRIES", 2580.0, "", 0.0, 0.05, 1, "EQ", "NSE", "NSE"),
    (81153, 317, "BAJFINANCE", "BAJAJ FINANCE, LTD", 7120.55, "", 0.0, 0.05, 1, "EQ", "NSE", "NSE"),
    (256265, 0, "NIFTY 50", "NIFTY 50", 21710.8, "", 0.0, 0.0, 0, "EQ", "INDICES", "NSE"),
    (128053508, 500209, "INFY", "INFOSYS", 1523.2, "", 0.0, 0.05, 1, "EQ", "BSE", "BSE"),
    (
        12010498,
        46916,
        "NIFTY24JAN21500CE",
        "NIFTY",
        262.3,
        "2024-01-25",
        21500.0,
        0.05,
        50,
        "CE",
        "NFO-OPT",
        "NFO",
    ),
    (
        13238786,
        51714,
        "NIFTY24JANFUT",
        "NIFTY",
        21760.0,
        "2024-01-25",
        0.0,
        0.05,
        50,
        "FUT",
        "NFO-FUT",
        "NFO",
    ),
]
_KITE_BY_TOKEN = {row[0]: f"{row[11]}:{row[2]}" for row in KITE_INSTRUMENTS}

US_TICKERS = [
    {"ticker": "AAPL", "name": "Apple Inc.", "primary_exchange": "XNAS", "type": "CS", "cik": "0000320193",
     "composite_figi": "BBG000B9XRY4", "list_date": "1980-12-12"},
    {"ticker": "BRK.B", "name": "Berkshire Hathaway Inc. Class B", "primary_exchange": "XNYS", "type": "CS",
     "cik": "0001067983", "composite_figi": "BBG000DWG505", "list_date": "1996-05-09"},
    {"ticker": "MSFT", "name": "Microsoft Corp", "primary_exchange": "XNAS", "type": "CS", "cik": "0000789019",
     "composite_figi": "BBG000BPH459", "list_date": "1986-03-13"},
    {"ticker": "SPY", "name": "SPDR S&P 500 ETF Trust", "primary_exchange": "ARCX", "type": "ETF",
     "cik": "0000884394", "composite_figi": "BBG000BDTBL9", "list_date": "1993-01-29"},
    {"ticker": "TWTR", "name": "Twitter, Inc.", "primary_exchange": "XNYS", "type": "CS", "cik": "0001418091",
     "composite_figi": "BBG000H6HNW3", "list_date": "2013-11-07", "active": False,
     "delisted_utc": "2022-10-28T00:00:00Z"},
]  # fmt: skip
SPLITS = {"AAPL": [("2014-06-09", 1, 7), ("2020-08-31", 1, 4)], "MSFT": [("2003-02-18", 1, 2)]}
DIVIDENDS = {
    "AAPL": [("2023-08-11", 0.24), ("2023-11-10", 0.24), ("2024-02-09", 0.24), ("2024-05-10", 0.25)],
    "MSFT": [("2023-11-15", 0.75), ("2024-02-14", 0.75)],
}
# (period end, filing date or None, fiscal period, fiscal year) per symbol; values derive from the seed.
FILINGS = {
    "AAPL": [
        ("2023-04-01", None, "Q2", "2023"),
        ("2023-07-01", "2023-08-04", "Q3", "2023"),
        ("2023-09-30", "2023-11-03", "FY", "2023"),
        ("2023-12-30", "2024-02-02", "Q1", "2024"),
    ],
    "MSFT": [("2023-09-30", "2023-10-24", "Q1", "2024"), ("2023-12-31", "2024-01-30", "Q2", "2024")],
}
STATEMENT_FIELDS = {
    "income_statement": ("revenues", "net_income_loss", "operating_income_loss"),
    "balance_sheet": ("assets", "liabilities", "equity"),
    "cash_flow_statement": ("net_cash_flow_from_operating_activities", "net_cash_flow"),
}
OPTION_UNDERLYINGS = {"AAPL": 192.5, "SPY": 475.0}
OPTION_EXPIRIES = ("2024-01-19", "2024-02-16")
OPTION_STRIKE_STEPS = (-10.0, 0.0, 10.0)  # around the underlying price rounded to 10


@dataclass(frozen=True)
class BadBar:
    """A bar corrupted on the wire: `kind` "null_price" (open is null) or "string_volume" (volume is text).

    `symbol` is canonical (e.g. "AAPL", "NSE:INFY", "O:AAPL240119C00190000"); `ts` the canonical bar open.
    """

    symbol: str
    ts: dt.datetime
    kind: str = "null_price"


@dataclass(frozen=True)
class Faults:
    """Deterministic faults (see the module docstring for the order they apply in)."""

    throttle_every: int = 0  # every k-th request overall answers 429 (0 = never)
    retry_after: str = "1"  # Retry-After header of those 429s ("" = none; seconds or an HTTP date)
    server_errors: int = 0  # first n attempts at each distinct URL answer error_status
    error_status: int = 503
    slow_s: float = 0.0  # the next attempt at each URL waits this long first (0 = never)
    malformed: bool = False  # the next attempt at each URL gets a truncated JSON body
    bad_bars: tuple[BadBar, ...] = ()


@dataclass
class Counters:
    """What the server saw and did."""

    requests: int = 0
    by_path: Counter = field(default_factory=Counter)
    throttled: int = 0
    server_errors: int = 0
    slow: int = 0
    malformed: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    max_in_flight: int = 0  # most requests being answered at once


class VirtualTime:
    """A clock and an async sleep that advance virtual time only: for TokenBucket(clock=, sleep=) and
    RestClient(sleep=), so tests check waits without waiting. `sleeps` records every requested wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        """Virtual seconds so far."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance virtual time, yield to the loop."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# --- Deterministic data -------------------------------------------------------------------------


def _hash(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


@lru_cache(maxsize=4)
def _sessions(calendar: str, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Session dates (datetime64[D]), opens and closes (UTC ns) of an exchange calendar."""
    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = xcals.get_calendar(calendar, start=f"{first}-01-01", end=f"{last}-12-31").schedule
    days = sched.index.values.astype("datetime64[D]")
    opens = pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8
    closes = pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8
    return days, opens, closes


def _parse_timeframe(timeframe: str) -> tuple[int | None, str]:
    """Canonical timeframe -> (bucket length ns, or None for daily; the canonical string)."""
    m = re.fullmatch(r"(\d+)(min|h|d)", timeframe)
    if not m or int(m.group(1)) < 1 or (m.group(2) == "d" and m.group(1) != "1"):
        raise ValueError(f"the fake serves Nmin, Nh and 1d bars, not {timeframe!r}")
    n = int(m.group(1))
    return ({"min": n * _NS_MIN, "h": n * 60 * _NS_MIN, "d": None}[m.group(2)]), timeframe


@lru_cache(maxsize=2048)
def _minute_day(seed: int, vendor: str, symbol: str, index: int) -> dict[str, np.ndarray]:
    """Minute bars of session `index`: a pure function of (seed, symbol, session date)."""
    days, opens, closes = _sessions(*_CALENDARS[vendor])
    day, open_ns = str(days[index]), int(opens[index])
    n = int((closes[index] - open_ns) // _NS_MIN)
    rng = np.random.default_rng(_hash(seed, symbol, day))
    base = 20.0 + _hash(seed, symbol) % 480
    anchor = base * float(np.exp(0.05 * rng.standard_normal()))
    close = np.round(anchor * np.exp(np.cumsum(0.0008 * rng.standard_normal(n))), 2)
    open_ = np.round(np.concatenate([[anchor], close[:-1]]), 2)
    high = np.round(np.maximum(open_, close) + np.abs(rng.normal(0, 0.02, n)), 2)
    low = np.round(np.maximum(np.minimum(open_, close) - np.abs(rng.normal(0, 0.02, n)), 0.01), 2)
    volume = rng.integers(100, 20_000, n).astype(np.int64)
    trades = np.maximum(1, volume // rng.integers(50, 150, n))
    vwap = np.clip(np.round((open_ + high + low + close) / 4, 4), low, high)
    ts = open_ns + np.arange(n, dtype=np.int64) * _NS_MIN
    return {"ts": ts, "o": open_, "h": high, "l": low, "c": close, "v": volume, "n": trades, "vw": vwap}


@lru_cache(maxsize=2048)
def _bars_day(seed: int, vendor: str, symbol: str, index: int, step_ns: int | None) -> dict[str, np.ndarray]:
    """Bars of session `index` aggregated to `step_ns` (None = the whole session)."""
    m = _minute_day(seed, vendor, symbol, index)
    if step_ns == _NS_MIN:
        return m
    ts = m["ts"]
    open_ns = int(ts[0])
    # Kite buckets start at the session open, US vendors' on the clock (so they may open before it).
    origin = open_ns if step_ns is None or vendor == "kite" else 0
    ids = np.zeros(len(ts), dtype=np.int64) if step_ns is None else (ts - origin) // step_ns
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    bucket = origin + ids[starts] * (step_ns or 0)
    volume = np.add.reduceat(m["v"], starts)
    return {
        "ts": bucket,
        "o": m["o"][starts],
        "h": np.maximum.reduceat(m["h"], starts),
        "l": np.minimum.reduceat(m["l"], starts),
        "c": m["c"][ends],
        "v": volume,
        "n": np.add.reduceat(m["n"], starts),
        "vw": np.round(np.add.reduceat(m["vw"] * m["v"], starts) / volume, 4),
    }


def _bars(
    seed: int, vendor: str, symbol: str, timeframe: str, lo_ns: int, hi_ns: int, *, wire: bool
) -> dict[str, np.ndarray]:
    """Bars whose stamp is in [lo_ns, hi_ns] (both inclusive): the wire stamp when `wire`, else the
    canonical one. Adds "wire" (vendor stamp: local midnight for daily bars) to the arrays."""
    step, _ = _parse_timeframe(timeframe)
    days, opens, _ = _sessions(*_CALENDARS[vendor])
    first = int(np.searchsorted(opens, lo_ns - 2 * _NS_DAY))
    last = int(np.searchsorted(opens, hi_ns + 2 * _NS_DAY))
    parts = []
    for i in range(first, min(last, len(opens))):
        part = dict(_bars_day(seed, vendor, symbol, i, step))
        if step is None:  # daily: the vendor stamps local midnight of the session date
            midnight = dt.datetime.fromisoformat(str(days[i])).replace(tzinfo=_TZ[vendor])
            part["wire"] = np.array([int(midnight.timestamp()) * 1_000_000_000], dtype=np.int64)
        else:
            part["wire"] = part["ts"]
        parts.append(part)
    if not parts:
        return {k: np.array([], dtype=np.int64) for k in ("ts", "wire", "o", "h", "l", "c", "v", "n", "vw")}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    stamp = out["wire"] if wire else out["ts"]
    keep = (stamp >= lo_ns) & (stamp <= hi_ns)
    return {k: v[keep] for k, v in out.items()}


def expected_bars(
    vendor: str, symbol: str, timeframe: str, start: dt.datetime, end: dt.datetime, seed: int = 7
) -> pl.DataFrame:
    """The canonical bars (BAR_SCHEMA) a correct client returns for [start, end), sorted by ts."""
    lo, hi = int(start.timestamp() * 1e9), int(end.timestamp() * 1e9) - 1
    b = _bars(seed, vendor, symbol, timeframe, lo, hi, wire=False)
    kite = vendor == "kite"
    frame = pl.DataFrame(
        {
            "symbol": [symbol] * len(b["ts"]),
            "ts": pl.Series(b["ts"]).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"),
            "timeframe": [timeframe] * len(b["ts"]),
            "open": b["o"],
            "high": b["h"],
            "low": b["l"],
            "close": b["c"],
            "volume": b["v"].astype(np.float64),
            "vwap": pl.Series(b["vw"], dtype=pl.Float64)
            if not kite
            else pl.Series([None] * len(b["ts"]), dtype=pl.Float64),
            "trades": pl.Series(b["n"], dtype=pl.Int64)
            if not kite
            else pl.Series([None] * len(b["ts"]), dtype=pl.Int64),
            "vendor": [vendor] * len(b["ts"]),
            "imputed": [False] * len(b["ts"]),
        }
    )
    return conform(frame, BAR_SCHEMA, f"fake {vendor} expected bars")


# --- Wire helpers -------------------------------------------------------------------------------


def _iso_utc(ns: np.ndarray) -> list[str]:
    return [
        s + "Z" for s in np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[s]"), unit="s")
    ]


def _iso_ist(ns: np.ndarray) -> list[str]:
    local = (ns + 19_800_000_000_000).astype("datetime64[ns]").astype("datetime64[s]")  # +05:30
    return [s + "+0530" for s in np.datetime_as_string(local, unit="s")]


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)[1])
    except (ValueError, IndexError) as exc:
        raise web.HTTPUnprocessableEntity(text='{"message": "invalid page token"}') from exc


def _parse_instant(value: str, tz: ZoneInfo, *, end_of_day: bool = False) -> int:
    """RFC 3339 / 'YYYY-MM-DD HH:MM:SS' (local) / 'YYYY-MM-DD' (local day) / epoch ms -> UTC ns."""
    if value.isdigit():
        return int(value) * 1_000_000
    when = dt.datetime.fromisoformat(value.replace(" ", "T") if len(value) > 10 else value)
    if len(value) == 10 and end_of_day:
        when += dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return int(when.timestamp() * 1_000_000) * 1000


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _vendor_of(path: str) -> str:
    if path.startswith("/v2/stocks"):
        return "alpaca"
    return "kite" if path.startswith("/instruments") else "polygon"


def _error(
    vendor: str, status: int, message: str, kind: str = "GeneralException", **headers: str
) -> web.Response:
    if vendor == "alpaca":
        body: dict[str, Any] = {"message": message}
    elif vendor == "kite":
        body = {"status": "error", "message": message, "error_type": kind, "data": None}
    else:
        body = {"status": "ERROR", "request_id": "fake", "error": message}
    return _json(body, status, headers or None)


class FakeVendorServer:
    """The fake vendor server; see the module docstring."""

    def __init__(self, faults: Faults = Faults(), latency_s: float = 0.0, seed: int = 7) -> None:
        self.faults, self.latency_s, self.seed = faults, latency_s, seed
        self._counters = Counters()
        self._attempts: Counter = Counter()
        self._bad = {(b.symbol, int(b.ts.timestamp() * 1e9)): b.kind for b in faults.bad_bars}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.base_url = ""

    # -- lifecycle --

    def start(self) -> str:
        """Start serving in a background thread; returns the base URL."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        ready = threading.Event()
        loop = self._loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-vendor-http", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("fake vendor server did not start")
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> FakeVendorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def counters(self) -> Counters:
        """A copy of the counters so far."""
        return replace(self._counters, by_path=Counter(self._counters.by_path))

    @staticmethod
    def credentials(vendor: str) -> dict[str, dict[str, str]]:
        """RestClient keyword arguments (headers, params) carrying the fake's valid keys for `vendor`."""
        if vendor == "alpaca":
            return {"headers": {"APCA-API-KEY-ID": ALPACA_KEY_ID, "APCA-API-SECRET-KEY": ALPACA_SECRET_KEY}}
        if vendor == "kite":
            auth = f"token {KITE_API_KEY}:{KITE_ACCESS_TOKEN}"
            return {"headers": {"X-Kite-Version": "3", "Authorization": auth}}
        return {"params": {"apiKey": POLYGON_API_KEY}}

    def expected_bars(
        self, vendor: str, symbol: str, timeframe: str, start: dt.datetime, end: dt.datetime
    ) -> pl.DataFrame:
        """The canonical bars a correct client returns for [start, end) (with this server's seed)."""
        return expected_bars(vendor, symbol, timeframe, start, end, self.seed)

    # -- app --

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/v2/stocks/bars", self._alpaca_bars)
        r.add_get("/v2/aggs/ticker/{ticker}/range/{mult}/{timespan}/{frm}/{to}", self._polygon_aggs)
        r.add_get("/v2/aggs/grouped/locale/us/market/stocks/{date}", self._polygon_grouped)
        r.add_get("/v3/reference/tickers", self._polygon_tickers)
        r.add_get("/v3/reference/tickers/{ticker}", self._polygon_ticker)
        r.add_get("/v3/reference/splits", self._polygon_splits)
        r.add_get("/v3/reference/dividends", self._polygon_dividends)
        r.add_get("/vX/reference/financials", self._polygon_financials)
        r.add_get("/v3/snapshot/options/{underlying}", self._polygon_options)
        r.add_get("/instruments", self._kite_instruments)
        r.add_get("/instruments/{exchange}", self._kite_instruments)
        r.add_get("/instruments/historical/{token}/{interval}", self._kite_historical)
        return app

    def _auth_error(self, vendor: str, request: web.Request) -> web.Response | None:
        h = request.headers
        if vendor == "alpaca":
            given = (h.get("APCA-API-KEY-ID"), h.get("APCA-API-SECRET-KEY"))
            if None in given:
                return _error(vendor, 401, "unauthorized.")
            return None if given == (ALPACA_KEY_ID, ALPACA_SECRET_KEY) else _error(vendor, 403, "forbidden.")
        if vendor == "kite":
            if h.get("X-Kite-Version") != "3":
                return _error(vendor, 400, "missing or invalid X-Kite-Version header", "InputException")
            if h.get("Authorization") != f"token {KITE_API_KEY}:{KITE_ACCESS_TOKEN}":
                return _error(vendor, 403, "Incorrect `api_key` or `access_token`.", "TokenException")
            return None
        key = request.query.get("apiKey")
        if key is None:
            return _error(vendor, 401, "API Key was not provided")
        return None if key == POLYGON_API_KEY else _error(vendor, 401, "Unknown API Key")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        c = self._counters
        c.requests += 1
        c.by_path[request.path] += 1
        c.in_flight += 1
        c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            return await self._answer(request, handler)
        finally:
            c.in_flight -= 1

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        c, f = self._counters, self.faults
        vendor = _vendor_of(request.path)
        denied = self._auth_error(vendor, request)
        if denied is not None:
            c.unauthorized += 1
            return denied
        if f.throttle_every and c.requests % f.throttle_every == 0:
            c.throttled += 1
            headers = {"Retry-After": f.retry_after} if f.retry_after else {}
            return _error(vendor, 429, "too many requests", "NetworkException", **headers)
        query = sorted((k, v) for k, v in request.query.items() if k != "apiKey")
        self._attempts[(request.path, tuple(query))] += 1
        attempt = self._attempts[(request.path, tuple(query))]
        if attempt <= f.server_errors:
            c.server_errors += 1
            return _error(vendor, f.error_status, "internal server error")
        attempt -= f.server_errors
        if f.slow_s > 0:
            if attempt == 1:
                c.slow += 1
                await asyncio.sleep(f.slow_s)
            attempt -= 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        response = await handler(request)
        if f.malformed and attempt == 1 and response.content_type == "application/json":
            c.malformed += 1
            body = response.body
            return web.Response(
                body=body[: len(body) // 2], status=response.status, content_type="application/json"
            )
        return response

    def _rows(self, vendor: str, symbol: str, timeframe: str, lo: int, hi: int, kind: str) -> list[Any]:
        """Wire rows: kind "alpaca" (t RFC 3339), "polygon" (t ms), "kite" (candle lists)."""
        b = _bars(self.seed, vendor, symbol, timeframe, lo, hi, wire=True)
        o, h, l_, c, v = (b[k].tolist() for k in ("o", "h", "l", "c", "v"))
        if kind == "kite":
            rows: list[Any] = [list(r) for r in zip(_iso_ist(b["wire"]), o, h, l_, c, v, strict=True)]
        else:
            t = _iso_utc(b["wire"]) if kind == "alpaca" else (b["wire"] // 1_000_000).tolist()
            rows = [
                {"t": t_, "o": o_, "h": h_, "l": lo_, "c": c_, "v": v_, "n": n_, "vw": vw_}
                for t_, o_, h_, lo_, c_, v_, n_, vw_ in zip(
                    t, o, h, l_, c, v, b["n"].tolist(), b["vw"].tolist(), strict=True
                )
            ]
        if self._bad:
            for i, ts in enumerate(b["ts"].tolist()):
                bad = self._bad.get((symbol, ts))
                if bad == "null_price":
                    rows[i][1 if kind == "kite" else "o"] = None
                elif bad == "string_volume":
                    rows[i][5 if kind == "kite" else "v"] = str(v[i])
        return rows

    # -- Alpaca --

    async def _alpaca_bars(self, request: web.Request) -> web.Response:
        q = request.query
        m = re.fullmatch(r"(\d+)(Min|Hour|Day)", q.get("timeframe", ""))
        ok = m and (
            (m.group(2) == "Min" and 1 <= int(m.group(1)) <= 59)
            or (m.group(2) == "Hour" and 1 <= int(m.group(1)) <= 23)
            or (m.group(2) == "Day" and m.group(1) == "1")
        )
        if not ok:
            return _error("alpaca", 422, "invalid timeframe")
        assert m is not None
        timeframe = m.group(1) + {"Min": "min", "Hour": "h", "Day": "d"}[m.group(2)]
        if q.get("feed", "iex") not in ("iex", "sip", "otc") or q.get("adjustment", "raw") not in (
            "raw", "split", "dividend", "all"
        ):  # fmt: skip
            return _error("alpaca", 422, "invalid feed or adjustment")
        limit = int(q.get("limit", 1000))
        if not 1 <= limit <= 10_000 or "start" not in q or not q.get("symbols"):
            return _error("alpaca", 422, "invalid limit, start or symbols")
        lo = _parse_instant(q["start"], NY)
        hi = _parse_instant(q["end"], NY, end_of_day=True) if "end" in q else 2**62
        rows = [
            (s, row)
            for s in sorted(set(q["symbols"].split(",")))
            for row in self._rows("alpaca", s, timeframe, lo, hi, "alpaca")
        ]
        offset = _offset(q.get("page_token"))
        page = rows[offset : offset + limit]
        bars: dict[str, list] = {}
        for s, row in page:
            bars.setdefault(s, []).append(row)
        token = _token(offset + limit) if offset + limit < len(rows) else None
        return _json({"bars": bars, "next_page_token": token})

    # -- Polygon --

    def _page(
        self, request: web.Request, items: list, default_limit: int, max_limit: int, **extra: Any
    ) -> web.Response:
        """Polygon paging: `limit` items from the cursor, next_url to the rest (without the apiKey)."""
        q = request.query
        limit = min(int(q.get("limit", default_limit)), max_limit)
        offset = _offset(q.get("cursor"))
        body: dict[str, Any] = {"status": "OK", "request_id": "fake", **extra}
        page = items[offset : offset + limit]
        if page:
            body["results"] = page
        body["count"] = body["resultsCount"] = len(page)
        if offset + limit < len(items):
            params = {k: v for k, v in q.items() if k not in ("apiKey", "cursor")}
            params["cursor"] = _token(offset + limit)
            body["next_url"] = str(request.url.with_query(params))
        return _json(body)

    async def _polygon_aggs(self, request: web.Request) -> web.Response:
        p = request.match_info
        spans = {"minute": "min", "hour": "h", "day": "d"}
        if (
            p["timespan"] not in spans
            or not p["mult"].isdigit()
            or (p["timespan"] == "day" and p["mult"] != "1")
        ):
            return _error("polygon", 400, f"unsupported range {p['mult']}/{p['timespan']}")
        timeframe = f"{p['mult']}{spans[p['timespan']]}"
        lo, hi = _parse_instant(p["frm"], NY), _parse_instant(p["to"], NY, end_of_day=True)
        rows = self._rows("polygon", p["ticker"], timeframe, lo, hi, "polygon")
        return self._page(request, rows, 5000, 50_000, ticker=p["ticker"], adjusted=True)

    async def _polygon_grouped(self, request: web.Request) -> web.Response:
        day = request.match_info["date"]
        lo = _parse_instant(day, NY)
        rows = []
        for t in US_TICKERS:
            if t.get("active", True):
                for row in self._rows("polygon", t["ticker"], "1d", lo, lo + _NS_DAY - 1, "polygon"):
                    # Grouped daily bars are stamped at the session's end (16:00 ET), not at midnight.
                    row["t"] += 16 * 3_600_000
                    rows.append({"T": t["ticker"], **row})
        body: dict[str, Any] = {
            "status": "OK",
            "adjusted": True,
            "queryCount": len(rows),
            "resultsCount": len(rows),
        }
        if rows:
            body["results"] = rows
        return _json(body)

    @staticmethod
    def _ticker(t: dict) -> dict:
        return {"market": "stocks", "locale": "us", "active": True, "currency_name": "usd", **t}

    async def _polygon_tickers(self, request: web.Request) -> web.Response:
        active = request.query.get("active", "true") == "true"
        items = [self._ticker(t) for t in US_TICKERS if self._ticker(t)["active"] == active]
        return self._page(request, items, 100, 1000)

    async def _polygon_ticker(self, request: web.Request) -> web.Response:
        found = [t for t in US_TICKERS if t["ticker"] == request.match_info["ticker"]]
        if not found:
            return _json({"status": "NOT_FOUND", "request_id": "fake", "message": "Ticker not found."}, 404)
        return _json({"status": "OK", "request_id": "fake", "results": self._ticker(found[0])})

    async def _polygon_splits(self, request: web.Request) -> web.Response:
        ticker = request.query.get("ticker", "")
        items = [
            {
                "id": f"S{_hash(ticker, d) % 10**8}",
                "ticker": ticker,
                "execution_date": d,
                "split_from": f_,
                "split_to": t_,
            }
            for d, f_, t_ in reversed(SPLITS.get(ticker, []))
        ]
        return self._page(request, items, 10, 1000)

    async def _polygon_dividends(self, request: web.Request) -> web.Response:
        ticker = request.query.get("ticker", "")
        items = [
            {"ticker": ticker, "ex_dividend_date": d, "cash_amount": cash, "currency": "USD", "dividend_type": "CD",
             "frequency": 4, "declaration_date": d, "pay_date": d, "record_date": d}
            for d, cash in reversed(DIVIDENDS.get(ticker, []))
        ]  # fmt: skip
        return self._page(request, items, 10, 1000)

    def financial_value(self, symbol: str, period_end: str, field_name: str) -> float:
        """The value the fake ships for one statement line (an oracle for tests)."""
        return float(_hash(self.seed, symbol, period_end, field_name) % 10**9) * 1000.0

    async def _polygon_financials(self, request: web.Request) -> web.Response:
        ticker = request.query.get("ticker", "")
        items = []
        for end, filed, period, year in reversed(FILINGS.get(ticker, [])):
            statements = {
                st: {f: {"value": self.financial_value(ticker, end, f), "unit": "USD", "label": f.replace("_", " ").title(), "order": i}
                     for i, f in enumerate(fields)}
                for st, fields in STATEMENT_FIELDS.items()
            }  # fmt: skip
            item = {"end_date": end, "fiscal_period": period, "fiscal_year": year, "cik": "0000320193",
                    "company_name": ticker, "timeframe": "annual" if period == "FY" else "quarterly",
                    "financials": statements}  # fmt: skip
            if filed:
                item["filing_date"] = filed
            items.append(item)
        return self._page(request, items, 10, 100)

    def option_contracts(self, underlying: str) -> list[str]:
        """Polygon tickers of the fake's option chain for `underlying` (empty when it has none)."""
        if underlying not in OPTION_UNDERLYINGS:
            return []
        center = round(OPTION_UNDERLYINGS[underlying] / 10) * 10
        return [
            f"O:{underlying}{exp[2:4]}{exp[5:7]}{exp[8:10]}{right}{int((center + step) * 1000):08d}"
            for exp in OPTION_EXPIRIES
            for right in "CP"
            for step in OPTION_STRIKE_STEPS
        ]

    async def _polygon_options(self, request: web.Request) -> web.Response:
        underlying = request.match_info["underlying"]
        price = OPTION_UNDERLYINGS.get(underlying, 0.0)
        items = []
        for ticker in self.option_contracts(underlying):
            rng = np.random.default_rng(_hash(self.seed, ticker))
            strike = int(ticker[-8:]) / 1000
            right = ticker[-9]
            intrinsic = max(0.0, (price - strike) if right == "C" else (strike - price))
            mid = round(intrinsic + 2.0 + float(rng.uniform(0, 3)), 2)
            item = {
                "break_even_price": strike + mid,
                "day": {"open": mid - 0.5, "high": mid + 0.75, "low": mid - 1.0, "close": mid, "volume": int(rng.integers(1, 5000)),
                        "vwap": mid - 0.1, "change": 0.1, "change_percent": 1.0, "previous_close": mid - 0.1},
                "details": {"contract_type": "call" if right == "C" else "put", "exercise_style": "american",
                            "expiration_date": f"20{ticker[-15:-13]}-{ticker[-13:-11]}-{ticker[-11:-9]}",
                            "shares_per_contract": 100, "strike_price": strike, "ticker": ticker},
                "implied_volatility": round(float(rng.uniform(0.15, 0.45)), 4),
                "last_quote": {"bid": mid - 0.05, "ask": mid + 0.05, "bid_size": 10, "ask_size": 12, "midpoint": mid},
                "open_interest": int(rng.integers(0, 20000)),
                "underlying_asset": {"price": price, "ticker": underlying},
            }  # fmt: skip
            if intrinsic < 10:  # deep in-the-money contracts come without greeks, as on Polygon
                item["greeks"] = {"delta": 0.5, "gamma": 0.02, "theta": -0.05, "vega": 0.2}
            items.append(item)
        return self._page(request, items, 10, 250)

    # -- Kite --

    async def _kite_instruments(self, request: web.Request) -> web.Response:
        exchange = request.match_info.get("exchange")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(KITE_CSV_HEADER)
        for row in KITE_INSTRUMENTS:
            if exchange is None or row[11] == exchange:
                writer.writerow(row)
        return web.Response(text=out.getvalue(), content_type="text/csv")

    async def _kite_historical(self, request: web.Request) -> web.Response:
        p, q = request.match_info, request.query
        symbol = _KITE_BY_TOKEN.get(int(p["token"])) if p["token"].isdigit() else None
        if symbol is None:
            return _error("kite", 400, "invalid token", "InputException")
        interval = p["interval"]
        if interval not in KITE_MAX_DAYS:
            return _error("kite", 400, "invalid interval", "InputException")
        try:
            lo = _parse_instant(q["from"], IST)
            hi = _parse_instant(q["to"], IST, end_of_day=True)
        except (KeyError, ValueError):
            return _error("kite", 400, "invalid from/to", "InputException")
        if hi - lo > KITE_MAX_DAYS[interval] * _NS_DAY:
            return _error(
                "kite", 400, f"interval exceeds max limit: {KITE_MAX_DAYS[interval]} days", "InputException"
            )
        candles = self._rows("kite", symbol, _KITE_INTERVALS[interval], lo, hi, "kite")
        return _json({"status": "success", "data": {"candles": candles}})


def main() -> None:
    """`python -m tests.fakes.vendor_http [--latency-s S] [--seed N]`: serve in this process (no faults),
    print the base URL on stdout, stop when stdin closes (benchmarks run the fake in its own process so
    that its CPU time is not charged to the client under test)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with FakeVendorServer(latency_s=args.latency_s, seed=args.seed) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
