"""Canonical schemas shared by every vendor (DESIGN.md section 5)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import pyarrow as pa

from quanto.errors import InputError

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("timeframe", pa.string(), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64(), nullable=True),
        pa.field("trades", pa.int64(), nullable=True),
        pa.field("vendor", pa.string(), nullable=False),
        pa.field("imputed", pa.bool_(), nullable=False),
    ]
)
BAR_COLUMNS = BAR_SCHEMA.names
PRICE_COLUMNS = ("open", "high", "low", "close")

# Rows the validation stage rejects carry these two extra columns in the quarantine dataset.
QUARANTINE_SCHEMA = BAR_SCHEMA.append(pa.field("rule", pa.string())).append(pa.field("reason", pa.string()))


def empty_bars() -> pd.DataFrame:
    """An empty frame with the canonical bar columns and dtypes."""
    return BAR_SCHEMA.empty_table().to_pandas()


def conform_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Return `df` with exactly the canonical columns, order and dtypes (ts as UTC nanoseconds).

    Raises KeyError naming the missing columns.
    """
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"bars are missing canonical columns {missing}")
    out = df[BAR_COLUMNS].copy()
    ts = pd.to_datetime(out["ts"], utc=True)
    out["ts"] = ts.astype("datetime64[ns, UTC]")
    for c in (*PRICE_COLUMNS, "volume", "vwap"):
        out[c] = out[c].astype("float64")
    out["trades"] = out["trades"].astype("Int64")
    out["imputed"] = out["imputed"].astype(bool)
    for c in ("symbol", "timeframe", "vendor"):
        out[c] = out[c].astype(str)
    return out.reset_index(drop=True)


def bars_to_table(df: pd.DataFrame) -> pa.Table:
    """Canonical frame to an Arrow table with the exact BAR_SCHEMA."""
    return pa.Table.from_pandas(conform_bars(df), schema=BAR_SCHEMA, preserve_index=False)


# --- Other datasets (DESIGN.md section 5). Every timestamp is UTC nanoseconds; prices are float64. ---

QUOTE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),  # canonical symbol
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),  # quote time (exchange or vendor)
        pa.field("bid_px", pa.float64(), nullable=True),  # best bid; null = no bid (one-sided quote)
        pa.field("bid_sz", pa.float64(), nullable=True),  # shares (float: vendors ship fractional sizes)
        pa.field("ask_px", pa.float64(), nullable=True),  # best ask; null = no ask (one-sided quote)
        pa.field("ask_sz", pa.float64(), nullable=True),  # shares
        pa.field("vendor", pa.string(), nullable=False),
    ]
)

TRADE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),  # canonical symbol
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),  # execution time
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),  # shares
        pa.field("trade_id", pa.string(), nullable=True),  # vendor/exchange id, when shipped
        pa.field("conditions", pa.string(), nullable=True),  # sale condition codes as shipped, e.g. "@ T"
        pa.field("vendor", pa.string(), nullable=False),
    ]
)

DEPTH_SIDES = ("bid_px", "bid_sz", "ask_px", "ask_sz")


def depth_columns(level: int) -> tuple[str, str, str, str]:
    """(bid_px_i, bid_sz_i, ask_px_i, ask_sz_i) for book level `level` (1 = best)."""
    return tuple(f"{side}_{level}" for side in DEPTH_SIDES)  # type: ignore[return-value]


