"""Fundamental features: valuation, profitability, growth, liquidity and leverage ratios, point in time.

Input statements are long form (FUNDAMENTAL_SCHEMA): one row per (symbol, period_end, field), with
`filed_at` the moment the number became public. Fields used (`FIELDS`):

- flows (per quarter, summed over 4 quarters for TTM): revenue, gross_profit, ebitda,
  operating_income, net_income, interest_expense;
- stocks (as of the latest quarter's end): total_assets, total_equity, total_debt, cash,
  current_assets, current_liabilities, inventory, shares_outstanding.

Other fields are ignored. Only quarterly rows count: `fiscal_period` like "2023Q1".."2023Q4"; annual
("FY2023") rows are ignored, so a quarter reported only inside an annual filing is a missing quarter.
Quarters are ordered by `fiscal_period` (fiscal years need not match calendar years).

Point in time. At bar `ts` a statement is visible iff `filed_at <= ts` (visible from the moment it is
filed; `ts` is the bar open, so a filing during a bar shows from the next bar on). For each
(fiscal quarter, field) the visible row with the latest `filed_at` wins, so a restatement replaces the
earlier value from its own filing time on and never before. The "latest quarter" at `ts` is the
newest fiscal quarter with any visible row; stock fields are read from that quarter only (a field it
lacks is NaN rather than a stale older value).

Features (`FEATURES`); TTM = sum of the latest quarter and the 3 before it, which must all be
visible for that field (else NaN):

- pe = close / (TTM net_income / shares_outstanding); NaN when TTM EPS <= 0 (a negative P/E ranks
  loss makers as cheapest, which is wrong).
- pb = close * shares_outstanding / total_equity; ev_ebitda = (close * shares + total_debt - cash) /
  TTM ebitda. NaN when equity, resp. TTM ebitda, is <= 0 (same reason as pe).
- roe = TTM net_income / total_equity (NaN when equity <= 0); roa = TTM net_income / total_assets.
- gross_margin, operating_margin, net_margin = TTM gross_profit, operating_income, net_income / TTM
  revenue.
- revenue_yoy, net_income_yoy: latest quarter vs the same quarter a year (4 quarters) earlier;
  revenue_qoq, net_income_qoq: vs the quarter before. Growth = (now - then) / |then|, so a smaller
  loss is positive growth; NaN when either quarter is missing or then == 0.
- current_ratio = current_assets / current_liabilities; quick_ratio = (current_assets - inventory) /
  current_liabilities (NaN without an inventory row: report inventory 0 when there is none).
- debt_to_equity = total_debt / total_equity (NaN when equity <= 0).
- interest_coverage = TTM operating_income / |TTM interest_expense| (vendors differ on the sign).

Every undefined value is NaN (never null, never +-inf): no statement yet, a missing field, a zero
denominator.
"""

from __future__ import annotations

import pandas as pd
import polars as pl

from quanto.data.schemas import FUNDAMENTAL_SCHEMA, SchemaError, conform

FAMILY = "fundamental"
FLOW_FIELDS = (
    "revenue",
    "gross_profit",
    "ebitda",
    "operating_income",
    "net_income",
    "interest_expense",
)
STOCK_FIELDS = (
    "total_assets",
    "total_equity",
    "total_debt",
    "cash",
    "current_assets",
    "current_liabilities",
    "inventory",
    "shares_outstanding",
)
FIELDS = FLOW_FIELDS + STOCK_FIELDS
FEATURES = (
    "pe",
    "pb",
    "ev_ebitda",
    "roe",
    "roa",
    "gross_margin",
    "operating_margin",
    "net_margin",
    "revenue_yoy",
    "net_income_yoy",
    "revenue_qoq",
    "net_income_qoq",
    "current_ratio",
    "quick_ratio",
    "debt_to_equity",
    "interest_coverage",
)
TTM_QUARTERS = 4
_QUARTER = r"^(\d{4})Q([1-4])$"
_AS_OF = "__as_of"
_ROW = "__row"


