"""Bar validation in polars: schema, duplicates, ordering, OHLC sanity, volume, spikes, stale prices.

Order of work (`validate_bars`):
1. Schema (`check_schema`): exact canonical columns, compatible types, UTC timestamps; always fatal
   (SchemaMismatch). pandas input is converted to polars once; everything is cast to BAR_SCHEMA.
2. Exact duplicate rows are dropped and counted (the first copy stays), whatever the policies say.
3. Row rules, in quarantine priority order (the first failing quarantine rule names a row):
   `duplicate_conflict`, `price_positive`, `ohlc`, `volume_nonnegative`, `out_of_order`.
4. Series rules on the rows that passed step 3, per (symbol, timeframe) in ts order, so a bad tick
   that was quarantined never enters a rolling window: `spike`, `stale`.
Each rule's policy comes from `BarRules` (warn keeps and flags the row, quarantine moves it out, fail
raises ValidationFailed). Accepted rows are sorted by (symbol, timeframe, ts); rows are conserved:
rows_in = accepted + quarantined + duplicates_dropped.

Everything is vectorized over the whole frame: one stable sort by key, then shifts, cumulative sums
and rolling windows whose results are masked where a window would cross into another series (no
group-by for the series rules, no Python loop over rows or symbols).
"""

from __future__ import annotations

import pandas as pd
import polars as pl
import pyarrow as pa

from quanto.config.models import BarRules
from quanto.data.schemas import BAR_COLUMNS, BAR_SCHEMA, PRICE_COLUMNS, SchemaError, check_columns, conform
from quanto.validation.checks import Check, ValidationOutcome, run_checks

KEY = ["symbol", "timeframe", "ts"]
SERIES = ["symbol", "timeframe"]
QUARANTINE_COLUMNS = [*BAR_COLUMNS, "rule", "reason"]

# Prices and volume may arrive missing (pandas NaN becomes null): that is a row fault for
# price_positive / volume_nonnegative to quarantine, not a schema mismatch that stops the stage.
_INPUT_SCHEMA = pa.schema(
    [f.with_nullable(True) if f.name in (*PRICE_COLUMNS, "volume") else f for f in BAR_SCHEMA]
)

# Helper columns computed on the whole frame before run_checks, because run_checks evaluates reasons
# on the failing rows only (a shift or rolling window there would see the wrong neighbours).
_ROW = "__bars_row"  # input position
_KEY_N = "__bars_key_n"  # distinct rows sharing (symbol, timeframe, ts)
_PREV_TS = "__bars_prev_ts"  # ts of the previous row of the same series, in input order
_MEAN = "__bars_mean"  # mean of the previous `window` closes of the series (null if too few)
_STD = "__bars_std"  # their standard deviation
_RUN = "__bars_run"  # length so far of the run of identical closes ending at this row


class SchemaMismatch(SchemaError):
    """Input bars whose columns or types do not match the canonical schema (never retried)."""


def check_schema(df: pl.DataFrame | pd.DataFrame, source: str = "bars") -> None:
    """Raise SchemaMismatch naming the source, column, expected and found type.

    Accepts polars or pandas. `ts` must be UTC-aware (naive or another zone is a mismatch naming it);
    symbol, ts, timeframe, vendor and imputed must have no nulls; missing prices or volume are allowed
    here (the row rules quarantine them).
    """
    try:
        check_columns(df, _INPUT_SCHEMA, source)
    except SchemaMismatch:
        raise
    except SchemaError as e:
        raise SchemaMismatch(str(e)) from e


def canonical_bars(df: pl.DataFrame | pd.DataFrame, source: str = "bars") -> pl.DataFrame:
    """check_schema, then a polars frame with exactly BAR_SCHEMA's columns, order and dtypes.

    pandas is converted once; its NaN in float columns becomes null. Raises SchemaMismatch.
    """
    try:
        return conform(df, _INPUT_SCHEMA, source)
    except SchemaMismatch:
        raise
    except SchemaError as e:
        raise SchemaMismatch(str(e)) from e


def validate_bars(
    df: pl.DataFrame | pd.DataFrame, rules: BarRules, source: str = "bars"
) -> ValidationOutcome:
    """Split bars into accepted, quarantined (rule + reason) and flags under `rules` (module docstring).

    Returns polars frames: accepted has exactly the canonical columns sorted by (symbol, timeframe, ts);
    quarantined adds rule and reason; flags are (symbol, ts, rule, reason) of kept rows.
    `duplicates_dropped` counts exact duplicate rows; `extra_counters["out_of_order"]` counts rows
    whose ts was before the previous ts of their series in input order (whatever the policy).
    Raises SchemaMismatch on a schema mismatch and ValidationFailed when a `fail` rule finds rows.
    """
    bars = canonical_bars(df, source)
    rows_in = bars.height
    keyed, duplicates = _dedupe_and_key(bars)
    # Strictly earlier only: an equal ts is a duplicate, which the duplicate rules already report.
    out_of_order = int(keyed.select((pl.col("ts") < pl.col(_PREV_TS)).sum()).item())

    first = run_checks(keyed, _row_checks(rules), source)
    series = _with_series_stats(first.accepted.select(BAR_COLUMNS), rules)
    second = run_checks(series, _series_checks(rules), source)

    outcome = ValidationOutcome(
        accepted=second.accepted.select(BAR_COLUMNS),
        quarantined=pl.concat(
            [first.quarantined.select(QUARANTINE_COLUMNS), second.quarantined.select(QUARANTINE_COLUMNS)]
        ),
        flags=pl.concat([first.flags, second.flags]),
        duplicates_dropped=duplicates,
        extra_counters={"out_of_order": out_of_order},
    )
    if outcome.counters["rows_in"] != rows_in:  # conservation is an invariant, never a warning
        raise AssertionError(f"{source}: row conservation broken: {rows_in} in, {outcome.counters}")
    return outcome


