"""Features from the universe's datasets besides bars, on the bar timestamps: microstructure from
quotes or order-book depth (features/microstructure.py) and point-in-time fundamental ratios
(features/fundamental.py). The features stage left-joins them onto its table on (symbol, ts).

Time conventions (DESIGN.md section 5: a bar's ts is its open, the bar covers [ts, ts + timeframe)).
A feature row at ts is used at the bar's close, as its close price is, so it may use what is known
by then and nothing later:

- Microstructure: a bar's values come from the quote/depth snapshots inside it, [ts, ts + timeframe)
  (`aggregate_to_bars`): `<feature>_last` is the bar's last snapshot, `<feature>_mean` their mean,
  `snapshots` their count (0 for a bar without any, whose other values are NaN). A snapshot stamped
  exactly at the next bar's open belongs to the next bar. The per-snapshot values (ofi, the rolling
  mean imbalance) look back over the symbol's earlier snapshots only. Snapshots are bucketed on the
  bars' own grid: the offset of the bar opens from the UTC clock grid (e.g. 30 minutes for 1h bars
  opening at 9:30 New York), which must be the same for every bar.
- Fundamentals: a statement is visible at a bar once filed_at <= the bar's close: ts + timeframe
  intraday, the session close (exchange calendar) for daily bars, whose ts is the session open.
  `fundamental_features` (visible iff filed_at <= its ts) is called with the bar closes as ts.

Statement lines are stored with the vendor's keys; `STATEMENT_FIELDS` maps Polygon's XBRL concept
names to the library's field names (`fundamental.FIELDS`); rows already named so pass unchanged. Polygon
ships no total debt, shares outstanding or EBITDA, so pe, pb, ev_ebitda and debt_to_equity stay NaN
on its statements.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Mapping
from functools import lru_cache

import pandas as pd
import polars as pl

from quanto.config.models import MicrostructureConfig, PipelineConfig
from quanto.contracts import FileRef
from quanto.errors import InputError
from quanto.lake.storage import Lake

# Validated datasets the features read besides bars (file roles of the validate stage's outputs).
SOURCE_ROLES = ("quotes", "depth", "fundamentals")
# Polygon statement keys (vX/reference/financials) -> the fundamental library's field names; its
# gross_profit, cash, current_assets, current_liabilities and inventory already carry them.
STATEMENT_FIELDS = {
    "revenues": "revenue",
    "operating_income_loss": "operating_income",
    "net_income_loss": "net_income",
    "interest_expense_operating": "interest_expense",
    "assets": "total_assets",
    "equity": "total_equity",
}
_KEYS = ["symbol", "ts"]
_TS = pl.Datetime("ns", "UTC")


def _bar_keys(bars: pl.DataFrame | pd.DataFrame) -> pl.DataFrame:
    """symbol, ts (UTC ns) and close of the bars, in their order."""
    frame = pl.from_pandas(bars[["symbol", "ts", "close"]]) if isinstance(bars, pd.DataFrame) else bars
    return frame.select(
        pl.col("symbol").cast(pl.String),
        pl.col("ts").dt.convert_time_zone("UTC").cast(_TS),
        pl.col("close").cast(pl.Float64),
    )


def grid_offset(ts: pl.Series, timeframe: str) -> dt.timedelta:
    """Offset of the bar opens from the UTC clock grid of `timeframe` (0 for 1min bars, 30 minutes for
    1h bars opening at 9:30 New York); InputError when the bars are not on one grid."""
    from quanto.data.aggregate import timeframe_ns

    step = timeframe_ns(timeframe)
    offsets = (ts.dt.epoch("ns") % step).unique().sort().to_list()
    if len(offsets) > 1:
        shown = [str(dt.timedelta(microseconds=o // 1000)) for o in offsets[:5]]
        raise InputError(
            f"features.microstructure: {timeframe} bars open at offsets {shown} from the {timeframe} clock "
            "grid; snapshots can only be bucketed into bars on one grid"
        )
    return dt.timedelta(microseconds=(offsets[0] if offsets else 0) // 1000)


Snapshots = pl.DataFrame | pl.LazyFrame | Mapping[str, pl.DataFrame | pl.LazyFrame]


def microstructure_by_bar(
    bars: pl.DataFrame | pd.DataFrame, snapshots: Snapshots, spec: MicrostructureConfig, timeframe: str
) -> pl.DataFrame:
    """Per-bar microstructure features for every bar (see the module docstring), one symbol at a time.

    `snapshots` are validated quotes (QUOTE_SCHEMA) or depth (depth_schema(n), n >= spec.levels):
    one frame (or lazy scan) of every symbol's, or one per symbol (a symbol without one has none).
    Returns symbol, ts (the bars', in their order), the `_last` / `_mean` columns and `snapshots`.
    """
    from quanto.data.ingest import depth_levels
    from quanto.data.schemas import QUOTE_SCHEMA
    from quanto.features.microstructure import aggregate_to_bars, microstructure_features

    keys = _bar_keys(bars).select(_KEYS)
    if isinstance(snapshots, Mapping):
        per_symbol = {s: f.lazy() for s, f in snapshots.items()}
        first = next(iter(per_symbol.values()), pl.from_arrow(QUOTE_SCHEMA.empty_table()).lazy())
        empty = first.clear()

        def book_of(symbol: str) -> pl.DataFrame:
            return per_symbol.get(symbol, empty).filter(pl.col("symbol") == symbol).collect()
    else:
        first = snapshots.lazy()

        def book_of(symbol: str) -> pl.DataFrame:
            return first.filter(pl.col("symbol") == symbol).collect()

    levels = 1
    if spec.source == "depth":
        have = depth_levels(first.collect_schema().names())
        if spec.levels is not None and have < spec.levels:
            raise InputError(
                f"features.microstructure.levels is {spec.levels} but the ingested depth has {have} level(s)"
            )
        levels = spec.levels or have
    offset = grid_offset(keys["ts"], timeframe)
    parts = []
    for symbol in keys["symbol"].unique(maintain_order=True).to_list():
        book = book_of(symbol)
        if book.height or not parts:  # an empty book still gives the columns' names and types
            per_snapshot = microstructure_features(book, levels, window=spec.window)
            parts.append(aggregate_to_bars(per_snapshot, timeframe, offset=offset))
    per_bar = pl.concat(parts, how="vertical_relaxed")
    out = keys.join(per_bar, on=_KEYS, how="left", maintain_order="left")
    return out.with_columns(pl.col("snapshots").fill_null(0), pl.col(pl.Float64).fill_null(float("nan")))


@lru_cache(maxsize=8)
def _session_closes(calendar: str, first_year: int, last_year: int) -> pl.DataFrame:
    """Session date (exchange-local) -> its close (UTC) for whole years of an exchange calendar."""
    import exchange_calendars as xc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # exchange_calendars trips pandas' own
        cal = xc.get_calendar(calendar, start=f"{first_year}-01-01", end=f"{last_year}-12-31")
    closes = cal.schedule["close"]
    return pl.DataFrame(
        {
            "__date": pl.Series(closes.index).dt.date(),
            "__close": pl.Series(closes.dt.tz_convert("UTC")).cast(_TS),
        }
    )


def bar_closes(ts: pl.Series, timeframe: str, calendar: str) -> pl.Series:
    """When each bar closes: ts + timeframe intraday; for daily bars (ts = the session open) the
    session's close from the exchange calendar (an early close included). A daily bar on a day the
    calendar has no session keeps its open, which never sees later information."""
    if timeframe != "1d":
        from quanto.data.aggregate import timeframe_ns

        return ts + dt.timedelta(microseconds=timeframe_ns(timeframe) // 1000)
    from quanto.data.sources import exchange_tz

    if ts.is_empty():
        return ts
    local = ts.dt.convert_time_zone(exchange_tz(calendar).key).dt.date()
    closes = _session_closes(calendar, local.min().year, local.max().year)
    frame = pl.DataFrame({"__date": local, "__ts": ts})
    frame = frame.join(closes, on="__date", how="left", maintain_order="left")
    return frame.select(pl.coalesce("__close", "__ts").alias(ts.name)).to_series()


def canonical_statements(statements: pl.DataFrame) -> pl.DataFrame:
    """Statements with vendor keys renamed to the library's field names (`STATEMENT_FIELDS`)."""
    return statements.with_columns(pl.col("field").replace(STATEMENT_FIELDS))


def fundamentals_by_bar(
    bars: pl.DataFrame | pd.DataFrame, statements: pl.DataFrame, timeframe: str, calendar: str
) -> pl.DataFrame:
    """Point-in-time fundamental ratios (`fundamental.FEATURES`) for every bar, each from the
    statements filed at or before the bar's close (see the module docstring). Returns symbol, ts (the
    bars', in their order) and the ratios, NaN where undefined."""
    from quanto.features.fundamental import fundamental_features

    keys = _bar_keys(bars)
    at_close = keys.with_columns(bar_closes(keys["ts"], timeframe, calendar).alias("ts"))
    ratios = fundamental_features(at_close, canonical_statements(statements))
    return ratios.with_columns(keys["ts"])  # the library keeps the input order: back to the bar opens


def source_features(
    bars: pl.DataFrame | pd.DataFrame,
    cfg: PipelineConfig,
    *,
    snapshots: Snapshots,
    statements: pl.DataFrame,
) -> pd.DataFrame:
    """The features that `cfg.features` asks of other datasets (microstructure from the validated
    quotes or depth `snapshots`, fundamentals from the validated `statements`), keyed by the bars'
    (symbol, ts), one row per bar in their order."""
    keys = _bar_keys(bars)
    out = keys.select(_KEYS)
    timeframe, spec = cfg.universe.timeframe, cfg.features
    if spec.microstructure is not None:
        micro = microstructure_by_bar(keys, snapshots, spec.microstructure, timeframe)
        out = out.hstack(micro.drop(_KEYS))
    if spec.fundamentals:
        ratios = fundamentals_by_bar(keys, statements, timeframe, cfg.validation.sessions.calendar)
        out = out.hstack(ratios.drop(_KEYS))
    return out.to_pandas()


def add_source_features(
    table: pd.DataFrame, bars: pd.DataFrame, lake: Lake, refs: list[FileRef], cfg: PipelineConfig
) -> pd.DataFrame:
    """`table` (keyed by symbol, ts) left-joined with `source_features` read from the validated files
    `refs` (roles in SOURCE_ROLES); unchanged when the job asks for none."""
    if not cfg.features.lake_datasets():
        return table
    from quanto.data.ingest import files_by_symbol
    from quanto.data.schemas import FUNDAMENTAL_SCHEMA, QUOTE_SCHEMA, depth_schema

    def scan(files: list[FileRef]) -> pl.LazyFrame:
        return pl.scan_parquet([str(lake.abspath(r.path)) for r in files])

    micro = cfg.features.microstructure
    books = [r for r in refs if micro is not None and r.role == micro.source]
    groups = files_by_symbol(books)
    snapshots: Snapshots
    if not books:  # none asked for, or validation quarantined every row: no snapshots, NaN values
        empty = QUOTE_SCHEMA if micro is None or micro.source == "quotes" else depth_schema(micro.levels or 1)
        snapshots = pl.from_arrow(empty.empty_table())
    elif None in groups:  # files outside a symbol folder: one scan of them all
        snapshots = scan(books)
    else:  # stored per symbol (and year): one symbol's files at a time
        snapshots = {symbol: scan(files) for symbol, files in groups.items()}
    filed = [r for r in refs if r.role == "fundamentals"]
    statements = scan(filed).collect() if filed else pl.from_arrow(FUNDAMENTAL_SCHEMA.empty_table())
    extra = source_features(bars, cfg, snapshots=snapshots, statements=statements)
    return table.merge(extra, on=_KEYS, how="left", validate="one_to_one")
