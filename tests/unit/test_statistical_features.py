"""Statistical and risk features against plain-loop oracles, hand-worked cases and the lookahead guard."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from quanto.features.registry import REGISTRY, check_lookahead, compute_features

N_BARS = 320  # past the longest warm-up (250-bar VaR) with 70 full windows to compare


def make_bars(n: int = N_BARS, seed: int = 7, symbol: str = "AAA") -> pd.DataFrame:
    """Seeded random-walk bars with consistent OHLC (low <= open, close <= high) and positive volume."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = np.r_[50.0, close[:-1]] * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, n)))
    return pd.DataFrame(
        {
            "symbol": symbol,
            "ts": pd.date_range("2021-01-04", periods=n, freq="D", tz="UTC"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.lognormal(10, 0.7, n).round() + 1.0,
        }
    )


def bars_from_returns(returns: list[float], start: float = 100.0) -> pd.DataFrame:
    """Bars whose 1-bar log returns are `returns` (the first bar has none); OHLC all equal close."""
    close = start * np.exp(np.r_[0.0, np.cumsum(returns)])
    return bars_from_close(close)


def bars_from_close(close) -> pd.DataFrame:
    """Flat-range bars (open = high = low = close) with constant volume."""
    close = np.asarray(close, dtype=np.float64)
    n = len(close)
    return pd.DataFrame(
        {
            "symbol": "AAA",
            "ts": pd.date_range("2021-01-04", periods=n, freq="D", tz="UTC"),
            "open": close,
            "high": close,
            "low": close,
            "close": close,
            "volume": np.full(n, 1000.0),
        }
    )


# --- oracles: one plain loop per feature, written from the definitions, not from the implementation ---

Oracle = Callable[[pd.DataFrame], list[float]]


def _col(bars: pd.DataFrame, name: str) -> list[float]:
    return [float(x) for x in bars[name]]


def _one_bar_returns(bars: pd.DataFrame) -> list[float]:
    c = _col(bars, "close")
    return [math.nan] + [math.log(c[t] / c[t - 1]) for t in range(1, len(c))]


def _over_windows(values: list[float], window: int, stat: Callable[[list[float]], float]) -> list[float]:
    """stat(values[t - window + 1 .. t]) at each t; NaN while the window is short or holds a NaN."""
    out = []
    for t in range(len(values)):
        w = values[max(0, t - window + 1) : t + 1]
        out.append(stat(w) if len(w) == window and not any(math.isnan(x) for x in w) else math.nan)
    return out


def _mean(w: list[float]) -> float:
    return math.fsum(w) / len(w)


def _central(w: list[float], k: int) -> float:
    m = _mean(w)
    return math.fsum((x - m) ** k for x in w) / len(w)


def _stdev(w: list[float], ddof: int) -> float:
    m = _mean(w)
    return math.sqrt(math.fsum((x - m) ** 2 for x in w) / (len(w) - ddof))


def _skew(w: list[float]) -> float:
    """Adjusted Fisher-Pearson G1 = sqrt(n(n-1)) / (n-2) * m3 / m2^1.5."""
    n, m2, m3 = len(w), _central(w, 2), _central(w, 3)
    return math.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5


def _excess_kurt(w: list[float]) -> float:
    """G2 = (n-1) / ((n-2)(n-3)) * ((n+1) g2 + 6), g2 = m4 / m2^2 - 3."""
    n, m2, m4 = len(w), _central(w, 2), _central(w, 4)
    return (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * (m4 / m2**2 - 3) + 6)


def _quantile(w: list[float], q: float) -> float:
    """Linear interpolation between order statistics at position q * (n - 1)."""
    s = sorted(w)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _expected_shortfall(w: list[float], tail: float) -> float:
    """Weighted mean of the worst tail * n returns: each sorted return weighs min(1, remaining tail)."""
    budget = tail * len(w)
    total, used = 0.0, 0.0
    for x in sorted(w):
        weight = min(1.0, budget - used)
        if weight <= 0:
            break
        total += weight * x
        used += weight
    return -total / budget


def _max_drawdown(w: list[float]) -> float:
    peak, worst = -math.inf, 0.0
    for x in w:
        peak = max(peak, x)
        worst = min(worst, x / peak - 1)
    return worst


def _logret(n: int) -> Oracle:
    return lambda b: (
        [math.nan] * n
        + [math.log(c1 / c0) for c0, c1 in zip(_col(b, "close")[:-n], _col(b, "close")[n:], strict=True)]
    )


def _vol(window: int) -> Oracle:
    return lambda b: _over_windows(_one_bar_returns(b), window, lambda w: _stdev(w, ddof=1))


def _parkinson(window: int) -> Oracle:
    def f(b: pd.DataFrame) -> list[float]:
        terms = [math.log(h / lo) ** 2 for h, lo in zip(_col(b, "high"), _col(b, "low"), strict=True)]
        return _over_windows(terms, window, lambda w: math.sqrt(_mean(w) / (4 * math.log(2))))

    return f


def _garman_klass(window: int) -> Oracle:
    def f(b: pd.DataFrame) -> list[float]:
        cols = zip(*(_col(b, c) for c in ("open", "high", "low", "close")), strict=True)
        terms = [
            0.5 * math.log(h / lo) ** 2 - (2 * math.log(2) - 1) * math.log(c / o) ** 2 for o, h, lo, c in cols
        ]
        return _over_windows(terms, window, lambda w: math.sqrt(_mean(w)))

    return f


def _of_returns(stat: Callable[[list[float]], float], window: int) -> Oracle:
    return lambda b: _over_windows(_one_bar_returns(b), window, stat)


def _autocorr(lag: int, window: int) -> Oracle:
    def f(b: pd.DataFrame) -> list[float]:
        r = _one_bar_returns(b)
        out = []
        for t in range(len(r)):
            lo = t - window + 1
            if lo - lag < 1:  # r[0] is undefined
                out.append(math.nan)
                continue
            x, y = r[lo : t + 1], r[lo - lag : t + 1 - lag]
            mx, my = _mean(x), _mean(y)
            cov = math.fsum((a - mx) * (b_ - my) for a, b_ in zip(x, y, strict=True))
            vx = math.fsum((a - mx) ** 2 for a in x)
            vy = math.fsum((b_ - my) ** 2 for b_ in y)
            out.append(cov / math.sqrt(vx * vy))
        return out

    return f


def _log_volume_change(b: pd.DataFrame) -> list[float]:
    v = _col(b, "volume")
    return [math.nan] + [math.log(v[t] / v[t - 1]) for t in range(1, len(v))]


def _dollar_volume_z(b: pd.DataFrame) -> list[float]:
    dv = [c * v for c, v in zip(_col(b, "close"), _col(b, "volume"), strict=True)]
    return _over_windows(dv, 20, lambda w: (w[-1] - _mean(w)) / _stdev(w, ddof=0))


def _var_hist(level: int, window: int) -> Oracle:
    return lambda b: _over_windows(_one_bar_returns(b), window, lambda w: -_quantile(w, 1 - level / 100))


def _var_gauss(b: pd.DataFrame) -> list[float]:
    z = NormalDist().inv_cdf(0.95)
    return _over_windows(_one_bar_returns(b), 60, lambda w: z * _stdev(w, ddof=1) - _mean(w))


def _cvar(b: pd.DataFrame) -> list[float]:
    return _over_windows(_one_bar_returns(b), 250, lambda w: _expected_shortfall(w, 0.05))


def _max_dd(window: int) -> Oracle:
    return lambda b: _over_windows(_col(b, "close"), window, _max_drawdown)


def _drawdown(b: pd.DataFrame) -> list[float]:
    return _over_windows(_col(b, "close"), 250, lambda w: w[-1] / max(w) - 1)


ORACLES: dict[str, Oracle] = {
    **{f"logret_{n}": _logret(n) for n in (1, 2, 5, 10, 20, 60)},
    **{f"vol_{n}": _vol(n) for n in (10, 20, 60)},
    **{f"parkinson_vol_{n}": _parkinson(n) for n in (20, 60)},
    **{f"garman_klass_vol_{n}": _garman_klass(n) for n in (20, 60)},
    **{f"ret_skew_{n}": _of_returns(_skew, n) for n in (20, 60)},
    **{f"ret_kurt_{n}": _of_returns(_excess_kurt, n) for n in (20, 60)},
    **{f"ret_autocorr_lag{k}_60": _autocorr(k, 60) for k in (1, 2, 5)},
    "log_volume_change_1": _log_volume_change,
    "dollar_volume_z_20": _dollar_volume_z,
    **{f"var_hist_{lv}_{w}": _var_hist(lv, w) for lv in (95, 99) for w in (60, 250)},
    "var_gauss_95_60": _var_gauss,
    "cvar_hist_95_250": _cvar,
    **{f"max_drawdown_{w}": _max_dd(w) for w in (20, 60, 250)},
    "drawdown_250": _drawdown,
}
FAMILY_NAMES = [n for n, s in REGISTRY.items() if s.family in ("statistical", "risk")]


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars()


@pytest.fixture(scope="module")
def features(bars: pd.DataFrame) -> pd.DataFrame:
    return compute_features(bars, FAMILY_NAMES)


def assert_close(actual, expected, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, float), np.asarray(expected, float), rtol=rtol, atol=atol, equal_nan=True
    )


