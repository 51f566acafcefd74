"""Follow a vendor's live stream for one session: micro-batches into the lake, outages backfilled over REST.

Everything the stream delivers lands in today's stream partition (bronze/<kind>/vendor=<v>/timeframe=1min/
date=<today>/), whose manifest lists each micro-batch file as it is written, so a crash loses at most
the rows still buffered. Outages the follower sees are backfilled over REST; a restarted follower
(a crash, a retry) backfills from the last stored bar of each symbol to its first new one.
Trades and ticks are also aggregated to 1-minute bars as they arrive.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import polars as pl
import structlog

from quanto.config.ingest import IngestConfig, StreamSettings
from quanto.contracts import StreamResult
from quanto.data.ingestion import RunContext, load_partition_manifest, manifest_path, save_partition_manifest
from quanto.data.partitions import Partition, trading_days
from quanto.data.schemas import SCHEMAS, depth_schema
from quanto.errors import InputError
from quanto.lake.storage import Lake

log = structlog.get_logger("quanto.data.live")

STREAM_TIMEFRAME = "1min"


def stream_partition(cfg: IngestConfig, today: dt.date) -> Partition:
    """Today's stream partition of the job: its symbols, channels and vendor options are part of its
    identity, so two streaming jobs on one vendor never share (and overwrite) a manifest."""
    from quanto.data.partitions import vendor_settings

    tomorrow = today + dt.timedelta(days=1)
    return Partition(
        vendor=cfg.vendor,
        dataset="bars",
        timeframe=STREAM_TIMEFRAME,
        route="stream",
        symbols=tuple(sorted(cfg.symbols)),
        start=today,
        end=tomorrow,
        fetch_start=today,
        fetch_end=tomorrow,
        settings={**vendor_settings(cfg), "channels": sorted(cfg.stream().channels)},
    )


def _protocol(cfg: IngestConfig, stream: StreamSettings, token_to_symbol: dict[int, str] | None):
    from quanto.data import streams

    if cfg.vendor == "alpaca":
        return streams.AlpacaStreamProtocol(cfg.alpaca.feed, url=stream.url)
    if cfg.vendor == "polygon":
        return streams.PolygonStreamProtocol(url=stream.url)
    if cfg.vendor == "kite":
        from quanto.data.kite_ticker import KiteTickerProtocol

        assert token_to_symbol is not None
        return KiteTickerProtocol(token_to_symbol, **({"url": stream.url} if stream.url else {}))
    raise InputError(f"vendor {cfg.vendor!r} has no live stream")


def _credentials(vendor: str) -> dict[str, Any]:
    """The stream's credentials as SecretStr, from the same variables as the vendor's REST API."""
    from quanto.config.secrets import vendor_secrets

    keys = vendor_secrets(vendor)
    if vendor == "alpaca":
        return {"key": keys["ALPACA_API_KEY_ID"], "secret": keys["ALPACA_API_SECRET_KEY"]}
    if vendor == "polygon":
        return {"key": keys["POLYGON_API_KEY"]}
    return {"api_key": keys["KITE_API_KEY"], "access_token": keys["KITE_ACCESS_TOKEN"]}


def _session_close(cfg: IngestConfig, today: dt.date) -> dt.datetime | None:
    """When today's session closes (UTC), or None when the exchange does not trade today."""
    if not trading_days(cfg.calendar, today, today + dt.timedelta(days=1)):
        return None
    import exchange_calendars as xc

    close = xc.get_calendar(cfg.calendar).session_close(pd.Timestamp(today))
    return close.to_pydatetime()


def _last_stored_bars(lake: Lake, files: list[dict[str, Any]]) -> dict[str, dt.datetime]:
    """Open time of the last bar already stored per symbol (a restarted follower resumes after it)."""
    paths = [str(lake.abspath(f["path"])) for f in files if f["role"] == "bars"]
    if not paths:
        return {}
    last = pl.scan_parquet(paths).group_by("symbol").agg(pl.col("ts").max()).collect()
    return dict(zip(last["symbol"].to_list(), last["ts"].to_list(), strict=True))


