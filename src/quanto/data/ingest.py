"""The ingest stage: fetch bars from the configured vendor into the bronze layer, one file per symbol-year."""

from __future__ import annotations

import pandas as pd

from quanto.config.models import PipelineConfig, UniverseConfig
from quanto.contracts import StageRequest, StageResult
from quanto.data.schemas import bars_to_table
from quanto.errors import InputError
from quanto.lake.materialize import Materialized, StageContext, materialize


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


def run_ingest(req: StageRequest, ctx: StageContext) -> StageResult:
    """Ingest the job's universe; skipped when the same universe was already ingested."""
    cfg = PipelineConfig.model_validate(req.config)
    u = cfg.universe

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
