"""Panel features in the features stage: cross-sectional and benchmark-relative columns join the table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.config.models import FeaturesConfig
from quanto.features.registry import compute_features
from quanto.features.stage import add_panel_features


def panel_bars(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ts = pd.date_range("2022-01-03", periods=n, freq="B", tz="UTC")
    frames = []
    for sym, scale in (("A", 1.0), ("B", 2.0), ("IDX", 0.5)):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01 * scale, n)))
        frames.append(pd.DataFrame({"symbol": sym, "ts": ts, "timeframe": "1d", "open": close, "high": close * 1.01,
                                    "low": close * 0.99, "close": close, "volume": 1e6, "vwap": np.nan,
                                    "trades": pd.array([None] * n, dtype="Int64"), "vendor": "t", "imputed": False}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_panel_columns_are_added_and_backward_looking():
    bars = panel_bars()
    spec = FeaturesConfig(names=["rsi_14", "logret_5"], cross_sectional=["rsi_14"], sectors={"A": "x", "B": "x"},
                          benchmark="IDX", benchmark_windows=[20])  # fmt: skip
    table = add_panel_features(compute_features(bars, ["rsi_14", "logret_5"]), bars, spec)
    added = {
        "rsi_14_cs_rank",
        "rsi_14_cs_z",
        "rsi_14_sector_z",
        "rsi_14_sector_demeaned",
        "corr_20",
        "beta_20",
    }
    assert added <= set(table.columns) and len(table) == len(bars)
    last = table[table["ts"] == table["ts"].max()]
    assert sorted(last["rsi_14_cs_rank"]) == [1 / 3, 2 / 3, 1.0]  # three symbols ranked at each ts
    assert (table.loc[table["symbol"] == "IDX", "beta_20"].dropna() == 1.0).all()
    cut = bars["ts"].sort_values().unique()[80]
    early = add_panel_features(compute_features(bars[bars["ts"] <= cut], ["rsi_14", "logret_5"]),
                               bars[bars["ts"] <= cut], spec)  # fmt: skip
    pd.testing.assert_frame_equal(early.reset_index(drop=True),
                                  table[table["ts"] <= cut].reset_index(drop=True))  # fmt: skip


def test_the_stage_extends_stored_features_when_the_history_grows(tmp_path):
    """A later end date (a nightly top-up) reuses every stored row and computes only the new bars;
    the table equals what a full recompute (`incremental: false`) writes."""
    from quanto.config.models import PipelineConfig
    from quanto.contracts import StageRequest
    from quanto.data.ingest import run_ingest
    from quanto.features.stage import run_features
    from quanto.lake.materialize import StageContext
    from quanto.lake.storage import Lake
    from quanto.validation.stage import run_validate

    ctx = StageContext(lake=Lake(tmp_path), record=False)

    def features(end: str, incremental: bool = True):
        cfg = PipelineConfig.model_validate(
            {
                "name": "grow",
                "universe": {
                    "vendor": "sample",
                    "symbols": ["AAPL", "IBM"],
                    "start": "2010-01-04",
                    "end": end,
                },
                "features": {"names": ["default"], "incremental": incremental},
            }  # fmt: skip
        )
        config, results = cfg.model_dump(mode="json"), {}
        for stage, fn, needs in (("ingest", run_ingest, []), ("validate", run_validate, ["ingest"]),
                                 ("features", run_features, ["validate"])):  # fmt: skip
            req = StageRequest(stage=stage, config=config, inputs={n: results[n] for n in needs})
            results[stage] = fn(req, ctx)
        return results["features"]

    first = features("2012-01-03").summary["coverage"]
    assert first["rows_reused"] == 0 and first["symbols_computed"] == 2
    grown = features("2012-07-02")
    coverage = grown.summary["coverage"]
    assert coverage["symbols_extended"] == 2 and coverage["rows_reused"] == first["rows_computed"]
    assert coverage["rows_computed"] == grown.counters["rows"] - first["rows_computed"]
    full = features("2012-07-02", incremental=False)
    assert full.summary["coverage"] is None
    a = ctx.lake.read_frame(grown.files("features"))
    b = ctx.lake.read_frame(full.files("features"))
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    from quanto.features.engine import same_values

    for name in a.columns[2:]:
        assert same_values(a[name].to_numpy(), b[name].to_numpy()).all(), name
