"""Kite (Zerodha) WebSocket ticker: the binary tick protocol, decoded to columnar frames.

Wire format (https://kite.trade/docs/connect/v3/websocket/): connect to
`wss://ws.kite.trade?api_key=..&access_token=..` (a bad key or token is refused with HTTP 403 at the
handshake); send text `{"a":"subscribe","v":[tokens]}` and `{"a":"mode","v":["full",[tokens]]}`.
The server sends 1-byte heartbeats, JSON text (order updates, errors) and binary frames: a 2-byte
big-endian packet count, then per packet a 2-byte length and the packet. All integers are
big-endian unsigned 32-bit (as kiteconnect reads them); prices are in paise (divide by 100), by
10,000,000 for currency derivatives (segment 3, CDS) and by 10,000 for BCD (6) and NCO (12), where
segment = token & 0xff. Packet lengths:

- 8 (ltp): token, last_price
- 28 / 32 (index quote / full): token, last_price, high, low, open, close, change, [exchange_timestamp]
- 44 (quote): token, last_price, last_traded_quantity, average_traded_price, volume_traded,
  total_buy_quantity, total_sell_quantity, open, high, low, close
- 184 (full): the quote fields, last_trade_time, oi, oi_day_high, oi_day_low, exchange_timestamp,
  then 10 depth entries of 12 bytes (quantity u32, price u32, orders u16, 2 bytes padding): 5 bids,
  then 5 asks.

`parse_frame` returns a StreamBatch with `ticks` (TICK_SCHEMA: one row per packet, `volume` the day's
cumulative volume for BarAggregator.add_tick_frame) and, from full packets, `depth`
(depth_schema(5); a level with price 0 is absent: null price and size). Timestamps are epoch
seconds (UTC); packets without an exchange timestamp (ltp, quote, index quote) are stamped with the
receive time. Symbols are the canonical "EXCHANGE:TRADINGSYMBOL" from `token_to_symbol`; a packet
for an unknown token, of an unknown length or cut short is rejected (raw bytes as hex), never dropped.
"""

from __future__ import annotations

import datetime as dt
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import quote

import orjson
import polars as pl

from quanto.data.streams import (
    DEPTH_LEVELS,
    Credentials,
    RejectedMessage,
    StreamBatch,
    StreamProtocol,
    build_frame,
    constant,
    raw_text,
    secret_value,
)
from quanto.errors import InputError

VENDOR = "kite"
KITE_URL = "wss://ws.kite.trade"
MODES = ("full", "quote", "ltp")
SEGMENT_DIVISORS = {3: 10_000_000.0, 6: 10_000.0, 12: 10_000.0}  # cds; bcd, nco; others paise
DEFAULT_DIVISOR = 100.0
INDEX_SEGMENT = 9

_LTP = struct.Struct(">II")
_INDEX_QUOTE = struct.Struct(">6I4x")  # 4x: the packet's own `change`, recomputable from close
_INDEX_FULL = struct.Struct(">6I4xI")
_QUOTE = struct.Struct(">11I")
_FULL = struct.Struct(">16I" + "IIH2x" * (2 * DEPTH_LEVELS))
_LEN = struct.Struct(">H")
_PACKET_LENGTHS = frozenset({8, 28, 32, 44, 184})
_DEPTH_ENTRY = 3  # values per depth entry in _FULL: quantity, price, orders
_TICK_COLUMNS = (
    "symbol",
    "ts",
    "price",
    "volume",
    "last_quantity",
    "average_price",
    "buy_quantity",
    "sell_quantity",
    "open",
    "high",
    "low",
    "close",
    "oi",
    "last_trade_time",
    "mode",
)
_DEPTH_COLUMNS = (
    "symbol",
    "ts",
    *[f"{side}_{i}" for i in range(1, DEPTH_LEVELS + 1) for side in ("bid_px", "bid_sz", "ask_px", "ask_sz")],
)
_NS = 1_000_000_000