def depth_schema(levels: int) -> pa.Schema:
    """Order-book snapshots with `levels` levels: symbol, ts, then per level i = 1..N
    bid_px_i, bid_sz_i, ask_px_i, ask_sz_i (1 = best), then vendor.

    Prices and sizes are nullable: a side with a null price at a level is absent there (thin book).
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"depth levels must be an integer >= 1, got {levels!r}")
    fields = [
        pa.field("symbol", pa.string(), nullable=False),  # canonical symbol
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),  # snapshot time
    ]
    for i in range(1, levels + 1):
        bid_px, bid_sz, ask_px, ask_sz = depth_columns(i)
        fields += [
            pa.field(bid_px, pa.float64(), nullable=True),  # i-th best bid price
            pa.field(bid_sz, pa.float64(), nullable=True),  # size resting at bid_px_i
            pa.field(ask_px, pa.float64(), nullable=True),  # i-th best ask price
            pa.field(ask_sz, pa.float64(), nullable=True),  # size resting at ask_px_i
        ]
    fields.append(pa.field("vendor", pa.string(), nullable=False))
    return pa.schema(fields)


CORPORATE_ACTION_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),  # canonical symbol
        pa.field("ex_date", pa.date32(), nullable=False),  # first session trading without the entitlement
        pa.field("kind", pa.string(), nullable=False),  # "split" | "dividend"
        pa.field("ratio", pa.float64(), nullable=True),  # splits: new shares per old share (2-for-1 = 2.0)
        pa.field("cash", pa.float64(), nullable=True),  # dividends: cash per share, in the listing currency
        pa.field("vendor", pa.string(), nullable=False),
    ]
)
CORPORATE_ACTION_KINDS = ("split", "dividend")

# Long form: one row per (statement, field). A restatement is a new row with a later filed_at.
FUNDAMENTAL_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),  # canonical symbol
        pa.field("period_end", pa.date32(), nullable=False),  # last day of the fiscal period reported
        # When the number became public. Point-in-time joins use this, never period_end.
        pa.field("filed_at", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("fiscal_period", pa.string(), nullable=False),  # e.g. "2023Q4", "FY2023"
        pa.field("field", pa.string(), nullable=False),  # e.g. "revenue", "net_income", "total_assets"
        pa.field("value", pa.float64(), nullable=False),  # in the reporting currency's units
        pa.field("vendor", pa.string(), nullable=False),
    ]
)

# Option bars: the contract's terms, then the bar columns ts..vwap, trades, vendor (no imputed flag).
OPTION_BAR_SCHEMA = pa.schema(
    [
        pa.field("underlying", pa.string(), nullable=False),  # canonical symbol of the underlying
        pa.field("symbol", pa.string(), nullable=False),  # OCC symbol, e.g. "AAPL  240119C00190000"
        pa.field("expiry", pa.date32(), nullable=False),  # expiration date
        pa.field("strike", pa.float64(), nullable=False),  # strike price
        pa.field("right", pa.string(), nullable=False),  # "C" (call) | "P" (put)
        *[
            BAR_SCHEMA.field(name)
            for name in BAR_COLUMNS[BAR_COLUMNS.index("ts") : BAR_COLUMNS.index("vwap") + 1]
        ],
        BAR_SCHEMA.field("trades"),
        BAR_SCHEMA.field("vendor"),
    ]
)
OPTION_RIGHTS = ("C", "P")

# Fixed-shape schemas by dataset kind; depth has one schema per level count (depth_schema).
SCHEMAS: dict[str, pa.Schema] = {
    "bars": BAR_SCHEMA,
    "quotes": QUOTE_SCHEMA,
    "trades": TRADE_SCHEMA,
    "corporate_actions": CORPORATE_ACTION_SCHEMA,
    "fundamentals": FUNDAMENTAL_SCHEMA,
    "option_bars": OPTION_BAR_SCHEMA,
}


class SchemaError(InputError):
    """A frame whose columns, types or required values do not match its canonical schema.

    The message names the source, the column, the expected type and the type found.
    """


def _polars_type_ok(dtype: pl.DataType, expected: pa.DataType) -> str | None:
    """None when a polars column of `dtype` can hold `expected`, else what is wrong with it."""
    if dtype == pl.Null:  # an all-null column has no type of its own; nullability is checked apart
        return None
    if pa.types.is_timestamp(expected):
        if not isinstance(dtype, pl.Datetime):
            return ""
        if dtype.time_zone is None:  # naive: refuse rather than guess the zone
            return " (timestamps must be UTC-aware, found no time zone)"
        return None  # any zone is an exact instant: conform() normalizes it to UTC
    if pa.types.is_date32(expected):
        return None if dtype == pl.Date else ""
    if pa.types.is_floating(expected):
        return None if dtype.is_numeric() else ""
    if pa.types.is_integer(expected):
        return None if dtype.is_integer() else ""
    if pa.types.is_boolean(expected):
        return None if dtype == pl.Boolean else ""
    if pa.types.is_string(expected):
        return None if isinstance(dtype, pl.String | pl.Categorical | pl.Enum) else ""
    raise TypeError(f"schema uses arrow type {expected}, which the column check does not know")


def _pandas_type_ok(col: pd.Series, expected: pa.DataType) -> str | None:
    """None when a pandas column can hold `expected`, else what is wrong with it."""
    dtype = col.dtype
    if pd.api.types.is_object_dtype(dtype) and col.isna().all():  # all missing: no type of its own
        return None
    if isinstance(dtype, pd.ArrowDtype):  # pyarrow-backed pandas: check the arrow type itself
        return _polars_type_ok(pl.from_arrow(pa.array([], type=dtype.pyarrow_dtype)).dtype, expected)
    if pa.types.is_timestamp(expected):
        if not isinstance(dtype, pd.DatetimeTZDtype):
            return " (timestamps must be UTC-aware)" if pd.api.types.is_datetime64_dtype(dtype) else ""
        return None  # any zone is an exact instant: conform() normalizes it to UTC
    if pa.types.is_date32(expected):
        # pandas has no date dtype: accept naive datetime64 (midnight) or objects that are all dates.
        if pd.api.types.is_datetime64_dtype(dtype) and not isinstance(dtype, pd.DatetimeTZDtype):
            values = col.dropna()
            return None if (values == values.dt.normalize()).all() else " (dates must be at midnight)"
        if pd.api.types.is_object_dtype(dtype) and all(type(v) is dt.date for v in col.dropna()):
            return None
        return ""
    if pa.types.is_floating(expected) or pa.types.is_integer(expected):
        ok = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        return None if ok else ""
    if pa.types.is_boolean(expected):
        return None if pd.api.types.is_bool_dtype(dtype) else ""
    if pa.types.is_string(expected):
        if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
            return None
        if isinstance(dtype, pd.CategoricalDtype) or (
            pd.api.types.is_object_dtype(dtype) and all(isinstance(v, str) for v in col.dropna())
        ):
            return None
        return ""
    raise TypeError(f"schema uses arrow type {expected}, which the column check does not know")


def check_columns(df: pl.DataFrame | pd.DataFrame, schema: pa.Schema, source: str) -> None:
    """Check that `df` (polars or pandas) has exactly `schema`'s columns, compatible types and no
    nulls in non-nullable columns. Column order does not matter.

    Compatible means castable without loss of meaning: any numeric type for float64, any integer type
    for int64, UTC-aware timestamps of any unit, String/Categorical for strings; pandas dates may be
    naive datetime64 at midnight or `datetime.date` objects; an all-null column fits any type.
    Raises SchemaError naming source, column, expected type and the type found.
    """
    if not isinstance(df, pl.DataFrame | pd.DataFrame):
        raise SchemaError(f"{source}: expected a polars or pandas DataFrame, got {type(df).__name__}")
    columns = [str(c) for c in df.columns]
    missing = [c for c in schema.names if c not in columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}; expected {schema.names}")
    extra = [c for c in columns if c not in schema.names]
    if extra:
        raise SchemaError(f"{source}: unexpected column(s) {extra}; expected {schema.names}")
    if len(set(columns)) != len(columns):
        raise SchemaError(f"{source}: duplicate column names in {columns}")
    for f in schema:
        if isinstance(df, pl.DataFrame):
            found, problem = df.schema[f.name], _polars_type_ok(df.schema[f.name], f.type)
            nulls = df[f.name].null_count()
        else:
            found, problem = df[f.name].dtype, _pandas_type_ok(df[f.name], f.type)
            nulls = int(df[f.name].isna().sum())
        if problem is not None:
            raise SchemaError(f"{source}: column '{f.name}' expected {f.type}, found {found}{problem}")
        if not f.nullable and nulls:
            raise SchemaError(
                f"{source}: column '{f.name}' ({f.type}) is not nullable but has {nulls} null(s)"
            )


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The polars dtypes of an arrow schema (e.g. timestamp[ns, UTC] → Datetime('ns', 'UTC'))."""
    return pl.from_arrow(schema.empty_table()).schema


