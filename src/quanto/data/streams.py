"""Vendor market-data WebSocket streams: parse, reconnect, detect gaps, micro-batch for the lake.

Pieces:

- `StreamBatch`: what one received frame holds, columnar per kind: `bars` (BAR_SCHEMA), `trades`
  (TRADE_SCHEMA), `quotes` (QUOTE_SCHEMA), `depth` (depth_schema(5)), `ticks` (TICK_SCHEMA: snapshots
  with the day's cumulative volume, Kite), `status` (control and unsupported messages, kept as dicts)
  and `rejected` (raw text + reason of every message or frame that could not be parsed).
- `StreamProtocol`: one vendor's wire format (url, auth and subscribe messages, `parse`). Implemented
  here for Alpaca (`AlpacaStreamProtocol`) and Polygon (`PolygonStreamProtocol`); Kite's binary
  protocol is in `quanto.data.kite_ticker`. `parse` never raises: bad input lands in `rejected`.
- `run_stream`: connect, authenticate, subscribe, deliver batches; on any failure back off
  (exponential, capped, jittered) and reconnect; report gaps after reconnects.
- `MicroBatcher`: buffers stream frames per kind and writes them in large chunks.

Channels (vendor neutral): `bars` (Alpaca bars + updatedBars, Polygon AM), `trades`, `quotes`; Kite
takes its mode (`full`, `quote`, `ltp`). Alpaca `u` (updated bar) rows replace the bar with the same
(symbol, timeframe, ts) downstream (MicroBatcher keeps the last). Polygon AM bars take `vw`, the
vwap of the aggregate window itself, not `a` (the day's running vwap); Polygon sends no trade count
in AM, so `trades` is null there. Trade sizes and quote sizes are stored as the vendor ships them.
Alpaca trade corrections/cancels (`c`, `x`), trading statuses, LULD and any unknown message type
go to `status` (kept, not applied).

Gap detection (event time, deterministic): per symbol the stream remembers the last bar open seen.
After a reconnect, the first bar of a symbol with ts > last + timeframe makes `on_gap(symbol,
last + timeframe, ts)` (start inclusive, end exclusive) — the caller backfills that range over REST.
Without a disconnect no gap is ever reported (vendors skip minutes without trades). When the stream
carries no bars (trades-only or Kite ticks) the bars are those the trades fall in, and the bar of
the last trade before the disconnect and the bar of the first trade after it are included
(start = last bar open, end = first bar open + timeframe), because both may be missing trades.
Symbols never seen before a disconnect cannot report a gap (no known start).

Secrets: credentials are never logged, put in errors, stats or states; log messages built from
exceptions are scrubbed of credential values and of `key=value` query parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import structlog

from quanto.data.aggregate import timeframe_ns
from quanto.data.schemas import BAR_SCHEMA, QUOTE_SCHEMA, TRADE_SCHEMA, depth_schema, polars_schema
from quanto.errors import InputError

DEPTH_LEVELS = 5
TS_DTYPE = pl.Datetime("ns", "UTC")
# Level-1 snapshots with the day's cumulative traded volume (Kite ticks); prices in the listing currency.
TICK_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),  # exchange time (else receive time)
        pa.field("price", pa.float64(), nullable=False),  # last traded price
        pa.field("volume", pa.float64(), nullable=True),  # day's cumulative volume; null if not shipped
        pa.field("last_quantity", pa.float64(), nullable=True),
        pa.field("average_price", pa.float64(), nullable=True),  # day's average traded price
        pa.field("buy_quantity", pa.float64(), nullable=True),  # total pending buy quantity
        pa.field("sell_quantity", pa.float64(), nullable=True),
        pa.field("open", pa.float64(), nullable=True),  # the day's OHLC as shipped
        pa.field("high", pa.float64(), nullable=True),
        pa.field("low", pa.float64(), nullable=True),
        pa.field("close", pa.float64(), nullable=True),
        pa.field("oi", pa.float64(), nullable=True),  # open interest (derivatives)
        pa.field("last_trade_time", pa.timestamp("ns", tz="UTC"), nullable=True),
        pa.field("mode", pa.string(), nullable=False),  # ltp | quote | full
        pa.field("vendor", pa.string(), nullable=False),
    ]
)
KINDS = ("bars", "trades", "quotes", "depth", "ticks")
_SCHEMAS = {
    "bars": polars_schema(BAR_SCHEMA),
    "trades": polars_schema(TRADE_SCHEMA),
    "quotes": polars_schema(QUOTE_SCHEMA),
    "depth": polars_schema(depth_schema(DEPTH_LEVELS)),
    "ticks": polars_schema(TICK_SCHEMA),
}
_EMPTY = {kind: pl.DataFrame(schema=schema) for kind, schema in _SCHEMAS.items()}
REJECTED_SCHEMA = {"raw": pl.String, "reason": pl.String, "vendor": pl.String}


class RejectedMessage(NamedTuple):
    """A message or frame that could not be parsed: the raw text as received and why."""

    raw: str
    reason: str


@dataclass(slots=True)
class StreamBatch:
    """Columnar content of one received frame, per kind; see the module docstring."""

    vendor: str
    bars: pl.DataFrame = field(default_factory=lambda: _EMPTY["bars"])
    trades: pl.DataFrame = field(default_factory=lambda: _EMPTY["trades"])
    quotes: pl.DataFrame = field(default_factory=lambda: _EMPTY["quotes"])
    depth: pl.DataFrame = field(default_factory=lambda: _EMPTY["depth"])
    ticks: pl.DataFrame = field(default_factory=lambda: _EMPTY["ticks"])
    status: list[dict] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)

    def frames(self) -> dict[str, pl.DataFrame]:
        """The non-empty data frames by kind."""
        return {k: f for k in KINDS if (f := getattr(self, k)).height}

    def data_rows(self) -> int:
        """Rows over every data kind (not status or rejected)."""
        return sum(getattr(self, k).height for k in KINDS)

    def is_empty(self) -> bool:
        """True when the frame carried nothing (e.g. a heartbeat)."""
        return not (self.data_rows() or self.status or self.rejected)

    def rejected_frame(self) -> pl.DataFrame:
        """`rejected` as a frame (raw, reason, vendor), ready for a quarantine write."""
        return pl.DataFrame(
            {
                "raw": [r.raw for r in self.rejected],
                "reason": [r.reason for r in self.rejected],
                "vendor": [self.vendor] * len(self.rejected),
            },
            schema=REJECTED_SCHEMA,
        )


def raw_text(data: Any) -> str:
    """Text of a raw frame or message for `rejected`: str as is, bytes decoded (hex if not UTF-8),
    parsed JSON re-encoded."""
    if isinstance(data, str):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return "hex:" + bytes(data).hex()
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return repr(data)


try:  # private: the constructors pl.Series / pl.DataFrame themselves end in (see _list_series)
    from polars._plr import PyDataFrame, PySeries
except ImportError:  # another polars layout: always take the public path
    PyDataFrame = PySeries = None


def _list_constructor(dtype: pl.DataType) -> tuple[Callable | None, pl.DataType | None]:
    """The PySeries constructor `pl.Series(name, values, dtype=dtype)` itself calls for a list of
    values, and the dtype it then casts to (Datetime is built from Int64); (None, None) if unknown."""
    if PySeries is None:
        return None, None
    if dtype == pl.String:
        return getattr(PySeries, "new_str", None), None
    if dtype == pl.Float64:
        return getattr(PySeries, "new_opt_f64", None), None
    if dtype == pl.Int64:
        return getattr(PySeries, "new_opt_i64", None), None
    if isinstance(dtype, pl.Datetime):
        return getattr(PySeries, "new_opt_i64", None), dtype
    return None, None


# Per kind, (name, dtype, constructor, cast to) per column. The direct constructors skip pl.Series'
# per-call dtype dispatch, which costs more than converting a stream frame's few hundred values; on
# any error the public pl.Series call decides, so the result (value or exception) is the same.
_PLANS = {
    kind: [(name, dtype, *_list_constructor(dtype)) for name, dtype in schema.items()]
    for kind, schema in _SCHEMAS.items()
}


_TS_PLAN = _list_constructor(TS_DTYPE)


def _list_series(name: str, values: list, dtype: pl.DataType, ctor: Callable | None, cast: Any) -> pl.Series:
    if ctor is not None:
        try:
            series = pl.Series._from_pyseries(ctor(name, values, True))
            return series if cast is None else series.cast(cast)
        except Exception:  # noqa: BLE001, S110 - the public call below raises or converts as polars does
            pass
    return pl.Series(name, values, dtype=dtype)


def build_frame(kind: str, columns: dict[str, list | pl.Series]) -> pl.DataFrame:
    """A frame of `kind`'s canonical schema from columns (lists or Series); timestamp columns may
    hold int ns since the epoch.

    Strict: a value of the wrong type raises (TypeError, ValueError, polars errors), so callers
    isolate the bad messages with `build_isolating`.
    """
    return _frame_of(_build_series(kind, columns))


def _build_series(kind: str, columns: dict[str, list | pl.Series]) -> list[pl.Series]:
    return [
        values.alias(name)
        if isinstance(values := columns[name], pl.Series)
        else _list_series(name, values, dtype, ctor, cast)
        for name, dtype, ctor, cast in _PLANS[kind]
    ]


def _frame_of(series: list[pl.Series]) -> pl.DataFrame:
    if PyDataFrame is not None:
        try:  # what pl.DataFrame(series) ends in, without its per-call schema handling
            return pl.DataFrame._from_pydf(PyDataFrame([s._s for s in series]))
        except Exception:  # noqa: BLE001, S110 - e.g. unequal lengths: the public call raises as polars does
            pass
    return pl.DataFrame(series)


_BUILD_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError, pl.exceptions.PolarsError)


def build_isolating(
    kind: str, msgs: list, columns: Callable[[list], dict], required: Sequence[str] = ()
) -> tuple[pl.DataFrame, list[RejectedMessage]]:
    """Build `kind`'s frame from parsed messages with `columns(msgs)`; never raises.

    Fast path: one columnar build for the whole list. If it fails, every message is built alone so
    only the bad ones are rejected (with the error as reason). Rows with nulls in `required` columns
    (a missing price, an unparseable time) are rejected too.
    """
    try:
        series = _build_series(kind, columns(msgs))
        frame = _frame_of(series)
    except _BUILD_ERRORS as exc:
        if len(msgs) == 1:
            return _EMPTY[kind], [RejectedMessage(raw_text(msgs[0]), f"{kind}: {_describe(exc)}")]
        parts = [build_isolating(kind, [m], columns, required) for m in msgs]
        good = [f for f, _ in parts if f.height]
        frame = pl.concat(good, how="vertical") if good else _EMPTY[kind]
        return frame, [r for _, rej in parts for r in rej]
    rejected: list[RejectedMessage] = []
    nulls = [name for name, i in _REQUIRED_AT[kind, tuple(required)] if series[i].has_nulls()]
    if nulls:
        bad = pl.any_horizontal(pl.col(c).is_null() for c in nulls)
        idx = frame.select(bad.arg_true()).to_series().to_list()
        for i in idx:
            missing = [c for c in nulls if frame[c][i] is None]
            rejected.append(RejectedMessage(raw_text(msgs[i]), f"{kind}: missing or invalid {missing}"))
        frame = frame.filter(~bad)
    return frame, rejected


class _RequiredAt(dict):
    """(kind, required columns) → [(name, position in the kind's schema)], computed once per key."""

    def __missing__(self, key: tuple[str, tuple[str, ...]]) -> list[tuple[str, int]]:
        kind, required = key
        names = list(_SCHEMAS[kind])
        value = self[key] = [(c, names.index(c)) for c in required]
        return value


_REQUIRED_AT = _RequiredAt()


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


_CONSTANTS: dict[tuple, pl.Series] = {}


def constant(name: str, value: Any, dtype: pl.DataType, n: int) -> pl.Series:
    """A Series of n copies of `value`, sliced from a cached one (building it per frame is the cost)."""
    key = (name, value, dtype)
    series = _CONSTANTS.get(key)
    if series is None or series.len() < n:
        series = _CONSTANTS[key] = pl.Series(name, [value] * max(n, 4096), dtype=dtype)
    return series.head(n)


def ms_to_ns(values: list) -> list:
    """Epoch milliseconds (ints) to nanoseconds (a float stays float and is rejected downstream)."""
    return [v * 1_000_000 for v in values]


_LAST, _BUT_LAST = itemgetter(-1), itemgetter(slice(None, -1))


def rfc3339_to_ns(values: list, name: str = "ts") -> pl.Series:
    """RFC 3339 strings (`...Z` or `+hh:mm`, up to ns fraction) to UTC ns; unparseable → null."""
    # Fast path for the usual `...Z` form: numpy's ISO parser costs a third of polars' per frame.
    # Anything else (offsets, bad values, non-strings) takes the polars path, which nulls bad values.
    # (C-level maps, not comprehensions: this runs for every message of every Alpaca frame.)
    try:
        if set(map(type, values)) == {str} and set(map(_LAST, values)) == {"Z"}:
            parsed = np.array(list(map(_BUT_LAST, values)), dtype="datetime64[ns]")
            if not np.isnat(parsed).any():
                return _list_series(name, parsed.view(np.int64).tolist(), TS_DTYPE, *_TS_PLAN)
    except (TypeError, ValueError, IndexError):
        pass
    return pl.Series(name, values, dtype=pl.String, strict=False).str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="ns", time_zone="UTC", strict=False
    )


_CONDITIONS: dict[tuple, str] = {}  # few distinct code combinations: joining each time is the hot cost


def _conditions(c: Any) -> str | None:
    """Sale conditions as shipped (a list of codes) → one space-separated string."""
    if c is None:
        return None
    if type(c) is list:
        key = tuple(c)
        try:
            return _CONDITIONS[key]
        except KeyError:
            text = _CONDITIONS[key] = " ".join(map(str, c))
            if len(_CONDITIONS) > 10_000:  # unbounded input must not grow memory without bound
                _CONDITIONS.clear()
            return text
        except TypeError:  # unhashable codes (nested lists): not worth caching
            return " ".join(map(str, c))
    return str(c)


def _conditions_column(msgs: list) -> list:
    """`_conditions` of every message's `c`; cached code lists are looked up without a call each."""
    codes = [m.get("c") for m in msgs]
    if set(map(type, codes)) == {list}:
        try:
            return list(map(_CONDITIONS.__getitem__, map(tuple, codes)))
        except (KeyError, TypeError):  # a new combination (cached below) or unhashable codes
            pass
    return [_conditions(c) for c in codes]


def _trade_ids(msgs: list) -> list | pl.Series:
    """Trade ids (`i`) as text: strings kept, integers formatted in one vectorized cast."""
    ids = [m.get("i") for m in msgs]
    types = set(map(type, ids))
    if types <= {str, type(None)}:  # Polygon
        return ids
    if types == {int} and PySeries is not None:  # Alpaca; bools are not ints here (type, not isinstance)
        try:
            return pl.Series._from_pyseries(PySeries.new_opt_i64("trade_id", ids, True)).cast(pl.String)
        except (TypeError, OverflowError, ValueError):  # beyond int64: format in Python
            pass
    return [None if i is None else str(i) for i in ids]


# --- Protocols ------------------------------------------------------------------------------------

Credentials = Mapping[str, Any]


def secret_value(credentials: Credentials, name: str) -> str:
    """A credential as plain text (accepts str or pydantic SecretStr); InputError if absent."""
    value = credentials.get(name)
    if value is None:
        raise InputError(f"stream credentials are missing {name!r}")
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


class StreamProtocol(ABC):
    """One vendor's stream wire format. Subclasses set `vendor`, `channels` and implement the hooks.

    Handshake as run_stream drives it: connect to `url(credentials)`; when `auth_messages` returns
    messages, wait for a status that `handshake_event` calls "connected", send them and wait for
    "authenticated" (or "auth_failed"); then send `subscribe_messages` and read frames.
    """

    vendor: str = ""
    channels: tuple[str, ...] = ()
    bar_timeframe = "1min"  # timeframe of the bars the `bars` channel carries

    @abstractmethod
    def url(self, credentials: Credentials) -> str:
        """The URL to connect to (may embed credentials: never log it; log `display_url`)."""

    @property
    @abstractmethod
    def display_url(self) -> str:
        """The URL without credentials, for logs."""

    def secrets(self, credentials: Credentials) -> list[str]:
        """Credential values to scrub from anything logged."""
        return [secret_value(credentials, k) for k in credentials]

    def auth_messages(self, credentials: Credentials) -> list[str]:
        """Messages that authenticate after connecting (none when the URL authenticates)."""
        return []

    @abstractmethod
    def subscribe_messages(self, symbols: Sequence[str], channels: Sequence[str]) -> list[str | bytes]:
        """Messages that subscribe `channels` of `symbols`."""

    def handshake_event(self, status: dict) -> str | None:
        """Classify a status message: connected | authenticated | auth_failed | error | None."""
        return None

    def gap_source(self, channels: Sequence[str]) -> str | None:
        """Which kind gap detection follows for these channels: bars | trades | ticks | None."""
        if "bars" in channels:
            return "bars"
        return "trades" if "trades" in channels else None

    def check(self, symbols: Sequence[str], channels: Sequence[str]) -> None:
        """InputError for an empty symbol list or an unknown channel (before any connection)."""
        if not symbols:
            raise InputError(f"{self.vendor} stream: no symbols to subscribe")
        unknown = [c for c in channels if c not in self.channels]
        if unknown or not channels:
            raise InputError(
                f"{self.vendor} stream: unknown or no channel(s) {unknown or list(channels)}; "
                f"expected some of {list(self.channels)}"
            )

    @abstractmethod
    def parse(self, frame: str | bytes) -> StreamBatch:
        """One received frame → StreamBatch; never raises (bad input goes to `rejected`)."""


class JsonArrayProtocol(StreamProtocol):
    """Vendors whose frames are JSON arrays of messages tagged by a type field (Alpaca, Polygon).

    Subclasses set `type_key` and `builders` (message type → (kind, columns function, required)).
    """

    type_key = "T"
    builders: dict[str, tuple[str, Callable[[list, str], dict], tuple[str, ...]]] = {}

    def __init__(self, symbol_map: Mapping[str, str] | None = None) -> None:
        self.symbol_map = dict(symbol_map or {})

    def parse(self, frame: str | bytes) -> StreamBatch:
        """Parse one JSON frame; see the class docstring."""
        batch = StreamBatch(self.vendor)
        try:
            msgs = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            batch.rejected.append(RejectedMessage(raw_text(frame), f"malformed JSON frame: {exc}"[:300]))
            return batch
        if isinstance(msgs, dict):
            msgs = [msgs]
        elif not isinstance(msgs, list):
            batch.rejected.append(RejectedMessage(raw_text(frame), "frame is not a JSON array or object"))
            return batch
        key = self.type_key
        try:  # the usual frame: every message has the same (string) type
            types = [m[key] for m in msgs]
            uniform = bool(types) and type(types[0]) is str and types.count(types[0]) == len(types)
        except (TypeError, KeyError, IndexError):
            uniform = False
        groups: dict[str, list] = {types[0]: msgs} if uniform else {}
        for m in () if uniform else msgs:
            try:
                groups.setdefault(m[key], []).append(m)
            except (TypeError, KeyError, IndexError):
                batch.rejected.append(RejectedMessage(raw_text(m), f"message has no {key!r} type field"))
        built: dict[str, list[pl.DataFrame]] = {}
        for msg_type, group in groups.items():
            spec = self.builders.get(msg_type) if isinstance(msg_type, str) else None
            if spec is None:
                batch.status.extend(group)
                continue
            kind, columns, required = spec
            frame_, rejected = build_isolating(
                kind, group, lambda ms, c=columns: c(ms, self.vendor), required
            )
            batch.rejected.extend(rejected)
            if frame_.height:
                built.setdefault(kind, []).append(frame_)
        for kind, parts in built.items():
            out = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")
            if self.symbol_map:
                out = out.with_columns(pl.col("symbol").replace(self.symbol_map))
            setattr(batch, kind, out)
        return batch


def _bar_columns(
    symbol: str, ts_key: str, ts: Callable[[list], Any], trades: str | None
) -> Callable[[list, str], dict]:
    """Minute-bar builder: o h l c v and vw are shared; the symbol key, the open-time key and format,
    and the trade-count key (None: the vendor sends none) differ. vw is the bar's own vwap."""

    def build(msgs: list, vendor: str) -> dict:
        n = len(msgs)
        return {
            "symbol": [m[symbol] for m in msgs],
            "ts": ts([m[ts_key] for m in msgs]),
            "timeframe": constant("timeframe", "1min", pl.String, n),
            "open": [m["o"] for m in msgs],
            "high": [m["h"] for m in msgs],
            "low": [m["l"] for m in msgs],
            "close": [m["c"] for m in msgs],
            "volume": [m["v"] for m in msgs],
            "vwap": [m.get("vw") for m in msgs],
            "trades": [m.get(trades) for m in msgs] if trades else constant("trades", None, pl.Int64, n),
            "vendor": constant("vendor", vendor, pl.String, n),
            "imputed": constant("imputed", False, pl.Boolean, n),
        }

    return build


_alpaca_bars = _bar_columns("S", "t", rfc3339_to_ns, trades="n")


def _trade_columns(symbol: str, ts: Callable[[list], Any]) -> Callable[[list, str], dict]:
    """Trades builder for a vendor whose messages name the symbol `symbol` and whose times `ts` converts
    (Alpaca: S + RFC 3339; Polygon: sym + epoch ms); price p, size s, id i and conditions c are shared."""

    def build(msgs: list, vendor: str) -> dict:
        # No per-element Python calls: this runs for every trade of every frame.
        return {
            "symbol": [m[symbol] for m in msgs],
            "ts": ts([m["t"] for m in msgs]),
            "price": [m["p"] for m in msgs],
            "size": [m["s"] for m in msgs],
            "trade_id": _trade_ids(msgs),
            "conditions": _conditions_column(msgs),
            "vendor": constant("vendor", vendor, pl.String, len(msgs)),
        }

    return build


def _quote_columns(symbol: str, ts: Callable[[list], Any]) -> Callable[[list, str], dict]:
    """Quotes builder, as `_trade_columns`: bid bp/bs and ask ap/as are the same on both vendors."""

    def build(msgs: list, vendor: str) -> dict:
        return {
            "symbol": [m[symbol] for m in msgs],
            "ts": ts([m["t"] for m in msgs]),
            "bid_px": [m.get("bp") for m in msgs],
            "bid_sz": [m.get("bs") for m in msgs],
            "ask_px": [m.get("ap") for m in msgs],
            "ask_sz": [m.get("as") for m in msgs],
            "vendor": constant("vendor", vendor, pl.String, len(msgs)),
        }

    return build


_alpaca_trades = _trade_columns("S", rfc3339_to_ns)
_alpaca_quotes = _quote_columns("S", rfc3339_to_ns)

_BAR_REQUIRED = ("symbol", "ts", "open", "high", "low", "close", "volume")
_TRADE_REQUIRED = ("symbol", "ts", "price", "size")
_QUOTE_REQUIRED = ("symbol", "ts")
# Alpaca error codes that retrying cannot fix: 402 auth failed, 409 insufficient subscription.
ALPACA_AUTH_CODES = frozenset({402, 409})


class AlpacaStreamProtocol(JsonArrayProtocol):
    """Alpaca market data v2 stream (`wss://stream.data.alpaca.markets/v2/{feed}`).

    Credentials: `key`, `secret`. `url` overrides the endpoint (tests point it at a fake server).
    """

    vendor = "alpaca"
    channels = ("bars", "trades", "quotes")
    type_key = "T"
    builders = {
        "b": ("bars", _alpaca_bars, _BAR_REQUIRED),
        "u": ("bars", _alpaca_bars, _BAR_REQUIRED),  # updated bar: replaces the bar with the same key
        "t": ("trades", _alpaca_trades, _TRADE_REQUIRED),
        "q": ("quotes", _alpaca_quotes, _QUOTE_REQUIRED),
    }

    def __init__(
        self, feed: str = "iex", *, url: str | None = None, symbol_map: Mapping[str, str] | None = None
    ):
        super().__init__(symbol_map)
        self.feed = feed
        self._url = url or f"wss://stream.data.alpaca.markets/v2/{feed}"

    def url(self, credentials: Credentials) -> str:
        """The stream endpoint (credentials go in the auth message, not the URL)."""
        return self._url

    @property
    def display_url(self) -> str:
        """Same as the URL: it holds no credentials."""
        return self._url

    def auth_messages(self, credentials: Credentials) -> list[str]:
        """The auth action with key and secret."""
        msg = {
            "action": "auth",
            "key": secret_value(credentials, "key"),
            "secret": secret_value(credentials, "secret"),
        }
        return [orjson.dumps(msg).decode()]

    def subscribe_messages(self, symbols: Sequence[str], channels: Sequence[str]) -> list[str | bytes]:
        """One subscribe action; `bars` subscribes bars and updatedBars (corrections)."""
        msg: dict[str, Any] = {"action": "subscribe"}
        if "bars" in channels:
            msg["bars"] = list(symbols)
            msg["updatedBars"] = list(symbols)
        for ch in ("trades", "quotes"):
            if ch in channels:
                msg[ch] = list(symbols)
        return [orjson.dumps(msg).decode()]

    def handshake_event(self, status: dict) -> str | None:
        """connected / authenticated from `success`, auth_failed for 402/409 errors, else error."""
        kind = status.get("T")
        if kind == "success":
            return {"connected": "connected", "authenticated": "authenticated"}.get(status.get("msg"))
        if kind == "error":
            return "auth_failed" if status.get("code") in ALPACA_AUTH_CODES else "error"
        return None


# AM aggregates: "s" is the window start in epoch ms; "a" would be the day's vwap; no trade count.
_polygon_bars = _bar_columns("sym", "s", ms_to_ns, trades=None)
_polygon_trades = _trade_columns("sym", ms_to_ns)
_polygon_quotes = _quote_columns("sym", ms_to_ns)


class PolygonStreamProtocol(JsonArrayProtocol):
    """Polygon stocks stream (`wss://socket.polygon.io/stocks`). Credentials: `key`."""

    vendor = "polygon"
    channels = ("bars", "trades", "quotes")
    type_key = "ev"
    builders = {
        "AM": ("bars", _polygon_bars, _BAR_REQUIRED),
        "T": ("trades", _polygon_trades, _TRADE_REQUIRED),
        "Q": ("quotes", _polygon_quotes, _QUOTE_REQUIRED),
    }
    _PREFIX = {"bars": "AM", "trades": "T", "quotes": "Q"}

    def __init__(self, *, url: str | None = None, symbol_map: Mapping[str, str] | None = None):
        super().__init__(symbol_map)
        self._url = url or "wss://socket.polygon.io/stocks"

    def url(self, credentials: Credentials) -> str:
        """The stream endpoint (credentials go in the auth message)."""
        return self._url

    @property
    def display_url(self) -> str:
        """Same as the URL: it holds no credentials."""
        return self._url

    def auth_messages(self, credentials: Credentials) -> list[str]:
        """The auth action with the API key."""
        return [orjson.dumps({"action": "auth", "params": secret_value(credentials, "key")}).decode()]

    def subscribe_messages(self, symbols: Sequence[str], channels: Sequence[str]) -> list[str | bytes]:
        """One subscribe action, e.g. params "AM.AAPL,T.AAPL"."""
        params = ",".join(f"{self._PREFIX[ch]}.{s}" for ch in channels for s in symbols)
        return [orjson.dumps({"action": "subscribe", "params": params}).decode()]

    def handshake_event(self, status: dict) -> str | None:
        """Polygon `status` messages: connected, auth_success, auth_failed; max_connections is an error."""
        if status.get("ev") != "status":
            return None
        return {
            "connected": "connected",
            "auth_success": "authenticated",
            "auth_failed": "auth_failed",
            "max_connections": "error",
            "error": "error",
        }.get(status.get("status"))


# --- Reconnecting runner --------------------------------------------------------------------------


class StreamAuthError(InputError):
    """The vendor refused the credentials `max_auth_failures` times in a row (retrying cannot fix it)."""


class StreamUnavailableError(RuntimeError):
    """The stream failed `max_consecutive_failures` times in a row (only when that limit is set)."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """Backoff between connection attempts: initial_s * multiplier**(failures-1), capped at max_s.

    With `jitter` the delay is drawn uniformly from [delay/2, delay] (spreads reconnect storms, never
    exceeds the cap). `max_consecutive_failures` None retries forever; `max_auth_failures` consecutive
    refusals of the credentials raise StreamAuthError (an auth failure is not fixed by waiting, but one
    refusal can be a vendor hiccup).
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True
    max_consecutive_failures: int | None = None
    max_auth_failures: int = 3

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after `failures` (>= 1) consecutive failures."""
        # The exponent is capped: past it the delay sits at max_s anyway, and floats would overflow.
        d = min(self.max_s, self.initial_s * self.multiplier ** min(max(0, failures - 1), 60))
        if self.jitter:
            d = (rng or random).uniform(d / 2, d)
        return d


@dataclass
class StreamStats:
    """Counters of one run_stream call (no secrets)."""

    frames: int = 0
    messages: int = 0  # data rows + status messages + rejected
    batches: int = 0  # batches handed to on_batch
    connections: int = 0  # successful subscriptions
    reconnects: int = 0  # successful subscriptions after the first
    failures: int = 0  # failed or dropped connections
    auth_failures: int = 0
    rejected: int = 0
    bars: int = 0
    trades: int = 0
    quotes: int = 0
    depth: int = 0
    ticks: int = 0
    status: int = 0
    gaps: int = 0
    callback_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class GapDetector:
    """Event-time gap detection across reconnects (rules in the module docstring).

    `boundaries` False (a bar stream): after a disconnect, the first bar newer than the symbol's last
    one opens a gap when it skips bars. True (bars built from trades/ticks): the first trade at or
    after the last bar's open reports [last bar, its bar + timeframe), since both ends may be partial.
    """

    def __init__(self, timeframe: str, *, boundaries: bool) -> None:
        self.step = timeframe_ns(timeframe)
        self.boundaries = boundaries
        self.last: dict[str, int] = {}
        self.pending: set[str] = set()

    def disconnected(self) -> None:
        """Mark a disconnect: the next bar of each known symbol is checked against its last."""
        self.pending = set(self.last)

    def observe(self, frame: pl.DataFrame) -> list[tuple[str, int, int]]:
        """Feed rows (symbol, ts); returns the gaps (symbol, start_ns, end_ns) they reveal.

        Plain loops over the rows: for stream-sized frames they cost a fraction of a polars group_by.
        """
        if not frame.height:
            return []
        ts = frame["ts"]
        if ts.dtype.time_unit != "ns":  # type: ignore[union-attr]
            ts = ts.dt.cast_time_unit("ns")
        ns = ts.cast(pl.Int64).to_numpy()
        bars = (ns - ns % self.step).tolist()
        symbols = frame["symbol"].to_list()
        last = self.last
        gaps = self._check_pending(symbols, bars) if self.pending else []
        for symbol, bar in zip(symbols, bars, strict=True):
            if bar > last.get(symbol, bar - 1):
                last[symbol] = bar
        return gaps

    def _check_pending(self, symbols: list[str], bars: list[int]) -> list[tuple[str, int, int]]:
        last, pending = self.last, self.pending
        first: dict[str, int] = {}  # per pending symbol, its first bar newer than the last one seen
        for symbol, bar in zip(symbols, bars, strict=True):
            if symbol in pending:
                prev = last[symbol]
                # Bars before the last one (corrections, replays) say nothing about a gap: wait for newer.
                newer = bar >= prev if self.boundaries else bar > prev
                if newer and bar < first.get(symbol, bar + 1):
                    first[symbol] = bar
        gaps = []
        for symbol in sorted(first):
            pending.discard(symbol)
            prev, bar = last[symbol], first[symbol]
            if self.boundaries:
                gaps.append((symbol, prev, bar + self.step))
            elif bar > prev + self.step:
                gaps.append((symbol, prev + self.step, bar))
        return gaps


class Connection(Protocol):
    """What run_stream needs from a WebSocket connection (websockets' ClientConnection has it)."""

    async def send(self, message: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self) -> None: ...
    def __aiter__(self): ...


class _AuthRefused(Exception):
    """The vendor refused the credentials during the handshake."""


class _HandshakeError(Exception):
    """The vendor reported an error (e.g. connection limit) during the handshake."""


_QUERY_SECRET = re.compile(r"(?i)((?:api_?key|access_?token|token|key|secret|apikey|password)=)[^&\s'\"]+")


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every credential value and `key=value` query credential replaced by ***."""
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return _QUERY_SECRET.sub(r"\1***", text)


def _default_connect(url: str) -> Awaitable[Connection]:
    from websockets.asyncio.client import connect

    return connect(url, max_size=2**24, open_timeout=15, close_timeout=2)  # type: ignore[return-value]


def _is_auth_rejection(exc: BaseException) -> bool:
    """An HTTP 401/403 answer to the WebSocket handshake (Kite authenticates in the URL)."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) in (401, 403)


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


@dataclass(eq=False)
class _Runner:
    """State of one run_stream call; split out so each phase reads as a short method."""

    p: StreamProtocol
    credentials: Credentials
    symbols: list[str]
    channels: list[str]
    on_batch: Callable[[StreamBatch], Awaitable[None] | None]
    on_gap: Callable[[str, dt.datetime, dt.datetime], Awaitable[None] | None] | None
    stop: asyncio.Event
    policy: ReconnectPolicy
    connect: Callable[[str], Awaitable[Connection]]
    sleep: Callable[[float], Awaitable[None]]
    on_state_cb: Callable[[str, dict], None] | None
    rng: random.Random
    handshake_timeout_s: float
    gap_timeframe: str

    def __post_init__(self) -> None:
        self.stats = StreamStats()
        self.secrets = self.p.secrets(self.credentials)
        self.gap_source = self.p.gap_source(self.channels)
        tf = self.p.bar_timeframe if self.gap_source == "bars" else self.gap_timeframe
        self.gaps = GapDetector(tf, boundaries=self.gap_source != "bars") if self.gap_source else None
        # A fresh logger per run: picks up the logging configuration in force now (and test capture).
        self.log = structlog.get_logger(__name__).bind(vendor=self.p.vendor, url=self.p.display_url)

    def state(self, name: str, **info: Any) -> None:
        if self.on_state_cb is not None:
            try:
                self.on_state_cb(name, info)
            except Exception as exc:  # a monitoring hook must not take the stream down
                self.stats.callback_errors += 1
                self.log.warning("stream.on_state_failed", error=self.scrub(exc))

    def scrub(self, exc: BaseException) -> str:
        return redact(_describe(exc), self.secrets)

    async def run(self) -> StreamStats:
        failures = auth_failures = 0
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            outcome = await self.session(attempt)
            if outcome == "stopped":
                break
            if outcome == "auth_failed":
                auth_failures += 1
                self.stats.auth_failures += 1
                if auth_failures >= self.policy.max_auth_failures:
                    self.state("failed", reason="auth", failures=auth_failures)
                    raise StreamAuthError(
                        f"{self.p.vendor} stream: credentials refused {auth_failures} time(s) in a row; "
                        "check the API key/secret (or token) and the data subscription"
                    )
            else:
                auth_failures = 0
            # A session that delivered data resets the backoff: the next wait starts from initial_s.
            failures = 1 if outcome == "dropped_after_data" else failures + 1
            self.stats.failures += 1
            limit = self.policy.max_consecutive_failures
            if limit is not None and failures >= limit:
                self.state("failed", reason="unavailable", failures=failures)
                raise StreamUnavailableError(
                    f"{self.p.vendor} stream: {failures} consecutive failed connections"
                )
            delay = self.policy.delay(failures, self.rng)
            self.state("backoff", delay_s=delay, failures=failures)
            self.log.info("stream.backoff", delay_s=round(delay, 3), failures=failures)
            await self.wait_or_stop(delay)
        self.state("stopped", **self.stats.as_dict())
        return self.stats

    async def wait_or_stop(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self.sleep(delay))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, stopper):
                t.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)

    async def open(self) -> Connection | None:
        """Connect, racing `stop`; None when stopped first."""
        task = asyncio.ensure_future(self.connect(self.p.url(self.credentials)))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

    async def session(self, attempt: int) -> str:
        """One connection's life. Returns stopped | auth_failed | dropped | dropped_after_data."""
        self.state("connecting", attempt=attempt)
        self.log.info("stream.connecting", attempt=attempt)
        rows_before = self._data_rows()
        ws: Connection | None = None
        closer: asyncio.Task | None = None
        try:
            ws = await self.open()
            if ws is None:
                return "stopped"
            closer = asyncio.ensure_future(self._close_on_stop(ws))
            await self.handshake(ws)
            for msg in self.p.subscribe_messages(self.symbols, self.channels):
                await ws.send(msg)
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.state("subscribed", attempt=attempt, reconnects=self.stats.reconnects)
            self.log.info("stream.subscribed", symbols=len(self.symbols), channels=self.channels)
            async for frame in ws:
                await self.handle(frame)
            reason = "closed by server"
        except asyncio.CancelledError:
            raise
        except _AuthRefused as exc:
            self.log.error("stream.auth_failed", reason=redact(str(exc), self.secrets))
            self.state("auth_failed", reason=redact(str(exc), self.secrets))
            return "auth_failed"
        except Exception as exc:
            if _is_auth_rejection(exc):
                self.log.error("stream.auth_failed", reason=self.scrub(exc))
                self.state("auth_failed", reason=self.scrub(exc))
                return "auth_failed"
            reason = self.scrub(exc)
        finally:
            if closer is not None:
                closer.cancel()
            if ws is not None:
                await _close_quietly(ws)
            if self.gaps is not None and ws is not None:
                self.gaps.disconnected()
        if self.stop.is_set():
            return "stopped"
        self.log.warning("stream.disconnected", reason=reason, attempt=attempt)
        self.state("disconnected", reason=reason, attempt=attempt)
        return "dropped_after_data" if self._data_rows() > rows_before else "dropped"

    def _data_rows(self) -> int:
        st = self.stats
        return st.bars + st.trades + st.quotes + st.depth + st.ticks

    async def _close_on_stop(self, ws: Connection) -> None:
        await self.stop.wait()
        await _close_quietly(ws)

    async def handshake(self, ws: Connection) -> None:
        """Wait for `connected`, send auth, wait for `authenticated` (when the vendor needs it)."""
        auth = self.p.auth_messages(self.credentials)
        if not auth:
            return
        await self.expect(ws, "connected")
        for msg in auth:
            await ws.send(msg)
        await self.expect(ws, "authenticated")

    async def expect(self, ws: Connection, wanted: str) -> None:
        while True:
            frame = await asyncio.wait_for(ws.recv(), self.handshake_timeout_s)
            batch = await self.handle(frame)
            for status in batch.status:
                event = self.p.handshake_event(status)
                if event == wanted:
                    return
                if event == "auth_failed":
                    raise _AuthRefused(_status_text(status))
                if event == "error":
                    raise _HandshakeError(_status_text(status))

    async def handle(self, frame: str | bytes) -> StreamBatch:
        """Parse a frame, count it, report gaps, hand it to on_batch."""
        st = self.stats
        st.frames += 1
        try:
            batch = self.p.parse(frame)
        except Exception as exc:  # a parser bug must not lose the frame
            batch = StreamBatch(
                self.p.vendor, rejected=[RejectedMessage(raw_text(frame), f"parser error: {_describe(exc)}")]
            )
        n_bars, n_trades, n_quotes = batch.bars.height, batch.trades.height, batch.quotes.height
        n_depth, n_ticks = batch.depth.height, batch.ticks.height
        st.bars += n_bars
        st.trades += n_trades
        st.quotes += n_quotes
        st.depth += n_depth
        st.ticks += n_ticks
        st.status += len(batch.status)
        st.rejected += len(batch.rejected)
        st.messages += (
            n_bars + n_trades + n_quotes + n_depth + n_ticks + len(batch.status) + len(batch.rejected)
        )
        if batch.rejected:
            self.log.warning("stream.rejected", count=len(batch.rejected), reason=batch.rejected[0].reason)
        for status in batch.status:
            if self.p.handshake_event(status) in ("error", "auth_failed"):
                self.log.warning("stream.vendor_error", message=redact(_status_text(status), self.secrets))
        if self.gaps is not None:
            source = getattr(batch, self.gap_source)  # type: ignore[arg-type]
            for symbol, start, end in self.gaps.observe(source):
                st.gaps += 1
                lo, hi = _ns_to_dt(start), _ns_to_dt(end)
                self.log.warning("stream.gap", symbol=symbol, start=lo.isoformat(), end=hi.isoformat())
                await self.call(self.on_gap, symbol, lo, hi)
        if not batch.is_empty():
            st.batches += 1
            await self.call(self.on_batch, batch)
        return batch

    async def call(self, fn: Callable | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            await _maybe_await(fn(*args))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing consumer must not kill the connection; it is counted
            self.stats.callback_errors += 1
            self.log.error(
                "stream.callback_failed", callback=getattr(fn, "__name__", "?"), error=self.scrub(exc)
            )


def _status_text(status: dict) -> str:
    return raw_text(status)[:500]


def _ns_to_dt(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC) + dt.timedelta(
        microseconds=(ns % 1_000_000_000) // 1000
    )


async def _close_quietly(ws: Connection) -> None:
    # Closing an already broken connection may fail; nothing is lost by it.
    with contextlib.suppress(Exception):
        await ws.close()


async def run_stream(
    protocol: StreamProtocol,
    *,
    credentials: Credentials,
    symbols: Sequence[str],
    channels: Sequence[str],
    on_batch: Callable[[StreamBatch], Awaitable[None] | None],
    on_gap: Callable[[str, dt.datetime, dt.datetime], Awaitable[None] | None] | None = None,
    stop: asyncio.Event,
    reconnect: ReconnectPolicy = ReconnectPolicy(),
    connect: Callable[[str], Awaitable[Connection]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_state: Callable[[str, dict], None] | None = None,
    rng: random.Random | None = None,
    handshake_timeout_s: float = 10.0,
    gap_timeframe: str = "1min",
) -> StreamStats:
    """Stream `channels` of `symbols` until `stop` is set; reconnect forever with backoff.

    Every received frame is parsed into a StreamBatch and handed to `on_batch` (sync or async);
    `on_gap(symbol, start, end)` reports a missed range after a reconnect (module docstring). Any
    disconnect or error (refused connection, closed mid-message, handshake error, timeout) is logged
    without secrets, then run_stream waits `reconnect.delay(failures)` (via `sleep`) and reconnects
    and resubscribes. Exceptions from on_batch/on_gap/on_state are logged and counted
    (`callback_errors`), not raised. `on_state(state, info)` sees connecting, subscribed,
    disconnected, auth_failed, backoff, failed (before raising) and stopped.

    Raises only: InputError for bad symbols/channels/credentials before connecting; StreamAuthError
    after `reconnect.max_auth_failures` consecutive credential refusals; StreamUnavailableError if
    `reconnect.max_consecutive_failures` is set and reached; asyncio.CancelledError.
    `gap_timeframe` is the bar size gaps are measured in when the stream carries trades or ticks.
    """
    protocol.check(symbols, channels)
    protocol.auth_messages(credentials)  # InputError now, not at the first connection, if a key is missing
    protocol.url(credentials)
    runner = _Runner(
        p=protocol,
        credentials=credentials,
        symbols=list(symbols),
        channels=list(channels),
        on_batch=on_batch,
        on_gap=on_gap,
        stop=stop,
        policy=reconnect,
        connect=connect or _default_connect,
        sleep=sleep,
        on_state_cb=on_state,
        rng=rng or random.Random(),
        handshake_timeout_s=handshake_timeout_s,
        gap_timeframe=gap_timeframe,
    )
    return await runner.run()


# --- Micro-batching for the lake ------------------------------------------------------------------

BAR_KEY = ("symbol", "timeframe", "ts")


class MicroBatcher:
    """Buffer frames per kind; write a kind in one chunk when it holds `flush_rows` rows or its oldest
    row is older than `flush_s` (checked on `add` and `tick`).

    `write(kind, frame)` receives the concatenated rows; for `bars`, duplicates on (symbol,
    timeframe, ts) within the chunk keep the LAST row (Alpaca updated bars replace the bar; counted in
    `replaced`). If `write` raises, the rows stay buffered (the next flush retries them, new rows
    appended) and the error propagates.
    """

    def __init__(
        self,
        write: Callable[[str, pl.DataFrame], None],
        flush_rows: int = 50_000,
        flush_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_rows < 1 or flush_s < 0:
            raise ValueError(f"flush_rows must be >= 1 and flush_s >= 0, got {flush_rows}, {flush_s}")
        self.write, self.flush_rows, self.flush_s, self.clock = write, flush_rows, flush_s, clock
        self._frames: dict[str, list[pl.DataFrame]] = {}
        self._rows: dict[str, int] = {}
        self._since: dict[str, float] = {}
        self.written: dict[str, int] = {}
        self.replaced = 0

    def buffered_rows(self, kind: str | None = None) -> int:
        """Rows waiting for a write (of one kind, or all)."""
        return self._rows.get(kind, 0) if kind is not None else sum(self._rows.values())

    def add(self, kind: str, frame: pl.DataFrame) -> None:
        """Buffer `frame` under `kind`, then flush whatever is due."""
        self._buffer(kind, frame)
        self.tick()

    def add_batch(self, batch: StreamBatch) -> None:
        """Buffer every non-empty kind of a StreamBatch (rejected messages under `rejected`), then
        flush whatever is due."""
        for kind, frame in batch.frames().items():
            self._buffer(kind, frame)
        if batch.rejected:
            self._buffer("rejected", batch.rejected_frame())
        self.tick()

    def _buffer(self, kind: str, frame: pl.DataFrame) -> None:
        if frame.height:
            self._frames.setdefault(kind, []).append(frame)
            self._rows[kind] = self._rows.get(kind, 0) + frame.height
            self._since.setdefault(kind, self.clock())

    def tick(self) -> None:
        """Flush the kinds that are due by size or age."""
        now = self.clock()
        for kind in list(self._frames):
            if self._rows[kind] >= self.flush_rows or now - self._since[kind] >= self.flush_s:
                self.flush(kind)

    def flush(self, kind: str) -> None:
        """Write one kind's buffered rows now (no-op when empty)."""
        parts = self._frames.get(kind)
        if not parts:
            return
        frame = pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]
        if kind == "bars":
            before = frame.height
            frame = frame.unique(subset=list(BAR_KEY), keep="last", maintain_order=True)
            self.replaced += before - frame.height
        # Keep the merged form buffered until the write succeeds: a retry reuses it, nothing is lost.
        self._frames[kind], self._rows[kind] = [frame], frame.height
        self.write(kind, frame)
        self.written[kind] = self.written.get(kind, 0) + frame.height
        del self._frames[kind], self._rows[kind], self._since[kind]

    def flush_all(self) -> None:
        """Write every kind; if one fails the others are still attempted, then the first error is raised."""
        error: BaseException | None = None
        for kind in list(self._frames):
            try:
                self.flush(kind)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
