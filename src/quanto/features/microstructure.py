"""Microstructure features from order-book snapshots (depth) or level-1 quotes, not from bars.

`microstructure_features` computes, per snapshot and per symbol, using only that snapshot and the
ones before it (of the same symbol):

- `mid`, `spread` (ask_1 - bid_1), `rel_spread` (spread / mid);
- `depth_imbalance_<n>` = (sum bid_sz - sum ask_sz) / (sum bid_sz + sum ask_sz) over levels 1..n,
  for n in {1, 3, levels} (those n <= levels);
- `ofi`, the order-flow imbalance of Cont, Kukanov & Stoikov (2014) at level 1 since the previous
  snapshot: e_t = 1{b_t >= b_t-1} qb_t - 1{b_t <= b_t-1} qb_t-1 - 1{a_t <= a_t-1} qa_t
  + 1{a_t >= a_t-1} qa_t-1;
- `depth_imbalance_<n>_mean_<window>`, the mean imbalance over the last `window` snapshots;
- with levels >= 2: `book_slope_bid`, `book_slope_ask` (OLS slope of price on cumulative size over
  the levels of one side) and `book_slope` (mean of their absolute values).

`aggregate_to_bars` turns those per-snapshot values into per-bar `<feature>_last` / `<feature>_mean`
stamped with the bar open, so they join onto bars on (symbol, ts).

Undefined values are NaN, never +-inf: a crossed book (bid_1 > ask_1) makes every feature of that
snapshot NaN; a missing side makes mid/spread NaN; a zero size sum makes an imbalance NaN.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import polars.selectors as cs

from quanto.data.schemas import DEPTH_SIDES, SchemaError, depth_columns

TS_DTYPE = pl.Datetime("ns", "UTC")
IMBALANCE_DEPTHS = (1, 3)  # plus `levels` itself
# Bar timeframes we can bucket snapshots into, as polars durations. 1d bars are stamped with the
# session open (exchange calendar), which a fixed grid cannot reproduce, so it is not offered.
BAR_EVERY = {"1min": "1m", "5min": "5m", "1h": "1h"}
_KEYS = ("symbol", "ts")
_VALID = "__top_valid"  # helper column: level-1 book is two-sided and not crossed


def _normalize(depth: pl.DataFrame | pd.DataFrame, levels: int) -> tuple[pl.DataFrame, int]:
    """Polars frame with symbol, ts (UTC ns) and Float64 depth columns for levels 1..L, sorted by
    (symbol, ts); L = 1 for a level-1 quotes frame (bid_px, bid_sz, ask_px, ask_sz)."""
    if not isinstance(depth, pl.DataFrame | pd.DataFrame):
        raise SchemaError(f"depth: expected a polars or pandas DataFrame, got {type(depth).__name__}")
    # pandas NaN becomes null here, so "missing" has one representation below.
    frame = pl.from_pandas(depth) if isinstance(depth, pd.DataFrame) else depth
    if "bid_px_1" not in frame.columns and "bid_px" in frame.columns:
        frame = frame.rename({side: f"{side}_1" for side in DEPTH_SIDES if side in frame.columns})
        levels = 1
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"depth levels must be an integer >= 1, got {levels!r}")
    value_cols = [c for i in range(1, levels + 1) for c in depth_columns(i)]
    missing = [c for c in (*_KEYS, *value_cols) if c not in frame.columns]
    if missing:
        raise SchemaError(f"depth: missing column(s) {missing} for {levels} level(s)")
    ts = frame.schema["ts"]
    if not isinstance(ts, pl.Datetime) or ts.time_zone is None:
        raise SchemaError(f"depth: column 'ts' expected timestamp[ns, UTC], found {ts}")
    bad = [c for c in value_cols if not (frame.schema[c].is_numeric() or frame.schema[c] == pl.Null)]
    if bad:
        raise SchemaError(f"depth: column(s) {bad} expected float64, found non-numeric types")
    out = frame.select(
        pl.col("symbol").cast(pl.String),
        pl.col("ts").dt.convert_time_zone("UTC").cast(TS_DTYPE),
        # NaN (polars input) is treated like null: an absent price or size.
        *[pl.col(c).cast(pl.Float64).fill_nan(None) for c in value_cols],
    )
    # Stable sort: snapshots sharing a timestamp keep their arrival order.
    return out.sort(_KEYS, maintain_order=True), levels


def _div(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den is zero or null (never inf)."""
    return pl.when(den != 0).then(num / den).otherwise(None)


