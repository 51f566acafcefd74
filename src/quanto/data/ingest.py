"""The pipeline's ingest stage: bars of the universe into the bronze layer, one file per symbol-year, from
the packaged sample, the synthetic generator, or the lake that `quanto data ingest` filled."""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl

from quanto.config.models import PipelineConfig, UniverseConfig
from quanto.contracts import StageRequest, StageResult
from quanto.data.schemas import BAR_SCHEMA, bars_to_table
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
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
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


def run_ingest(req: StageRequest, ctx: StageContext) -> StageResult:
    """Ingest the job's universe; skipped when the same universe was already ingested."""
    cfg = PipelineConfig.model_validate(req.config)
    u = cfg.universe
    if u.vendor == "lake":
        return _ingest_from_lake(u, ctx, cfg.validation.sessions.calendar)

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


def _ingest_from_lake(u: UniverseConfig, ctx: StageContext, calendar: str) -> StageResult:
    """The universe's slice of the ingested lake, one file per symbol-year. The stage depends on the
    ingested files (their hashes are its inputs), so a nightly top-up re-runs it and nothing else does."""
    from quanto.data.catalog import dataset_refs

    kinds = ("bars",) if u.adjustment == "raw" else ("bars", "corporate_actions")
    inputs = dataset_refs(ctx.lake, kinds, u.source)

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
        return Materialized(
            outputs,
            counters={"rows": bars.height, "symbols": len(present), "files": len(outputs)},
            summary={
                "empty_symbols": [s for s in u.symbols if s not in present],
                "vendor": "lake",
                "timeframe": u.timeframe,
                **note,
            },  # fmt: skip
        )

    return materialize("ingest", ctx, inputs, {**u.model_dump(mode="json"), "calendar": calendar}, compute)