def _ratio(num: pl.Expr, den: pl.Expr, *, positive_den: bool = False) -> pl.Expr:
    """num / den, null where the denominator is zero (or not positive, when asked) or missing."""
    ok = den > 0 if positive_den else den != 0
    return pl.when(ok).then(num / den).otherwise(None)


def _growth(now: pl.Expr, then: pl.Expr) -> pl.Expr:
    """(now - then) / |then|: the abs keeps the sign meaning "better" when the base is a loss."""
    return _ratio(now - then, then.abs())


def _quarterly(fundamentals: pl.DataFrame) -> pl.LazyFrame:
    """Quarterly rows of the known fields, with `q` = a running quarter number (year * 4 + quarter)."""
    parts = pl.col("fiscal_period").str.extract_groups(_QUARTER)
    return (
        fundamentals.lazy()
        .filter(pl.col("fiscal_period").str.contains(_QUARTER) & pl.col("field").is_in(FIELDS))
        .with_columns(
            q=parts.struct.field("1").cast(pl.Int64) * 4 + parts.struct.field("2").cast(pl.Int64) - 1
        )
        .select("symbol", "filed_at", "q", pl.col("field").cast(pl.Enum(FIELDS)), "value", "vendor")
    )


def _snapshots(fundamentals: pl.DataFrame) -> pl.LazyFrame:
    """Per (symbol, filing time): the price-free inputs and ratios as known right after that filing.

    Knowledge only changes at a filing, so one snapshot per distinct filed_at, joined as-of onto the
    bars, is exactly the point-in-time state at every bar.
    """
    rows = _quarterly(fundamentals)
    # The newest quarter visible at each filing time: a running max over the symbol's filings.
    times = (
        rows.group_by("symbol", pl.col("filed_at").alias(_AS_OF))
        .agg(pl.col("q").max())
        .sort("symbol", _AS_OF)
        .with_columns(q_last=pl.col("q").cum_max().over("symbol"))
        .drop("q")
    )
    # Only the latest quarter and the 4 before it matter: join on those quarters alone rather than
    # every filing x every row (which grows with the square of a symbol's history).
    wanted = times.with_columns(q=pl.int_ranges(pl.col("q_last") - TTM_QUARTERS, pl.col("q_last") + 1))
    visible = wanted.explode("q").join(rows, on=["symbol", "q"]).filter(pl.col("filed_at") <= pl.col(_AS_OF))
    latest = (
        visible.sort("filed_at", "vendor", "value")  # ties at one filed_at: deterministic pick
        .unique(["symbol", _AS_OF, "q", "field"], keep="last")
        .with_columns(key=pl.format("{}@{}", "field", pl.col("q_last") - pl.col("q")))
    )
    # Wide: one column per (field, lag) with lag = quarters before the latest; absent = null.
    keys = [f"{f}@{lag}" for f in FIELDS for lag in range(TTM_QUARTERS + 1)]
    wide = latest.pivot("key", on_columns=keys, index=["symbol", _AS_OF], values="value")

    def at(field: str, lag: int = 0) -> pl.Expr:
        return pl.col(f"{field}@{lag}")

    def ttm(field: str) -> pl.Expr:
        # `+` propagates null, so a missing quarter in the window makes the whole TTM null.
        return sum((at(field, lag) for lag in range(1, TTM_QUARTERS)), at(field, 0))

    state = wide.with_columns(
        *(at(f).alias(f) for f in STOCK_FIELDS),
        *(ttm(f).alias(f"{f}_ttm") for f in FLOW_FIELDS),
        *(at(f, lag).alias(f"{f}_q{lag}") for f in ("revenue", "net_income") for lag in (0, 1, 4)),
    )

    c = pl.col
    equity_ok = dict(positive_den=True)
    return state.select(
        "symbol",
        _AS_OF,
        c("shares_outstanding").alias("__shares"),
        _ratio(c("net_income_ttm"), c("shares_outstanding"), positive_den=True).alias("__eps"),
        (c("total_debt") - c("cash")).alias("__net_debt"),
        c("ebitda_ttm").alias("__ebitda"),
        c("total_equity").alias("__equity"),
        _ratio(c("net_income_ttm"), c("total_equity"), **equity_ok).alias("roe"),
        _ratio(c("net_income_ttm"), c("total_assets")).alias("roa"),
        _ratio(c("gross_profit_ttm"), c("revenue_ttm")).alias("gross_margin"),
        _ratio(c("operating_income_ttm"), c("revenue_ttm")).alias("operating_margin"),
        _ratio(c("net_income_ttm"), c("revenue_ttm")).alias("net_margin"),
        _growth(c("revenue_q0"), c("revenue_q4")).alias("revenue_yoy"),
        _growth(c("net_income_q0"), c("net_income_q4")).alias("net_income_yoy"),
        _growth(c("revenue_q0"), c("revenue_q1")).alias("revenue_qoq"),
        _growth(c("net_income_q0"), c("net_income_q1")).alias("net_income_qoq"),
        _ratio(c("current_assets"), c("current_liabilities")).alias("current_ratio"),
        _ratio(c("current_assets") - c("inventory"), c("current_liabilities")).alias("quick_ratio"),
        _ratio(c("total_debt"), c("total_equity"), **equity_ok).alias("debt_to_equity"),
        _ratio(c("operating_income_ttm"), c("interest_expense_ttm").abs()).alias("interest_coverage"),
    )