def price_divisor(token: int) -> float:
    """What a raw price of instrument `token` is divided by (segment = token & 0xff)."""
    return SEGMENT_DIVISORS.get(token & 0xFF, DEFAULT_DIVISOR)


def _seconds_ns(seconds: int, fallback: int | None) -> int | None:
    return seconds * _NS if seconds else fallback


def parse_frame(
    data: bytes | str, token_to_symbol: Mapping[int, str], *, received_ns: int | None = None
) -> StreamBatch:
    """Decode one Kite frame (binary ticks, 1-byte heartbeat or JSON text) into a StreamBatch.

    `received_ns` (default: now) stamps packets that carry no exchange timestamp. Never raises.
    """
    batch = StreamBatch(VENDOR)
    if isinstance(data, str):
        _parse_text(data, batch)
        return batch
    data = bytes(data)
    if len(data) < 2:  # heartbeat
        return batch
    now = time.time_ns() if received_ns is None else received_ns
    ticks: list[tuple] = []
    depth: list[tuple] = []
    (count,) = _LEN.unpack_from(data, 0)
    off = 2
    for i in range(count):
        if off + 2 > len(data):
            batch.rejected.append(
                RejectedMessage(raw_text(data[off:]), f"frame cut short: packet {i + 1} of {count} missing")
            )
            break
        (length,) = _LEN.unpack_from(data, off)
        start, end = off + 2, off + 2 + length
        off = end
        if end > len(data):
            batch.rejected.append(
                RejectedMessage(
                    raw_text(data[start:]), f"packet {i + 1} of {count} cut short: {length} bytes announced"
                )
            )
            break
        reason = _parse_packet(data, start, length, token_to_symbol, now, ticks, depth)
        if reason:
            batch.rejected.append(RejectedMessage("hex:" + data[start:end].hex(), reason))
    if off < len(data) and not batch.rejected:
        batch.rejected.append(
            RejectedMessage("hex:" + data[off:].hex(), "trailing bytes after the last packet")
        )
    if ticks:
        batch.ticks = build_frame("ticks", _columns(_TICK_COLUMNS, ticks))
    if depth:
        batch.depth = build_frame("depth", _columns(_DEPTH_COLUMNS, depth))
    return batch


def _columns(names: Sequence[str], rows: list[tuple]) -> dict:
    cols = dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))
    cols["vendor"] = constant("vendor", VENDOR, pl.String, len(rows))
    return cols


def _parse_text(text: str, batch: StreamBatch) -> None:
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        batch.rejected.append(RejectedMessage(text, f"malformed JSON text message: {exc}"[:300]))
        return
    if isinstance(msg, dict):
        batch.status.append(msg)
    else:
        batch.rejected.append(RejectedMessage(text, "text message is not a JSON object"))


def _parse_packet(
    data: bytes,
    at: int,
    length: int,
    token_to_symbol: Mapping[int, str],
    now: int,
    ticks: list[tuple],
    depth: list[tuple],
) -> str | None:
    """Append the packet's tick (and depth) row; return a rejection reason instead when it is bad."""
    if length not in _PACKET_LENGTHS:
        return f"unknown packet length {length} (expected 8, 28, 32, 44 or 184)"
    token, raw_ltp = _LTP.unpack_from(data, at)
    symbol = token_to_symbol.get(token)
    if symbol is None:
        return f"unknown instrument token {token} (not in token_to_symbol)"
    d = price_divisor(token)
    if length == 8:
        ticks.append(
            (
                symbol,
                now,
                raw_ltp / d,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                "ltp",
            )
        )
    elif length in (28, 32):
        if length == 28:
            _, ltp, high, low, open_, close = _INDEX_QUOTE.unpack_from(data, at)
            ts, mode = now, "quote"
        else:
            _, ltp, high, low, open_, close, exch = _INDEX_FULL.unpack_from(data, at)
            ts, mode = _seconds_ns(exch, now), "full"
        ticks.append(
            (
                symbol,
                ts,
                ltp / d,
                None,
                None,
                None,
                None,
                None,
                open_ / d,
                high / d,
                low / d,
                close / d,
                None,
                None,
                mode,
            )
        )
    else:  # 44 or 184
        if length == 44:
            v = _QUOTE.unpack_from(data, at)
            ts, ltt, oi, mode = now, None, None, "quote"
        else:
            v = _FULL.unpack_from(data, at)
            ltt, oi, exch = v[11], v[12], v[15]
            ts, ltt, mode = _seconds_ns(exch, now), _seconds_ns(ltt, None), "full"
            depth.append((symbol, ts, *_depth_levels(v[16:], d)))
        ticks.append(
            (
                symbol,
                ts,
                v[1] / d,
                v[4],
                v[2],
                v[3] / d,
                v[5],
                v[6],
                v[7] / d,
                v[8] / d,
                v[9] / d,
                v[10] / d,
                oi,
                ltt,
                mode,
            )
        )
    return None


