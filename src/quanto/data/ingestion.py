"""Ingest partitions into the bronze layer, idempotently and incrementally.

Each partition keeps a manifest (`manifests/ingest_partition/<vendor>/<dataset>/<id>.json`, and a row in
PostgreSQL) listing the date ranges it already covers and the files that hold them. A run fetches only
what is missing from the range it wants, writes those rows as new content-addressed files, then rewrites
the manifest: a rerun is a no-op, a nightly run tops up the current period with the new dates, and a
worker killed mid-partition leaves no manifest change, so the retry fetches that piece again — the
orphan file it may leave is never listed, so no bar is counted twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import structlog
from pydantic import BaseModel

from quanto.config.ingest import IngestConfig
from quanto.contracts import FileRef
from quanto.data.partitions import Partition, trading_days
from quanto.data.sources import PartitionData, Sources
from quanto.lake.storage import Lake
from quanto.observability import metrics

log = structlog.get_logger("quanto.data.ingest")

Range = tuple[dt.date, dt.date]


class PartitionOutcome(BaseModel):
    """What one partition did in this run."""

    id: str
    label: str
    status: str  # skipped | fetched
    rows: int = 0
    rejected: int = 0
    files: int = 0
    seconds: float = 0.0


def manifest_path(part: Partition) -> str:
    """Lake-relative path of a partition's manifest."""
    return f"manifests/ingest_partition/{part.vendor}/{part.dataset}/{part.id}.json"


def load_partition_manifest(lake: Lake, part: Partition) -> dict[str, Any] | None:
    """The partition's manifest when it and every file it lists exist, else None (refetch all)."""
    path = lake.abspath(manifest_path(part))
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    files = [FileRef(**{k: f[k] for k in ("path", "sha256", "rows", "role")}) for f in manifest["files"]]
    return manifest if lake.exists(files) else None


def missing_ranges(covered: list[Range], want: Range) -> list[Range]:
    """The parts of `want` that no covered range holds, in order."""
    out: list[Range] = []
    cur, end = want
    for c_start, c_end in sorted(covered):
        if c_end <= cur or c_start >= end:
            continue
        if c_start > cur:
            out.append((cur, c_start))
        cur = max(cur, c_end)
        if cur >= end:
            break
    if cur < end:
        out.append((cur, end))
    return out


def merge_ranges(ranges: list[Range]) -> list[Range]:
    """Union of ranges as sorted, non-overlapping, non-touching ranges."""
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _ranges(raw: list[list[str]]) -> list[Range]:
    return [(dt.date.fromisoformat(s), dt.date.fromisoformat(e)) for s, e in raw]


@dataclass
class RunContext:
    """Who is running (for manifests and records) and where progress goes."""

    lake: Lake
    workflow_id: str = "local"
    run_id: str = "local"
    record: bool = True
    dsn: str | None = None
    progress: Callable[[int, int, str], None] = lambda done, total, note="": None
    heartbeat_details: Any = None  # partitions finish with their manifests: nothing else to resume from
    today: dt.date = field(default_factory=dt.date.today)  # the run's "today" (the plan's, in workflows)
    outcomes: list[PartitionOutcome] = field(default_factory=list)
    request_stats: dict[str, Any] = field(default_factory=dict)  # requests, retries, 429s per vendor


def _write_frames(
    lake: Lake, part: Partition, fetched: PartitionData, start: dt.date, end: dt.date
) -> list[dict]:
    """Write the fetched rows (and the rejected ones) as files; return their manifest entries."""
    from quanto.data.schemas import SCHEMAS

    entries: list[dict] = []
    stamp = {"start": start.isoformat(), "end": end.isoformat()}
    for kind, frame in fetched.frames.items():
        if frame.is_empty():
            continue
        schema = SCHEMAS.get(kind)
        groups: list[tuple[str, pl.DataFrame]]
        if part.route == "files" and "symbol" in frame.columns:
            # Local files may hold many symbols: one folder per symbol like every other vendor.
            groups = [
                (part.model_copy(update={"symbols": (str(sym),)}).folder(kind), g)
                for (sym,), g in frame.group_by(["symbol"], maintain_order=True)
            ]
        else:
            groups = [(part.folder(kind), frame)]
        for folder, group in groups:
            table = group.to_arrow()
            if schema is not None:
                table = table.cast(schema)
            ref = lake.write_table(folder, table, role=kind)
            entries.append({**ref.model_dump(), **stamp})
    if fetched.rejected is not None and not fetched.rejected.is_empty():
        folder = part.folder("rejected").replace("bronze/", "quarantine/ingest/", 1)
        ref = lake.write_table(folder, fetched.rejected.to_arrow(), role="rejected")
        entries.append({**ref.model_dump(), **stamp})
    return entries