def _size(side: str, level: int) -> pl.Expr:
    """Size resting at a level, 0 where the level is absent (null price or size, or negative size)."""
    px, sz = pl.col(f"{side}_px_{level}"), pl.col(f"{side}_sz_{level}")
    return pl.when(px.is_not_null() & (sz >= 0)).then(sz).otherwise(0.0)


def _imbalance(n: int) -> pl.Expr:
    bid = pl.sum_horizontal(*[_size("bid", i) for i in range(1, n + 1)])
    ask = pl.sum_horizontal(*[_size("ask", i) for i in range(1, n + 1)])
    return _div(bid - ask, bid + ask)


def _ofi() -> pl.Expr:
    """Cont-Kukanov-Stoikov order-flow imbalance at level 1; null on the first snapshot of a symbol
    or when this or the previous snapshot has no valid two-sided top of book."""
    b, qb, a, qa = (pl.col(c) for c in depth_columns(1))
    b0, qb0, a0, qa0 = (pl.col(c).shift(1).over("symbol") for c in depth_columns(1))
    e = (
        pl.when(b >= b0).then(qb).otherwise(0.0)
        - pl.when(b <= b0).then(qb0).otherwise(0.0)
        - pl.when(a <= a0).then(qa).otherwise(0.0)
        + pl.when(a >= a0).then(qa0).otherwise(0.0)
    )
    prev_valid = pl.col(_VALID).shift(1).over("symbol").fill_null(False)
    sizes_known = pl.all_horizontal(qb.is_not_null(), qa.is_not_null(), qb0.is_not_null(), qa0.is_not_null())
    return pl.when(pl.col(_VALID) & prev_valid & sizes_known).then(e).otherwise(None)


def _with_book_slope(book: pl.DataFrame, side: str, levels: int) -> pl.DataFrame:
    """`book` plus `__slope_<side>`: OLS slope of price on cumulative size over one side's levels.

    Only levels with a price and a positive size count; the cumulative size runs over those. Null
    with fewer than two such levels (no line to fit). Built in stages of flat columns: one nested
    expression repeats each cumulative sum inside every later one and is orders of magnitude slower.
    """
    p = f"__{side}"
    ok = [
        pl.col(f"{side}_px_{i}").is_not_null() & (pl.col(f"{side}_sz_{i}") > 0) for i in range(1, levels + 1)
    ]
    book = book.with_columns(
        *[o.cast(pl.Float64).alias(f"{p}_u{i}") for i, o in enumerate(ok, 1)],
        *[
            pl.when(o).then(pl.col(f"{side}_sz_{i}")).otherwise(0.0).alias(f"{p}_q{i}")
            for i, o in enumerate(ok, 1)
        ],
        *[
            pl.when(o).then(pl.col(f"{side}_px_{i}")).otherwise(0.0).alias(f"{p}_y{i}")
            for i, o in enumerate(ok, 1)
        ],
    )
    idx = range(1, levels + 1)
    u, x, y = ([pl.col(f"{p}_{k}{i}") for i in idx] for k in ("u", "x", "y"))
    book = book.with_columns(
        pl.sum_horizontal(pl.col(f"{p}_q{j}") for j in range(1, i + 1)).alias(f"{p}_x{i}") for i in idx
    )
    book = book.with_columns(pl.sum_horizontal(u).alias(f"{p}_n"))
    n = pl.col(f"{p}_n")
    book = book.with_columns(
        _div(pl.sum_horizontal([ui * xi for ui, xi in zip(u, x, strict=True)]), n).alias(f"{p}_mx"),
        _div(pl.sum_horizontal(y), n).alias(f"{p}_my"),
    )
    mx, my = pl.col(f"{p}_mx"), pl.col(f"{p}_my")
    # Centered sums: sizes in the millions squared would lose the slope to cancellation otherwise.
    sxy = pl.sum_horizontal([ui * (xi - mx) * (yi - my) for ui, xi, yi in zip(u, x, y, strict=True)])
    sxx = pl.sum_horizontal([ui * (xi - mx) ** 2 for ui, xi in zip(u, x, strict=True)])
    slope = pl.when(n >= 2).then(_div(sxy, sxx)).otherwise(None).alias(f"__slope_{side}")
    return book.with_columns(slope).drop(cs.starts_with(f"{p}_"))