def _depth_levels(entries: tuple, divisor: float) -> list:
    """Flat (bid_px_i, bid_sz_i, ask_px_i, ask_sz_i) for i = 1..5 from 5 bid then 5 ask entries."""
    out = []
    for i in range(DEPTH_LEVELS):
        bq, bp, _ = entries[_DEPTH_ENTRY * i : _DEPTH_ENTRY * i + _DEPTH_ENTRY]
        aq, ap, _ = entries[
            _DEPTH_ENTRY * (i + DEPTH_LEVELS) : _DEPTH_ENTRY * (i + DEPTH_LEVELS) + _DEPTH_ENTRY
        ]
        out += [
            bp / divisor if bp else None,
            bq if bp else None,
            ap / divisor if ap else None,
            aq if ap else None,
        ]
    return out


# --- Encoding (fake servers, tests) ---------------------------------------------------------------


def _epoch_s(value: int | dt.datetime) -> int:
    return int(value.timestamp()) if isinstance(value, dt.datetime) else int(value)


def _raw_price(price: float, divisor: float) -> int:
    return int(round(price * divisor))


def encode_ltp_packet(token: int, last_price: float) -> bytes:
    """An 8-byte ltp packet."""
    return _LTP.pack(token, _raw_price(last_price, price_divisor(token)))


def encode_index_packet(
    token: int,
    *,
    last_price: float,
    high: float,
    low: float,
    open: float,  # noqa: A002 — the wire field's name
    close: float,
    exchange_timestamp: int | dt.datetime | None = None,
) -> bytes:
    """A 28-byte index quote packet, or 32-byte index full packet when `exchange_timestamp` is given."""
    d = price_divisor(token)
    prices = [_raw_price(p, d) for p in (last_price, high, low, open, close)]
    if exchange_timestamp is None:
        return _INDEX_QUOTE.pack(token, *prices)
    return _INDEX_FULL.pack(token, *prices, _epoch_s(exchange_timestamp))