# --- registration -----------------------------------------------------------------------------------


def test_every_family_feature_has_an_oracle() -> None:
    assert set(FAMILY_NAMES) == set(ORACLES)
    assert {REGISTRY[n].family for n in ORACLES if n.startswith(("var_", "cvar_", "max_dd", "drawdown"))} == {
        "risk"
    }
    assert "excess" in REGISTRY["ret_kurt_20"].description
    assert REGISTRY["garman_klass_vol_20"].inputs == ("open", "high", "low", "close")
    assert REGISTRY["dollar_volume_z_20"].inputs == ("close", "volume")


# --- oracles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ORACLES))
def test_matches_plain_loop_oracle(name: str, bars: pd.DataFrame, features: pd.DataFrame) -> None:
    expected = ORACLES[name](bars)
    got = features[name].to_numpy()
    assert_close(got, expected)
    # The declared warm-up is exact: NaN before it, a value from it on.
    lookback = REGISTRY[name].lookback
    assert np.isnan(got[:lookback]).all()
    assert np.isfinite(got[lookback:]).all()


def test_risk_orderings_hold(features: pd.DataFrame) -> None:
    f = features.iloc[250:]
    assert (f["cvar_hist_95_250"] >= f["var_hist_95_250"]).all()
    assert (f["var_hist_99_250"] >= f["var_hist_95_250"]).all()
    assert (f["max_drawdown_250"] <= f["max_drawdown_60"]).all()
    assert (f["max_drawdown_60"] <= f["max_drawdown_20"]).all()
    assert (f["max_drawdown_250"] <= f["drawdown_250"]).all()
    assert (f["drawdown_250"] <= 0).all()


