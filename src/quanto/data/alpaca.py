"""Alpaca market data v2: historical stock bars over REST (docs.alpaca.markets).

Wire format: `GET {base}/v2/stocks/bars?symbols=AAPL,MSFT&timeframe=1Min&start=RFC3339&end=RFC3339
&limit=10000&adjustment=raw&feed=iex&sort=asc[&page_token=...]` with headers `APCA-API-KEY-ID` and
`APCA-API-SECRET-KEY`; the answer is `{"bars": {"AAPL": [{"t", "o", "h", "l", "c", "v", "n", "vw"}, ...]},
"next_page_token": "..." | null}`. `limit` counts bars across all symbols of a page. Alpaca's `end` is
inclusive; we keep [start, end). Daily bars come stamped at midnight New York time; canonical daily
bars are stamped at the 09:30 ET open of their date (see `rest.stamp_bars`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from quanto.config.secrets import VENDOR_SECRETS, secret
from quanto.data.rest import (
    Fetched,
    RestClient,
    bar_columns,
    finish_bars,
    json_part,
    request_start,
    require_aware,
    rfc3339,
    split_rows,
    split_timeframe,
)
from quanto.errors import InputError

VENDOR = "alpaca"
DATA_URL = "https://data.alpaca.markets"
BARS_PATH = "/v2/stocks/bars"
TZ = "America/New_York"
SESSION_OPEN = dt.time(9, 30)
ENV_KEY_ID, ENV_SECRET_KEY = VENDOR_SECRETS[VENDOR]
FEEDS = ("iex", "sip", "otc", "boats", "overnight")
ADJUSTMENTS = ("raw", "split", "dividend", "all")
MAX_PAGE_LIMIT = 10_000
# Alpaca accepts these counts per unit (https://docs.alpaca.markets/reference/stockbars).
_UNIT_COUNTS = {"min": range(1, 60), "h": range(1, 24), "d": (1,), "w": (1,), "mo": (1, 2, 3, 4, 6, 12)}
_UNIT_NAMES = {"min": "Min", "h": "Hour", "d": "Day", "w": "Week", "mo": "Month"}
_SYMBOL = re.compile(r"^[A-Z0-9.\-/]{1,21}$")

BAR_COLUMNS = bar_columns("iso")


@dataclass(frozen=True)
class AlpacaCredentials:
    """Alpaca API key pair, held as secrets."""

    key_id: SecretStr
    secret_key: SecretStr

    def headers(self) -> dict[str, SecretStr]:
        """The auth headers Alpaca expects (RestClient unwraps and redacts them)."""
        return {"APCA-API-KEY-ID": self.key_id, "APCA-API-SECRET-KEY": self.secret_key}


def alpaca_credentials_from_env() -> AlpacaCredentials:
    """ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY from the environment; InputError names what is missing."""
    return AlpacaCredentials(secret(ENV_KEY_ID, "vendor alpaca"), secret(ENV_SECRET_KEY, "vendor alpaca"))


def alpaca_timeframe(timeframe: str) -> str:
    """Canonical timeframe -> Alpaca's: 1min -> 1Min, 1h -> 1Hour, 1d -> 1Day, 1w -> 1Week, 3mo -> 3Month.

    Alpaca accepts 1-59 Min, 1-23 Hour, 1 Day, 1 Week and 1, 2, 3, 4, 6 or 12 Month; InputError otherwise.
    """
    count, unit = split_timeframe(timeframe)
    if count not in _UNIT_COUNTS[unit]:
        raise InputError(
            f"alpaca has no {timeframe!r} bars; it serves 1-59min, 1-23h, 1d, 1w and 1/2/3/4/6/12mo"
        )
    return f"{count}{_UNIT_NAMES[unit]}"


class AlpacaBars:
    """Historical stock bars from Alpaca, as canonical bars.

    `feed`: iex (free) or sip (paid, all venues); `adjustment`: raw, split, dividend or all;
    `page_limit`: bars per page (Alpaca's maximum is 10,000).
    """

    def __init__(
        self, client: RestClient, feed: str = "iex", adjustment: str = "raw", page_limit: int = MAX_PAGE_LIMIT
    ) -> None:
        if feed not in FEEDS:
            raise InputError(f"alpaca feed {feed!r} is not one of {FEEDS}")
        if adjustment not in ADJUSTMENTS:
            raise InputError(f"alpaca adjustment {adjustment!r} is not one of {ADJUSTMENTS}")
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise InputError(f"alpaca page_limit must be in 1..{MAX_PAGE_LIMIT}, got {page_limit}")
        self.client, self.feed, self.adjustment, self.page_limit = client, feed, adjustment, page_limit

    async def fetch_bars(
        self, symbols: Sequence[str], timeframe: str, start: dt.datetime, end: dt.datetime
    ) -> Fetched:
        """Bars of `symbols` with start <= ts < end, sorted by (symbol, ts), following every page.

        Rows with missing or malformed values come back in `rejected` with the field and value.
        """
        symbols = list(symbols)
        bad = [s for s in symbols if not isinstance(s, str) or not _SYMBOL.match(s)]
        if not symbols or bad:
            raise InputError(f"alpaca symbols must be a non-empty list of ticker symbols; bad: {bad}")
        vendor_tf = alpaca_timeframe(timeframe)
        _, unit = split_timeframe(timeframe)
        start, end = require_aware(start, "start"), require_aware(end, "end")
        if start >= end:
            raise InputError(f"alpaca bars: start {start} must be before end {end}")
        params = {
            "symbols": ",".join(symbols),
            "timeframe": vendor_tf,
            "start": rfc3339(request_start(start, unit, TZ)),
            "end": rfc3339(end),
            "limit": self.page_limit,
            "adjustment": self.adjustment,
            "feed": self.feed,
            "sort": "asc",
        }

        def following(page: dict) -> tuple[str, dict] | None:
            token = page.get("next_page_token") if isinstance(page, dict) else None
            return (BARS_PATH, {**params, "page_token": token}) if token else None

        parts = []
        async for page in self.client.iter_pages(BARS_PATH, params, following):
            by_symbol = json_part(page, "bars", dict, vendor=VENDOR, path=BARS_PATH)
            for symbol, rows in by_symbol.items():
                if rows is None:
                    continue
                if not isinstance(rows, list):
                    rows = [rows]  # not a list of bars: rejected with a reason rather than lost
                parts.append(split_rows(rows, BAR_COLUMNS, symbol=symbol, ts_key="t"))
        return finish_bars(
            parts,
            timeframe=timeframe,
            vendor=VENDOR,
            tz=TZ,
            session_open=SESSION_OPEN,
            start=start,
            end=end,
        )