def conform(df: pl.DataFrame | pd.DataFrame, schema: pa.Schema, source: str) -> pl.DataFrame:
    """check_columns, then a polars frame with exactly `schema`'s column order and dtypes.

    pandas NaN in float columns becomes null (pandas cannot tell them apart); polars NaN stays NaN.
    Raises SchemaError when a value cannot be cast (e.g. 1.5 in an integer column).
    """
    check_columns(df, schema, source)
    frame = pl.from_pandas(df) if isinstance(df, pd.DataFrame) else df
    target = polars_schema(schema)
    out = {}
    for name, dtype in target.items():
        col = frame[name]
        if dtype == pl.Date and isinstance(col.dtype, pl.Datetime):
            col = col.dt.date()  # pandas dates arrive as naive datetime64
        if isinstance(dtype, pl.Datetime) and isinstance(col.dtype, pl.Datetime) and col.dtype.time_zone:
            col = col.dt.convert_time_zone("UTC")  # normalize: same instants, UTC labels
        if dtype.is_integer() and col.dtype.is_float():
            # pandas turns int columns with missing values into float; take them back only if whole.
            values = col.drop_nulls()
            if not (values.is_finite() & (values == values.floor())).all():
                raise SchemaError(
                    f"{source}: column '{name}' expected {dtype}, found non-integral {col.dtype} values"
                )
        try:
            out[name] = col.cast(dtype, strict=True)
        except pl.exceptions.PolarsError as e:
            raise SchemaError(
                f"{source}: column '{name}' cannot be cast from {col.dtype} to {dtype}: {e}"
            ) from e
    return pl.DataFrame(out, schema=target)


