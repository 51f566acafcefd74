"""The labels stage's triple-barrier target: binary label, return to the first touch, t1 = the touch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.config.models import LabelConfig
from quanto.labels.stage import triple_barrier_labels


def test_triple_barrier_target_for_the_classifier():
    ts = pd.date_range("2024-01-01", periods=8, freq="D", tz="UTC")
    # Flat, then +10 % on bar 4: with a tiny volatility window every barrier is near; the rally hits pt.
    close = np.array([100, 100.1, 99.9, 100.0, 110.0, 110.1, 109.9, 110.0])
    bars = pd.DataFrame({"symbol": "A", "ts": ts, "open": close, "high": close, "low": close, "close": close,
                         "volume": 1.0})  # fmt: skip
    out = triple_barrier_labels(bars, LabelConfig(kind="triple_barrier", horizon=3, vol_window=2))
    assert list(out.columns) == ["symbol", "ts", "fwd_return", "label", "t1"]
    labelled = out.dropna(subset=["label"])
    assert set(labelled["label"]) <= {0.0, 1.0}
    assert (labelled["t1"] > labelled["ts"]).all()
    row = out.loc[out["ts"] == ts[3]].iloc[0]  # the bar before the rally: profit-take on the next bar
    assert row["label"] == 1.0 and row["t1"] == ts[4]
    assert np.isclose(row["fwd_return"], np.log(110 / 100))
    assert out["label"].iloc[-1] != out["label"].iloc[-1]  # no future: the last bar is unlabelled (NaN)