class _StreamWriter:
    """Writes micro-batches and backfills into today's stream partition and keeps its manifest current."""

    def __init__(self, ctx: RunContext, part: Partition):
        self.ctx, self.part = ctx, part
        manifest = load_partition_manifest(ctx.lake, part)
        self.files: list[dict[str, Any]] = list(manifest["files"]) if manifest else []
        self.rows: dict[str, int] = {}

    def write(self, kind: str, frame: pl.DataFrame, origin: str = "stream") -> None:
        """One micro-batch of `kind` as a file, then the manifest naming it. `origin` backfill marks
        REST bars of an outage: they take precedence over the stream's partial bars at its edges."""
        if frame.is_empty():
            return
        table = frame.to_arrow()
        schema = SCHEMAS.get(kind) or (depth_schema(5) if kind == "depth" else None)
        if schema is not None:
            table = table.select(schema.names).cast(schema)
        ref = self.ctx.lake.write_table(self.part.folder(kind), table, role=kind)
        stamp = {"start": self.part.start.isoformat(), "end": self.part.end.isoformat()}
        written = dt.datetime.now(dt.UTC).isoformat()
        self.files.append({**ref.model_dump(), **stamp, "written_at": written, "origin": origin})
        self.rows[kind] = self.rows.get(kind, 0) + frame.height
        # Merge with what is on disk now (another attempt of this activity may have written since).
        # (The raw JSON: checking that every listed file exists on each micro-batch would cost O(n^2).)
        on_disk = self.ctx.lake.abspath(manifest_path(self.part))
        current = json.loads(on_disk.read_text())["files"] if on_disk.is_file() else []
        known = {f["path"] for f in self.files}
        self.files = [*(f for f in current if f["path"] not in known), *self.files]
        save_partition_manifest(self.ctx, self.part, [(self.part.start, self.part.end)], self.files)


