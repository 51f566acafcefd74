"""Zerodha Kite Connect v3 over REST: historical candles and the instrument list (kite.trade/docs/connect/v3).

Not the synchronous `kiteconnect` SDK: ingestion needs async requests and the shared rate limiter, so
this speaks the documented wire format through `RestClient`:

- headers `X-Kite-Version: 3` and `Authorization: token {api_key}:{access_token}` (`KiteCredentials`).
- `GET /instruments/{exchange}` -> CSV: instrument_token, exchange_token, tradingsymbol, name,
  last_price, expiry, strike, tick_size, lot_size, instrument_type, segment, exchange.
- `GET /instruments/historical/{instrument_token}/{interval}?from=YYYY-MM-DD HH:MM:SS&to=...&continuous=0
  &oi=0` -> `{"status": "success", "data": {"candles": [["2017-12-15T09:15:00+0530", o, h, l, c, v], ...]}}`.
  `from`/`to` are IST wall times, both inclusive. One request may span at most `MAX_DAYS[interval]`
  days, so longer windows are split into chunks fetched concurrently.
- errors: `{"status": "error", "message": ..., "error_type": "TokenException" | "InputException" | ...}`
  with a 4xx/5xx status; a TokenException (403) means KITE_ACCESS_TOKEN expired (daily at 06:00 IST).

Canonical symbols are "EXCHANGE:TRADINGSYMBOL" (e.g. "NSE:INFY"); `resolve_tokens` maps them to the
numeric instrument tokens the candle endpoint wants. Timestamps are IST and become UTC; daily candles
(stamped at IST midnight) are stamped at the 09:15 IST open of their date.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import polars as pl
from pydantic import SecretStr

from quanto.config.secrets import VENDOR_SECRETS, secret
from quanto.data.rest import (
    Column,
    Fetched,
    RestClient,
    VendorError,
    finish_bars,
    json_part,
    request_start,
    require_aware,
    split_rows,
    split_timeframe,
)
from quanto.data.schemas import INSTRUMENT_SCHEMA, conform
from quanto.errors import InputError

VENDOR = "kite"
BASE_URL = "https://api.kite.trade"
TZ = "Asia/Kolkata"
SESSION_OPEN = dt.time(9, 15)
ENV_API_KEY, ENV_ACCESS_TOKEN = VENDOR_SECRETS[VENDOR]
API_VERSION = "3"
WIRE_TIME = "%Y-%m-%d %H:%M:%S"
# Canonical (count, unit) -> Kite interval name.
INTERVALS = {
    (1, "min"): "minute",
    (3, "min"): "3minute",
    (5, "min"): "5minute",
    (10, "min"): "10minute",
    (15, "min"): "15minute",
    (30, "min"): "30minute",
    (60, "min"): "60minute",
    (1, "h"): "60minute",
    (1, "d"): "day",
}
# Longest span Kite serves in one historical request, in days, per interval.
MAX_DAYS = {
    "minute": 60,
    "3minute": 100,
    "5minute": 100,
    "10minute": 100,
    "15minute": 200,
    "30minute": 200,
    "60minute": 400,
    "day": 2000,
}
CANDLE_COLUMNS = (
    Column("ts", 0, "iso"),
    Column("open", 1),
    Column("high", 2),
    Column("low", 3),
    Column("close", 4),
    Column("volume", 5),
)
INSTRUMENT_COLUMNS = (
    Column("instrument_token", "instrument_token", "int_text"),
    Column("exchange_token", "exchange_token", "int_text", required=False),
    Column("tradingsymbol", "tradingsymbol", "str"),
    Column("name", "name", "str", required=False),
    Column("last_price", "last_price", "float_text", required=False),
    Column("expiry", "expiry", "date", required=False),
    Column("strike", "strike", "float_text", required=False),
    Column("tick_size", "tick_size", "float_text", required=False),
    Column("lot_size", "lot_size", "int_text", required=False),
    Column("instrument_type", "instrument_type", "str", required=False),
    Column("segment", "segment", "str", required=False),
    Column("exchange", "exchange", "str"),
)


@dataclass(frozen=True)
class KiteCredentials:
    """Kite app key and the day's access token, held as secrets."""

    api_key: SecretStr
    access_token: SecretStr

    def headers(self) -> dict[str, str | SecretStr]:
        """The headers every Kite request carries (RestClient unwraps and redacts them)."""
        token = f"token {self.api_key.get_secret_value()}:{self.access_token.get_secret_value()}"
        return {"X-Kite-Version": API_VERSION, "Authorization": SecretStr(token)}


def kite_credentials_from_env() -> KiteCredentials:
    """KITE_API_KEY / KITE_ACCESS_TOKEN from the environment; InputError names what is missing."""
    return KiteCredentials(secret(ENV_API_KEY, "vendor kite"), secret(ENV_ACCESS_TOKEN, "vendor kite"))


def kite_interval(timeframe: str) -> str:
    """Canonical timeframe -> Kite interval: 1min -> minute, 5min -> 5minute, 1h -> 60minute, 1d -> day."""
    interval = INTERVALS.get(split_timeframe(timeframe))
    if interval is None:
        raise InputError(
            f"kite has no {timeframe!r} candles; it serves 1, 3, 5, 10, 15, 30 and 60min (1h) and 1d"
        )
    return interval


def kite_chunks(start: dt.datetime, end: dt.datetime, interval: str) -> list[tuple[dt.datetime, dt.datetime]]:
    """[start, end) cut into consecutive [from, to) pieces no longer than Kite's limit for `interval`."""
    step = dt.timedelta(days=MAX_DAYS[interval])
    chunks, lo = [], start
    while lo < end:
        hi = min(lo + step, end)
        chunks.append((lo, hi))
        lo = hi
    return chunks


