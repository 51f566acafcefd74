"""Forward-return and direction labels, checked by hand on tiny frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quanto.labels.forward import compute_labels


def tiny_bars() -> pd.DataFrame:
    """Two symbols, input deliberately not sorted; A closes 100, 110, 99, 99; B closes 10, 20, 5."""
    ts = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"], utc=True).as_unit("ns")
    return pd.DataFrame(
        {
            "symbol": ["B", "A", "A", "B", "A", "A", "B"],
            "ts": [ts[1], ts[0], ts[2], ts[0], ts[1], ts[3], ts[2]],
            "close": [20.0, 100.0, 99.0, 10.0, 110.0, 99.0, 5.0],
        },
        index=[10, 11, 12, 13, 14, 15, 16],
    )


def test_forward_return_by_hand() -> None:
    bars = tiny_bars()
    out = compute_labels(bars, "forward_return", horizon=1, threshold=0.0)
    assert list(out.columns) == ["symbol", "ts", "fwd_return", "label", "t1"]
    # Same rows, order and index as the input.
    assert list(out.index) == list(bars.index)
    assert list(out["symbol"]) == list(bars["symbol"])
    assert (out["ts"] == bars["ts"]).all()
    expected = {
        10: np.log(5 / 20),  # B day2 -> day3
        11: np.log(110 / 100),  # A day1 -> day2
        12: np.log(99 / 99),  # A day3 -> day4
        13: np.log(20 / 10),  # B day1 -> day2
        14: np.log(99 / 110),  # A day2 -> day3
        15: np.nan,  # A's last bar
        16: np.nan,  # B's last bar
    }
    np.testing.assert_allclose(out["fwd_return"], list(expected.values()), rtol=1e-15, equal_nan=True)
    np.testing.assert_array_equal(out["label"], out["fwd_return"])
    t1 = out["t1"]
    assert str(t1.dtype) == "datetime64[ns, UTC]"
    assert t1[11] == pd.Timestamp("2024-01-02", tz="UTC")
    assert t1[10] == pd.Timestamp("2024-01-03", tz="UTC")
    assert t1[[15, 16]].isna().all() and t1.notna().sum() == 5


def test_direction_threshold_and_horizon_two() -> None:
    out = compute_labels(tiny_bars(), "direction", horizon=2, threshold=0.05)
    # A: 100 -> 99 (day1 -> day3) is down; 110 -> 99 down. B: 10 -> 5 down.
    # The last two bars of each symbol have no label and no end time.
    assert out.loc[11, "fwd_return"] == pytest.approx(np.log(99 / 100))
    assert out.loc[11, "t1"] == pd.Timestamp("2024-01-03", tz="UTC")
    assert out.loc[[11, 14, 13], "label"].tolist() == [0.0, 0.0, 0.0]
    assert out.loc[[12, 15, 10, 16], ["fwd_return", "label"]].isna().all().all()
    assert out.loc[[12, 15, 10, 16], "t1"].isna().all()

    one = compute_labels(tiny_bars(), "direction", horizon=1, threshold=0.05)
    # log(1.1)=0.095 > 0.05 -> 1; log(2)=0.69 -> 1; log(1)=0 -> 0 (strictly greater); falls -> 0.
    assert one["label"].tolist()[:5] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert np.isnan(one["label"].tolist()[5:]).all()
    # A threshold equal to the return is not "above" it.
    at = compute_labels(tiny_bars(), "direction", horizon=1, threshold=float(np.log(2.0)))
    assert at.loc[13, "label"] == 0.0


def test_horizon_longer_than_history_is_all_nan() -> None:
    out = compute_labels(tiny_bars(), "forward_return", horizon=4, threshold=0.0)
    assert out["fwd_return"].isna().all() and out["label"].isna().all() and out["t1"].isna().all()


def test_symbols_do_not_leak() -> None:
    bars = tiny_bars()
    both = compute_labels(bars, "forward_return", horizon=1, threshold=0.0)
    alone = compute_labels(bars[bars["symbol"] == "A"], "forward_return", horizon=1, threshold=0.0)
    pd.testing.assert_frame_equal(both[both["symbol"] == "A"], alone)


def test_bad_input() -> None:
    bars = tiny_bars()
    with pytest.raises(ValueError, match="horizon"):
        compute_labels(bars, "forward_return", horizon=0, threshold=0.0)
    with pytest.raises(ValueError, match="kind"):
        compute_labels(bars, "triple_barrier", horizon=1, threshold=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeated"):
        compute_labels(pd.concat([bars, bars.iloc[:1]]), "forward_return", horizon=1, threshold=0.0)
    with pytest.raises(KeyError, match="close"):
        compute_labels(bars.drop(columns=["close"]), "forward_return", horizon=1, threshold=0.0)
    empty = compute_labels(bars.iloc[:0], "direction", horizon=1, threshold=0.0)
    assert empty.empty and list(empty.columns) == ["symbol", "ts", "fwd_return", "label", "t1"]
