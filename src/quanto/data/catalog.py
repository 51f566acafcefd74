"""What the lake holds, read through partition manifests: `quanto data ls` and `quanto data sql`.

Files are listed by the manifests of ingestion partitions, never by globbing folders: a file a killed run
left behind, or a superseded snapshot, is not in any manifest and so is never read. Where two partitions
can hold the same rows (a flat-file day fetched for a few symbols and again for all tickers), the view
keeps one row per key, the most recently written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import duckdb

from quanto.contracts import FileRef
from quanto.lake.storage import Lake

# Row identity per dataset; views keep one row per key when partitions overlap.
KEYS: dict[str, tuple[str, ...]] = {
    "bars": ("vendor", "timeframe", "symbol", "ts"),
    "option_bars": ("vendor", "timeframe", "symbol", "ts"),
    "trades": ("vendor", "symbol", "ts", "trade_id", "price", "size"),
    "quotes": ("vendor", "symbol", "ts", "bid_px", "ask_px", "bid_sz", "ask_sz"),
    "depth": ("vendor", "symbol", "ts"),
}
SNAPSHOTS = ("corporate_actions", "fundamentals", "tickers", "instruments", "option_chain")


@dataclass
class DatasetFiles:
    """The files of one dataset kind and whether its partitions can overlap."""

    paths: list[str] = field(default_factory=list)
    overlapping: bool = False


def partition_manifests(lake: Lake) -> list[dict[str, Any]]:
    """Every ingestion partition manifest in the lake, oldest update first."""
    root = lake.abspath("manifests/ingest_partition")
    if not root.is_dir():
        return []
    out = [json.loads(p.read_text()) for p in root.rglob("*.json")]
    return sorted(out, key=lambda m: m["updated_at"])


def _overlap(parts: list[dict[str, Any]]) -> bool:
    """True when two partitions of the same vendor and timeframe cover a common day for a common symbol."""
    by_series: dict[tuple, list[tuple[str, str, frozenset]]] = defaultdict(list)
    for m in parts:
        p = m["partition"]
        for start, end in m["covered"]:
            by_series[(p["vendor"], p["timeframe"])].append((start, end, frozenset(p["symbols"])))
    for spans in by_series.values():
        spans.sort()
        for i, (_, end, symbols) in enumerate(spans):
            for start2, _, symbols2 in spans[i + 1 :]:
                if start2 >= end:
                    break
                if not symbols or not symbols2 or symbols & symbols2:
                    return True
    return False


def dataset_files(lake: Lake) -> dict[str, DatasetFiles]:
    """Files per dataset kind (bars, trades, ..., rejected) from the partition manifests.

    Snapshot datasets keep only the newest partition per (vendor, symbols): yesterday's ticker list
    is history, not a second copy of each ticker.
    """
    manifests = partition_manifests(lake)
    newest: dict[tuple, dict[str, Any]] = {}
    series: list[dict[str, Any]] = []
    for m in manifests:
        p = m["partition"]
        if p["dataset"] in SNAPSHOTS:
            newest[(p["vendor"], p["dataset"], tuple(p["symbols"]))] = m  # sorted: the last one wins
        else:
            series.append(m)
    # Order is precedence (the last file holding a key wins): oldest partitions first, and REST backfills
    # of a stream outage after everything else, since the stream's bars at a gap's edges are partial.
    # A file listed twice (identical content, e.g. the same rejects) is read once, at its last position.
    ordered: dict[str, dict[str, None]] = defaultdict(dict)
    entries = [f for m in [*series, *newest.values()] for f in m["files"]]
    for f in sorted(entries, key=lambda f: f.get("origin") == "backfill"):
        paths = ordered[f["role"]]
        path = str(lake.abspath(f["path"]))
        paths.pop(path, None)
        paths[path] = None
    out: dict[str, DatasetFiles] = {kind: DatasetFiles(paths=list(paths)) for kind, paths in ordered.items()}
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in series:
        for role in {f["role"] for f in m["files"]}:
            by_kind[role].append(m)
    for kind, parts in by_kind.items():
        streamed = any(m["partition"]["route"] == "stream" for m in parts)
        out[kind].overlapping = kind in KEYS and (streamed or _overlap(parts))
    return dict(out)


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def open_catalog(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per dataset kind over the lake's current files."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for kind, files in sorted(dataset_files(lake).items()):
        if not files.paths:
            continue
        paths = ", ".join(map(_quote, files.paths))
        if files.overlapping:
            # Files are listed oldest first: keep the row from the newest file that holds the key.
            body = (
                f"SELECT * EXCLUDE (filename) FROM read_parquet([{paths}], union_by_name = true, filename = true, hive_partitioning = false) "
                f"QUALIFY row_number() OVER (PARTITION BY {', '.join(KEYS[kind])} "
                f"ORDER BY list_position([{paths}], filename) DESC) = 1"
            )
        else:
            body = f"SELECT * FROM read_parquet([{paths}], union_by_name = true, hive_partitioning = false)"
        con.execute(f'CREATE VIEW "{kind}" AS {body}')
    return con


def run_sql(lake: Lake, query: str, limit: int | None = None) -> dict[str, Any]:
    """Run `query` on the catalog; returns {columns, rows, row_count, truncated}."""
    con = open_catalog(lake)
    try:
        rel = con.sql(query)
    except duckdb.Error as err:
        views = [
            r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        ]
        raise ValueError(f"{err} (views: {', '.join(views) or 'none: ingest something first'})") from None
    if rel is None:
        return {"columns": [], "rows": [], "row_count": 0, "truncated": False}
    rows = rel.fetchall()
    truncated = limit is not None and len(rows) > limit
    return {
        "columns": list(rel.columns),
        "rows": rows[:limit] if limit is not None else rows,
        "row_count": len(rows),
        "truncated": truncated,
    }


def list_datasets(lake: Lake) -> list[dict[str, Any]]:
    """One row per (dataset, vendor, timeframe, symbol): first and last timestamp and rows."""
    con = open_catalog(lake)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    out: list[dict[str, Any]] = []
    for kind in sorted(views):
        columns = {r[0] for r in con.execute(f'DESCRIBE "{kind}"').fetchall()}
        time_col = next((c for c in ("ts", "ex_date", "period_end", "filed_at") if c in columns), None)
        group = [c for c in ("vendor", "timeframe", "symbol") if c in columns]
        span = f"min({time_col}), max({time_col})" if time_col else "NULL, NULL"
        select = ", ".join(group) + ("," if group else "")
        grouping = f"GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}" if group else ""
        for row in con.execute(f'SELECT {select} {span}, count(*) FROM "{kind}" {grouping}').fetchall():
            rec = dict(zip(group, row[: len(group)], strict=True))
            out.append(
                {
                    "dataset": kind,
                    "vendor": rec.get("vendor"),
                    "timeframe": rec.get("timeframe"),
                    "symbol": rec.get("symbol"),
                    "start": row[len(group)],
                    "end": row[len(group) + 1],
                    "rows": row[len(group) + 2],
                }
            )
    return out


def dataset_refs(lake: Lake, kinds: tuple[str, ...], vendor: str | None = None) -> list[FileRef]:
    """Current files of some dataset kinds (optionally one vendor's) with their hashes: what a stage that
    reads the lake depends on, so new data changes its key."""
    return [
        FileRef(path=f["path"], sha256=f["sha256"], rows=f["rows"], role=f["role"])
        for m in partition_manifests(lake)
        if vendor is None or m["partition"]["vendor"] == vendor
        for f in m["files"]
        if f["role"] in kinds
    ]