# --- hand-worked cases --------------------------------------------------------------------------------


def test_range_volatility_by_hand_on_constant_range_bars() -> None:
    n = 70
    low = np.full(n, 100.0)
    frame = bars_from_close(np.full(n, 100.0))
    frame["low"] = low
    frame["high"] = low * math.exp(0.02)  # ln(H/L) = 0.02 on every bar
    frame["open"] = low * math.exp(0.005)
    frame["close"] = low * math.exp(0.015)  # ln(C/O) = 0.01
    out = compute_features(
        frame, ["parkinson_vol_20", "parkinson_vol_60", "garman_klass_vol_20", "garman_klass_vol_60"]
    )
    parkinson = 0.02 / math.sqrt(4 * math.log(2))
    garman_klass = math.sqrt(0.5 * 0.02**2 - (2 * math.log(2) - 1) * 0.01**2)
    for window in (20, 60):
        assert np.isnan(out[f"parkinson_vol_{window}"].iloc[: window - 1]).all()
        assert out[f"parkinson_vol_{window}"].iloc[window - 1 :].to_numpy() == pytest.approx(
            [parkinson] * (n - window + 1), rel=1e-12
        )
        assert out[f"garman_klass_vol_{window}"].iloc[window - 1 :].to_numpy() == pytest.approx(
            [garman_klass] * (n - window + 1), rel=1e-12
        )


def test_var_and_cvar_by_hand_on_a_known_series() -> None:
    rng = np.random.default_rng(3)
    # 250 returns -0.0125, -0.0124, ..., +0.0124 in shuffled order; order does not move a quantile.
    returns = rng.permutation([(i - 125) / 10_000 for i in range(250)])
    out = compute_features(
        bars_from_returns(list(returns)), ["var_hist_95_250", "var_hist_99_250", "cvar_hist_95_250"]
    )
    last = out.iloc[-1]
    # 5% quantile at position 0.05 * 249 = 12.45: -0.0113 + 0.45 * 0.0001.
    assert last["var_hist_95_250"] == pytest.approx(0.011255, rel=1e-9)
    # 1% quantile at position 0.01 * 249 = 2.49: -0.0123 + 0.49 * 0.0001.
    assert last["var_hist_99_250"] == pytest.approx(0.012251, rel=1e-9)
    # Worst 12.5 returns: -0.0125 ... -0.0114 in full plus half of -0.0113.
    tail = sum((i - 125) / 10_000 for i in range(12)) + 0.5 * (12 - 125) / 10_000
    assert tail == pytest.approx(-0.14905)
    assert last["cvar_hist_95_250"] == pytest.approx(0.14905 / 12.5, rel=1e-9)

    # 60 returns -0.030, ..., +0.029 (mean -0.0005, sample std 0.001 * sqrt(305)).
    returns = rng.permutation([(i - 30) / 1_000 for i in range(60)])
    out = compute_features(
        bars_from_returns(list(returns)), ["var_hist_95_60", "var_hist_99_60", "var_gauss_95_60"]
    )
    last = out.iloc[-1]
    assert last["var_hist_95_60"] == pytest.approx(0.02705, rel=1e-9)  # -0.028 + 0.95 * 0.001
    assert last["var_hist_99_60"] == pytest.approx(0.02941, rel=1e-9)  # -0.030 + 0.59 * 0.001
    assert last["var_gauss_95_60"] == pytest.approx(
        1.6448536269514722 * 0.001 * math.sqrt(305) + 0.0005, rel=1e-9
    )


