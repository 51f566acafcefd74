"""The pipeline's ingest stage: bars of the universe into the bronze layer, one file per symbol-year, from
the packaged sample, the synthetic generator, or the lake that `quanto data ingest` filled; from the lake
also the quotes or depth and the fundamentals that the job's features ask for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from quanto.config.models import PipelineConfig, UniverseConfig
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.data.schemas import BAR_SCHEMA, FUNDAMENTAL_SCHEMA, QUOTE_SCHEMA, bars_to_table, depth_schema
from quanto.data.sources import day_start, exchange_tz
from quanto.errors import InputError
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import Lake


def fetch_bars(universe: UniverseConfig, symbols: list[str]) -> pd.DataFrame:
    """Canonical bars of `symbols` from the universe's vendor, as the vendor delivers them."""
    if universe.vendor == "sample":
        from quanto.data.sample import load_sample_bars

        return load_sample_bars(symbols, universe.start, universe.end, universe.adjustment)
    from quanto.data.synthetic import generate_minute_bars

    return generate_minute_bars(symbols, universe.start, universe.end, universe.synthetic)


def bronze_folder(vendor: str, timeframe: str, symbol: str, year: int) -> str:
    """Lake folder of raw bars (DESIGN.md section 5)."""
    return f"bronze/bars/vendor={vendor}/timeframe={timeframe}/symbol={symbol}/year={year}"


