"""Polygon.io REST: aggregates (stocks and options), grouped daily, reference data, financials, options.

The API key is the `apiKey` query parameter: pass it in RestClient `params`, which puts it on every request
(the absolute `next_url` links Polygon pages with included) and redacts it everywhere. Endpoints:

- `/v2/aggs/ticker/{ticker}/range/{mult}/{timespan}/{from}/{to}` — bars; `from`/`to` are epoch ms,
  both inclusive; results `{"t" (bar start, ms), "o", "h", "l", "c", "v", "vw", "n"}`; `next_url`.
- `/v2/aggs/grouped/locale/us/market/stocks/{date}` — one day's bar of every ticker (`"T"`).
- `/v3/reference/tickers[/{ticker}]`, `/v3/reference/splits`, `/v3/reference/dividends`,
  `/vX/reference/financials` — reference data, `next_url` paging.
- `/v3/snapshot/options/{underlying}` — option chain snapshot (`details`, `day` with open/high/low/
  close/volume/vwap, `greeks`, `implied_volatility`, `open_interest`, `last_quote`, `underlying_asset`).

Daily aggregates are stamped at midnight (grouped daily: at the close) New York time; canonical daily
bars are stamped at the 09:30 ET open of their date (see `rest.stamp_bars`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import polars as pl
from pydantic import SecretStr

from quanto.config.secrets import VENDOR_SECRETS, secret
from quanto.data.rest import (
    Column,
    Fetched,
    RestClient,
    bar_columns,
    empty_rejected,
    finish_bars,
    json_part,
    reject_rows,
    request_start,
    require_aware,
    split_rows,
    split_timeframe,
)
from quanto.data.schemas import (
    CORPORATE_ACTION_SCHEMA,
    FUNDAMENTAL_SCHEMA,
    OPTION_BAR_SCHEMA,
    OPTION_SNAPSHOT_SCHEMA,
    TICKER_SCHEMA,
    conform,
)
from quanto.errors import InputError

VENDOR = "polygon"
BASE_URL = "https://api.polygon.io"
TZ = "America/New_York"
SESSION_OPEN = dt.time(9, 30)
(ENV_API_KEY,) = VENDOR_SECRETS[VENDOR]
MAX_AGGS_LIMIT = 50_000
MAX_SNAPSHOT_LIMIT = 250
# Filings reach EDGAR until 17:30 ET and their dissemination can run into the evening; Polygon ships only
# the filing date. Stamping them public at 20:00 ET (after the extended-hours close) means no bar of
# the filing day can see a number that may have come out after it: late by hours at worst, never early.
FILED_AT_LOCAL_TIME = dt.time(20, 0)
_TIMESPANS = {"min": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month"}
# OCC option ticker (with Polygon's "O:" prefix): root, expiry YYMMDD, C/P, strike x 1000 in 8 digits.
OCC_PATTERN = r"^(?:O:)?([A-Z0-9.]{1,6})(\d{6})([CP])(\d{8})$"
STATEMENT_ORDER = ("income_statement", "balance_sheet", "cash_flow_statement", "comprehensive_income")

AGG_COLUMNS = bar_columns("ms")
TICKER_COLUMNS = (
    Column("ticker", "ticker", "str"),
    *[Column(c, c, "str", required=False) for c in ("name", "market", "locale", "primary_exchange", "type")],
    Column("active", "active", "bool", required=False),
    Column("currency", "currency_name", "str", required=False),
    Column("cik", "cik", "str", required=False),
    Column("composite_figi", "composite_figi", "str", required=False),
    Column("list_date", "list_date", "date", required=False),
    Column("delisted_utc", "delisted_utc", "iso", required=False),
)
SNAPSHOT_COLUMNS = (
    Column("ticker", ("details", "ticker"), "str"),
    *[Column(c, ("day", c), required=False) for c in ("open", "high", "low", "close", "volume", "vwap")],
    Column("bid", ("last_quote", "bid"), required=False),
    Column("ask", ("last_quote", "ask"), required=False),
    Column("underlying_price", ("underlying_asset", "price"), required=False),
    Column("implied_volatility", "implied_volatility", required=False),
    *[Column(g, ("greeks", g), required=False) for g in ("delta", "gamma", "theta", "vega")],
    Column("open_interest", "open_interest", required=False),
)
FINANCIAL_COLUMNS = (
    Column("period_end", "end_date", "date"),
    Column("filing_date", "filing_date", "date"),
    Column("fiscal_period", "fiscal_period", "str"),
    Column("fiscal_year", "fiscal_year", "str"),
    Column("field", "field", "str"),
    Column("value", "value"),
)
_NOT_OCC = (
    ~pl.col("ticker").str.contains(OCC_PATTERN),
    pl.format("details.ticker = {}: not an OCC option ticker", pl.col("ticker")),
)


def polygon_api_key_from_env() -> SecretStr:
    """POLYGON_API_KEY from the environment; InputError when it is missing."""
    return secret(ENV_API_KEY, "vendor polygon")


def polygon_timespan(timeframe: str) -> tuple[int, str]:
    """Canonical timeframe -> (multiplier, timespan): 1min -> (1, "minute"), 1h -> (1, "hour"), 1d -> (1, "day")."""
    count, unit = split_timeframe(timeframe)
    return count, _TIMESPANS[unit]


def occ_columns(ticker: pl.Expr, underlying: pl.Expr | None = None) -> list[pl.Expr]:
    """underlying, symbol (OCC: root padded to 6 + YYMMDD + C/P + strike x 1000 in 8 digits), expiry,
    strike and right from an OCC option ticker such as "O:AAPL240119C00190000"; null when it is not one.

    `underlying` overrides the root (adjusted contracts have roots like "AAPL1")."""
    parts = ticker.str.extract_groups(OCC_PATTERN)
    root, ymd, right, strike = (parts.struct.field(str(i)) for i in range(1, 5))
    return [
        (root if underlying is None else underlying).alias("underlying"),
        pl.concat_str(root.str.pad_end(6), ymd, right, strike).alias("symbol"),
        ymd.str.to_date("%y%m%d", strict=False).alias("expiry"),
        (strike.cast(pl.Int64) / 1000).alias("strike"),
        right.alias("right"),
    ]


@dataclass(frozen=True)
class OptionContract:
    """An option contract's terms, parsed from its OCC ticker."""

    underlying: str
    symbol: str  # canonical OCC symbol, e.g. "AAPL  240119C00190000"
    expiry: dt.date
    strike: float
    right: str  # "C" | "P"