def test_drawdowns_by_hand() -> None:
    close = np.full(300, 100.0)
    close[5], close[8] = 120.0, 90.0  # peak 120, then a trough 25% below it
    close[270], close[290] = 150.0, 135.0
    out = compute_features(
        bars_from_close(close), ["max_drawdown_20", "max_drawdown_60", "max_drawdown_250", "drawdown_250"]
    )
    dd20 = out["max_drawdown_20"]
    assert dd20.iloc[19] == pytest.approx(-0.25)  # window 0..19 holds the peak and the trough
    assert dd20.iloc[25] == pytest.approx(-0.10)  # window 6..25: the peak left, 90 is 10% below 100
    assert dd20.iloc[28] == 0.0  # window 9..28 is flat
    assert out["max_drawdown_60"].iloc[59] == pytest.approx(-0.25)
    assert out["max_drawdown_250"].iloc[249] == pytest.approx(-0.25)
    assert out["max_drawdown_250"].iloc[258] == 0.0  # window 9..258: peak and trough both gone
    assert out["max_drawdown_250"].iloc[299] == pytest.approx(100 / 150 - 1)  # 150 at 270, then 100
    assert out["max_drawdown_20"].iloc[299] == pytest.approx(100 / 135 - 1)  # window 280..299: 135, then 100
    assert out["drawdown_250"].iloc[249] == pytest.approx(-1 / 6)  # 100 against the 120 high
    assert out["drawdown_250"].iloc[280] == pytest.approx(100 / 150 - 1)
    assert out["drawdown_250"].iloc[290] == pytest.approx(-0.10)  # 135 against 150


# --- guards -----------------------------------------------------------------------------------------


def test_no_lookahead_in_statistical_and_risk_families() -> None:
    # Two symbols of different lengths so the cuts also fall where one symbol has already ended.
    bars = pd.concat([make_bars(), make_bars(n=280, seed=11, symbol="BBB")])
    assert check_lookahead(bars, FAMILY_NAMES, n_cuts=8, seed=5) == {}


def test_flat_prices_give_zeros_and_nan_never_inf() -> None:
    out = compute_features(bars_from_close(np.full(N_BARS, 50.0)), FAMILY_NAMES)
    values = out[FAMILY_NAMES]
    assert not np.isinf(values.to_numpy()).any()
    undefined = [n for n in FAMILY_NAMES if n.startswith(("ret_skew", "ret_kurt", "ret_autocorr"))]
    undefined.append("dollar_volume_z_20")  # a window with no variation has no z-score
    for name in FAMILY_NAMES:
        after_warm_up = values[name].iloc[REGISTRY[name].lookback :]
        if name in undefined:
            assert after_warm_up.isna().all(), name
        else:
            assert (after_warm_up == 0.0).all(), name


def test_bad_values_are_nan_not_inf() -> None:
    frame = make_bars(n=80)
    frame.loc[40, "volume"] = 0.0
    frame.loc[50, ["open", "high", "low", "close"]] = 0.0
    out = compute_features(frame, FAMILY_NAMES)
    assert not np.isinf(out[FAMILY_NAMES].to_numpy()).any()
    assert np.isnan(out["log_volume_change_1"].iloc[[40, 41]]).all()
    assert np.isfinite(out["log_volume_change_1"].iloc[42])
    # A zero close voids every window that holds it, then the features recover.
    assert np.isnan(out.loc[50:69, "max_drawdown_20"]).all()
    assert np.isfinite(out.loc[70, "max_drawdown_20"])
    assert np.isnan(out.loc[50:70, "vol_20"]).all()  # returns 50 and 51 both touch the zero close
    assert np.isfinite(out.loc[71, "vol_20"])