def canonical_symbol(symbol: str, exchange: str) -> str:
    """ "NSE:INFY" as is; a bare "INFY" gets `exchange` as prefix."""
    return symbol if ":" in symbol else f"{exchange}:{symbol}"


def parse_instruments(text: str) -> Fetched:
    """Kite's instrument CSV -> INSTRUMENT_SCHEMA (symbol = "EXCHANGE:TRADINGSYMBOL"), sorted by symbol.

    Rows with a missing or non-numeric token, or unreadable numbers/dates, are rejected with a reason.
    """
    rows = list(csv.DictReader(io.StringIO(text.strip())))
    symbols = [
        f"{r.get('exchange')}:{r.get('tradingsymbol')}"
        if r.get("exchange") and r.get("tradingsymbol")
        else None
        for r in rows
    ]
    frame, rejected = split_rows(rows, INSTRUMENT_COLUMNS, symbol=symbols, ts_key="expiry")
    frame = frame.with_columns(vendor=pl.lit(VENDOR)).select(INSTRUMENT_SCHEMA.names).sort("symbol")
    return Fetched(conform(frame, INSTRUMENT_SCHEMA, "kite instruments"), rejected)


def resolve_tokens(instruments: pl.DataFrame, symbols: Sequence[str]) -> dict[str, int]:
    """Instrument token of each canonical symbol ("NSE:INFY"); InputError naming every unknown one."""
    wanted = list(dict.fromkeys(symbols))
    found = (
        instruments.filter(pl.col("symbol").is_in(wanted))
        .unique("symbol", keep="first", maintain_order=True)
        .select("symbol", "instrument_token")
    )
    tokens = dict(found.iter_rows())
    unknown = [s for s in wanted if s not in tokens]
    if unknown:
        exchanges = sorted(instruments["exchange"].unique().to_list()) if len(instruments) else []
        raise InputError(
            f"kite: unknown instrument(s) {unknown[:20]}{' ...' if len(unknown) > 20 else ''} in the instrument "
            f"list of {exchanges or 'no exchange'}; symbols are EXCHANGE:TRADINGSYMBOL, e.g. NSE:INFY"
        )
    return {s: int(tokens[s]) for s in wanted}


class KiteRest:
    """Kite historical candles and instruments as canonical frames.

    `exchange` is the instrument list used for symbols without an "EXCHANGE:" prefix; instrument lists
    are downloaded once per exchange and instance to resolve tokens.
    """

    def __init__(self, client: RestClient, exchange: str = "NSE") -> None:
        self.client, self.exchange = client, exchange
        self._instruments: dict[str, pl.DataFrame] = {}
        self._lock = asyncio.Lock()

    async def instruments(self, exchange: str | None = None) -> Fetched:
        """The instrument list of `exchange` (default: this client's exchange)."""
        exchange = exchange or self.exchange
        return parse_instruments(await self.client.get_text(f"/instruments/{exchange}"))

    async def token_for(self, symbol: str) -> int:
        """Instrument token of a canonical symbol, from the (cached) instrument list of its exchange."""
        symbol = canonical_symbol(symbol, self.exchange)
        exchange = symbol.split(":", 1)[0]
        async with self._lock:  # one download per exchange even when many partitions start at once
            if exchange not in self._instruments:
                self._instruments[exchange] = (await self.instruments(exchange)).frame
        return resolve_tokens(self._instruments[exchange], [symbol])[symbol]

    async def fetch_bars(
        self,
        symbol: str,
        timeframe: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        instrument_token: int | None = None,
    ) -> Fetched:
        """Candles of `symbol` with start <= ts < end (canonical BAR_SCHEMA, UTC), split into chunks
        within Kite's per-request limit and fetched concurrently. `instrument_token` skips the lookup."""
        symbol = canonical_symbol(symbol, self.exchange)
        interval = kite_interval(timeframe)
        _, unit = split_timeframe(timeframe)
        start, end = require_aware(start, "start"), require_aware(end, "end")
        if start >= end:
            raise InputError(f"kite bars: start {start} must be before end {end}")
        token = instrument_token if instrument_token is not None else await self.token_for(symbol)
        path = f"/instruments/historical/{token}/{interval}"
        ist = ZoneInfo(TZ)

        async def chunk(lo: dt.datetime, hi: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
            params = {
                "from": lo.astimezone(ist).strftime(WIRE_TIME),
                "to": (hi - dt.timedelta(seconds=1)).astimezone(ist).strftime(WIRE_TIME),  # inclusive
                "continuous": 0,
                "oi": 0,
            }
            page = await self.client.get_json(path, params)
            if isinstance(page, dict) and page.get("status") != "success":
                raise VendorError(VENDOR, path, 200, f"status {page.get('status')!r}: {page.get('message')}")
            candles = json_part(
                json_part(page, "data", dict, vendor=VENDOR, path=path),
                "candles",
                list,
                vendor=VENDOR,
                path=path,
            )
            return split_rows(candles, CANDLE_COLUMNS, symbol=symbol, ts_key=0)

        parts = await asyncio.gather(
            *(chunk(lo, hi) for lo, hi in kite_chunks(request_start(start, unit, TZ), end, interval))
        )
        return finish_bars(
            parts, timeframe=timeframe, vendor=VENDOR, tz=TZ, session_open=SESSION_OPEN, start=start, end=end
        )