def _dedupe_and_key(bars: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop exact duplicates; return the rest sorted by KEY with _KEY_N and _PREV_TS, and the count.

    Sorting puts rows sharing a key next to each other (in input order), so only those few rows need
    the expensive whole-row comparison.
    """
    n = bars.height
    ordered = _sorted_by_key(bars.with_row_index(_ROW))
    same_as_prev = pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in KEY]).fill_null(False)
    shared = ordered.select((same_as_prev | same_as_prev.shift(-1).fill_null(False)).arg_true()).to_series()
    if not shared.len():
        return ordered.with_columns(
            pl.lit(1, pl.UInt32).alias(_KEY_N), _previous_ts_in_input_order(ordered, n)
        ).drop(_ROW), 0
    candidates = ordered[shared].with_columns(__exact=~pl.struct(BAR_COLUMNS).is_first_distinct())
    exact = candidates["__exact"]
    key_n = pl.repeat(1, n, dtype=pl.UInt32, eager=True).alias(_KEY_N)
    key_n.scatter(
        shared.filter(~exact),
        candidates.filter(~exact).select(pl.len().over(KEY).cast(pl.UInt32)).to_series(),
    )
    ordered = ordered.with_columns(key_n)
    duplicates = int(exact.sum())
    if duplicates:
        drop = pl.repeat(False, n, dtype=pl.Boolean, eager=True).scatter(shared.filter(exact), True)
        ordered = ordered.filter(~drop)
    return ordered.with_columns(_previous_ts_in_input_order(ordered, n)).drop(_ROW), duplicates


def _sorted_by_key(bars: pl.DataFrame) -> pl.DataFrame:
    """`bars` sorted by KEY, stable (rows sharing a key keep their input order).

    Input that is already sorted (the usual case: vendor files, lake partitions) is returned as is.
    Otherwise the order comes from two stable single-column sorts (ts, then a lexically ordered code
    of (symbol, timeframe)): much faster in polars than one sort on two string keys and a timestamp.
    """
    ts_ok = pl.col("ts") >= pl.col("ts").shift(1)
    for c in reversed(SERIES):
        ts_ok = (pl.col(c) > pl.col(c).shift(1)) | ((pl.col(c) == pl.col(c).shift(1)) & ts_ok)
    if bars.select(ts_ok.fill_null(True).all()).item():
        return bars
    code = pl.lit(0, pl.UInt64)
    for c in SERIES:
        values = sorted(bars[c].unique().to_list())
        code = code * len(values) + pl.col(c).cast(pl.Enum(values)).to_physical().cast(pl.UInt64)
    keys = bars.select(code.alias("code"), "ts")
    by_ts = keys.select(pl.arg_sort_by("ts", maintain_order=True)).to_series()
    by_code = keys["code"].gather(by_ts).to_frame().select(pl.arg_sort_by("code", maintain_order=True))
    return bars[by_ts.gather(by_code.to_series())]


def _previous_ts_in_input_order(ordered: pl.DataFrame, n: int) -> pl.Series:
    """For each row of `ordered` (sorted by KEY, stable), the ts of the previous row of its series in
    input order (null for a series' first row)."""
    new_series = _new_series()
    monotone = ordered.select(
        ((pl.col(_ROW) > pl.col(_ROW).shift(1)) | new_series).fill_null(True).all()
    ).item()
    if monotone:
        # Each series arrived in ts order, so input order = sorted order: the previous row is adjacent.
        return ordered.select(pl.when(~new_series).then(pl.col("ts").shift(1)).alias(_PREV_TS)).to_series()
    # Otherwise compute it in input order and carry it over by input position.
    by_input = ordered.select(_ROW, *SERIES, "ts").sort(_ROW)
    prev = by_input.select(pl.col("ts").shift(1).over(SERIES)).to_series()
    at_position = pl.repeat(None, n, dtype=prev.dtype, eager=True)
    at_position.scatter(by_input[_ROW], prev)
    return at_position.gather(ordered[_ROW]).alias(_PREV_TS)


def _new_series() -> pl.Expr:
    """True on the first row of each (symbol, timeframe) series of a frame sorted by series."""
    return pl.any_horizontal([pl.col(c) != pl.col(c).shift(1) for c in SERIES]).fill_null(True)


def _num(expr: pl.Expr) -> pl.Expr:
    """A float as short text for reasons: 1.0 → "1", 2.5 → "2.5", null → "null"."""
    return expr.cast(pl.String).str.strip_suffix(".0").fill_null("null")


def _ts_text(expr: pl.Expr) -> pl.Expr:
    return expr.dt.to_string("%Y-%m-%d %H:%M:%S").fill_null("null")


def _bad(expr: pl.Expr) -> pl.Expr:
    """True where the condition `expr` does not hold, including missing values."""
    return (~expr).fill_null(True)


def _row_checks(rules: BarRules) -> list[Check]:
    """The per-row rules, in quarantine priority order: a non-finite price would also break ohlc,
    and naming it price_positive is the more useful reason."""
    o, h, lo, c, v = (pl.col(x) for x in ("open", "high", "low", "close", "volume"))
    top, bottom = pl.max_horizontal(o, c), pl.min_horizontal(o, c)
    prices = [pl.col(p) for p in PRICE_COLUMNS]
    return [
        Check(
            "duplicate_conflict",
            rules.duplicate_conflict.policy,
            pl.col(_KEY_N) > 1,
            pl.format("{} rows share (symbol, timeframe, ts) with different values", pl.col(_KEY_N)),
        ),
        Check(
            "price_positive",
            rules.price_positive.policy,
            pl.any_horizontal([_bad(p.is_finite() & (p > 0)) for p in prices]),
            pl.format(
                "prices must be finite and > 0: open={} high={} low={} close={}", *[_num(p) for p in prices]
            ),
        ),
        Check(
            "ohlc",
            rules.ohlc.policy,
            (h < top) | (lo > bottom) | (h < lo),
            pl.when(h < top)
            .then(pl.format("high {} < max(open, close) {}", _num(h), _num(top)))
            .when(lo > bottom)
            .then(pl.format("low {} > min(open, close) {}", _num(lo), _num(bottom)))
            .otherwise(pl.format("high {} < low {}", _num(h), _num(lo))),
        ),
        Check(
            "volume_nonnegative",
            rules.volume_nonnegative.policy,
            _bad(v.is_finite() & (v >= 0)),
            pl.format("volume must be >= 0, got {}", _num(v)),
        ),
        Check(
            "out_of_order",
            rules.out_of_order.policy,
            pl.col("ts") < pl.col(_PREV_TS),
            pl.format(
                "ts {} is before the previous ts {} of its series (input order)",
                _ts_text(pl.col("ts")),
                _ts_text(pl.col(_PREV_TS)),
            ),
        ),
    ]


def _with_series_stats(bars: pl.DataFrame, rules: BarRules) -> pl.DataFrame:
    """Add _MEAN, _STD (previous `spike.window` closes) and _RUN (identical-close run length).

    `bars` is sorted by KEY. Windows run over the whole column and are kept only where the row has
    `window` earlier rows in its own series, which is exact and avoids a group-by per series.
    A close that is missing or not finite (possible only when price_positive is `warn`) is left out:
    a window holding one yields no mean, and it breaks a run.
    """
    window = rules.spike.window
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    new_series = _new_series()
    # Position of the row within its series: row number minus that of the series' first row.
    in_series = row - pl.when(new_series).then(row).forward_fill()
    finite = bars.select(pl.col("close").is_finite().fill_null(False).all()).item()
    close = pl.col("close") if finite else pl.when(pl.col("close").is_finite()).then(pl.col("close"))
    filled = in_series >= window
    changed = ((close != close.shift(1)) | new_series).fill_null(True)
    return bars.with_columns(
        pl.when(filled).then(close.rolling_mean(window, min_samples=window).shift(1)).alias(_MEAN),
        pl.when(filled).then(close.rolling_std(window, min_samples=window).shift(1)).alias(_STD),
        (row - pl.when(changed).then(row).forward_fill() + 1).alias(_RUN),
    )


def _series_checks(rules: BarRules) -> list[Check]:
    """spike and stale, on a frame from _with_series_stats."""
    close, mean, std = pl.col("close"), pl.col(_MEAN), pl.col(_STD)
    deviation = (close - mean).abs()
    return [
        Check(
            "spike",
            rules.spike.policy,
            close.is_finite() & (deviation > rules.spike.k_sigma * std),
            pl.format(
                "close {} is {} std from the mean {} of the previous {} closes (std {})",
                _num(close),
                _num((deviation / std).round(1)),
                _num(mean.round(4)),
                pl.lit(rules.spike.window),
                _num(std.round(4)),
            ),
        ),
        Check(
            "stale",
            rules.stale.policy,
            pl.col(_RUN) >= rules.stale.bars,
            pl.format("close {} unchanged for {} bars", _num(close), pl.col(_RUN)),
        ),
    ]
