"""One adapter interface over every vendor: `Sources(cfg).fetch(partition, start, end)` returns canonical
frames (DESIGN.md section 5 schemas) plus the rows the vendor sent that could not be used.

Clients are opened once per run (one HTTP connection pool and one rate limiter per vendor) and their
request counters (requests, retries, 429s) end up in the run manifest. Keys are read from the
environment here, in the worker, and never leave it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from quanto.config.ingest import IngestConfig
from quanto.data.partitions import Partition
from quanto.errors import InputError


@dataclass
class PartitionData:
    """Canonical frames by kind (`bars`, `corporate_actions`, ...) and rejected vendor rows (raw + reason)."""

    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    rejected: pl.DataFrame | None = None

    @property
    def rows(self) -> int:
        """Accepted rows over every kind."""
        return sum(f.height for f in self.frames.values())

    @property
    def rejected_rows(self) -> int:
        """Rows the vendor sent that were not usable (kept in quarantine with a reason)."""
        return 0 if self.rejected is None else self.rejected.height


_TZ: dict[str, ZoneInfo] = {}


def exchange_tz(calendar: str) -> ZoneInfo:
    """The time zone of an exchange calendar: partition days are exchange-local days."""
    if calendar not in _TZ:
        import exchange_calendars as xc

        _TZ[calendar] = ZoneInfo(str(xc.get_calendar(calendar).tz))
    return _TZ[calendar]


def day_start(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    """Midnight of `day` in the exchange's zone, in UTC (a US post-market bar at 19:30 EST is
    00:30 UTC the next day, yet it belongs to its trading day)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(dt.UTC)


def _within(frame: pl.DataFrame, start: dt.datetime, end: dt.datetime, column: str = "ts") -> pl.DataFrame:
    """Rows with start <= ts < end: a partition never holds another's rows."""
    if frame.is_empty():
        return frame
    return frame.filter((pl.col(column) >= start) & (pl.col(column) < end))


