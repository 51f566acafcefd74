"""Baselines: buy-and-hold, always-majority and previous-return sign, with no lookahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quanto.evaluation.baselines import baseline_predictions, last_realized_return, previous_returns

TS = pd.date_range("2024-01-01", periods=8, freq="D", tz="UTC")


def labelled(t1_positions: list[int | None], symbol: str = "AAA") -> pd.DataFrame:
    """One symbol over TS[:n]; row i's label ends at bar t1_positions[i] (None: not ended)."""
    n = len(t1_positions)
    t1 = [TS[p] if p is not None else pd.NaT for p in t1_positions]
    fwd = np.arange(1.0, n + 1) / 100  # row i's return is (i + 1) %
    fwd[[i for i, p in enumerate(t1_positions) if p is None]] = np.nan
    return pd.DataFrame({"symbol": symbol, "ts": TS[:n], "fwd_return": fwd, "t1": pd.DatetimeIndex(t1)})


def test_last_realized_return_of_fixed_horizon_labels():
    frame = labelled([2, 3, 4, 5, 6, 7, None, None])  # horizon 2
    out = last_realized_return(frame)
    # At bar k the latest finished label is row k - 2's (it ended at bar k, at that close).
    assert np.isnan(out[:2]).all()
    assert out[2:].tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])


def test_last_realized_return_of_labels_that_end_at_different_times():
    # Triple-barrier-like: row 0 ends at bar 3, row 1 at bar 2, row 2 at bar 5, row 3 at bar 4.
    frame = labelled([3, 2, 5, 4, None])
    out = last_realized_return(frame)
    assert np.isnan(out[:2]).all()
    assert out[2:].tolist() == pytest.approx([0.02, 0.01, 0.04])  # rows 1, 0, then 3


def test_last_realized_return_never_looks_ahead_or_across_symbols():
    a = labelled([2, 3, 4, 5, 6, 7, None, None], "AAA")
    b = labelled([1, 2, 3, 4, 5, 6, 7, None], "BBB").assign(fwd_return=lambda f: -f["fwd_return"])
    frame = pd.concat([a, b], ignore_index=True)
    base = last_realized_return(frame)
    for k in range(8):
        # Rewrite every return not yet known at bar k: nothing up to bar k may change.
        changed = frame.copy()
        unknown = ~(changed["t1"] <= TS[k])
        changed.loc[unknown, "fwd_return"] = 99.0
        out = last_realized_return(changed)
        upto = (frame["ts"] <= TS[k]).to_numpy()
        np.testing.assert_array_equal(out[upto], base[upto])
    assert (base[8:][~np.isnan(base[8:])] < 0).all()  # BBB only ever sees its own (negative) returns


def test_previous_returns_prefer_the_one_bar_return_feature():
    frame = labelled([2, 3, 4, None]).assign(logret_1=[np.nan, 0.5, -0.5, 0.1])
    values, source = previous_returns(frame)
    assert source == "feature logret_1" and np.isnan(values[0]) and values[1:].tolist() == [0.5, -0.5, 0.1]
    values, source = previous_returns(frame.drop(columns="logret_1"))
    assert source.startswith("last realized fwd_return") and values[2] == pytest.approx(0.01)


def test_baseline_predictions_by_hand():
    prev = np.array([0.5, -0.2, np.nan, 0.0])
    reg = baseline_predictions("regression", np.array([0.02, -0.01, 0.03]), prev)
    assert reg["buy_and_hold"].tolist() == pytest.approx([0.02] * 4)  # + the mean absolute label
    assert reg["majority"].tolist() == pytest.approx([0.04 / 3] * 4)
    assert reg["prev_return_sign"].tolist() == pytest.approx([0.02, -0.02, 0.0, 0.0])
    cls = baseline_predictions("classification", np.array([1.0, 0.0, 1.0, 1.0]), prev)
    assert cls["buy_and_hold"].tolist() == [1.0] * 4
    assert cls["majority"].tolist() == [0.75] * 4
    assert cls["prev_return_sign"].tolist() == [1.0, 0.0, 0.5, 0.5]


def test_baselines_need_training_labels():
    with pytest.raises(ValueError, match="baselines need finite training labels, got 0"):
        baseline_predictions("regression", np.array([]), np.zeros(3))