# --- Reference data and snapshots from vendor REST APIs (issue: ingest). ---

# One row per listed instrument as the vendor describes it (Polygon reference tickers).
TICKER_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),  # canonical symbol
        pa.field("name", pa.string(), nullable=True),  # issuer / fund name
        pa.field("market", pa.string(), nullable=True),  # e.g. "stocks", "otc", "indices"
        pa.field("locale", pa.string(), nullable=True),  # e.g. "us"
        pa.field("primary_exchange", pa.string(), nullable=True),  # MIC, e.g. "XNAS"
        pa.field("type", pa.string(), nullable=True),  # vendor's security type, e.g. "CS", "ETF"
        pa.field("active", pa.bool_(), nullable=True),  # listed (tradable) now
        pa.field("currency", pa.string(), nullable=True),  # listing currency, e.g. "usd"
        pa.field("cik", pa.string(), nullable=True),  # SEC central index key (text: keeps leading zeros)
        pa.field("composite_figi", pa.string(), nullable=True),
        pa.field("list_date", pa.date32(), nullable=True),  # first listing date
        pa.field("delisted_utc", pa.timestamp("ns", tz="UTC"), nullable=True),  # null while listed
        pa.field("vendor", pa.string(), nullable=False),
    ]
)

# Option chain snapshots: the contract's terms, then the day's bar, quote, greeks and open interest as
# the vendor reported them at `ts` (the moment the snapshot was taken).
OPTION_SNAPSHOT_SCHEMA = pa.schema(
    [
        OPTION_BAR_SCHEMA.field("underlying"),
        OPTION_BAR_SCHEMA.field("symbol"),  # OCC symbol
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),  # when the snapshot was taken
        OPTION_BAR_SCHEMA.field("expiry"),
        OPTION_BAR_SCHEMA.field("strike"),
        OPTION_BAR_SCHEMA.field("right"),
        # The session's bar so far; null before the contract's first trade of the day.
        *[pa.field(name, pa.float64(), nullable=True) for name in ("open", "high", "low", "close")],
        pa.field("volume", pa.float64(), nullable=True),  # contracts
        pa.field("vwap", pa.float64(), nullable=True),
        pa.field("bid", pa.float64(), nullable=True),  # last NBBO quote
        pa.field("ask", pa.float64(), nullable=True),
        pa.field("underlying_price", pa.float64(), nullable=True),
        pa.field("implied_volatility", pa.float64(), nullable=True),  # annualized, 0.25 = 25%
        *[pa.field(name, pa.float64(), nullable=True) for name in ("delta", "gamma", "theta", "vega")],
        pa.field("open_interest", pa.float64(), nullable=True),  # contracts
        pa.field("vendor", pa.string(), nullable=False),
    ]
)

# Broker instrument master (Kite `/instruments`): maps canonical symbols to the broker's numeric tokens.
INSTRUMENT_SCHEMA = pa.schema(
    [
        pa.field(
            "symbol", pa.string(), nullable=False
        ),  # canonical "EXCHANGE:TRADINGSYMBOL", e.g. "NSE:INFY"
        pa.field("instrument_token", pa.int64(), nullable=False),  # the broker's id in data requests
        pa.field("exchange_token", pa.int64(), nullable=True),  # the exchange's own id
        pa.field("tradingsymbol", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=True),
        pa.field("last_price", pa.float64(), nullable=True),
        pa.field("expiry", pa.date32(), nullable=True),  # derivatives only
        pa.field("strike", pa.float64(), nullable=True),  # options only (0 elsewhere as shipped)
        pa.field("tick_size", pa.float64(), nullable=True),
        pa.field("lot_size", pa.int64(), nullable=True),
        pa.field("instrument_type", pa.string(), nullable=True),  # EQ, FUT, CE, PE, ...
        pa.field("segment", pa.string(), nullable=True),  # e.g. "NSE", "NFO-OPT", "INDICES"
        pa.field("exchange", pa.string(), nullable=False),  # e.g. "NSE", "BSE", "NFO"
        pa.field("vendor", pa.string(), nullable=False),
    ]
)

SCHEMAS["tickers"] = TICKER_SCHEMA
SCHEMAS["option_chain"] = OPTION_SNAPSHOT_SCHEMA  # the dataset name job files use
SCHEMAS["instruments"] = INSTRUMENT_SCHEMA