def parse_occ(ticker: str) -> OptionContract:
    """Terms of an OCC option ticker ("O:AAPL240119C00190000" or "AAPL240119C00190000")."""
    row = pl.select(occ_columns(pl.lit(ticker, pl.String))).row(0, named=True)
    if row["symbol"] is None or row["expiry"] is None:
        raise InputError(
            f"polygon: {ticker!r} is not an OCC option ticker (expected like O:AAPL240119C00190000)"
        )
    return OptionContract(**row)


def _next_url(page: Any) -> tuple[str, None] | None:
    url = page.get("next_url") if isinstance(page, dict) else None
    return (url, None) if url else None


def _text_at(rows: list[Any], path: tuple[str, ...]) -> list[str | None]:
    """The text at `path` in each row (None where absent or not text): symbols for the rejected frame."""
    out: list[str | None] = []
    for row in rows:
        for part in path:
            row = row.get(part) if isinstance(row, dict) else None
        out.append(row if isinstance(row, str) else None)
    return out


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


class PolygonRest:
    """Polygon REST endpoints as canonical frames; every method returns `Fetched` (frame + rejected).

    `adjusted`: split-adjusted aggregates (Polygon's default); `page_limit`: results per page (option
    snapshots use at most 250, Polygon's maximum there).
    """

    def __init__(self, client: RestClient, adjusted: bool = True, page_limit: int = MAX_AGGS_LIMIT) -> None:
        if not 1 <= page_limit <= MAX_AGGS_LIMIT:
            raise InputError(f"polygon page_limit must be in 1..{MAX_AGGS_LIMIT}, got {page_limit}")
        self.client, self.adjusted, self.page_limit = client, adjusted, page_limit

    async def _results(self, path: str, params: Mapping[str, Any] | None, kind: type = list) -> list[Any]:
        """Every `results` element over all pages (a single object becomes a one-element list)."""
        rows: list[Any] = []
        async for page in self.client.iter_pages(path, params, _next_url):
            part = json_part(page, "results", kind, vendor=VENDOR, path=path)
            if isinstance(part, dict):
                rows.extend([part] if part else [])
            else:
                rows.extend(part)
        return rows

    async def _aggs(self, ticker: str, timeframe: str, start: dt.datetime, end: dt.datetime) -> Fetched:
        mult, timespan = polygon_timespan(timeframe)
        _, unit = split_timeframe(timeframe)
        start, end = require_aware(start, "start"), require_aware(end, "end")
        if start >= end:
            raise InputError(f"polygon bars: start {start} must be before end {end}")
        first = _ms(request_start(start, unit, TZ))
        path = f"/v2/aggs/ticker/{quote(ticker, safe=':.')}/range/{mult}/{timespan}/{first}/{_ms(end)}"
        params = {"adjusted": str(self.adjusted).lower(), "sort": "asc", "limit": self.page_limit}
        rows = await self._results(path, params)
        part = split_rows(rows, AGG_COLUMNS, symbol=ticker, ts_key="t")
        return finish_bars(
            [part], timeframe=timeframe, vendor=VENDOR, tz=TZ, session_open=SESSION_OPEN, start=start, end=end
        )

    async def fetch_bars(self, symbol: str, timeframe: str, start: dt.datetime, end: dt.datetime) -> Fetched:
        """Stock bars of `symbol` with start <= ts < end (canonical BAR_SCHEMA), all pages."""
        return await self._aggs(symbol, timeframe, start, end)

    async def option_bars(
        self, option_ticker: str, timeframe: str, start: dt.datetime, end: dt.datetime
    ) -> Fetched:
        """Bars of one option contract (OPTION_BAR_SCHEMA); symbol is the OCC symbol, the underlying,
        expiry, right and strike come from the ticker."""
        contract = parse_occ(option_ticker)
        got = await self._aggs(option_ticker, timeframe, start, end)
        frame = got.frame.with_columns(
            underlying=pl.lit(contract.underlying),
            symbol=pl.lit(contract.symbol),
            expiry=pl.lit(contract.expiry, pl.Date),
            strike=pl.lit(contract.strike),
            right=pl.lit(contract.right),
        ).select(OPTION_BAR_SCHEMA.names)
        rejected = got.rejected.with_columns(symbol=pl.lit(contract.symbol))
        return Fetched(conform(frame, OPTION_BAR_SCHEMA, f"polygon option bars {option_ticker}"), rejected)

    async def grouped_daily(self, day: dt.date) -> Fetched:
        """The daily bar of every US stock on `day` (canonical 1d bars stamped at the 09:30 ET open)."""
        path = f"/v2/aggs/grouped/locale/us/market/stocks/{day.isoformat()}"
        rows = await self._results(path, {"adjusted": str(self.adjusted).lower()})
        part = split_rows(
            rows, (Column("ticker", "T", "str"), *AGG_COLUMNS), symbol=_text_at(rows, ("T",)), ts_key="t"
        )
        local_midnight = dt.datetime.combine(day, dt.time(0), ZoneInfo(TZ))
        return finish_bars(
            [(part[0].drop("ticker"), part[1])],
            timeframe="1d",
            vendor=VENDOR,
            tz=TZ,
            session_open=SESSION_OPEN,
            start=local_midnight,
            end=local_midnight + dt.timedelta(days=1),
        )

    def _tickers(self, rows: list[Any]) -> Fetched:
        frame, rejected = split_rows(
            rows, TICKER_COLUMNS, symbol=_text_at(rows, ("ticker",)), ts_key="list_date"
        )
        frame = frame.drop("ticker").with_columns(vendor=pl.lit(VENDOR)).select(TICKER_SCHEMA.names)
        return Fetched(conform(frame.sort("symbol"), TICKER_SCHEMA, "polygon tickers"), rejected)

    async def ticker_details(self, symbol: str) -> Fetched:
        """Reference data of one ticker (TICKER_SCHEMA, one row); an unknown ticker is a VendorRequestError."""
        path = f"/v3/reference/tickers/{quote(symbol, safe='.')}"
        return self._tickers(await self._results(path, None, dict))

    async def tickers(self, market: str = "stocks", active: bool = True, limit: int = 1000) -> Fetched:
        """Every ticker of `market` (TICKER_SCHEMA, sorted by symbol), all pages of `limit` (max 1000)."""
        params = {"market": market, "active": str(active).lower(), "limit": limit}
        return self._tickers(await self._results("/v3/reference/tickers", params))

    async def _actions(
        self, path: str, symbol: str, kind: str, columns: tuple[Column, ...], checks
    ) -> Fetched:
        rows = await self._results(path, {"ticker": symbol, "limit": 1000})
        frame, rejected = split_rows(rows, columns, symbol=symbol, ts_key=columns[0].key, checks=checks)
        if kind == "split":
            frame = frame.with_columns(
                ratio=pl.col("split_to") / pl.col("split_from"), cash=pl.lit(None, pl.Float64)
            )
        else:
            frame = frame.with_columns(ratio=pl.lit(None, pl.Float64))
        frame = frame.with_columns(kind=pl.lit(kind), vendor=pl.lit(VENDOR)).select(
            CORPORATE_ACTION_SCHEMA.names
        )
        return Fetched(conform(frame.sort("ex_date"), CORPORATE_ACTION_SCHEMA, f"polygon {kind}s"), rejected)

    async def splits(self, symbol: str) -> Fetched:
        """Splits of `symbol` (CORPORATE_ACTION_SCHEMA kind "split", ratio = split_to / split_from)."""
        checks = [
            (
                (pl.col(c) <= 0) | ~pl.col(c).is_finite(),
                pl.format(f"{c} = {{}}: must be a positive number", pl.col(c)),
            )
            for c in ("split_from", "split_to")
        ]
        columns = (
            Column("ex_date", "execution_date", "date"),
            Column("split_from", "split_from"),
            Column("split_to", "split_to"),
        )
        return await self._actions("/v3/reference/splits", symbol, "split", columns, checks)

    async def dividends(self, symbol: str) -> Fetched:
        """Cash dividends of `symbol` (CORPORATE_ACTION_SCHEMA kind "dividend", cash per share)."""
        checks = [(pl.col("cash") < 0, pl.format("cash_amount = {}: must be >= 0", pl.col("cash")))]
        columns = (Column("ex_date", "ex_dividend_date", "date"), Column("cash", "cash_amount"))
        return await self._actions("/v3/reference/dividends", symbol, "dividend", columns, checks)

    async def financials(self, symbol: str, limit: int = 100) -> Fetched:
        """Financial statements of `symbol` in long form (FUNDAMENTAL_SCHEMA): one row per statement line.

        field = the statement key (e.g. revenues, net_income_loss, assets, equity); fiscal_period =
        "2023Q1" for quarters, "FY2023" for years; filed_at = filing_date 20:00 New York time (see
        FILED_AT_LOCAL_TIME). A filing without a filing_date cannot be placed in time: its lines are
        rejected, as is a key repeated in a later statement of the same filing.
        """
        filings = await self._results("/vX/reference/financials", {"ticker": symbol, "limit": limit})
        rows, repeated = [], {}
        for filing in filings:
            statements = filing.get("financials") if isinstance(filing, dict) else None
            if not isinstance(statements, dict):
                continue
            seen: dict[str, str] = {}
            order = [s for s in STATEMENT_ORDER if s in statements] + sorted(
                set(statements) - set(STATEMENT_ORDER)
            )
            for statement in order:
                lines = statements[statement]
                for key, line in lines.items() if isinstance(lines, dict) else ():
                    row = {
                        k: filing[k]
                        for k in ("end_date", "filing_date", "fiscal_period", "fiscal_year")
                        if k in filing  # absent stays absent: the reason says "missing"
                    }
                    value = line.get("value") if isinstance(line, dict) else line
                    row |= {"statement": statement, "field": key, "value": value}
                    if key in seen:
                        repeated[len(rows)] = f"field {key} repeats {seen[key]}.{key} of the same filing"
                    seen.setdefault(key, statement)
                    rows.append(row)
        keep = [r for i, r in enumerate(rows) if i not in repeated]
        frame, rejected = split_rows(keep, FINANCIAL_COLUMNS, symbol=symbol, ts_key="filing_date")
        if repeated:
            rejected = pl.concat([rejected, reject_rows(rows, repeated, [symbol] * len(rows), "filing_date")])
        period, year = pl.col("fiscal_period"), pl.col("fiscal_year")
        filed_local = pl.col("filing_date").cast(pl.Datetime("ns")) + pl.duration(
            hours=FILED_AT_LOCAL_TIME.hour, minutes=FILED_AT_LOCAL_TIME.minute
        )
        frame = frame.with_columns(
            filed_at=filed_local.dt.replace_time_zone(TZ).dt.convert_time_zone("UTC"),
            fiscal_period=pl.when(period.str.contains(r"^Q[1-4]$"))
            .then(pl.concat_str(year, period))
            .otherwise(pl.concat_str(period, year)),
            vendor=pl.lit(VENDOR),
        ).select(FUNDAMENTAL_SCHEMA.names)
        frame = frame.sort("filed_at", "period_end", "field")
        return Fetched(conform(frame, FUNDAMENTAL_SCHEMA, "polygon financials"), rejected)

    async def option_chain_snapshot(self, underlying: str, as_of: dt.datetime) -> Fetched:
        """Every contract of `underlying`'s option chain now (OPTION_SNAPSHOT_SCHEMA, sorted by symbol).

        `as_of` is when the snapshot was taken, the rows' ts (passed in so that runs are reproducible).
        """
        ts = require_aware(as_of, "as_of")
        path = f"/v3/snapshot/options/{quote(underlying, safe='.')}"
        rows = await self._results(path, {"limit": min(self.page_limit, MAX_SNAPSHOT_LIMIT)})
        symbols = _text_at(rows, ("details", "ticker"))
        frame, rejected = split_rows(
            rows, SNAPSHOT_COLUMNS, symbol=symbols, ts_key=("details", "ticker"), checks=[_NOT_OCC]
        )
        frame = frame.with_columns(
            *occ_columns(pl.col("ticker"), pl.lit(underlying)),
            ts=pl.lit(ts).dt.cast_time_unit("ns"),
            vendor=pl.lit(VENDOR),
        ).select(OPTION_SNAPSHOT_SCHEMA.names)
        return Fetched(
            conform(frame.sort("symbol"), OPTION_SNAPSHOT_SCHEMA, f"polygon option chain {underlying}"),
            rejected if len(rejected) else empty_rejected(),
        )