def encode_full_packet(
    token: int,
    *,
    last_price: float,
    last_traded_quantity: int = 0,
    average_traded_price: float = 0.0,
    volume_traded: int = 0,
    total_buy_quantity: int = 0,
    total_sell_quantity: int = 0,
    open: float = 0.0,  # noqa: A002 — the wire field's name
    high: float = 0.0,
    low: float = 0.0,
    close: float = 0.0,
    last_trade_time: int | dt.datetime = 0,
    oi: int = 0,
    oi_day_high: int = 0,
    oi_day_low: int = 0,
    exchange_timestamp: int | dt.datetime = 0,
    bids: Sequence[tuple[int, float, int]] = (),
    asks: Sequence[tuple[int, float, int]] = (),
    quote_only: bool = False,
) -> bytes:
    """A 184-byte full packet (or the 44-byte quote packet with `quote_only`).

    `bids`/`asks`: up to 5 (quantity, price, orders) entries, best first; missing levels are zeros.
    Timestamps are epoch seconds or aware datetimes.
    """
    d = price_divisor(token)
    head = [
        token,
        _raw_price(last_price, d),
        last_traded_quantity,
        _raw_price(average_traded_price, d),
        volume_traded,
        total_buy_quantity,
        total_sell_quantity,
        *(_raw_price(p, d) for p in (open, high, low, close)),
    ]
    if quote_only:
        return _QUOTE.pack(*head)
    entries: list[int] = []
    for side in (bids, asks):
        if len(side) > DEPTH_LEVELS:
            raise ValueError(f"at most {DEPTH_LEVELS} depth levels per side, got {len(side)}")
        padded = [*side, *[(0, 0.0, 0)] * (DEPTH_LEVELS - len(side))]
        for qty, price, orders in padded:
            entries += [qty, _raw_price(price, d), orders]
    tail = [_epoch_s(last_trade_time), oi, oi_day_high, oi_day_low, _epoch_s(exchange_timestamp)]
    return _FULL.pack(*head, *tail, *entries)


def encode_frame(packets: Sequence[bytes]) -> bytes:
    """A binary frame: packet count, then each packet prefixed by its length."""
    parts = [_LEN.pack(len(packets))]
    for p in packets:
        parts += [_LEN.pack(len(p)), p]
    return b"".join(parts)


# --- Stream protocol ------------------------------------------------------------------------------


class KiteTickerProtocol(StreamProtocol):
    """Kite ticker for run_stream. Credentials: `api_key`, `access_token` (sent in the URL query).

    Symbols are canonical "EXCHANGE:TRADINGSYMBOL" names present in `token_to_symbol`; the one channel
    is the Kite mode (full, quote, ltp). Gap detection follows the ticks (see streams).
    """

    vendor = VENDOR
    channels = MODES

    def __init__(
        self,
        token_to_symbol: Mapping[int, str],
        *,
        url: str = KITE_URL,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.token_to_symbol = dict(token_to_symbol)
        self.symbol_to_token = {s: t for t, s in self.token_to_symbol.items()}
        self._base = url
        self.clock = clock

    def url(self, credentials: Credentials) -> str:
        """The ticker URL with api_key and access_token (never log it: use display_url)."""
        key = quote(secret_value(credentials, "api_key"), safe="")
        token = quote(secret_value(credentials, "access_token"), safe="")
        return f"{self._base}?api_key={key}&access_token={token}"

    @property
    def display_url(self) -> str:
        """The URL without the credential query."""
        return self._base

    def check(self, symbols: Sequence[str], channels: Sequence[str]) -> None:
        """Also: exactly one mode, and every symbol known to the token map."""
        super().check(symbols, channels)
        if len(channels) != 1:
            raise InputError(f"kite stream: give exactly one mode of {list(MODES)}, got {list(channels)}")
        unknown = [s for s in symbols if s not in self.symbol_to_token]
        if unknown:
            raise InputError(
                f"kite stream: no instrument token for {unknown[:10]} (token map has {len(self.symbol_to_token)})"
            )

    def subscribe_messages(self, symbols: Sequence[str], channels: Sequence[str]) -> list[str | bytes]:
        """subscribe, then set the mode, for the symbols' tokens."""
        tokens = [self.symbol_to_token[s] for s in symbols]
        return [
            orjson.dumps({"a": "subscribe", "v": tokens}).decode(),
            orjson.dumps({"a": "mode", "v": [channels[0], tokens]}).decode(),
        ]

    def gap_source(self, channels: Sequence[str]) -> str | None:
        """Kite streams ticks only."""
        return "ticks"

    def parse(self, frame: str | bytes) -> StreamBatch:
        """parse_frame with this protocol's token map, stamping untimed packets with `clock()`."""
        return parse_frame(frame, self.token_to_symbol, received_ns=self.clock())