def _bars_frame(bars: pl.DataFrame | pd.DataFrame) -> pl.DataFrame:
    """symbol, ts (UTC ns), close and the input row number, from polars or pandas bars."""
    frame = pl.from_pandas(bars) if isinstance(bars, pd.DataFrame) else bars
    missing = [c for c in ("symbol", "ts", "close") if c not in frame.columns]
    if missing:
        raise SchemaError(f"bars: missing column(s) {missing} for fundamental features")
    ts = frame.schema["ts"]
    if not isinstance(ts, pl.Datetime) or ts.time_zone is None:
        raise SchemaError(f"bars: column 'ts' must be a UTC-aware timestamp, found {ts}")
    return frame.select(
        pl.col("symbol").cast(pl.String),
        pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("ns"),
        pl.col("close").cast(pl.Float64),
    ).with_row_index(_ROW)


def fundamental_features(
    bars: pl.DataFrame | pd.DataFrame, fundamentals: pl.DataFrame | pd.DataFrame
) -> pl.DataFrame:
    """Point-in-time fundamental ratios for every bar (see the module docstring for definitions).

    `bars` needs symbol, ts (UTC-aware) and close (extra columns are ignored); `fundamentals` must
    match FUNDAMENTAL_SCHEMA (ideally validated already). Returns a polars frame with symbol, ts and
    the `FEATURES` columns (float64, NaN where undefined), one row per bar in the input's order.
    Each bar sees only statements with filed_at <= ts (as-of join by symbol). Raises SchemaError on
    bad input columns.
    """
    frame = _bars_frame(bars)
    statements = conform(fundamentals, FUNDAMENTAL_SCHEMA, "fundamentals")
    snapshots = _snapshots(statements).collect().sort(_AS_OF, "symbol")
    # join_asof needs both sides sorted on the as-of key; "backward" includes filed_at == ts.
    joined = frame.sort("ts", "symbol").join_asof(
        snapshots, left_on="ts", right_on=_AS_OF, by="symbol", strategy="backward", check_sortedness=False
    )
    c = pl.col
    price = (
        _ratio(c("close"), c("__eps"), positive_den=True).alias("pe"),
        _ratio(c("close") * c("__shares"), c("__equity"), positive_den=True).alias("pb"),
        _ratio(c("close") * c("__shares") + c("__net_debt"), c("__ebitda"), positive_den=True).alias(
            "ev_ebitda"
        ),
    )
    out = joined.sort(_ROW).select("symbol", "ts", *price, *FEATURES[3:])
    # null (nothing visible / missing field) and any overflow to +-inf both become NaN.
    return out.with_columns(
        pl.when(c(f).is_finite()).then(c(f)).otherwise(float("nan")).cast(pl.Float64).alias(f)
        for f in FEATURES
    )
