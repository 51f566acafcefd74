"""Split- and dividend-adjusted views of raw bars, computed at read time (raw data is never altered).

Backward adjustment: each symbol's latest bars keep their raw values and bars strictly before an
action's ex_date are scaled, so a series is continuous across splits and (in mode "all") dividends.

- Split (kind "split", `ratio` = new shares per old share, 4-for-1 = 4.0): earlier prices * 1/ratio,
  earlier volume * ratio.
- Dividend (kind "dividend", `cash` per share; mode "all" only): earlier prices * (1 - cash / C), where
  C is the raw close of the symbol's last bar before the ex_date (the CRSP/Yahoo multiplicative
  factor); volume is unchanged.
- Several actions compose multiplicatively: a bar's factor is the product over every applied action
  whose ex_date is after the bar's date.

The ex_date is a calendar date in the exchange's time zone `tz`: a bar is before it when its `ts`
converted to `tz` falls on an earlier date, so intraday bars of the ex_date itself (from midnight
local time on) are post-action, and an after-hours bar at 20:30 New York time the day before (already
the next UTC day) is pre-action.

Which actions count:
- Actions of symbols without bars, and actions outside the symbol's bars (ex_date on or before its
  first bar's date, which scales nothing, or after its last bar's date, which would scale the latest
  bars) have no effect on this frame and are ignored: they are neither applied nor reported.
- Rows with the same (symbol, ex_date, kind, vendor) and the same ratio/cash count once.
- The same (symbol, ex_date, kind) from two vendors raises InputError: applying both would adjust
  the event twice and picking one silently would be a guess; pass one vendor's actions.
- Every other action that cannot be applied is returned in `skipped` (the action's columns plus
  `reason`, one of the SKIP_* strings below), never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
import polars as pl

from quanto.data.schemas import BAR_SCHEMA, CORPORATE_ACTION_SCHEMA, SchemaError, conform, polars_schema
from quanto.errors import InputError

Mode = Literal["split", "all"]
DEFAULT_TZ = "America/New_York"

# Reasons in `Adjustment.skipped["reason"]`: fixed strings so callers can filter on them.
SKIP_CONFLICT = "conflicting duplicate"  # same (symbol, ex_date, kind, vendor), different ratio/cash
SKIP_UNKNOWN_KIND = "unknown kind"
SKIP_BAD_RATIO = "invalid split ratio"  # null, NaN, infinite or <= 0
SKIP_BAD_CASH = "invalid dividend cash"  # null, NaN, infinite or < 0
SKIP_NO_CLOSE = "previous close missing"  # last close before the ex_date is NaN/null/infinite or <= 0
SKIP_CASH_GE_CLOSE = "cash >= previous close"  # factor would be <= 0

_ACTION_COLUMNS = CORPORATE_ACTION_SCHEMA.names
_SKIPPED_SCHEMA = pl.Schema({**polars_schema(CORPORATE_ACTION_SCHEMA), "reason": pl.String})
_TS_DTYPE = pl.Datetime("ns", "UTC")
_FACTOR_SCHEMA = pl.Schema(
    {"symbol": pl.String, "ts": _TS_DTYPE, "price_factor": pl.Float64, "volume_factor": pl.Float64}
)


@dataclass(frozen=True)
class Adjustment:
    """Per-bar factors (symbol, ts, price_factor, volume_factor; the bars' row order) and the actions
    that were not applied (CORPORATE_ACTION_SCHEMA columns + reason; the actions' row order)."""

    factors: pl.DataFrame
    skipped: pl.DataFrame


def adjustment_factors(
    bars: pl.DataFrame | pd.DataFrame,
    actions: pl.DataFrame | pd.DataFrame,
    mode: Mode,
    tz: str = DEFAULT_TZ,
) -> Adjustment:
    """Backward-adjustment factors for every bar (see the module docstring for the rules).

    `bars` needs symbol, ts (time-zone aware) and close (other columns are ignored); `actions` must
    match CORPORATE_ACTION_SCHEMA. Raises SchemaError for malformed inputs and InputError for an
    unknown mode or time zone, or for the same event from several vendors.
    """
    if mode not in ("split", "all"):
        raise InputError(f"adjustment mode must be 'split' or 'all', got {mode!r}")
    keys = _bar_keys(bars)
    acts = conform(actions, CORPORATE_ACTION_SCHEMA, "corporate actions").with_row_index("_arow")
    try:
        keys = keys.with_columns(_d=pl.col("ts").dt.convert_time_zone(tz).dt.date())
    except pl.exceptions.PolarsError as e:
        raise InputError(f"adjustment time zone {tz!r} is not usable: {e}") from e

    # Each symbol's window of local dates: only actions inside it change any bar of this frame.
    span = keys.group_by("symbol").agg(_first=pl.col("_d").min(), _last=pl.col("_d").max())
    acts = acts.join(span, on="symbol", how="inner")  # symbols without bars: ignored
    if mode == "split":
        acts = acts.filter(pl.col("kind") != "dividend")
    acts = acts.filter((pl.col("ex_date") > pl.col("_first")) & (pl.col("ex_date") <= pl.col("_last")))

    multi = (
        acts.group_by("symbol", "ex_date", "kind")
        .agg(pl.col("vendor").unique().sort())
        .filter(pl.col("vendor").list.len() > 1)
        .sort("symbol", "ex_date", "kind")
    )
    if multi.height:
        first = multi.row(0, named=True)
        raise InputError(
            f"corporate actions: {multi.height} event(s) reported by several vendors, e.g. "
            f"{first['kind']} of {first['symbol']} on {first['ex_date']} from {first['vendor']}; "
            "pass one vendor's actions so no event is applied twice"
        )

    skipped: list[pl.DataFrame] = []
    key = ["symbol", "ex_date", "kind", "vendor"]
    # Identical re-deliveries count once; disagreeing values cannot be resolved here, so report them.
    conflict = pl.struct("ratio", "cash").n_unique().over(key) > 1
    acts = acts.with_columns(_conflict=conflict)
    skipped.append(_skip(acts.filter("_conflict"), SKIP_CONFLICT))
    acts = acts.filter(~pl.col("_conflict")).unique(subset=key, keep="first", maintain_order=True)

    is_split, is_div = pl.col("kind") == "split", pl.col("kind") == "dividend"
    ratio_ok = pl.col("ratio").is_finite().fill_null(False) & (pl.col("ratio") > 0).fill_null(False)
    cash_ok = pl.col("cash").is_finite().fill_null(False) & (pl.col("cash") >= 0).fill_null(False)
    skipped.append(_skip(acts.filter(~is_split & ~is_div), SKIP_UNKNOWN_KIND))
    skipped.append(_skip(acts.filter(is_split & ~ratio_ok), SKIP_BAD_RATIO))
    skipped.append(_skip(acts.filter(is_div & ~cash_ok), SKIP_BAD_CASH))
    splits = acts.filter(is_split & ratio_ok)
    divs = acts.filter(is_div & cash_ok)

    # Raw close of the last bar before each dividend's ex_date: the day's last close (ties in ts keep
    # input order), then the latest day strictly before the ex_date.
    daily = (
        keys.sort("symbol", "_d", "ts", "_row")
        .group_by("symbol", "_d", maintain_order=True)
        .agg(_prev_close=pl.col("close").last())
        .sort("_d")
    )
    divs = divs.sort("ex_date").join_asof(
        daily,
        left_on="ex_date",
        right_on="_d",
        by="symbol",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,  # sorted globally on the key, hence within each symbol
    )
    prev = pl.col("_prev_close")
    close_ok = prev.is_finite().fill_null(False) & (prev > 0).fill_null(False)
    skipped.append(_skip(divs.filter(~close_ok), SKIP_NO_CLOSE))
    divs = divs.filter(close_ok)
    skipped.append(_skip(divs.filter(pl.col("cash") >= pl.col("_prev_close")), SKIP_CASH_GE_CLOSE))
    divs = divs.filter(pl.col("cash") < pl.col("_prev_close"))

    # One multiplier per applied action; per symbol, the suffix product over ex_dates >= e is the
    # factor of every bar dated in [previous ex_date, e).
    mults = pl.concat(
        [
            splits.select("symbol", "ex_date", _pm=1.0 / pl.col("ratio"), _vm=pl.col("ratio")),
            divs.select(
                "symbol", "ex_date", _pm=1.0 - pl.col("cash") / pl.col("_prev_close"), _vm=pl.lit(1.0)
            ),
        ]
    )
    suffix = (
        mults.group_by("symbol", "ex_date")
        .agg(pl.col("_pm").product(), pl.col("_vm").product())
        .sort("symbol", "ex_date")
        .with_columns(
            pl.col("_pm").cum_prod(reverse=True).over("symbol"),
            pl.col("_vm").cum_prod(reverse=True).over("symbol"),
        )
        .sort("ex_date")
    )
    factors = (
        keys.sort("_d")
        .join_asof(
            suffix,
            left_on="_d",
            right_on="ex_date",
            by="symbol",
            strategy="forward",  # the first ex_date after the bar's date
            allow_exact_matches=False,  # bars on the ex_date are post-action
            check_sortedness=False,
        )
        .sort("_row")
        .select(
            "symbol",
            pl.col("ts").dt.convert_time_zone("UTC").cast(_TS_DTYPE),
            price_factor=pl.col("_pm").fill_null(1.0),
            volume_factor=pl.col("_vm").fill_null(1.0),
        )
    )
    skipped_frame = pl.concat(skipped).sort("_arow").drop("_arow")
    return Adjustment(factors=factors.cast(_FACTOR_SCHEMA), skipped=skipped_frame.cast(_SKIPPED_SCHEMA))


def adjust_bars(
    bars: pl.DataFrame | pd.DataFrame,
    actions: pl.DataFrame | pd.DataFrame,
    mode: Mode = "all",
    tz: str = DEFAULT_TZ,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(adjusted bars, skipped actions).

    The adjusted bars are a new BAR_SCHEMA frame in the input's row order: open/high/low/close/vwap
    times price_factor, volume times volume_factor, everything else (trades included) as is. The
    input frames are not modified.
    """
    raw = conform(bars, BAR_SCHEMA, "bars")
    adj = adjustment_factors(raw, actions, mode, tz)
    pf, vf = adj.factors["price_factor"], adj.factors["volume_factor"]
    adjusted = raw.with_columns(
        *[pl.col(c) * pf for c in ("open", "high", "low", "close", "vwap")],
        pl.col("volume") * vf,
    )
    return adjusted, adj.skipped


def _bar_keys(bars: pl.DataFrame | pd.DataFrame) -> pl.DataFrame:
    """symbol, ts, close and the row number `_row` of `bars`, checked enough to compute factors."""
    if isinstance(bars, pd.DataFrame):
        bars = conform(bars, BAR_SCHEMA, "bars")
    if not isinstance(bars, pl.DataFrame):
        raise SchemaError(f"bars: expected a polars or pandas DataFrame, got {type(bars).__name__}")
    missing = [c for c in ("symbol", "ts", "close") if c not in bars.columns]
    if missing:
        raise SchemaError(f"bars: missing column(s) {missing} needed for adjustment factors")
    ts_type = bars.schema["ts"]
    if not isinstance(ts_type, pl.Datetime) or ts_type.time_zone is None:
        raise SchemaError(f"bars: column 'ts' must be a time-zone aware timestamp, found {ts_type}")
    if bars["symbol"].null_count() or bars["ts"].null_count():
        raise SchemaError("bars: columns 'symbol' and 'ts' must not contain nulls")
    return bars.select(
        pl.col("symbol").cast(pl.String), "ts", pl.col("close").cast(pl.Float64)
    ).with_row_index("_row")


def _skip(frame: pl.DataFrame, reason: str) -> pl.DataFrame:
    """Rows of `frame` as skipped actions: the action columns, the input row number and `reason`."""
    return frame.select("_arow", *_ACTION_COLUMNS, reason=pl.lit(reason, dtype=pl.String))