class Sources:
    """The vendors of one ingestion job, opened for the duration of a run (async context manager)."""

    def __init__(self, cfg: IngestConfig, flat_files: bool = False):
        self.cfg = cfg
        self.flat_files = flat_files  # open the flat-file store instead of the REST API
        self._clients: list[Any] = []
        self._adapter: Any = None

    async def __aenter__(self) -> Sources:
        self._adapter = await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in reversed(self._clients):
            await client.__aexit__(None, None, None)
        self._clients.clear()

    async def _rest_client(
        self, vendor: str, default_url: str, headers: dict[str, Any], params: dict[str, Any]
    ):
        from quanto.data.rest import RestClient, RetryPolicy, limiter_for

        rest = self.cfg.rest()
        client = RestClient(
            vendor,
            rest.base_url or default_url,
            limiter=limiter_for(vendor, rest.rate_per_s, rest.burst),
            retry=RetryPolicy(
                max_attempts=rest.max_attempts,
                backoff_base_s=rest.backoff_base_s,
                backoff_max_s=rest.backoff_max_s,
            ),
            concurrency=rest.concurrency,
            timeout_s=rest.timeout_s,
            headers=headers,
            params=params,
        )
        await client.__aenter__()
        self._clients.append(client)
        return client

    async def _open(self) -> Any:
        cfg = self.cfg
        if cfg.vendor in ("sample", "synthetic", "files"):
            return None
        if cfg.vendor == "polygon" and cfg.dataset == "bars" and self.flat_files:
            from quanto.data.flatfiles import FlatFileSource, S3Credentials

            flat = cfg.polygon.flat_files
            assert flat is not None
            return FlatFileSource(
                flat.root,
                endpoint_url=flat.endpoint_url,
                credentials=S3Credentials.from_env() if flat.root.startswith("s3://") else None,
                prefix=flat.prefix,
            )
        # Each adapter reads its own keys from the environment and keeps them SecretStr until sent.
        if cfg.vendor == "alpaca":
            from quanto.data.alpaca import DATA_URL, AlpacaBars, alpaca_credentials_from_env

            client = await self._rest_client("alpaca", DATA_URL, alpaca_credentials_from_env().headers(), {})
            return AlpacaBars(client, feed=cfg.alpaca.feed, adjustment=cfg.alpaca.adjustment,
                              page_limit=cfg.alpaca.page_limit)  # fmt: skip
        if cfg.vendor == "polygon":
            from quanto.data.polygon import BASE_URL, PolygonRest, polygon_api_key_from_env

            client = await self._rest_client("polygon", BASE_URL, {}, {"apiKey": polygon_api_key_from_env()})
            return PolygonRest(client, adjusted=cfg.polygon.adjusted)
        if cfg.vendor == "kite":
            from quanto.data.kite import BASE_URL, KiteRest, kite_credentials_from_env

            client = await self._rest_client("kite", BASE_URL, kite_credentials_from_env().headers(), {})
            return KiteRest(client, exchange=cfg.kite.exchange)
        raise InputError(f"vendor {cfg.vendor!r} is not supported")

    def stats(self) -> dict[str, Any]:
        """Request counters of every client opened (requests, retries, 429s, bytes, seconds)."""
        from dataclasses import asdict

        return {c.vendor: asdict(c.stats) for c in self._clients}

    async def fetch(self, part: Partition, start: dt.date, end: dt.date) -> PartitionData:
        """Canonical rows of `part` between `start` (inclusive) and `end` (exclusive)."""
        cfg = self.cfg
        if part.route == "sample":
            return await asyncio.to_thread(_sample, cfg, part, start, end)
        if part.route == "synthetic":
            return await asyncio.to_thread(_synthetic, cfg, part, start, end)
        tz = exchange_tz(cfg.calendar)
        if part.route == "files":
            return await asyncio.to_thread(_files, cfg, day_start(start, tz), day_start(end, tz))
        if part.route == "flat_files":
            return await asyncio.to_thread(_flat_day, self._adapter, part, start)
        return await _rest(self._adapter, cfg, part, day_start(start, tz), day_start(end, tz))

    async def instruments(self) -> pl.DataFrame:
        """Kite's instrument list (tokens for the ticker stream)."""
        return (await self._adapter.instruments()).frame

    async def fetch_bars(
        self, symbol: str, timeframe: str, start: dt.datetime, end: dt.datetime
    ) -> PartitionData:
        """Bars of `symbol` in [start, end) over REST: how a stream backfills an outage."""
        return await fetch_bar_range(self._adapter, self.cfg.vendor, symbol, timeframe, start, end)


def _uses_flat_files(cfg: IngestConfig) -> bool:
    from quanto.data.partitions import choose_route

    return (
        cfg.polygon.flat_files is not None and choose_route(cfg, cfg.end or dt.date.max).route == "flat_files"
    )


def _sample(cfg: IngestConfig, part: Partition, start: dt.date, end: dt.date) -> PartitionData:
    from quanto.data.sample import load_sample_bars
    from quanto.data.schemas import BAR_SCHEMA, conform

    bars = load_sample_bars(list(part.symbols), start, end, "raw")
    return PartitionData(frames={"bars": conform(bars, BAR_SCHEMA, f"sample {part.label()}")})


def _synthetic(cfg: IngestConfig, part: Partition, start: dt.date, end: dt.date) -> PartitionData:
    from quanto.data.schemas import BAR_SCHEMA, conform
    from quanto.data.synthetic import generate_minute_bars

    bars = generate_minute_bars(list(part.symbols), start, end, cfg.synthetic)
    return PartitionData(frames={"bars": conform(bars, BAR_SCHEMA, f"synthetic {part.label()}")})


def _files(cfg: IngestConfig, start: dt.datetime, end: dt.datetime) -> PartitionData:
    from quanto.data.files import import_files

    assert cfg.files is not None  # the config requires it for vendor files
    imported = import_files(cfg.files)
    bars = [_within(f.bars, start, end) for f in imported]
    rejected = [f.quarantine for f in imported if f.quarantine.height]
    return PartitionData(
        frames={"bars": pl.concat(bars) if bars else pl.DataFrame()},
        rejected=pl.concat(rejected, how="diagonal_relaxed") if rejected else None,
    )