def _record(ctx: RunContext, part: Partition, manifest: dict[str, Any]) -> None:
    from quanto.store.db import connect
    from quanto.store.records import upsert_ingest_partition

    with connect(ctx.dsn) as conn:
        upsert_ingest_partition(
            conn,
            {
                "partition_id": part.id,
                "vendor": part.vendor,
                "dataset": part.dataset,
                "timeframe": part.timeframe,
                "symbols": list(part.symbols),
                "period_start": part.start,
                "period_end": part.end,
                "covered": manifest["covered"],
                "rows": manifest["rows"],
                "rejected": manifest["rejected"],
                "files": manifest["files"],
                "route": part.route,
                "workflow_id": ctx.workflow_id,
                "run_id": ctx.run_id,
            },
        )


def save_partition_manifest(
    ctx: RunContext, part: Partition, covered: list[Range], files: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rewrite the partition's manifest (PostgreSQL row first, the JSON that later runs trust last)."""
    new = {
        "partition": part.model_dump(mode="json", exclude={"fetch_start", "fetch_end"}),
        "id": part.id,
        "covered": [[s.isoformat(), e.isoformat()] for s, e in merge_ranges(covered)],
        "files": files,
        "rows": sum(f["rows"] for f in files if f["role"] != "rejected"),
        "rejected": sum(f["rows"] for f in files if f["role"] == "rejected"),
        "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        "workflow_id": ctx.workflow_id,
        "run_id": ctx.run_id,
    }
    if ctx.record:
        _record(ctx, part, new)
    ctx.lake.write_json(manifest_path(part), new)
    return new


async def ingest_partition(
    part: Partition, sources: Sources, ctx: RunContext, calendar: str = "XNYS", settle_days: int = 5
) -> PartitionOutcome:
    """Fetch what the partition lacks of [fetch_start, fetch_end), write it, then its manifest.

    A range with trading sessions that comes back empty counts as covered only once it is older than
    `settle_days` before `ctx.today`: vendors publish late (flat files the next morning), so an empty
    answer about recent days means "not yet", and the next run asks again.
    """
    t0 = time.perf_counter()
    manifest = load_partition_manifest(ctx.lake, part)
    covered = _ranges(manifest["covered"]) if manifest else []
    todo = missing_ranges(covered, (part.fetch_start, part.fetch_end))
    if not todo:
        return PartitionOutcome(id=part.id, label=part.label(), status="skipped")
    files = list(manifest["files"]) if manifest else []
    rows = rejected = 0
    new_files = 0
    for start, end in todo:
        fetched = await sources.fetch(part, start, end)
        entries = _write_frames(ctx.lake, part, fetched, start, end)
        files += entries
        new_files += len(entries)
        rows += fetched.rows
        rejected += fetched.rejected_rows
        recent = end > ctx.today - dt.timedelta(days=settle_days)
        if fetched.rows == 0 and recent and trading_days(calendar, start, end):
            log.info("empty recent range left open for the next run", partition=part.label(),
                     start=str(start), end=str(end))  # fmt: skip
            continue
        covered.append((start, end))
    save_partition_manifest(ctx, part, covered, files)
    outcome = PartitionOutcome(
        id=part.id,
        label=part.label(),
        status="fetched",
        rows=rows,
        rejected=rejected,
        files=new_files,
        seconds=time.perf_counter() - t0,
    )
    metrics.count_ingest(part.vendor, rows, outcome.seconds)
    log.info("partition ingested", partition=part.label(), rows=rows, rejected=rejected, ranges=len(todo))
    return outcome


async def ingest_partitions(
    parts: list[Partition], cfg: IngestConfig, ctx: RunContext, concurrency: int | None = None
) -> list[PartitionOutcome]:
    """Ingest `parts` with at most `concurrency` partitions in flight (requests are further bounded by
    the vendor's rate limiter); progress is reported as partitions finish."""
    flat = bool(parts) and parts[0].route == "flat_files"
    if concurrency is None:
        # Flat-file days are parsed in threads (zlib and polars release the GIL); REST requests are
        # further bounded by the client's own concurrency and rate limiter.
        flat_settings = cfg.polygon.flat_files
        concurrency = flat_settings.workers if flat and flat_settings else cfg.rest().concurrency
    limit = asyncio.Semaphore(concurrency)
    done = 0
    outcomes: list[PartitionOutcome | None] = [None] * len(parts)
    async with Sources(cfg, flat_files=flat) as sources:

        async def one(i: int, part: Partition) -> None:
            nonlocal done
            async with limit:
                outcomes[i] = await ingest_partition(part, sources, ctx, cfg.calendar, cfg.empty_settle_days)
            done += 1
            ctx.progress(done, len(parts), part.label())

        await asyncio.gather(*(one(i, p) for i, p in enumerate(parts)))
        stats = sources.stats()
    result = [o for o in outcomes if o is not None]
    ctx.outcomes.extend(result)
    ctx.request_stats = stats
    return result


def ingest_sync(parts: list[Partition], cfg: IngestConfig, ctx: RunContext) -> list[PartitionOutcome]:
    """`ingest_partitions` from synchronous code (a notebook, a thread-pool activity, a test)."""
    return asyncio.run(ingest_partitions(parts, cfg, ctx))
