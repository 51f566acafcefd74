"""Fake vendor WebSocket servers (Alpaca, Polygon, Kite) with deterministic data and fault injection.

Each server is a real `websockets` asyncio server on 127.0.0.1 (free port) running in a background
thread with its own event loop, speaking the vendor's documented wire format (see
quanto.data.streams and quanto.data.kite_ticker).

    server = FakeAlpacaServer(symbols=["AAPL", "MSFT"], start=dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC),
                              steps=20, outages={5: 3})
    with server:                    # start() / stop() also work; `url` is known once started
        protocol = AlpacaStreamProtocol(url=server.url)  # PolygonStreamProtocol(url=server.url),
        # KiteTickerProtocol(server.token_to_symbol, url=server.url)
        ... run_stream(protocol, credentials=server.credentials, ...)
        server.wait_done(timeout=10)  # every step was sent or skipped
    server.sent_bars()     # BAR_SCHEMA frame: bars of the steps delivered (after updated-bar corrections)
    server.skipped_bars()  # bars of the steps never delivered (outages, truncated frames): what a REST
                           # backfill must fill
    server.all_bars()      # every step's bars for every symbol: the vendor's REST view
    server.sent_trades()   # TRADE_SCHEMA frame of the trades delivered (Alpaca, Polygon)
    server.stats           # connections, attempts, refused, auth_failures, limit_rejections,
                           # malformed_sent, frames_sent
    server.final_ts / server.saw_final(batch)   # stop a client once the last step arrived
    server.reset()         # replay from step 0 (benchmarks; encoded frames are cached)

Data: step k is the minute bar opening at `start + k minutes`. For each symbol it has
`trades_per_bar` trades inside the minute (seeded by (seed, k): identical across runs and
connections) and one quote; the step's bar is exactly those trades' OHLC, volume, vwap and count, so
bars built from the streamed trades equal the streamed bars. A step's frame carries, per subscribed
channel and symbol, its trades, its quote and then its bar (vendors publish a minute bar after the
minute). Steps only advance while a client is subscribed; after the last step the server idles.

Faults (constructor arguments; each fires once, at its step):
- `refuse_first=n`: the first n connection attempts are answered HTTP 503.
- `outages={k: n}`: at step k the TCP connection is dropped (no close frame) and steps k..k+n-1 are
  never sent: they end up in `skipped_bars()`; the next connection resumes at step k+n.
- `truncate_at={k}`: step k's frame is sent cut in half (invalid JSON / a cut binary frame), then the
  connection drops; step k counts as skipped.
- `malformed_at={k: n}`: before step k, n malformed frames are sent (each makes exactly one rejected
  message on the client).
- `update_every=n` (Alpaca): every n-th step also carries an updatedBar ("u") for the previous step's
  bar of the first symbol with volume + 100; `sent_bars()`/`all_bars()` hold the corrected bar.
- `interval_s`: pause between steps (0: as fast as the client reads).

Auth: Alpaca wants `key`/`secret`, Polygon `key` (both via the auth message; wrong ones get the
vendor's auth error and a close); Kite wants `api_key`/`access_token` in the URL query (HTTP 403
otherwise). `credentials` holds the right ones. A second simultaneous streaming connection gets the
vendor's connection-limit error (Alpaca 406, Polygon max_connections) and is closed.

Kite specifics: pass canonical symbols such as "NSE:INFY"; `token_to_symbol` maps the fake's
instrument tokens (NSE segment: prices in paise) to them. Each trade is one
184-byte full packet whose `volume_traded` is the day's cumulative volume (counting skipped steps
too, as the exchange does). On subscription the server first sends a snapshot packet per token
(last close and cumulative volume so far, stamped 1 s before the current step), as Kite does: it
gives a consumer its volume baseline, and falls in the minute before the current step.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
import polars as pl
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from quanto.data.kite_ticker import encode_frame, encode_full_packet
from quanto.data.schemas import BAR_SCHEMA, TRADE_SCHEMA, polars_schema

MINUTE_NS = 60_000_000_000
_BARS = polars_schema(BAR_SCHEMA)
_TRADES = polars_schema(TRADE_SCHEMA)


@dataclass
class _Step:
    """One minute of synthetic market data for every symbol (arrays shaped (symbols, trades))."""

    bar_ns: int
    ts_ns: np.ndarray
    prices: np.ndarray
    sizes: np.ndarray
    bars: dict[str, np.ndarray]


def _generate(seed: int, step: int, start_ns: int, n_symbols: int, n_trades: int) -> _Step:
    rng = np.random.default_rng([seed, step])
    bar_ns = start_ns + step * MINUTE_NS
    base = 50.0 + 25.0 * np.arange(n_symbols)[:, None]
    drift = 1.0 + 0.002 * np.sin(step / 7.0 + np.arange(n_symbols))[:, None]
    prices = np.round(base * drift + rng.normal(0.0, 0.05, (n_symbols, n_trades)), 2)
    sizes = rng.integers(1, 20, (n_symbols, n_trades)).astype(np.float64) * 10.0
    offsets_ms = np.sort(rng.integers(0, 60_000, (n_symbols, n_trades)), axis=1)
    volume = sizes.sum(axis=1)
    bars = {
        "open": prices[:, 0],
        "high": prices.max(axis=1),
        "low": prices.min(axis=1),
        "close": prices[:, -1],
        "volume": volume,
        "vwap": (prices * sizes).sum(axis=1) / volume,
        "trades": np.full(n_symbols, n_trades, dtype=np.int64),
    }
    return _Step(bar_ns, bar_ns + offsets_ms * 1_000_000, prices, sizes, bars)


def _rfc3339(ns: np.ndarray) -> list[str]:
    return [s + "Z" for s in np.datetime_as_string(ns.astype("datetime64[ns]"), unit="ms").tolist()]


class FakeStreamServer(ABC):
    """Common machinery: thread + loop, steps, faults, records. Subclasses speak one vendor."""

    vendor = ""
    path = "/"
    channels: tuple[str, ...] = ("bars", "trades", "quotes")
    timeframe = "1min"

    def __init__(
        self,
        symbols: Sequence[str],
        start: dt.datetime,
        steps: int,
        *,
        seed: int = 7,
        trades_per_bar: int = 4,
        interval_s: float = 0.0,
        refuse_first: int = 0,
        outages: Mapping[int, int] | None = None,
        truncate_at: Iterable[int] = (),
        malformed_at: Mapping[int, int] | None = None,
        update_every: int = 0,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        self.symbols = list(symbols)
        self.start_ns = int(start.timestamp()) * 1_000_000_000
        self.steps = steps
        self.seed = seed
        self.trades_per_bar = max(1, trades_per_bar)
        self.interval_s = interval_s
        self.credentials = dict(credentials or self.default_credentials())
        self._refuse_left = refuse_first
        self._outages = dict(outages or {})
        self._truncate = set(truncate_at)
        self._malformed = dict(malformed_at or {})
        self.update_every = update_every
        self._data = [
            _generate(seed, k, self.start_ns, len(self.symbols), self.trades_per_bar) for k in range(steps)
        ]
        self._lock = threading.Lock()
        self._next_step = 0
        self._sent: dict[int, list[int]] = {}  # step -> symbol indices delivered
        self._skipped: dict[int, list[int]] = {}
        self._trades_sent: dict[int, dict[str, list[int]]] = {}  # step -> channel -> symbol indices
        self._updates: dict[tuple[int, int], float] = {}  # (step, symbol) -> corrected volume
        self._streaming = False
        self._encoded: dict[tuple, str | bytes] = {}  # (step, subscription) -> frame: replays skip encoding
        self._done = threading.Event()
        self.stats = {
            "attempts": 0,
            "connections": 0,
            "refused": 0,
            "auth_failures": 0,
            "limit_rejections": 0,
            "malformed_sent": 0,
            "frames_sent": 0,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    @abstractmethod
    def default_credentials(self) -> dict[str, str]:
        """The credentials the server accepts unless others are given."""

    @property
    def url(self) -> str:
        """ws:// URL of the running server (Kite: the base, without the credential query)."""
        return f"ws://127.0.0.1:{self.port}{self.path}"

    def start(self) -> FakeStreamServer:
        """Start serving in a background thread; returns self once the port is bound."""
        ready = threading.Event()
        errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            loop = self._loop
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to the starting thread below
                errors.append(exc)
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            loop.run_until_complete(asyncio.wait_for(server.wait_closed(), 5))
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.vendor}-ws", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _serve(self):
        return await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=2**24,
        )

    def stop(self) -> None:
        """Stop the server and its thread (open connections are closed)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeStreamServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_done(self, timeout: float = 10.0) -> bool:
        """Block until every step was sent or skipped; False on timeout."""
        return self._done.wait(timeout)

    def reset(self) -> None:
        """Replay from step 0 (benchmarks): clears the step counter, records and `done`; faults that
        already fired stay spent. Encoded frames are kept, so a replay costs the server only sends."""
        with self._lock:
            self._next_step = 0
            self._sent.clear()
            self._skipped.clear()
            self._trades_sent.clear()
            self._updates.clear()
            self._done.clear()

    @property
    def done(self) -> bool:
        """True once every step was sent or skipped."""
        return self._done.is_set()

    @property
    def final_ts(self) -> dt.datetime:
        """Open time of the last step's bar."""
        return dt.datetime.fromtimestamp((self.start_ns + (self.steps - 1) * MINUTE_NS) / 1e9, dt.UTC)

    def saw_final(self, batch) -> bool:
        """True when a client StreamBatch carries data of the last step (its frame arrived whole).

        Use it to set the client's stop event; the last step must not be inside an outage.
        """
        return any(
            frame.height and frame["ts"].max() >= self.final_ts
            for frame in (batch.bars, batch.trades, batch.ticks)
        )

    # --- records -----------------------------------------------------------------------------------

    def _bars(self, steps: Mapping[int, list[int]]) -> pl.DataFrame:
        rows = []
        for k in sorted(steps):
            data = self._data[k]
            for i in sorted(steps[k]):
                b = {name: values[i].item() for name, values in data.bars.items()}
                if (k, i) in self._updates:
                    b["volume"] = self._updates[(k, i)]
                rows.append(
                    {
                        "symbol": self.symbols[i],
                        "ts": data.bar_ns,
                        "timeframe": self.timeframe,
                        **b,
                        "trades": self.bar_trades(b["trades"]),
                        "vendor": self.vendor,
                        "imputed": False,
                    }
                )
        frame = pl.DataFrame(rows, schema={**_BARS, "ts": pl.Int64}, orient="row") if rows else None
        if frame is None:
            return pl.DataFrame(schema=_BARS)
        return frame.with_columns(pl.col("ts").cast(_BARS["ts"])).sort("symbol", "ts")

    def bar_trades(self, n: int) -> int | None:
        """The `trades` value the vendor's bar carries (Polygon AM and Kite ticks have none)."""
        return n

    def sent_bars(self) -> pl.DataFrame:
        """Bars of the steps delivered, for the symbols subscribed then (after corrections)."""
        with self._lock:
            return self._bars(self._sent)

    def skipped_bars(self) -> pl.DataFrame:
        """Bars of the steps never delivered (outages, truncated frames), for the subscribed symbols."""
        with self._lock:
            return self._bars(self._skipped)

    def all_bars(self) -> pl.DataFrame:
        """Every step's bars for every symbol (the vendor's REST view, corrections included)."""
        with self._lock:
            return self._bars({k: list(range(len(self.symbols))) for k in range(self.steps)})

    def sent_trades(self) -> pl.DataFrame:
        """Trades delivered on the `trades` channel, in send order."""
        with self._lock:
            parts = []
            for k in sorted(self._trades_sent):
                data = self._data[k]
                for i in self._trades_sent[k].get("trades", []):
                    n = self.trades_per_bar
                    parts.append(
                        pl.DataFrame(
                            {
                                "symbol": [self.symbols[i]] * n,
                                "ts": data.ts_ns[i],
                                "price": data.prices[i],
                                "size": data.sizes[i],
                                "trade_id": [self.trade_id(k, i, j) for j in range(n)],
                                "conditions": [None] * n,
                                "vendor": [self.vendor] * n,
                            },
                            schema={**_TRADES, "ts": pl.Int64},
                        )
                    )
            if not parts:
                return pl.DataFrame(schema=_TRADES)
            return pl.concat(parts).with_columns(pl.col("ts").cast(_TRADES["ts"]))

    def trade_id(self, step: int, symbol: int, j: int) -> str:
        """Deterministic trade id."""
        return f"{step}-{symbol}-{j}"

    # --- connection handling -----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request):
        with self._lock:
            self.stats["attempts"] += 1
            if self._refuse_left > 0:
                self._refuse_left -= 1
                self.stats["refused"] += 1
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "temporarily unavailable\n")
        return self.check_request(connection, request)

    def check_request(self, connection: ServerConnection, request):
        """Hook: answer the HTTP upgrade request (None accepts it)."""
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.stats["connections"] += 1
        try:
            subs = await self.handshake(ws)
            if subs is None:
                return
            if self._streaming:
                self.stats["limit_rejections"] += 1
                await ws.send(self.limit_error())
                await ws.close()
                return
            self._streaming = True
            try:
                await self._stream(ws, subs)
            finally:
                self._streaming = False
        except ConnectionClosed:
            pass

    async def _stream(self, ws: ServerConnection, subs: dict[str, list[int]]) -> None:
        await self.on_subscribed(ws, subs)
        subscribed = sorted({i for idx in subs.values() for i in idx})
        while True:
            with self._lock:
                k = self._next_step
            if k >= self.steps:
                self._done.set()
                await ws.wait_closed()
                return
            for n in range(self._malformed.pop(k, 0)):
                await ws.send(self.malformed_frame(n))
                self.stats["malformed_sent"] += 1
            if k in self._outages:
                n = self._outages.pop(k)
                with self._lock:
                    for s in range(k, min(k + n, self.steps)):
                        self._skipped[s] = subscribed
                    self._next_step = k + n
                self._drop(ws)
                return
            key = (k, tuple((ch, tuple(idx)) for ch, idx in sorted(subs.items())))
            frame = self._encoded.get(key)
            if frame is None or self.update_every:  # corrections depend on what was sent: no reuse
                frame = self._encoded[key] = self.encode_step(k, subs)
            if k in self._truncate:
                self._truncate.discard(k)
                await ws.send(frame[: len(frame) // 2])
                with self._lock:
                    self._skipped[k] = subscribed
                    self._next_step = k + 1
                self._drop(ws)
                return
            await ws.send(frame)
            self.stats["frames_sent"] += 1
            with self._lock:
                self._sent[k] = subscribed
                self._trades_sent[k] = subs
                self._next_step = k + 1
            await asyncio.sleep(self.interval_s)

    @staticmethod
    def _drop(ws: ServerConnection) -> None:
        """End the TCP connection without a close frame (after flushing what was sent)."""
        ws.transport.close()

    # --- vendor hooks ------------------------------------------------------------------------------

    @abstractmethod
    async def handshake(self, ws: ServerConnection) -> dict[str, list[int]] | None:
        """Authenticate and read the subscription: channel -> symbol indices; None to hang up."""

    async def on_subscribed(self, ws: ServerConnection, subs: dict[str, list[int]]) -> None:
        """Hook: send something right after the subscription (Kite's snapshot); nothing by default."""
        return None

    @abstractmethod
    def encode_step(self, k: int, subs: dict[str, list[int]]) -> str | bytes:
        """Step k's frame for the subscription."""

    @abstractmethod
    def malformed_frame(self, n: int) -> str | bytes:
        """The n-th malformed frame (each yields one rejected message)."""

    @abstractmethod
    def limit_error(self) -> str:
        """The vendor's connection-limit error message."""

    def _indices(self, names: Iterable[str]) -> list[int]:
        names = list(names)
        if "*" in names:
            return list(range(len(self.symbols)))
        return [i for i, s in enumerate(self.symbols) if s in names]


def _dumps(obj) -> str:
    return orjson.dumps(obj).decode()


class FakeAlpacaServer(FakeStreamServer):
    """Alpaca market data v2 stream (`/v2/iex`)."""

    vendor = "alpaca"
    path = "/v2/iex"

    def default_credentials(self) -> dict[str, str]:
        """key / secret."""
        return {"key": "AKFAKEKEY123", "secret": "fake-alpaca-secret-xyz"}

    async def handshake(self, ws: ServerConnection) -> dict[str, list[int]] | None:
        """connected → auth → authenticated → subscribe → subscription."""
        await ws.send(_dumps([{"T": "success", "msg": "connected"}]))
        auth = orjson.loads(await ws.recv())
        if auth.get("key") != self.credentials["key"] or auth.get("secret") != self.credentials["secret"]:
            self.stats["auth_failures"] += 1
            await ws.send(_dumps([{"T": "error", "code": 402, "msg": "auth failed"}]))
            await ws.close()
            return None
        await ws.send(_dumps([{"T": "success", "msg": "authenticated"}]))
        sub = orjson.loads(await ws.recv())
        subs = {ch: self._indices(sub.get(ch, [])) for ch in ("bars", "updatedBars", "trades", "quotes")}
        await ws.send(
            _dumps(
                [
                    {
                        "T": "subscription",
                        **{ch: sub.get(ch, []) for ch in subs},
                        "dailyBars": [],
                        "statuses": [],
                    }
                ]
            )
        )
        return subs

    def trade_id(self, step: int, symbol: int, j: int) -> str:
        """Alpaca ids are integers."""
        return str(step * 1_000_000 + symbol * 1_000 + j)

    def encode_step(self, k: int, subs: dict[str, list[int]]) -> str:
        """Trades, quotes, then bars (and an updatedBar every `update_every` steps)."""
        d = self._data[k]
        msgs: list[dict] = []
        for i in subs.get("trades", []):
            times = _rfc3339(d.ts_ns[i])
            msgs += [
                {
                    "T": "t",
                    "S": self.symbols[i],
                    "i": int(self.trade_id(k, i, j)),
                    "x": "V",
                    "p": d.prices[i, j].item(),
                    "s": d.sizes[i, j].item(),
                    "t": times[j],
                    "c": ["@"],
                    "z": "C",
                }
                for j in range(self.trades_per_bar)
            ]
        for i in subs.get("quotes", []):
            c = d.bars["close"][i].item()
            msgs.append(
                {
                    "T": "q",
                    "S": self.symbols[i],
                    "bx": "V",
                    "bp": round(c - 0.01, 2),
                    "bs": 3,
                    "ax": "V",
                    "ap": round(c + 0.01, 2),
                    "as": 4,
                    "t": _rfc3339(np.array([d.bar_ns + 500_000_000]))[0],
                    "c": ["R"],
                    "z": "C",
                }
            )
        for i in subs.get("bars", []):
            msgs.append(self._bar_msg("b", k, i))
        fix = self.symbols and 0 in subs.get("updatedBars", [])
        if self.update_every and k > 0 and k % self.update_every == 0 and fix and (k - 1) in self._sent:
            with self._lock:
                self._updates[(k - 1, 0)] = self._data[k - 1].bars["volume"][0].item() + 100.0
            msgs.append(self._bar_msg("u", k - 1, 0))
        return _dumps(msgs)

    def _bar_msg(self, kind: str, k: int, i: int) -> dict:
        d, b = self._data[k], self._data[k].bars
        volume = self._updates.get((k, i), b["volume"][i].item())
        return {
            "T": kind,
            "S": self.symbols[i],
            "o": b["open"][i].item(),
            "h": b["high"][i].item(),
            "l": b["low"][i].item(),
            "c": b["close"][i].item(),
            "v": volume,
            "t": _rfc3339(np.array([d.bar_ns]))[0],
            "n": int(b["trades"][i]),
            "vw": b["vwap"][i].item(),
        }

    def malformed_frame(self, n: int) -> str:
        """Cut JSON, a trade with a string price, a frame that is not an array."""
        sym = self.symbols[0]
        return [
            '[{"T":"t","S":"' + sym + '","p":1',
            _dumps([{"T": "t", "S": sym, "i": 1, "p": "oops", "s": 1, "t": "2024-01-02T14:30:00Z"}]),
            '"not an array"',
        ][n % 3]

    def limit_error(self) -> str:
        """406 connection limit exceeded."""
        return _dumps([{"T": "error", "code": 406, "msg": "connection limit exceeded"}])


class FakePolygonServer(FakeStreamServer):
    """Polygon stocks stream (`/stocks`)."""

    vendor = "polygon"
    path = "/stocks"
    _CHANNEL = {"AM": "bars", "T": "trades", "Q": "quotes"}

    def default_credentials(self) -> dict[str, str]:
        """key."""
        return {"key": "fake-polygon-key-123"}

    def bar_trades(self, n: int) -> int | None:
        """AM aggregates carry no trade count."""
        return None

    async def handshake(self, ws: ServerConnection) -> dict[str, list[int]] | None:
        """connected → auth → auth_success → subscribe."""
        await ws.send(_dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]))
        auth = orjson.loads(await ws.recv())
        if auth.get("params") != self.credentials["key"]:
            self.stats["auth_failures"] += 1
            await ws.send(
                _dumps([{"ev": "status", "status": "auth_failed", "message": "authentication failed"}])
            )
            await ws.close()
            return None
        await ws.send(_dumps([{"ev": "status", "status": "auth_success", "message": "authenticated"}]))
        sub = orjson.loads(await ws.recv())
        wanted: dict[str, list[str]] = {}
        for item in str(sub.get("params", "")).split(","):
            prefix, _, sym = item.partition(".")
            if prefix in self._CHANNEL:
                wanted.setdefault(self._CHANNEL[prefix], []).append(sym)
        await ws.send(
            _dumps([{"ev": "status", "status": "success", "message": f"subscribed to: {sub.get('params')}"}])
        )
        return {ch: self._indices(names) for ch, names in wanted.items()}

    def encode_step(self, k: int, subs: dict[str, list[int]]) -> str:
        """T, Q, then AM messages (times in epoch ms)."""
        d, b = self._data[k], self._data[k].bars
        msgs: list[dict] = []
        for i in subs.get("trades", []):
            ms = (d.ts_ns[i] // 1_000_000).tolist()
            msgs += [
                {
                    "ev": "T",
                    "sym": self.symbols[i],
                    "x": 4,
                    "i": self.trade_id(k, i, j),
                    "z": 3,
                    "p": d.prices[i, j].item(),
                    "s": d.sizes[i, j].item(),
                    "c": [12],
                    "t": ms[j],
                    "q": k * 1000 + j,
                }
                for j in range(self.trades_per_bar)
            ]
        start_ms = d.bar_ns // 1_000_000
        for i in subs.get("quotes", []):
            c = b["close"][i].item()
            msgs.append(
                {
                    "ev": "Q",
                    "sym": self.symbols[i],
                    "bx": 4,
                    "bp": round(c - 0.01, 2),
                    "bs": 300,
                    "ax": 7,
                    "ap": round(c + 0.01, 2),
                    "as": 400,
                    "c": 0,
                    "t": start_ms + 500,
                    "q": k,
                    "z": 3,
                }
            )
        for i in subs.get("bars", []):
            msgs.append(
                {
                    "ev": "AM",
                    "sym": self.symbols[i],
                    "v": b["volume"][i].item(),
                    "av": b["volume"][i].item() * (k + 1),
                    "op": b["open"][i].item(),
                    "vw": b["vwap"][i].item(),
                    "o": b["open"][i].item(),
                    "c": b["close"][i].item(),
                    "h": b["high"][i].item(),
                    "l": b["low"][i].item(),
                    "a": b["vwap"][i].item(),
                    "z": int(b["volume"][i] / b["trades"][i]),
                    "s": start_ms,
                    "e": start_ms + 60_000,
                }
            )
        return _dumps(msgs)

    def malformed_frame(self, n: int) -> str:
        """Cut JSON, a trade with a string price, a frame that is not an array."""
        sym = self.symbols[0]
        return [
            '[{"ev":"T","sym":"' + sym + '","p":1',
            _dumps([{"ev": "T", "sym": sym, "p": "oops", "s": 1, "t": 1}]),
            '"not an array"',
        ][n % 3]

    def limit_error(self) -> str:
        """max_connections status."""
        return _dumps(
            [
                {
                    "ev": "status",
                    "status": "max_connections",
                    "message": "Maximum number of connections exceeded.",
                }
            ]
        )


class FakeKiteServer(FakeStreamServer):
    """Kite ticker (binary full packets; auth in the URL query)."""

    vendor = "kite"
    channels = ("full",)

    def __init__(
        self,
        symbols: Sequence[str],
        start: dt.datetime,
        steps: int,
        *,
        tokens: Mapping[str, int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(symbols, start, steps, **kwargs)
        # NSE segment (1): price divisor 100. `tokens` lets a test use another fake's instrument list.
        tokens = tokens or {s: ((i + 1) << 8) | 1 for i, s in enumerate(self.symbols)}
        self.token_to_symbol = {tokens[s]: s for s in self.symbols}
        self._tokens = list(self.token_to_symbol)
        volumes = (
            np.array([d.bars["volume"] for d in self._data]) if self._data else np.zeros((0, len(symbols)))
        )
        self._cum_before = np.vstack([np.zeros(len(self.symbols)), np.cumsum(volumes, axis=0)])

    def default_credentials(self) -> dict[str, str]:
        """api_key / access_token."""
        return {"api_key": "kitefakekey", "access_token": "kite-fake-access-token-42"}

    def bar_trades(self, n: int) -> int | None:
        """Bars built from ticks have no trade count."""
        return None

    def check_request(self, connection: ServerConnection, request):
        """HTTP 403 unless api_key and access_token match."""
        query = parse_qs(urlsplit(request.path).query)
        ok = query.get("api_key") == [self.credentials["api_key"]] and query.get("access_token") == [
            self.credentials["access_token"]
        ]
        if not ok:
            self.stats["auth_failures"] += 1
            return connection.respond(HTTPStatus.FORBIDDEN, "invalid api_key or access_token\n")
        return None

    async def handshake(self, ws: ServerConnection) -> dict[str, list[int]] | None:
        """Read the subscribe and mode messages."""
        tokens: list[int] = []
        mode = None
        while mode is None:
            msg = orjson.loads(await ws.recv())
            if msg.get("a") == "subscribe":
                tokens = list(msg.get("v", []))
            elif msg.get("a") == "mode":
                mode, tokens_for_mode = msg["v"]
                tokens = tokens or list(tokens_for_mode)
        idx = [self._tokens.index(t) for t in tokens if t in self.token_to_symbol]
        return {"full": idx, "trades": []}

    async def on_subscribed(self, ws: ServerConnection, subs: dict[str, list[int]]) -> None:
        """The snapshot Kite sends on subscription: last close, cumulative volume, 1 s before the step."""
        with self._lock:
            k = min(self._next_step, self.steps)
        if not self._data or not subs["full"]:
            return
        ts = (self.start_ns + k * MINUTE_NS) // 1_000_000_000 - 1
        packets = []
        for i in subs["full"]:
            price = (
                self._data[k - 1].bars["close"][i].item() if k > 0 else self._data[0].bars["open"][i].item()
            )
            packets.append(self._packet(i, price, 0, self._cum_before[k][i].item(), ts))
        await ws.send(encode_frame(packets))

    def _packet(self, i: int, price: float, qty: float, cum: float, ts_s: int) -> bytes:
        return encode_full_packet(
            self._tokens[i],
            last_price=price,
            last_traded_quantity=int(qty),
            average_traded_price=price,
            volume_traded=int(cum),
            total_buy_quantity=1000,
            total_sell_quantity=1200,
            open=price,
            high=price,
            low=price,
            close=price,
            last_trade_time=ts_s,
            exchange_timestamp=ts_s,
            bids=[(100 * (n + 1), round(price - 0.05 * (n + 1), 2), n + 1) for n in range(5)],
            asks=[(120 * (n + 1), round(price + 0.05 * (n + 1), 2), n + 1) for n in range(5)],
        )

    def encode_step(self, k: int, subs: dict[str, list[int]]) -> bytes:
        """One full packet per trade, cumulative volume rising, stamped with the trade's second."""
        d = self._data[k]
        packets = []
        for i in subs["full"]:
            cum = self._cum_before[k][i] + np.cumsum(d.sizes[i])
            secs = (d.ts_ns[i] // 1_000_000_000).tolist()
            packets += [
                self._packet(i, d.prices[i, j].item(), d.sizes[i, j].item(), cum[j].item(), secs[j])
                for j in range(self.trades_per_bar)
            ]
        return encode_frame(packets)

    def malformed_frame(self, n: int) -> str | bytes:
        """A packet of unknown length, bad JSON text, a packet for an unknown token."""
        return [
            encode_frame([b"\x00\x01\x02"]),
            "{not json",
            encode_frame([encode_full_packet(999_999, last_price=1.0)]),
        ][n % 3]

    def limit_error(self) -> str:
        """Kite's error text message."""
        return _dumps({"type": "error", "data": "connection limit exceeded"})