def _to_nan(frame: pl.DataFrame) -> pl.DataFrame:
    """Undefined (null or +-inf) float values as NaN: the family's one representation of 'undefined'."""
    floats = [c for c, t in frame.schema.items() if t == pl.Float64]
    return frame.with_columns(
        pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(float("nan")).alias(c) for c in floats
    )


def imbalance_depths(levels: int) -> tuple[int, ...]:
    """The n of the `depth_imbalance_<n>` columns for a book with `levels` levels: {1, 3, levels} <= levels."""
    return tuple(sorted({n for n in (*IMBALANCE_DEPTHS, levels) if n <= levels}))


def microstructure_features(
    depth: pl.DataFrame | pd.DataFrame, levels: int, *, window: int = 50
) -> pl.DataFrame:
    """Per-snapshot microstructure features, per symbol and backward-looking only.

    `depth` holds symbol, ts and bid_px_i, bid_sz_i, ask_px_i, ask_sz_i for i = 1..levels (extra
    columns, e.g. vendor or deeper levels, are ignored), or is a level-1 quotes frame (bid_px, bid_sz,
    ask_px, ask_sz), which is treated as levels = 1. polars or pandas; ts must be timezone-aware.

    Returns a polars frame sorted by (symbol, ts), one row per snapshot: symbol, ts, mid, spread,
    rel_spread, depth_imbalance_<n> for n in `imbalance_depths(levels)`, ofi,
    depth_imbalance_<n>_mean_<window>, and with levels >= 2 book_slope_bid, book_slope_ask,
    book_slope. See the module docstring for definitions. Undefined values are NaN, never inf.

    The rolling mean covers the last `window` snapshots of the symbol (NaN until `window` snapshots
    exist) and averages the defined imbalances among them (NaN if none is defined), so one crossed
    snapshot does not blank a whole window.

    Raises SchemaError on missing columns or a naive ts, ValueError on a bad `levels` / `window`.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    book, levels = _normalize(depth, levels)
    bid1, _, ask1, _ = (pl.col(c) for c in depth_columns(1))
    book = book.with_columns(
        (bid1.is_not_null() & ask1.is_not_null() & (bid1 > 0) & (bid1 <= ask1)).alias(_VALID)
    )
    valid = pl.col(_VALID)
    crossed = bid1.is_not_null() & ask1.is_not_null() & (bid1 > ask1)
    depths = imbalance_depths(levels)
    mid = (bid1 + ask1) / 2
    exprs = [
        pl.when(valid).then(mid).alias("mid"),
        pl.when(valid).then(ask1 - bid1).alias("spread"),
        pl.when(valid).then(_div(ask1 - bid1, mid)).alias("rel_spread"),
        # A crossed book is bad data: its sizes say nothing trustworthy either.
        *[pl.when(~crossed).then(_imbalance(n)).alias(f"depth_imbalance_{n}") for n in depths],
        _ofi().alias("ofi"),
    ]
    if levels >= 2:
        book = _with_book_slope(_with_book_slope(book, "bid", levels), "ask", levels)
        bid_slope, ask_slope = pl.col("__slope_bid"), pl.col("__slope_ask")
        exprs += [
            pl.when(~crossed).then(bid_slope).alias("book_slope_bid"),
            pl.when(~crossed).then(ask_slope).alias("book_slope_ask"),
            pl.when(~crossed).then((bid_slope.abs() + ask_slope.abs()) / 2).alias("book_slope"),
        ]
    out = book.select(*_KEYS, *exprs)
    # Nulls (not NaN) at this point, so rolling_mean skips undefined snapshots instead of spreading NaN.
    warm = pl.int_range(pl.len()).over("symbol") >= window - 1
    rolling = [
        pl.when(warm)
        .then(pl.col(f"depth_imbalance_{n}").rolling_mean(window, min_samples=1).over("symbol"))
        .alias(f"depth_imbalance_{n}_mean_{window}")
        for n in depths
    ]
    out = out.with_columns(rolling)
    slope_cols = ["book_slope_bid", "book_slope_ask", "book_slope"] if levels >= 2 else []
    order = [
        *_KEYS,
        "mid",
        "spread",
        "rel_spread",
        *[f"depth_imbalance_{n}" for n in depths],
        "ofi",
        *[f"depth_imbalance_{n}_mean_{window}" for n in depths],
        *slope_cols,
    ]
    return _to_nan(out.select(order))


def aggregate_to_bars(
    features: pl.DataFrame | pd.DataFrame, timeframe: str, *, offset: dt.timedelta = dt.timedelta(0)
) -> pl.DataFrame:
    """Per-bar `<feature>_last` and `<feature>_mean` of per-snapshot features, keyed by bar open.

    A snapshot at time t belongs to the bar [open, open + timeframe) containing t (10:00:30 → the
    10:00 bar; 10:01:00 → the 10:01 bar), so a bar sees only snapshots inside it — the same
    information its close price has. `_last` is the value at the bar's last snapshot (NaN if that one
    is undefined); `_mean` averages the defined values in the bar (NaN if none). `snapshots` counts the
    snapshots in the bar. Bars without snapshots have no row.

    `timeframe` is one of 1min, 5min, 1h. The grid starts at UTC midnight shifted by `offset`: pass
    30 minutes for 1h bars on a 9:30 session open (XNYS), whose bars open at 9:30, 10:30, ...

    Returns a polars frame sorted by (symbol, ts) with ts = bar open (UTC ns), ready to join onto
    bars on (symbol, ts).
    """
    if timeframe not in BAR_EVERY:
        raise ValueError(f"unknown timeframe {timeframe!r}; expected one of {sorted(BAR_EVERY)}")
    frame = pl.from_pandas(features) if isinstance(features, pd.DataFrame) else features
    missing = [c for c in _KEYS if c not in frame.columns]
    if missing:
        raise SchemaError(f"features: missing column(s) {missing}")
    value_cols = [c for c, t in frame.schema.items() if c not in _KEYS and t.is_numeric()]
    ts = pl.col("ts").dt.convert_time_zone("UTC").cast(TS_DTYPE)
    shift = pl.lit(offset, dtype=pl.Duration("ns"))
    frame = frame.with_columns(
        ts.alias("__snapshot_ts"),
        ((ts - shift).dt.truncate(BAR_EVERY[timeframe]) + shift).alias("ts"),
    ).sort(["symbol", "__snapshot_ts"], maintain_order=True)
    aggs = []
    for c in value_cols:
        v = pl.col(c).cast(pl.Float64)
        aggs += [v.last().alias(f"{c}_last"), v.fill_nan(None).mean().alias(f"{c}_mean")]
    out = frame.group_by(_KEYS, maintain_order=True).agg(*aggs, pl.len().cast(pl.Int64).alias("snapshots"))
    return _to_nan(out.sort(_KEYS))
