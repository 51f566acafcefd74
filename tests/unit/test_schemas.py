"""Canonical schemas: names and types, depth levels, and check_columns/conform messages."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from quanto.data.schemas import (
    BAR_SCHEMA,
    CORPORATE_ACTION_SCHEMA,
    FUNDAMENTAL_SCHEMA,
    OPTION_BAR_SCHEMA,
    QUOTE_SCHEMA,
    SCHEMAS,
    TRADE_SCHEMA,
    SchemaError,
    check_columns,
    conform,
    depth_schema,
    polars_schema,
)
from quanto.errors import InputError

TS = pa.timestamp("ns", tz="UTC")


def types(schema: pa.Schema) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in schema}


def quotes() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": ["A", "A"],
            "ts": [dt.datetime(2024, 1, 2, 14, 30, s, tzinfo=dt.UTC) for s in (0, 1)],
            "bid_px": [10.0, 10.01],
            "bid_sz": [100.0, 200.0],
            "ask_px": [10.02, 10.03],
            "ask_sz": [300.0, 400.0],
            "vendor": ["test", "test"],
        }
    )


def test_quote_and_trade_schemas():
    assert types(QUOTE_SCHEMA) == {
        "symbol": pa.string(),
        "ts": TS,
        "bid_px": pa.float64(),
        "bid_sz": pa.float64(),
        "ask_px": pa.float64(),
        "ask_sz": pa.float64(),
        "vendor": pa.string(),
    }
    assert types(TRADE_SCHEMA) == {
        "symbol": pa.string(),
        "ts": TS,
        "price": pa.float64(),
        "size": pa.float64(),
        "trade_id": pa.string(),
        "conditions": pa.string(),
        "vendor": pa.string(),
    }
    assert TRADE_SCHEMA.field("trade_id").nullable and TRADE_SCHEMA.field("conditions").nullable
    assert not TRADE_SCHEMA.field("price").nullable


def test_depth_schema_has_four_columns_per_level():
    schema = depth_schema(5)
    level_cols = [n for n in schema.names if n not in ("symbol", "ts", "vendor")]
    assert len(level_cols) == 4 * 5
    assert schema.names[:6] == ["symbol", "ts", "bid_px_1", "bid_sz_1", "ask_px_1", "ask_sz_1"]
    assert schema.names[-5:] == ["bid_px_5", "bid_sz_5", "ask_px_5", "ask_sz_5", "vendor"]
    assert all(schema.field(c).type == pa.float64() and schema.field(c).nullable for c in level_cols)
    assert schema.field("ts").type == TS
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="levels"):
            depth_schema(bad)


def test_corporate_action_fundamental_and_option_schemas():
    assert types(CORPORATE_ACTION_SCHEMA) == {
        "symbol": pa.string(),
        "ex_date": pa.date32(),
        "kind": pa.string(),
        "ratio": pa.float64(),
        "cash": pa.float64(),
        "vendor": pa.string(),
    }
    assert CORPORATE_ACTION_SCHEMA.field("ratio").nullable and CORPORATE_ACTION_SCHEMA.field("cash").nullable
    assert types(FUNDAMENTAL_SCHEMA) == {
        "symbol": pa.string(),
        "period_end": pa.date32(),
        "filed_at": TS,
        "fiscal_period": pa.string(),
        "field": pa.string(),
        "value": pa.float64(),
        "vendor": pa.string(),
    }
    assert OPTION_BAR_SCHEMA.names[:5] == ["underlying", "symbol", "expiry", "strike", "right"]
    assert OPTION_BAR_SCHEMA.field("expiry").type == pa.date32()
    assert OPTION_BAR_SCHEMA.field("strike").type == pa.float64()
    # The bar part is BAR_SCHEMA's ts..vwap, trades, vendor with the same types and nullability.
    bar_part = ["ts", "timeframe", "open", "high", "low", "close", "volume", "vwap", "trades", "vendor"]
    assert OPTION_BAR_SCHEMA.names[5:] == bar_part
    assert all(OPTION_BAR_SCHEMA.field(c) == BAR_SCHEMA.field(c) for c in bar_part)


def test_schemas_by_kind():
    assert set(SCHEMAS) == {
        "bars", "quotes", "trades", "corporate_actions", "fundamentals", "option_bars", "tickers",
        "option_chain", "instruments",
    }  # fmt: skip
    assert SCHEMAS["bars"] is BAR_SCHEMA and SCHEMAS["fundamentals"] is FUNDAMENTAL_SCHEMA


def test_polars_schema_maps_arrow_types():
    s = polars_schema(FUNDAMENTAL_SCHEMA)
    assert s["filed_at"] == pl.Datetime("ns", "UTC") and s["period_end"] == pl.Date
    assert list(s) == FUNDAMENTAL_SCHEMA.names


@pytest.mark.parametrize("kind", ["polars", "pandas"])
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.drop("vendor"), r"quotes: missing column\(s\) \['vendor'\]"),
        (lambda d: d.with_columns(extra=pl.lit(1)), r"quotes: unexpected column\(s\) \['extra'\]"),
        (
            lambda d: d.with_columns(pl.col("bid_px").cast(pl.String)),
            r"quotes: column 'bid_px' expected double, found (String|str)",
        ),
        (
            lambda d: d.with_columns(pl.col("ts").dt.replace_time_zone(None)),
            r"quotes: column 'ts' expected timestamp\[ns, tz=UTC\], found .*UTC-aware",
        ),
        (
            lambda d: d.with_columns(symbol=pl.lit(None, pl.String)),
            r"quotes: column 'symbol' \(string\) is not nullable but has 2 null\(s\)",
        ),
        (
            lambda d: d.with_columns(bid_sz=pl.lit(True)),
            r"column 'bid_sz' expected double, found (Boolean|bool)",
        ),
    ],
)
def test_check_columns_names_source_column_expected_and_found(kind, mutate, message):
    bad = mutate(quotes())
    frame = bad.to_pandas() if kind == "pandas" else bad
    with pytest.raises(SchemaError, match=message):
        check_columns(frame, QUOTE_SCHEMA, "quotes")


def test_check_columns_accepts_compatible_types_and_any_column_order():
    df = quotes().with_columns(pl.col("bid_sz").cast(pl.Int32), pl.col("ts").dt.cast_time_unit("us"))
    check_columns(df.select(reversed(df.columns)), QUOTE_SCHEMA, "quotes")
    check_columns(df.to_pandas(), QUOTE_SCHEMA, "quotes")
    # Nullable columns may hold nulls.
    check_columns(df.with_columns(bid_px=pl.lit(None, pl.Float64)), QUOTE_SCHEMA, "quotes")


def test_schema_error_is_an_input_error_and_rejects_non_frames():
    assert issubclass(SchemaError, InputError)
    with pytest.raises(SchemaError, match="expected a polars or pandas DataFrame, got dict"):
        check_columns({"symbol": []}, QUOTE_SCHEMA, "quotes")


def test_pandas_dates_may_be_date_objects_or_midnight_datetimes():
    base = {
        "symbol": ["A"],
        "filed_at": pd.to_datetime(["2024-02-01 21:05"], utc=True),
        "fiscal_period": ["FY2023"],
        "field": ["revenue"],
        "value": [1.0],
        "vendor": ["v"],
    }
    for period_end in ([dt.date(2023, 12, 31)], pd.to_datetime(["2023-12-31"])):
        out = conform(pd.DataFrame({**base, "period_end": period_end}), FUNDAMENTAL_SCHEMA, "f")
        assert out.schema == polars_schema(FUNDAMENTAL_SCHEMA)
        assert out["period_end"].to_list() == [dt.date(2023, 12, 31)]
    with pytest.raises(SchemaError, match="'period_end' expected date32.*midnight"):
        check_columns(
            pd.DataFrame({**base, "period_end": pd.to_datetime(["2023-12-31 10:00"])}),
            FUNDAMENTAL_SCHEMA,
            "f",
        )
    with pytest.raises(SchemaError, match="'period_end' expected date32"):
        check_columns(pd.DataFrame({**base, "period_end": ["2023-12-31"]}), FUNDAMENTAL_SCHEMA, "f")


def test_conform_gives_exact_polars_types_in_schema_order():
    df = quotes().with_columns(pl.col("bid_sz").cast(pl.Int64), pl.col("ts").dt.cast_time_unit("ms"))
    out = conform(df.select(reversed(df.columns)).to_pandas(), QUOTE_SCHEMA, "quotes")
    assert out.schema == polars_schema(QUOTE_SCHEMA)
    assert out["bid_sz"].to_list() == [100.0, 200.0]
    assert out["ts"].to_list() == quotes()["ts"].to_list()


def test_conform_reports_lossy_integer_casts():
    bars = pl.DataFrame(
        {
            "underlying": ["AAPL"],
            "symbol": ["AAPL  240119C00190000"],
            "expiry": [dt.date(2024, 1, 19)],
            "strike": [190],
            "right": ["C"],
            "ts": [dt.datetime(2024, 1, 2, tzinfo=dt.UTC)],
            "timeframe": ["1d"],
            "open": [1.0],
            "high": [1.2],
            "low": [0.9],
            "close": [1.1],
            "volume": [10.0],
            "vwap": [None],
            "trades": [3],
            "vendor": ["v"],
        }
    )
    out = conform(bars, OPTION_BAR_SCHEMA, "options")
    assert out.schema == polars_schema(OPTION_BAR_SCHEMA)
    with pytest.raises(SchemaError, match="options: column .trades. expected Int64, found non-integral"):
        conform(bars.to_pandas().assign(trades=[1.5]), OPTION_BAR_SCHEMA, "options")


def test_conform_normalizes_any_time_zone_to_utc():
    frame = pl.DataFrame(
        {
            "symbol": ["A"],
            "ts": [dt.datetime(2024, 3, 8, 9, 30)],
            "bid_px": [1.0],
            "bid_sz": [1.0],
            "ask_px": [1.1],
            "ask_sz": [2.0],
            "vendor": ["v"],
        }  # fmt: skip
    ).with_columns(pl.col("ts").dt.replace_time_zone("America/New_York"))
    out = conform(frame, QUOTE_SCHEMA, "quotes")
    assert out["ts"].dtype == pl.Datetime("ns", "UTC")
    assert out["ts"][0] == dt.datetime(2024, 3, 8, 14, 30, tzinfo=dt.UTC)