def follow_stream(
    cfg: IngestConfig,
    lake: Lake,
    today: dt.date,
    *,
    heartbeat: Callable[[dict[str, Any]], None] = lambda state: None,
    cancelled: Callable[[], bool] = lambda: False,
    workflow_id: str = "local",
    run_id: str = "local",
    record: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> StreamResult:
    """Stream today's session (until its close, `duration_s`, or `cancelled()`); see the module doc."""
    stream = cfg.stream()
    if not stream.enabled:
        raise InputError(f"{cfg.vendor}.stream.enabled is false: nothing to follow")
    close = _session_close(cfg, today)
    if close is None and stream.duration_s is None:
        log.info("no session today: the stream has nothing to follow", calendar=cfg.calendar, day=str(today))
        return StreamResult()
    ctx = RunContext(lake=lake, workflow_id=workflow_id, run_id=run_id, record=record)
    return asyncio.run(_follow(cfg, stream, ctx, today, close, heartbeat, cancelled, clock))


async def _follow(
    cfg: IngestConfig,
    stream: StreamSettings,
    ctx: RunContext,
    today: dt.date,
    close: dt.datetime | None,
    heartbeat: Callable[[dict[str, Any]], None],
    cancelled: Callable[[], bool],
    clock: Callable[[], float],
) -> StreamResult:
    from quanto.data.aggregate import BarAggregator
    from quanto.data.sources import Sources
    from quanto.data.streams import MicroBatcher, ReconnectPolicy, run_stream

    writer = _StreamWriter(ctx, stream_partition(cfg, today))
    batcher = MicroBatcher(writer.write, flush_rows=stream.flush_rows, flush_s=stream.flush_s, clock=clock)
    aggregator = BarAggregator(STREAM_TIMEFRAME, cfg.vendor)
    stop = asyncio.Event()
    result = StreamResult()
    backfills: list[asyncio.Task] = []

    async with Sources(cfg) as sources:
        token_to_symbol = None
        if cfg.vendor == "kite":
            from quanto.data.kite import resolve_tokens

            instruments = await sources.instruments()
            token_to_symbol = {t: s for s, t in resolve_tokens(instruments, cfg.symbols).items()}
        protocol = _protocol(cfg, stream, token_to_symbol)
        channels = ["full"] if cfg.vendor == "kite" else list(stream.channels)
        derive_bars = "bars" not in channels  # vendor bars win; otherwise build them from trades/ticks

        # A restarted follower (crash, retry): the minutes between the last stored bar and the first
        # new one were lost with the old process; each symbol's first new bar opens that backfill.
        resume = _last_stored_bars(ctx.lake, writer.files)
        minute = dt.timedelta(minutes=1)

        def resume_gaps(bars: pl.DataFrame) -> None:
            for symbol, first in bars.group_by("symbol").agg(pl.col("ts").min()).iter_rows():
                last = resume.pop(symbol, None)
                if last is None:
                    continue
                # Bars built from ticks: the first one is partial, so it is refetched too (REST wins).
                end = first + minute if derive_bars else first
                if end > last + minute:
                    on_gap(symbol, last + minute, end)

        def on_batch(batch) -> None:
            batcher.add_batch(batch)
            result.messages += batch.data_rows() + len(batch.rejected)
            result.rejected += len(batch.rejected)
            bars = batch.bars
            if derive_bars:
                if batch.trades.height:
                    aggregator.add_trade_frame(batch.trades)
                if batch.ticks.height:
                    aggregator.add_tick_frame(batch.ticks)
                bars = aggregator.close_until()
                if bars.height:
                    batcher.add("bars", bars)
            if resume and bars.height:
                resume_gaps(bars)

        async def backfill(symbol: str, start: dt.datetime, end: dt.datetime) -> None:
            got = await sources.fetch_bars(symbol, STREAM_TIMEFRAME, start, end)
            bars = got.frames["bars"]
            writer.write("bars", bars, origin="backfill")
            if got.rejected is not None and got.rejected.height:
                writer.write("rejected", got.rejected, origin="backfill")
            result.backfilled_rows += bars.height
            log.info("stream gap backfilled over REST", symbol=symbol, start=str(start), end=str(end),
                     rows=bars.height)  # fmt: skip

        def on_gap(symbol: str, start: dt.datetime, end: dt.datetime) -> None:
            result.gaps += 1
            if stream.backfill:
                backfills.append(asyncio.create_task(backfill(symbol, start, end)))

        def on_state(state: str, info: dict) -> None:
            if state == "subscribed" and cfg.vendor == "kite":
                aggregator.reset_cumulative()  # volume during an outage belongs to the backfilled gap
            heartbeat({"state": state, **{k: v for k, v in info.items() if isinstance(v, int | float | str)}})

        started = clock()

        async def watch() -> None:
            # Ends the stream at the session close, after duration_s, or when the activity is cancelled.
            while not stop.is_set():
                now = dt.datetime.now(dt.UTC)
                over = stream.duration_s is not None and clock() - started >= stream.duration_s
                if cancelled() or over or (stream.duration_s is None and close is not None and now >= close):
                    stop.set()
                    break
                batcher.tick()
                heartbeat({"state": "streaming", "messages": result.messages, "files": len(writer.files)})
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch())
        try:
            stats = await run_stream(
                protocol,
                credentials=_credentials(cfg.vendor),
                symbols=cfg.symbols,
                channels=channels,
                on_batch=on_batch,
                on_gap=on_gap,
                stop=stop,
                reconnect=ReconnectPolicy(initial_s=stream.reconnect_initial_s, max_s=stream.reconnect_max_s),
                on_state=on_state,
            )
        finally:
            stop.set()
            await watcher
            # Buffered rows first: a failed backfill must not cost the stream's own data.
            if derive_bars:
                bars = aggregator.flush()
                if bars.height:
                    batcher.add("bars", bars)
            batcher.flush_all()
            pending = asyncio.ensure_future(asyncio.gather(*backfills, return_exceptions=True))
            while not pending.done():  # keep the activity alive while slow backfills finish
                heartbeat({"state": "backfilling", "gaps": result.gaps})
                await asyncio.wait([pending], timeout=1.0)
            for outcome in pending.result():
                if isinstance(outcome, BaseException):
                    result.backfill_failures += 1
                    log.warning("stream gap backfill failed; the gap stays open", error=str(outcome)[:300])
    result.reconnects = stats.reconnects
    result.bars = writer.rows.get("bars", 0)
    result.trades = writer.rows.get("trades", 0)
    result.quotes = writer.rows.get("quotes", 0)
    result.depth = writer.rows.get("depth", 0)
    result.files = len(writer.files)
    log.info("stream ended", **result.model_dump())
    return result
