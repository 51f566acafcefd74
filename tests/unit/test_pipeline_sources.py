"""Microstructure and fundamental features through the research pipeline's stages, without Temporal.

A lake is filled the way `quanto data ingest` fills it: a live stream from the fake Polygon WebSocket
(minute bars + quotes) or the fake Kite one (bars from ticks + 5-level depth), and Polygon financials
from the fake REST API. Then ingest → validate → features run in-process on a `universe: {vendor:
lake}` job, and the feature table must hold the library's values computed straight from the lake's
catalog: microstructure aggregated into [ts, ts + 1min), fundamentals visible once filed_at <= the
bar's close.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from quanto.config.ingest import IngestConfig
from quanto.config.models import PipelineConfig
from quanto.contracts import PIPELINE_STAGES, StageRequest, StageResult
from quanto.data.catalog import open_catalog
from quanto.data.ingestion import RunContext, ingest_sync
from quanto.data.live import follow_stream
from quanto.data.partitions import plan
from quanto.errors import InputError
from quanto.features.fundamental import FEATURES, fundamental_features
from quanto.features.microstructure import aggregate_to_bars, microstructure_features
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.research import STAGE_FUNCTIONS
from tests.fakes import vendor_http
from tests.fakes.vendor_http import KITE_ACCESS_TOKEN, KITE_API_KEY, POLYGON_API_KEY, FakeVendorServer
from tests.fakes.vendor_ws import FakeKiteServer, FakePolygonServer

TODAY = dt.date(2026, 11, 20)
DAY = dt.date(2024, 1, 2)
NY_OPEN = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)  # 09:30 New York
IST_OPEN = dt.datetime(2024, 1, 2, 4, 0, tzinfo=dt.UTC)  # 09:30 India
MIN = dt.timedelta(minutes=1)
US = ["AAPL", "MSFT"]
INDIA = ["NSE:INFY", "NSE:TCS"]
# Five quarters filed before the streamed session, and one filed that evening (20:00 New York, after
# the close: no bar of the day may see it). (end, filing date, fiscal period, fiscal year).
FILINGS = [
    ("2022-09-30", "2022-11-04", "Q3", "2022"),
    ("2022-12-31", "2023-02-03", "Q4", "2022"),
    ("2023-03-31", "2023-05-05", "Q1", "2023"),
    ("2023-06-30", "2023-08-04", "Q2", "2023"),
    ("2023-09-30", "2023-11-03", "Q3", "2023"),
    ("2023-12-31", "2024-01-02", "Q4", "2023"),
]
STATEMENTS = {
    "income_statement": ("revenues", "gross_profit", "operating_income_loss", "net_income_loss",
                         "interest_expense_operating"),
    "balance_sheet": ("assets", "current_assets", "current_liabilities", "inventory", "equity"),
}  # fmt: skip
# Polygon's keys of the library's fields, written out here independently of panel_sources.
POLYGON_FIELDS = {"revenues": "revenue", "operating_income_loss": "operating_income",
                  "net_income_loss": "net_income", "interest_expense_operating": "interest_expense",
                  "assets": "total_assets", "equity": "total_equity"}  # fmt: skip


def _until_done(server, grace_s: float = 0.5):
    """cancelled(): true shortly after the fake sent its last step (frames in flight get read)."""
    seen: list[float] = []

    def cancelled() -> bool:
        if server.done and not seen:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > grace_s

    return cancelled


def _stream(lake: Lake, vendor: str, symbols: list[str], ws, rest, **extra) -> None:
    cfg = IngestConfig.model_validate(
        {"name": f"{vendor}-live", "lake_root": str(lake.root), "vendor": vendor, "symbols": symbols,
         "timeframe": "1min", "start": DAY.isoformat(), **extra,
         vendor: {"rest": {"base_url": rest.base_url, "rate_per_s": 100, "burst": 100},
                  "stream": {"enabled": True, "url": ws.url, "flush_rows": 8, "duration_s": 60,
                             "reconnect_initial_s": 0.05,
                             **({"channels": ["bars", "quotes"]} if vendor == "polygon" else {})}}}
    )  # fmt: skip
    follow_stream(cfg, lake, DAY, cancelled=_until_done(ws), record=False)


@pytest.fixture(scope="module")
def polygon_lake(tmp_path_factory) -> Lake:
    """20 streamed minutes of AAPL and MSFT (bars + one quote a minute) and their financials."""
    lake = Lake(tmp_path_factory.mktemp("polygon") / "lake")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYGON_API_KEY", POLYGON_API_KEY)
        mp.setattr(vendor_http, "STATEMENT_FIELDS", STATEMENTS)
        for symbol in US:
            mp.setitem(vendor_http.FILINGS, symbol, FILINGS)
        ws = FakePolygonServer(US, NY_OPEN, steps=20, credentials={"key": POLYGON_API_KEY})
        with FakeVendorServer() as rest, ws:
            _stream(lake, "polygon", US, ws, rest)
            cfg = IngestConfig.model_validate(
                {"name": "f", "lake_root": str(lake.root), "vendor": "polygon", "dataset": "fundamentals",
                 "symbols": US, "start": "2024-01-01", "end": "2024-01-03",
                 "polygon": {"rest": {"base_url": rest.base_url}}}
            )  # fmt: skip
            ingest_sync(plan(cfg, TODAY).partitions, cfg, RunContext(lake=lake, record=False))
    return lake


@pytest.fixture(scope="module")
def kite_lake(tmp_path_factory) -> Lake:
    """20 streamed minutes of two NSE stocks: bars aggregated from ticks and 5-level depth snapshots."""
    lake = Lake(tmp_path_factory.mktemp("kite") / "lake")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KITE_API_KEY", KITE_API_KEY)
        mp.setenv("KITE_ACCESS_TOKEN", KITE_ACCESS_TOKEN)
        ws = FakeKiteServer(
            INDIA, IST_OPEN, steps=20, tokens={"NSE:INFY": 408065, "NSE:TCS": 2953217},
            credentials={"api_key": KITE_API_KEY, "access_token": KITE_ACCESS_TOKEN},
        )  # fmt: skip
        with FakeVendorServer() as rest, ws:
            _stream(lake, "kite", INDIA, ws, rest, calendar="XBOM")
    return lake


def job(lake: Lake, source: str, symbols: list[str], calendar: str = "XNYS", **features) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": f"{source}-sources", "lake_root": str(lake.root),
         "universe": {"vendor": "lake", "source": source, "symbols": symbols, "timeframe": "1min",
                      "start": "2024-01-02", "end": "2024-01-03", "adjustment": "raw"},
         "validation": {"sessions": {"calendar": calendar}},
         "features": {"names": ["logret_1"], **features}}
    )  # fmt: skip


def run_until_features(
    cfg: PipelineConfig, stages: tuple[str, ...] = ("ingest", "validate", "features")
) -> dict[str, StageResult]:
    """ingest → validate → features (or `stages`) in this process (the stage functions the workflow runs)."""
    ctx = StageContext(lake=Lake(cfg.lake_root), record=False)
    results: dict[str, StageResult] = {}
    for spec in (s for s in PIPELINE_STAGES if s.name in stages):
        req = StageRequest(stage=spec.name, config=cfg.model_dump(mode="json"),
                           inputs={n: results[n] for n in spec.needs})  # fmt: skip
        results[spec.name] = STAGE_FUNCTIONS[spec.name](req, ctx)
    return results


def feature_table(lake: Lake, results: dict[str, StageResult]) -> pl.DataFrame:
    return lake.read_polars(results["features"].files("features")).sort("symbol", "ts")


def catalog(lake: Lake, kind: str, vendor: str) -> pl.DataFrame:
    con = open_catalog(lake)
    return pl.from_arrow(con.sql(f"SELECT * FROM {kind} WHERE vendor = '{vendor}'").to_arrow_table())


def assert_same(got: pl.DataFrame, want: pl.DataFrame, columns: list[str]) -> None:
    """Equal values (NaN equals NaN) on (symbol, ts) for `columns`."""
    joined = got.select("symbol", "ts", *columns).join(
        want.select("symbol", "ts", *columns), on=["symbol", "ts"], how="left", suffix="__want"
    )
    for c in columns:
        a, b = joined[c].to_list(), joined[f"{c}__want"].to_list()
        for x, y in zip(a, b, strict=True):
            ok = (
                (x is None or math.isnan(x))
                and (y is None or math.isnan(y))
                or x == pytest.approx(y, rel=1e-12)
            )
            assert ok, (c, x, y)


def test_polygon_quotes_and_fundamentals_reach_the_feature_table(polygon_lake):
    cfg = job(polygon_lake, "polygon", US, microstructure={"window": 5}, fundamentals=True)
    results = run_until_features(cfg)
    ingest, validate = results["ingest"], results["validate"]
    assert ingest.counters["quotes_rows"] == 20 * len(US) and ingest.counters["fundamentals_rows"] > 0
    assert validate.files("quotes") and validate.files("fundamentals")
    assert validate.summary["datasets"]["quotes"]["totals"]["rows_in"] == 20 * len(US)
    assert validate.summary["datasets"]["quotes"]["totals"]["quarantined"] == 0
    # The stages depend on those files: a top-up of quotes or fundamentals re-runs them.
    for stage, roles in (("ingest", {"bars", "quotes", "fundamentals"}), ("validate", {"bars", "quotes", "fundamentals"}),
                         ("features", {"bars", "quotes", "fundamentals"})):  # fmt: skip
        manifest = json.loads(polygon_lake.abspath(results[stage].manifest).read_text())
        assert {f["role"] for f in manifest["inputs"]} == roles, stage
    table = feature_table(polygon_lake, results)
    bars = catalog(polygon_lake, "bars", "polygon").sort("symbol", "ts")
    assert table.select("symbol", "ts").equals(bars.select("symbol", "ts"))  # every bar, once

    # Microstructure: the library on the lake's quotes, one quote inside each minute.
    per_bar = aggregate_to_bars(
        microstructure_features(catalog(polygon_lake, "quotes", "polygon"), 1, window=5), "1min"
    )
    micro = [c for c in per_bar.columns if c not in ("symbol", "ts")]
    assert {"spread_last", "rel_spread_mean", "depth_imbalance_1_last", "ofi_last",
            "depth_imbalance_1_mean_5_last", "snapshots"} <= set(table.columns)  # fmt: skip
    assert_same(table, per_bar, micro)
    assert table["snapshots"].to_list() == [1] * table.height
    assert table["spread_last"].round(6).unique().to_list() == [0.02]  # the fake quotes close -+ 0.01

    # Fundamentals: the library on the lake's statements, visible from each bar's close.
    statements = catalog(polygon_lake, "fundamentals", "polygon").with_columns(
        pl.col("field").replace(POLYGON_FIELDS)
    )
    at_close = bars.select("symbol", pl.col("ts") + MIN, "close")
    want = fundamental_features(at_close, statements).with_columns(bars["ts"])
    assert_same(table, want, list(FEATURES))
    assert table["roe"].is_not_nan().all() and table["revenue_yoy"].is_not_nan().all()
    assert table["pe"].is_nan().all()  # Polygon ships no shares outstanding
    # The filing of that evening is in the lake but no bar of the day sees it.
    late = dt.datetime(2024, 1, 3, 1, tzinfo=dt.UTC)  # 2024-01-02 20:00 New York
    assert statements.filter(pl.col("filed_at") == late).height > 0
    earlier = fundamental_features(at_close, statements.filter(pl.col("filed_at") < late))
    assert_same(table, earlier.with_columns(bars["ts"]), list(FEATURES))
    next_day = fundamental_features(at_close.with_columns(pl.col("ts") + dt.timedelta(days=1)), statements)
    assert next_day["roe"].to_list() != earlier["roe"].to_list()

    # Nothing changed: every stage is skipped on a rerun.
    assert all(r.skipped for r in run_until_features(cfg).values())


def test_the_spread_explosion_label_reads_the_validated_quotes(polygon_lake):
    from quanto.labels.rewards import spread_explosion

    raw = job(polygon_lake, "polygon", US, microstructure={"window": 5}).model_dump(mode="json")
    raw["label"]["extra"] = [{"kind": "spread_explosion", "window": 5, "k": 2.0}]
    cfg = PipelineConfig.model_validate(raw)
    results = run_until_features(cfg, ("ingest", "validate", "labels"))
    manifest = json.loads(polygon_lake.abspath(results["labels"].manifest).read_text())
    assert {f["role"] for f in manifest["inputs"]} == {"bars", "quotes"}  # a quote top-up reruns labels
    table = polygon_lake.read_frame(results["labels"].files("labels")).sort_values(["symbol", "ts"])
    assert {"spread_label", "spread_t1"} <= set(table.columns)

    # By hand from the library's per-quote labels on the lake's quotes: a bar's label is the judgement
    # of the quotes stamped in the symbol's next bar, t1 the last of them.
    per_quote = spread_explosion(catalog(polygon_lake, "quotes", "polygon").to_pandas(), window=5, k=2.0)
    per_quote = per_quote.dropna(subset=["label"])
    checked = 0
    for symbol, rows in table.groupby("symbol"):
        mine = per_quote[per_quote["symbol"] == symbol]
        for (_, bar), next_ts in zip(rows.iterrows(), [*rows["ts"].iloc[1:], None], strict=True):
            if next_ts is None:  # the symbol's last bar
                judged = mine[:0]
            else:
                judged = mine[(mine["t1"] >= next_ts) & (mine["t1"] < next_ts + MIN)]
            if judged.empty:
                assert math.isnan(bar["spread_label"]) and bar["spread_t1"] is pd.NaT
                continue
            assert bar["spread_label"] == judged["label"].max() and bar["spread_t1"] == judged["t1"].max()
            # t1 lies between the bar's close and the next bar's end.
            assert bar["ts"] + MIN <= bar["spread_t1"] < bar["ts"] + 2 * MIN
            checked += 1
    # One quote a minute: a symbol's first 4 bars (their quote's window is not full yet) and its last
    # bar have no label.
    assert checked == len(US) * (20 - 5)
    assert all(r.skipped for r in run_until_features(cfg, ("ingest", "validate", "labels")).values())


def test_kite_depth_reaches_the_feature_table(kite_lake):
    cfg = job(kite_lake, "kite", INDIA, calendar="XBOM", microstructure={"source": "depth", "window": 10})
    results = run_until_features(cfg)
    assert results["validate"].summary["datasets"]["depth"]["totals"]["quarantined"] == 0
    table = feature_table(kite_lake, results)
    depth = catalog(kite_lake, "depth", "kite")
    per_bar = aggregate_to_bars(microstructure_features(depth, 5, window=10), "1min")
    micro = [c for c in per_bar.columns if c not in ("symbol", "ts")]
    # levels unset: every level the stream stored (5)
    assert {"book_slope_last", "depth_imbalance_5_mean", "depth_imbalance_3_mean_10_last"} <= set(
        table.columns
    )
    assert_same(table, per_bar, micro)
    assert table["snapshots"].sum() == depth.height and table["book_slope_mean"].is_not_nan().any()
    assert not {"pe", "roe"} & set(table.columns)  # fundamentals were not asked for


def test_a_job_asking_for_fundamentals_the_lake_lacks_fails_clearly(kite_lake):
    cfg = job(kite_lake, "kite", INDIA, calendar="XBOM", fundamentals=True)
    with pytest.raises(InputError) as err:
        run_until_features(cfg)
    message = str(err.value)
    assert message.startswith(
        "features.fundamentals: the lake holds no kite fundamentals for ['NSE:INFY', 'NSE:TCS']"
    )
    assert "quanto data ingest" in message


def test_a_job_asking_for_depth_the_lake_lacks_fails_clearly(polygon_lake):
    cfg = job(polygon_lake, "polygon", ["IBM"], microstructure={})
    with pytest.raises(InputError, match=r"universe: the lake has no polygon 1min bars for \['IBM'\]"):
        run_until_features(cfg)  # no bars at all: the bars error comes first
    cfg = job(polygon_lake, "polygon", US, microstructure={"source": "depth", "levels": 1})
    with pytest.raises(
        InputError,
        match=r"features.microstructure: the lake holds no polygon depth for \['AAPL', 'MSFT'\] between 2024-01-02 and 2024-01-03",
    ):
        run_until_features(cfg)


def test_validate_quarantines_bad_quotes_with_their_rule_and_keeps_bars_as_they_were(tmp_path: Path):
    from quanto.data.schemas import BAR_SCHEMA, QUOTE_SCHEMA

    lake = Lake(tmp_path / "lake")
    opens = [NY_OPEN + k * MIN for k in range(3)]
    bars = pl.DataFrame(
        {"symbol": "AAPL", "ts": opens, "timeframe": "1min", "open": 10.0, "high": 10.0, "low": 10.0,
         "close": 10.0, "volume": 1.0, "vwap": None, "trades": None, "vendor": "polygon", "imputed": False}
    ).to_arrow().cast(BAR_SCHEMA)  # fmt: skip
    quotes = pl.DataFrame(
        {"symbol": "AAPL", "ts": [t + dt.timedelta(seconds=1) for t in opens], "bid_px": [9.9, 10.2, 9.9],
         "bid_sz": [1.0, 1.0, -1.0], "ask_px": [10.1, 10.1, 10.1], "ask_sz": 1.0, "vendor": "polygon"}
    ).to_arrow().cast(QUOTE_SCHEMA)  # fmt: skip
    ingest = StageResult(
        stage="ingest",
        key="k",
        outputs=[lake.write_table("bronze/bars/t", bars, role="bars"),
                 lake.write_table("bronze/quotes/t", quotes, role="quotes")],
    )  # fmt: skip
    raw = job(lake, "polygon", ["AAPL"], microstructure={}).model_dump(mode="json")
    raw["validation"] = {"sessions": {"enabled": False}, "max_quarantine_share": 1.0}
    ctx = StageContext(lake=lake, record=False)
    result = STAGE_FUNCTIONS["validate"](
        StageRequest(stage="validate", config=raw, inputs={"ingest": ingest}), ctx
    )
    assert result.counters["quotes_rows_in"] == 3 and result.counters["quotes_accepted"] == 1
    assert result.counters["rows_in"] == result.counters["accepted"] == 3  # the bars
    silver = lake.read_polars(result.files("quotes"))
    assert silver["bid_px"].to_list() == [9.9]
    rejected = lake.read_polars(result.files("quarantine_quotes")).sort("ts")
    assert rejected["rule"].to_list() == ["crossed", "size_nonnegative"]
    assert rejected["reason"].to_list() == ["bid 10.2 > ask 10.1", "bid size -1.0 must be finite and >= 0"]
    by_rule = {r["rule"]: r["count"] for r in result.summary["datasets"]["quotes"]["by_rule"]}
    assert by_rule == {"crossed": 1, "size_nonnegative": 1}
    raw["validation"]["max_quarantine_share"] = 0.05
    with pytest.raises(
        InputError, match=r"2 of 3 quotes rows quarantined .* validation.max_quarantine_share"
    ):
        STAGE_FUNCTIONS["validate"](
            StageRequest(stage="validate", config=raw, inputs={"ingest": ingest}), ctx
        )


def test_lake_datasets_stream_out_one_symbol_at_a_time_across_batches(polygon_lake, monkeypatch):
    from quanto.data import ingest

    universe = job(polygon_lake, "polygon", [*US, "IBM"], microstructure={}).universe
    whole = dict(ingest.read_lake_dataset(open_catalog(polygon_lake), universe, "quotes"))
    monkeypatch.setattr(ingest, "LAKE_BATCH_ROWS", 7)  # batches cut through both symbols' rows
    batched = list(ingest.read_lake_dataset(open_catalog(polygon_lake), universe, "quotes"))
    assert [s for s, _ in batched] == US  # IBM has none; each symbol once
    for symbol, frame in batched:
        assert frame.equals(whole[symbol]) and frame.height == 20 and frame["ts"].is_sorted()
    assert not list(ingest.read_lake_dataset(open_catalog(polygon_lake), universe, "depth"))
