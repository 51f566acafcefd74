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