def read_lake_bars(
    lake: Lake, universe: UniverseConfig, calendar: str = "XNYS"
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The universe's bars from what `quanto data ingest` brought into the lake (vendor `lake`),
    adjusted for splits (and dividends) from the ingested corporate actions when asked; raw otherwise."""
    from quanto.data.catalog import open_catalog

    con = open_catalog(lake)
    views = _views(con)
    if "bars" not in views:
        raise InputError(
            f"universe: the lake {lake.root} holds no ingested bars; run `quanto data ingest` first"
        )
    tz = exchange_tz(calendar)  # universe dates are exchange-local days
    bars = con.sql(
        "SELECT * FROM bars WHERE vendor = ? AND timeframe = ? AND list_contains(?, symbol)"
        " AND CAST(ts AS TIMESTAMPTZ) >= ? AND CAST(ts AS TIMESTAMPTZ) < ? ORDER BY symbol, ts",
        params=[universe.source, universe.timeframe, universe.symbols, day_start(universe.start, tz),
                day_start(universe.end, tz)],
    ).to_arrow_table()  # fmt: skip
    bars = pl.from_arrow(bars)
    note: dict[str, Any] = {"source": universe.source, "adjustment": universe.adjustment}
    if universe.adjustment == "raw" or bars.is_empty():
        return bars, note
    if "corporate_actions" not in views:
        note["adjustment"] = "raw (no corporate actions ingested for this vendor)"
        return bars, note
    from quanto.data.adjust import adjust_bars

    actions = con.sql(
        "SELECT * FROM corporate_actions WHERE vendor = ? AND list_contains(?, symbol)",
        params=[universe.source, universe.symbols],
    ).to_arrow_table()
    actions = pl.from_arrow(actions)
    adjusted, skipped = adjust_bars(bars, actions, mode=universe.adjustment)
    note["actions_applied"] = actions.height - skipped.height
    note["actions_skipped"] = skipped.to_dicts()
    return adjusted, note


# The job-file key that asks for each dataset besides bars, and how `quanto data ingest` brings it in.
DATASET_OWNERS = {
    "quotes": "features.microstructure",
    "depth": "features.microstructure",
    "fundamentals": "features.fundamentals",
}
DATASET_HINTS = {
    "quotes": "a live stream with stream.channels including quotes",
    "depth": "a live stream that ships order-book depth (Kite)",
    "fundamentals": "dataset: fundamentals",
}


def depth_levels(columns: list[str]) -> int:
    """Book levels of a depth frame: the deepest i with a bid_px_i column (0 when there is none)."""
    levels = 0
    while f"bid_px_{levels + 1}" in columns:
        levels += 1
    return levels


def files_by_symbol(refs: list[FileRef]) -> dict[str | None, list[FileRef]]:
    """Files grouped by the `symbol=<s>` folder of their path (the lake layout of per-symbol datasets),
    so a stage can read one symbol's files without opening every other's; None groups files outside
    such a folder."""
    out: dict[str | None, list[FileRef]] = {}
    for ref in refs:
        part = next((p for p in ref.path.split("/") if p.startswith("symbol=")), None)
        out.setdefault(part.removeprefix("symbol=") if part else None, []).append(ref)
    return out


def _views(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


LAKE_BATCH_ROWS = 1_000_000  # rows per Arrow batch when streaming a dataset out of the catalog


def read_lake_dataset(
    con, universe: UniverseConfig, kind: str, calendar: str = "XNYS"
) -> Iterator[tuple[str, pl.DataFrame]]:
    """(symbol, rows) of a dataset besides bars for each universe symbol that has rows, from an open
    catalog (`open_catalog`), in the dataset's canonical schema: quotes or depth snapshots inside the
    universe's range (exchange-local days, as bars), or every fundamental statement filed before its
    end (TTM ratios and year-on-year growth look back a year and more before the first bar).

    One scan of the catalog, ordered by symbol and streamed in batches: one symbol's rows in memory at
    a time. Nothing when the lake has no such dataset."""
    if kind not in _views(con):
        return
    tz = exchange_tz(calendar)
    start, end = day_start(universe.start, tz), day_start(universe.end, tz)
    if kind == "fundamentals":
        schema, time_filter, params = FUNDAMENTAL_SCHEMA, "CAST(filed_at AS TIMESTAMPTZ) < ?", [end]
        order = "filed_at, period_end, field"
    else:
        columns = [r[0] for r in con.execute(f'DESCRIBE "{kind}"').fetchall()]
        schema = QUOTE_SCHEMA if kind == "quotes" else depth_schema(max(depth_levels(columns), 1))
        time_filter, params = "CAST(ts AS TIMESTAMPTZ) >= ? AND CAST(ts AS TIMESTAMPTZ) < ?", [start, end]
        order = "ts"
    select = ", ".join(f'"{c}"' for c in schema.names)
    reader = con.sql(
        f'SELECT {select} FROM "{kind}" WHERE vendor = ? AND list_contains(?, symbol) AND {time_filter} '
        f"ORDER BY symbol, {order}",
        params=[universe.source, universe.symbols, *params],
    ).to_arrow_reader(LAKE_BATCH_ROWS)
    symbol, parts = None, []
    for batch in reader:
        frame = pl.from_arrow(pa.Table.from_batches([batch]).cast(schema))
        for (name,), part in frame.group_by(["symbol"], maintain_order=True):
            if name != symbol and parts:
                yield symbol, pl.concat(parts)
                parts = []
            symbol = name
            parts.append(part)
    if parts:
        yield symbol, pl.concat(parts)


def run_ingest(req: StageRequest, ctx: StageContext) -> StageResult:
    """Ingest the job's universe; skipped when the same universe was already ingested."""
    cfg = PipelineConfig.model_validate(req.config)
    u = cfg.universe
    if u.vendor == "lake":
        return _ingest_from_lake(u, ctx, cfg.validation.sessions.calendar, cfg.features.lake_datasets())

    def compute(key: str) -> Materialized:
        outputs, rows, empty = [], 0, []
        for i, symbol in enumerate(u.symbols):
            bars = fetch_bars(u, [symbol])
            if bars.empty:
                empty.append(symbol)
            for year, part in bars.groupby(bars["ts"].dt.year, sort=True):
                folder = bronze_folder(u.vendor, u.timeframe, symbol, int(year))
                outputs.append(ctx.lake.write_table(folder, bars_to_table(part), role="bars"))
            rows += len(bars)
            ctx.progress(i + 1, len(u.symbols), symbol)
        if rows == 0:
            raise InputError(
                f"universe: vendor {u.vendor!r} has no bars for {u.symbols} between {u.start} and {u.end}"
            )
        return Materialized(
            outputs,
            counters={"rows": rows, "symbols": len(u.symbols) - len(empty), "files": len(outputs)},
            summary={"empty_symbols": empty, "vendor": u.vendor, "timeframe": u.timeframe},
        )

    return materialize("ingest", ctx, [], u.model_dump(mode="json"), compute)


def _ingest_from_lake(
    u: UniverseConfig, ctx: StageContext, calendar: str, datasets: tuple[str, ...] = ()
) -> StageResult:
    """The universe's slice of the ingested lake, one file per symbol-year, plus the `datasets` the
    features ask for (quotes or depth: per symbol-year, role = the dataset; fundamentals: one file).
    The stage depends on the ingested files (their hashes are its inputs), so a nightly top-up re-runs
    it and nothing else does."""
    from quanto.data.catalog import dataset_refs

    kinds = ("bars",) if u.adjustment == "raw" else ("bars", "corporate_actions")
    inputs = dataset_refs(ctx.lake, (*kinds, *datasets), u.source)

    def compute(key: str) -> Materialized:
        bars, note = read_lake_bars(ctx.lake, u, calendar)
        if bars.is_empty():
            raise InputError(
                f"universe: the lake has no {u.source} {u.timeframe} bars for {u.symbols} between {u.start} and {u.end}"
            )
        outputs = []
        for (symbol, year), part in bars.group_by(["symbol", pl.col("ts").dt.year()], maintain_order=True):
            folder = f"bronze/bars/vendor=lake-{u.source}/timeframe={u.timeframe}/symbol={symbol}/year={year}"
            outputs.append(ctx.lake.write_table(folder, part.to_arrow().cast(BAR_SCHEMA), role="bars"))
        present = set(bars["symbol"].unique().to_list())
        counters = {"rows": bars.height, "symbols": len(present)}
        empty = [s for s in u.symbols if s not in present]
        summary = {"empty_symbols": empty, "vendor": "lake", "timeframe": u.timeframe, **note}
        for kind in datasets:
            refs, rows, empty = _lake_dataset_files(ctx, u, kind, calendar)
            outputs += refs
            counters[f"{kind}_rows"] = rows
            summary[f"{kind}_empty_symbols"] = empty
        return Materialized(outputs, counters={**counters, "files": len(outputs)}, summary=summary)

    config = {**u.model_dump(mode="json"), "calendar": calendar}
    if datasets:
        config["datasets"] = list(datasets)
    return materialize("ingest", ctx, inputs, config, compute)


def _lake_dataset_files(
    ctx: StageContext, u: UniverseConfig, kind: str, calendar: str
) -> tuple[list[FileRef], int, list[str]]:
    """Write the universe's rows of `kind` to the bronze layer, one symbol at a time (quotes and depth
    can be large): (files, rows, symbols without rows). InputError when no symbol has any."""
    from quanto.data.catalog import open_catalog

    outputs: list[FileRef] = []
    statements: list[pl.DataFrame] = []
    rows, present = 0, set()
    for symbol, frame in read_lake_dataset(open_catalog(ctx.lake), u, kind, calendar):
        rows += frame.height
        present.add(symbol)
        if kind == "fundamentals":
            statements.append(frame)
        else:
            for (year,), part in frame.group_by(pl.col("ts").dt.year(), maintain_order=True):
                folder = f"bronze/{kind}/vendor=lake-{u.source}/symbol={symbol}/year={year}"
                outputs.append(ctx.lake.write_table(folder, part.to_arrow(), role=kind))
        ctx.progress(len(present), len(u.symbols), f"{kind} {symbol}")
    empty = [s for s in u.symbols if s not in present]
    if rows == 0:
        span = "filed before" if kind == "fundamentals" else f"between {u.start} and"
        raise InputError(
            f"{DATASET_OWNERS[kind]}: the lake holds no {u.source} {kind} for {u.symbols} {span} {u.end}; "
            f"ingest them first with `quanto data ingest` (vendor {u.source}, {DATASET_HINTS[kind]})"
        )
    if statements:  # small: one file for the universe
        table = pl.concat(statements).to_arrow()
        outputs.append(ctx.lake.write_table(f"bronze/fundamentals/vendor=lake-{u.source}", table, role=kind))
    return outputs, rows, empty
