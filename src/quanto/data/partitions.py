"""Ingestion partitions and the router that picks how each is fetched.

A request (vendor, dataset, symbols, range) becomes partitions: (symbol, period) for REST and local
vendors, one trading day holding every ticker for flat files, (symbol, as-of day) for reference data
(corporate actions, fundamentals, tickers, option chains). A partition's identity is what it holds, not
when it was fetched, so a rerun finds its manifest and skips it, and a nightly run tops up the partition
of the current period with only the new dates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from functools import lru_cache
from typing import Any, Literal

import pandas as pd
import structlog
from pydantic import BaseModel, ConfigDict

from quanto.config.ingest import IngestConfig

log = structlog.get_logger("quanto.data.router")

Route = Literal["rest", "flat_files", "grouped_daily", "files", "sample", "synthetic", "stream"]
TIME_SERIES = ("bars", "option_bars")  # datasets with a time range; the others are snapshots


class Partition(BaseModel):
    """One unit of ingestion work. [start, end) is the whole period (its identity); [fetch_start, fetch_end)
    is the part of it this request wants. What a partition already holds is in its manifest."""

    model_config = ConfigDict(frozen=True)

    vendor: str
    dataset: str
    timeframe: str
    route: Route
    symbols: tuple[str, ...]  # one symbol, or the filter of a flat-file day (() = every ticker)
    start: dt.date
    end: dt.date
    fetch_start: dt.date
    fetch_end: dt.date
    settings: dict[str, Any] = {}  # vendor options that change the data (feed, adjustment, ...)

    @property
    def id(self) -> str:
        """Stable identity: what the partition holds (period, symbols, options), never the fetch date."""
        ident = self.model_dump(mode="json", exclude={"fetch_start", "fetch_end", "route"})
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def folder(self, kind: str | None = None) -> str:
        """Lake folder of the partition's files (DESIGN.md section 5).

        Single-symbol partitions follow symbol=<s>/year=<yyyy>. A flat-file day holds every ticker:
        splitting it per symbol would make thousands of 390-row files, so it lives under date=<day>.
        """
        kind = kind or self.dataset
        base = f"bronze/{kind}/vendor={self.vendor}/timeframe={self.timeframe}"
        if len(self.symbols) == 1:
            return f"{base}/symbol={_safe(self.symbols[0])}/year={self.start.year}"
        return f"{base}/date={self.start.isoformat()}"

    def label(self) -> str:
        """Short human description for logs and progress."""
        who = self.symbols[0] if len(self.symbols) == 1 else f"{len(self.symbols) or 'all'} symbols"
        return f"{self.dataset} {who} {self.start}..{self.end}"


def _safe(symbol: str) -> str:
    """A symbol as a folder name (Kite's NSE:INFY, OCC option symbols with spaces)."""
    return symbol.replace("/", "_").replace(":", "~").replace(" ", "_")


class RouteDecision(BaseModel):
    """Why partitions were fetched the way they were; logged and written to the run manifest."""

    route: Route
    reason: str
    symbol_days: int = 0
    partitions: int = 0


class Plan(BaseModel):
    """Every partition of a request, in fetch order, and the routing decision."""

    partitions: list[Partition]
    decision: RouteDecision
    end: dt.date


@lru_cache(maxsize=32)
def _calendar(code: str, first_year: int):
    import exchange_calendars as xc

    return xc.get_calendar(code, start=f"{first_year}-01-01")


def trading_days(calendar: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """Sessions of `calendar` in [start, end)."""
    if end <= start:
        return []
    cal = _calendar(calendar, min(start.year, 2000))
    last = min(end - dt.timedelta(days=1), cal.last_session.date())
    if last < start:
        return []
    return [d.date() for d in cal.sessions_in_range(pd.Timestamp(start), pd.Timestamp(last))]


def _periods(start: dt.date, end: dt.date, period: str) -> list[tuple[dt.date, dt.date]]:
    """Calendar periods (day, month or year) overlapping [start, end), clipped to it."""
    out = []
    cur = start
    while cur < end:
        nxt = natural_period(cur, period)[1]
        out.append((cur, min(nxt, end)))
        cur = nxt
    return out


def natural_period(day: dt.date, period: str) -> tuple[dt.date, dt.date]:
    """The whole calendar day, month or year containing `day`: partitions align to these, so two
    requests with different ranges share partitions instead of writing overlapping ones."""
    if period == "day":
        return day, day + dt.timedelta(days=1)
    if period == "month":
        first = day.replace(day=1)
        return first, dt.date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return dt.date(day.year, 1, 1), dt.date(day.year + 1, 1, 1)


def vendor_settings(cfg: IngestConfig) -> dict[str, Any]:
    """Options that change what a vendor returns: part of each partition's identity."""
    if cfg.vendor == "alpaca":
        return {"feed": cfg.alpaca.feed, "adjustment": cfg.alpaca.adjustment}
    if cfg.vendor == "polygon":
        return {"adjusted": cfg.polygon.adjusted}
    if cfg.vendor == "kite":
        return {"exchange": cfg.kite.exchange}
    if cfg.vendor == "files":
        return {"files": cfg.files.model_dump(mode="json") if cfg.files else None}
    if cfg.vendor == "synthetic":
        return {"synthetic": cfg.synthetic.model_dump(mode="json")}
    return {}


def choose_route(cfg: IngestConfig, end: dt.date) -> RouteDecision:
    """REST for small requests, flat files for large historical ranges (when configured).

    The cost of REST grows with symbols x days (one request per page per symbol); a flat file holds one
    day of every ticker, so past `routing.flat_files_min_symbol_days` flat files are cheaper.
    """
    if cfg.vendor in ("files", "sample", "synthetic"):
        return RouteDecision(route=cfg.vendor, reason=f"vendor {cfg.vendor} is read locally")
    days = len(trading_days(cfg.calendar, cfg.start, end))
    symbol_days = days * max(len(cfg.symbols), 1)
    flat = cfg.vendor == "polygon" and cfg.polygon.flat_files is not None
    flat_ok = flat and cfg.dataset == "bars" and cfg.timeframe in ("1min", "1d")
    if cfg.routing.mode == "flat_files":
        if not flat_ok:
            raise ValueError("routing.mode flat_files: flat files hold only 1min and 1d bars")
        return RouteDecision(route="flat_files", reason="routing.mode is flat_files", symbol_days=symbol_days)
    if cfg.routing.mode == "auto" and flat_ok and not cfg.symbols:
        return RouteDecision(
            route="flat_files", reason="no symbol list: every ticker", symbol_days=symbol_days
        )
    if cfg.routing.mode == "auto" and flat_ok and symbol_days >= cfg.routing.flat_files_min_symbol_days:
        return RouteDecision(
            route="flat_files",
            reason=f"{symbol_days} symbol-days >= routing.flat_files_min_symbol_days "
            f"({cfg.routing.flat_files_min_symbol_days})",
            symbol_days=symbol_days,
        )
    grouped_ok = cfg.vendor == "polygon" and cfg.dataset == "bars" and cfg.timeframe == "1d"
    if cfg.routing.mode == "auto" and grouped_ok and symbol_days >= cfg.routing.flat_files_min_symbol_days:
        # Without flat files, Polygon's grouped daily endpoint is the bulk route: one request a day.
        return RouteDecision(
            route="grouped_daily",
            reason=f"{symbol_days} symbol-days >= routing.flat_files_min_symbol_days and no flat files: "
            "one grouped-daily request per day",
            symbol_days=symbol_days,
        )
    why = "routing.mode is rest" if cfg.routing.mode == "rest" else "small request"
    if cfg.routing.mode == "auto" and flat_ok:
        why = f"{symbol_days} symbol-days < routing.flat_files_min_symbol_days"
    elif cfg.routing.mode == "auto" and not flat:
        why = "no flat files configured for this vendor"
    elif cfg.routing.mode == "auto":
        why = f"flat files do not hold {cfg.dataset} {cfg.timeframe}"
    return RouteDecision(route="rest", reason=why, symbol_days=symbol_days)


def plan(cfg: IngestConfig, today: dt.date) -> Plan:
    """All partitions of the request up to its resolved end, and the routing decision (logged)."""
    end = cfg.resolved_end(today)
    decision = choose_route(cfg, end)
    settings = vendor_settings(cfg)
    common = {"vendor": cfg.vendor, "dataset": cfg.dataset, "timeframe": cfg.timeframe, "settings": settings}
    parts: list[Partition] = []
    if cfg.dataset not in TIME_SERIES:
        # Snapshots: one per symbol (or one for the whole listing) as of the run day.
        for symbol in cfg.symbols or [""]:
            parts.append(
                Partition(
                    **common,
                    route="rest",
                    symbols=(symbol,) if symbol else (),
                    start=end - dt.timedelta(days=1),
                    end=end,
                    fetch_start=end - dt.timedelta(days=1),
                    fetch_end=end,
                )
            )
    elif decision.route in ("flat_files", "grouped_daily"):
        # One trading day of every (requested) ticker; the two routes hold the same data and share ids.
        for day in trading_days(cfg.calendar, cfg.start, end):
            nxt = day + dt.timedelta(days=1)
            parts.append(
                Partition(
                    **common,
                    route=decision.route,
                    symbols=tuple(sorted(cfg.symbols)),
                    start=day,
                    end=nxt,
                    fetch_start=day,
                    fetch_end=nxt,
                )
            )
    elif decision.route == "files":
        # One partition for the job's files; an open-ended job keeps its identity as days pass, so a
        # nightly run imports only the new dates.
        parts.append(
            Partition(
                **common,
                route="files",
                symbols=(),
                start=cfg.start,
                end=cfg.end or dt.date.max,
                fetch_start=cfg.start,
                fetch_end=end,
            )
        )
    else:
        for symbol in cfg.symbols:
            for f_start, f_end in _periods(cfg.start, end, cfg.partitions.period):
                if not trading_days(cfg.calendar, f_start, f_end):
                    continue  # nothing trades in this period: no request, no empty file
                p_start, p_end = natural_period(f_start, cfg.partitions.period)
                parts.append(
                    Partition(
                        **common,
                        route=decision.route,
                        symbols=(symbol,),
                        start=p_start,
                        end=p_end,
                        fetch_start=f_start,
                        fetch_end=f_end,
                    )
                )
    decision = decision.model_copy(update={"partitions": len(parts)})
    log.info(
        "ingest route chosen",
        vendor=cfg.vendor,
        dataset=cfg.dataset,
        route=decision.route,
        reason=decision.reason,
        partitions=len(parts),
        symbol_days=decision.symbol_days,
    )
    return Plan(partitions=parts, decision=decision, end=end)