def _flat_day(source: Any, part: Partition, day: dt.date) -> PartitionData:
    from quanto.data.flatfiles import parse_aggs
    from quanto.data.polygon import SESSION_OPEN, TZ
    from quanto.data.rest import session_open_stamps

    key = source.key(part.timeframe, day)
    if not source.exists(key):
        return PartitionData(frames={"bars": pl.DataFrame()})  # not published (holiday, or not yet)
    parsed = parse_aggs(source.read_bytes(key), part.timeframe, source=key, symbols=set(part.symbols) or None)
    # Day aggregates are stamped at midnight New York; like Polygon's REST bars (and every daily bar in
    # the lake) they carry their session's open, so one vendor's data reads the same by either route.
    bars = (
        session_open_stamps(parsed.bars.lazy(), "d", TZ, SESSION_OPEN).collect()
        if part.timeframe == "1d"
        else parsed.bars
    )
    return PartitionData(frames={"bars": bars}, rejected=parsed.quarantine)


async def fetch_bar_range(
    adapter: Any, vendor: str, symbol: str, timeframe: str, start: dt.datetime, end: dt.datetime
) -> PartitionData:
    """Bars of one symbol with start <= ts < end from a REST adapter (also the streams' backfill)."""
    if vendor == "alpaca":
        got = await adapter.fetch_bars([symbol], timeframe, start, end)
    else:
        got = await adapter.fetch_bars(symbol, timeframe, start, end)
    return PartitionData(frames={"bars": _within(got.frame, start, end)}, rejected=got.rejected)


async def _rest(
    adapter: Any, cfg: IngestConfig, part: Partition, start: dt.date, end: dt.date
) -> PartitionData:
    """Dispatch a REST partition to its vendor adapter by dataset."""
    symbol = part.symbols[0] if part.symbols else ""
    ds = part.dataset
    if ds == "bars" and part.route == "grouped_daily":
        got = await adapter.grouped_daily(part.start)
        wanted = got.frame.filter(pl.col("symbol").is_in(list(part.symbols))) if part.symbols else got.frame
        return PartitionData(frames={"bars": wanted}, rejected=got.rejected)
    if ds == "bars":
        return await fetch_bar_range(adapter, cfg.vendor, symbol, part.timeframe, start, end)
    if ds == "option_bars":
        got = await adapter.option_bars(symbol, part.timeframe, start, end)
        return PartitionData(frames={"option_bars": _within(got.frame, start, end)}, rejected=got.rejected)
    if ds == "corporate_actions":
        splits, dividends = await asyncio.gather(adapter.splits(symbol), adapter.dividends(symbol))
        frames = [f.frame for f in (splits, dividends)]
        rejected = [f.rejected for f in (splits, dividends) if f.rejected is not None and f.rejected.height]
        return PartitionData(
            frames={"corporate_actions": pl.concat(frames)},
            rejected=pl.concat(rejected, how="diagonal_relaxed") if rejected else None,
        )
    if ds == "fundamentals":
        got = await adapter.financials(symbol)
        return PartitionData(frames={"fundamentals": got.frame}, rejected=got.rejected)
    if ds == "tickers":
        got = await (adapter.ticker_details(symbol) if symbol else adapter.tickers())
        return PartitionData(frames={"tickers": got.frame}, rejected=got.rejected)
    if ds == "instruments":
        got = await adapter.instruments()
        return PartitionData(frames={"instruments": got.frame}, rejected=got.rejected)
    if ds == "option_chain":
        got = await adapter.option_chain_snapshot(symbol, as_of=end)
        return PartitionData(frames={"option_chain": got.frame}, rejected=got.rejected)
    raise InputError(f"dataset {ds!r} has no REST fetcher for vendor {cfg.vendor!r}")
