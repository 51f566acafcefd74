"""The tsfresh family: tsfresh itself as the oracle, exact lookback, no lookahead, no leakage.

test_features.py guards every family by name, one feature at a time; here the same guards run over
the whole family at once (the family is slow per feature but shares its work within one call).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from tsfresh.feature_extraction import feature_calculators

from quanto.features import tsfresh_family
from quanto.features.registry import DEFAULT_FEATURES, REGISTRY, compute_features
from quanto.features.spec import _NAME_RE
from tests.unit.test_features import make_bars

NAMES = [n for n, s in REGISTRY.items() if s.family == "tsfresh"]
N_BARS = 240  # a few windows past the 30-bar warm-up, small enough to keep the file fast


def _forget_memo() -> None:
    """Drop this thread's memoized results, so the next computation really runs tsfresh again."""
    tsfresh_family._memo.__dict__.clear()


def assert_nan_equal(actual, expected) -> None:
    np.testing.assert_array_equal(np.asarray(actual, float), np.asarray(expected, float))


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars(n=N_BARS, seed=4)


@pytest.fixture(scope="module")
def features(bars: pd.DataFrame) -> pd.DataFrame:
    _forget_memo()
    return compute_features(bars, NAMES)


# --- registrations --------------------------------------------------------------------------------


def test_family_size_names_and_lookbacks() -> None:
    assert len(NAMES) >= 100
    assert not set(NAMES) & set(DEFAULT_FEATURES)  # slow: taken by name, never by default
    for name in NAMES:
        spec = REGISTRY[name]
        p = spec.params
        assert _NAME_RE.match(name) and name.startswith("tsf_") and name.endswith(f"_w{p['window']}")
        assert name == tsfresh_family.feature_name(p["series"], p["calculator"], p["params"], p["window"])
        returns = p["series"] == tsfresh_family.RETURNS
        assert spec.lookback == (p["window"] if returns else p["window"] - 1)
        assert spec.inputs == (("close",) if returns else ("volume",))
        assert spec.bounded is True
        assert hasattr(feature_calculators, p["calculator"]) and "\n" not in spec.description
    assert REGISTRY["tsf_quantile_q_0p1_w30"].params["params"] == {"q": 0.1}
    assert "tsf_logvolume_linear_trend_attr_slope_w30" in NAMES


def test_importing_the_registry_does_not_import_tsfresh() -> None:
    code = "import sys, quanto.features.registry; assert 'tsfresh' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- tsfresh as the oracle ------------------------------------------------------------------------


def _oracle(x: np.ndarray, calculator: str, params: dict) -> float:
    """The tsfresh calculator called directly on one window, one parameter set at a time."""
    fn = getattr(feature_calculators, calculator)
    if fn.fctype == "combiner":
        [(_, value)] = list(fn(x.copy(), [dict(params)]))
        return float(value)
    return float(fn(x.copy(), **params))


def test_values_are_tsfresh_on_the_trailing_window(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    close, volume = bars["close"].to_numpy(), bars["volume"].to_numpy()
    series = {
        tsfresh_family.RETURNS: np.r_[np.nan, np.diff(np.log(close))],
        tsfresh_family.LOG_VOLUME: np.log1p(volume),
    }
    for name in NAMES:
        spec = REGISTRY[name]
        x, window = series[spec.params["series"]], spec.params["window"]
        for t in (spec.lookback, 101, N_BARS - 1):
            expected = _oracle(x[t - window + 1 : t + 1], spec.params["calculator"], spec.params["params"])
            got = features[name].iloc[t]
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-15), (name, t)


# --- lookback, lookahead, boundedness -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_declared_lookback_is_exact(name: str, features: pd.DataFrame) -> None:
    values = features[name].to_numpy()
    lookback = REGISTRY[name].lookback
    assert np.isnan(values[:lookback]).all(), "values before the declared warm-up must be NaN"
    assert np.isfinite(values[lookback:]).all(), "values after the declared warm-up must be defined"


def test_no_lookahead(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    """Values at or before a cut do not change when the history after the cut is removed."""
    rng = np.random.default_rng(7)
    for cut in [*rng.integers(31, N_BARS - 1, size=4), 29, 30, N_BARS - 2]:
        truncated = compute_features(bars.iloc[: cut + 1], NAMES)
        assert len(truncated) == cut + 1
        for name in NAMES:
            assert_nan_equal(truncated[name], features[name].iloc[: cut + 1])


def test_values_depend_on_the_lookback_rows_only(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    """`bounded=True` is honest: a history starting later gives the same values once warmed up."""
    for start in (17, 93):
        late = compute_features(bars.iloc[start:], NAMES)
        for name in NAMES:
            lookback = REGISTRY[name].lookback
            assert_nan_equal(late[name].iloc[lookback:], features[name].iloc[start + lookback :])


# --- symbols, memo --------------------------------------------------------------------------------


def test_symbols_are_independent(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    other = make_bars("BBB", n=90, seed=9, price=3.0)
    _forget_memo()
    mixed = pd.concat([other, bars]).sample(frac=1.0, random_state=3)
    both = compute_features(mixed, NAMES)
    got_a = both[both["symbol"] == "AAA"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got_a, features, check_exact=True)
    _forget_memo()
    alone_b = compute_features(other, NAMES)
    got_b = both[both["symbol"] == "BBB"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got_b, alone_b, check_exact=True)
    assert np.isnan(got_b["tsf_mean_w30"].iloc[:30]).all()  # B's warm-up restarts after A's rows


def test_memo_follows_the_data_not_the_frame(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    """A frame changed in place is recomputed: the memo is keyed by the input values themselves."""
    fn = REGISTRY["tsf_ar_coefficient_coeff_1_k_3_w30"].fn
    frame = bars.copy()
    assert_nan_equal(fn(frame), features["tsf_ar_coefficient_coeff_1_k_3_w30"])
    noise = np.random.default_rng(11).normal(0.0, 0.01, N_BARS - 150)
    frame.loc[frame.index[150:], "close"] *= np.exp(noise)
    changed = fn(frame)
    _forget_memo()
    assert_nan_equal(changed, fn(frame))
    assert not np.allclose(changed[181:], features["tsf_ar_coefficient_coeff_1_k_3_w30"].iloc[181:])


def test_flat_prices_and_zero_volume_give_nan_not_inf_or_errors() -> None:
    flat = make_bars(n=130, seed=5)
    flat.loc[flat.index[30:90], ["open", "high", "low", "close"]] = 50.0
    flat.loc[flat.index[40:100], "volume"] = 0.0
    out = compute_features(flat, NAMES)
    values = out[NAMES].to_numpy()
    assert not np.isinf(values).any()
    assert (out["tsf_standard_deviation_w30"].iloc[60:90] == 0).all()  # 30 zero returns
    assert np.isnan(out["tsf_autocorrelation_lag_1_w30"].iloc[60:90]).all()  # 0/0: undefined
    assert np.isfinite(values[121:]).all()  # defined again once the flat stretch has left the window
