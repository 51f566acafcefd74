"""Alpha158: names and order, plain-loop oracles of Qlib's expressions, hand cases, lookahead guard."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import percentileofscore

from quanto.data.schemas import conform_bars
from quanto.features.alpha158 import ALPHA158, FAMILY, QLIB_NAMES
from quanto.features.engine import same_values
from quanto.features.registry import REGISTRY, check_lookahead, compute_features

NAN = float("nan")
WINDOWS = (5, 10, 20, 30, 60)
KBAR = ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
PRICE = ("OPEN0", "HIGH0", "LOW0", "VWAP0")
ROLLING = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV", "IMAX", "IMIN", "IMXD",
    "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
)  # fmt: skip


def make_bars(symbol: str = "AAA", n: int = 130, seed: int = 7, price: float = 10.0) -> pd.DataFrame:
    """Seeded bars with prices rounded to cents and volumes in lots, so windows hold ties."""
    rng = np.random.default_rng(seed)
    close = (price * np.exp(np.cumsum(rng.normal(0, 0.01, n)))).round(2)
    open_ = (np.r_[price, close[:-1]] * np.exp(rng.normal(0, 0.003, n))).round(2)
    high = (np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.005, n)))).round(2)
    low = (np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.005, n)))).round(2)
    frame = pd.DataFrame(
        {
            "symbol": symbol,
            "ts": pd.date_range("2021-01-01", periods=n, freq="D", tz="UTC"),
            "timeframe": "1d",
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.integers(1, 40, n) * 100.0,
            "vwap": (high + low + close) / 3,
            "trades": rng.integers(10, 100, n),
            "vendor": "test",
            "imputed": False,
        }
    )
    return conform_bars(frame)


# --- an independent plain-Python reading of Qlib's operators (full windows only) -----------------


def isnan(x: float) -> bool:
    return x != x


def ref(x: list[float], d: int) -> list[float]:
    return [x[t - d] if t >= d else NAN for t in range(len(x))]


def elementwise(f, *xs: list[float]) -> list[float]:
    """f over aligned values; NaN wherever an input is NaN."""
    return [NAN if any(isnan(v) for v in vals) else f(*vals) for vals in zip(*xs, strict=True)]


def div(a: list[float], b: list[float]) -> list[float]:
    return elementwise(lambda p, q: p / q if q != 0 else NAN, a, b)


def rolling(x: list[float], n: int, f) -> list[float]:
    """f(window) for each full window of n values ending at t; NaN for short or NaN-holding windows."""
    out = []
    for t in range(len(x)):
        window = x[t - n + 1 : t + 1] if t >= n - 1 else []
        out.append(f(window) if window and not any(isnan(v) for v in window) else NAN)
    return out


def w_mean(w: list[float]) -> float:
    return sum(w) / len(w)


def w_std(w: list[float]) -> float:
    m = w_mean(w)
    return math.sqrt(sum((v - m) ** 2 for v in w) / (len(w) - 1))


def w_quantile(q: float):
    def f(w: list[float]) -> float:
        s = sorted(w)
        pos = q * (len(s) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return f


def w_rank(w: list[float]) -> float:
    # Qlib's fallback when pandas lacks rolling.rank: scipy's percentile of the last value / 100.
    return percentileofscore(w, w[-1]) / 100


def w_idxmax(w: list[float]) -> float:
    best = 0
    for i, v in enumerate(w):
        if v > w[best]:
            best = i
    return best + 1.0


def w_idxmin(w: list[float]) -> float:
    best = 0
    for i, v in enumerate(w):
        if v < w[best]:
            best = i
    return best + 1.0


def ols(w: list[float]) -> tuple[float, float, float]:
    """Slope, R^2 and last residual of w regressed on x = 1..n, by textbook sums."""
    n = len(w)
    xs = list(range(1, n + 1))
    sx, sy = sum(xs), sum(w)
    sxx = sum(x * x for x in xs)
    syy = sum(y * y for y in w)
    sxy = sum(x * y for x, y in zip(xs, w, strict=True))
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    intercept = sy / n - slope * sx / n
    var_y = n * syy - sy * sy
    r2 = (n * sxy - sx * sy) ** 2 / ((n * sxx - sx * sx) * var_y) if var_y > 0 else NAN
    if w_std(w) <= 2e-5:  # Qlib NaNs R^2 of a near-constant window
        r2 = NAN
    return slope, r2, w[-1] - (slope * n + intercept)


def corr(a: list[float], b: list[float], n: int) -> list[float]:
    out = []
    for t in range(len(a)):
        if t < n - 1:
            out.append(NAN)
            continue
        wa, wb = a[t - n + 1 : t + 1], b[t - n + 1 : t + 1]
        if any(isnan(v) for v in wa + wb):
            out.append(NAN)
            continue
        ma, mb = w_mean(wa), w_mean(wb)
        cov = sum((p - ma) * (q - mb) for p, q in zip(wa, wb, strict=True))
        va = sum((p - ma) ** 2 for p in wa)
        vb = sum((q - mb) ** 2 for q in wb)
        flat = w_std(wa) <= 2e-5 or w_std(wb) <= 2e-5  # Qlib's degenerate-window rule
        out.append(NAN if flat or va == 0 or vb == 0 else cov / math.sqrt(va * vb))
    return out


def gt(a: list[float], b: list[float]) -> list[float]:
    return elementwise(lambda p, q: 1.0 if p > q else 0.0, a, b)


def greater0(x: list[float]) -> list[float]:
    return elementwise(lambda p: max(p, 0.0), x)


def sums(x: list[float], d: int) -> tuple[list[float], list[float], list[float]]:
    """Sum over d of Greater(x-Ref(x,1),0), Greater(Ref(x,1)-x,0), Abs(x-Ref(x,1))."""
    prev = ref(x, 1)
    up = elementwise(lambda p, q: p - q, x, prev)
    down = elementwise(lambda p, q: q - p, x, prev)
    total = rolling(elementwise(abs, up), d, sum)
    return rolling(greater0(up), d, sum), rolling(greater0(down), d, sum), total


def plus_eps(x: list[float]) -> list[float]:
    return elementwise(lambda p: p + 1e-12, x)


def oracle(family: str, bars: pd.DataFrame, d: int) -> list[float]:
    """Qlib's Alpha158 expression for `family` at window d, by plain loops."""
    o, h, lo, c, v = (bars[k].tolist() for k in ("open", "high", "low", "close", "volume"))
    sub = lambda a, b: elementwise(lambda p, q: p - q, a, b)  # noqa: E731
    if family == "ROC":
        return div(ref(c, d), c)
    if family == "MA":
        return div(rolling(c, d, w_mean), c)
    if family == "STD":
        return div(rolling(c, d, w_std), c)
    if family == "BETA":
        return div(rolling(c, d, lambda w: ols(w)[0]), c)
    if family == "RSQR":
        return rolling(c, d, lambda w: ols(w)[1])
    if family == "RESI":
        return div(rolling(c, d, lambda w: ols(w)[2]), c)
    if family == "MAX":
        return div(rolling(h, d, max), c)
    if family == "MIN":
        return div(rolling(lo, d, min), c)
    if family == "QTLU":
        return div(rolling(c, d, w_quantile(0.8)), c)
    if family == "QTLD":
        return div(rolling(c, d, w_quantile(0.2)), c)
    if family == "RANK":
        return rolling(c, d, w_rank)
    if family == "RSV":
        lowest, highest = rolling(lo, d, min), rolling(h, d, max)
        return div(sub(c, lowest), plus_eps(sub(highest, lowest)))
    if family == "IMAX":
        return [x / d for x in rolling(h, d, w_idxmax)]
    if family == "IMIN":
        return [x / d for x in rolling(lo, d, w_idxmin)]
    if family == "IMXD":
        return [x / d for x in sub(rolling(h, d, w_idxmax), rolling(lo, d, w_idxmin))]
    if family == "CORR":
        return corr(c, [math.log(x + 1) for x in v], d)
    if family == "CORD":
        log_change = elementwise(lambda p: math.log(p + 1), div(v, ref(v, 1)))
        return corr(div(c, ref(c, 1)), log_change, d)
    if family in ("CNTP", "CNTN", "CNTD"):
        ups = rolling(gt(c, ref(c, 1)), d, w_mean)
        downs = rolling(gt(ref(c, 1), c), d, w_mean)
        return {"CNTP": ups, "CNTN": downs, "CNTD": sub(ups, downs)}[family]
    if family in ("SUMP", "SUMN", "SUMD", "VSUMP", "VSUMN", "VSUMD"):
        gains, losses, total = sums(v if family.startswith("V") else c, d)
        num = {"P": gains, "N": losses, "D": sub(gains, losses)}[family[-1]]
        return div(num, plus_eps(total))
    if family == "VMA":
        return div(rolling(v, d, w_mean), plus_eps(v))
    if family == "VSTD":
        return div(rolling(v, d, w_std), plus_eps(v))
    if family == "WVMA":
        weighted = elementwise(lambda r, vol: abs(r - 1) * vol, div(c, ref(c, 1)), v)
        return div(rolling(weighted, d, w_std), plus_eps(rolling(weighted, d, w_mean)))
    raise AssertionError(f"no oracle for {family}")


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars()


@pytest.fixture(scope="module")
def features(bars: pd.DataFrame) -> pd.DataFrame:
    return compute_features(bars, ALPHA158)


# --- names, order, specs --------------------------------------------------------------------------


def test_exactly_158_unique_features_in_qlib_order() -> None:
    registered = [name for name, spec in REGISTRY.items() if spec.family == FAMILY]
    assert FAMILY == "alpha158"
    assert len(ALPHA158) == len(set(ALPHA158)) == len(registered) == 158
    assert set(ALPHA158) == set(registered)
    expected_qlib = [*KBAR, *PRICE, *(f"{fam}{d}" for fam in ROLLING for d in WINDOWS)]
    assert [QLIB_NAMES[n] for n in ALPHA158] == expected_qlib
    assert ALPHA158[:2] == ("alpha158_kmid", "alpha158_klen")
    assert ALPHA158[9:13] == ("alpha158_open_0", "alpha158_high_0", "alpha158_low_0", "alpha158_vwap_0")
    assert ALPHA158[13] == "alpha158_roc_5" and ALPHA158[-1] == "alpha158_vsumd_60"


def test_specs_describe_the_qlib_expression() -> None:
    assert REGISTRY["alpha158_roc_5"].description == "Ref($close, 5)/$close"
    assert REGISTRY["alpha158_kmid"].description == "($close-$open)/$open"
    assert REGISTRY["alpha158_vwap_0"].description == "$vwap/$close"
    assert REGISTRY["alpha158_imxd_10"].description == "(IdxMax($high, 10)-IdxMin($low, 10))/10"
    assert REGISTRY["alpha158_sumd_20"].description == (
        "(Sum(Greater($close-Ref($close, 1), 0), 20)-Sum(Greater(Ref($close, 1)-$close, 0), 20))"
        "/(Sum(Abs($close-Ref($close, 1)), 20)+1e-12)"
    )
    for name in ALPHA158:
        spec = REGISTRY[name]
        assert spec.description and "\n" not in spec.description
        assert set(spec.inputs) <= {"open", "high", "low", "close", "volume", "vwap"}
    # Warm-up: window - 1, plus one bar where the expression differences against Ref(x, 1).
    lookbacks = {"roc_5": 5, "ma_5": 4, "rsqr_60": 59, "cord_20": 20, "cntp_5": 5, "wvma_30": 30}
    for short, lookback in lookbacks.items():
        assert REGISTRY[f"alpha158_{short}"].lookback == lookback
    assert REGISTRY["alpha158_kmid"].lookback == 0 and REGISTRY["alpha158_open_0"].lookback == 0


def test_each_feature_needs_only_its_declared_inputs(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    for name in ALPHA158:
        # compute_features hands a feature only symbol, ts and its inputs: reading more would fail.
        alone = compute_features(bars[["symbol", "ts", *REGISTRY[name].inputs]], [name])
        np.testing.assert_array_equal(alone[name].to_numpy(), features[name].to_numpy(), err_msg=name)


# --- rolling families against the plain-loop oracle ----------------------------------------------


@pytest.mark.parametrize("family", ROLLING)
def test_rolling_family_matches_loop_oracle(family: str, bars: pd.DataFrame, features: pd.DataFrame) -> None:
    for d in WINDOWS:
        name = f"alpha158_{family.lower()}_{d}"
        expected = np.array(oracle(family, bars, d), dtype=float)
        actual = features[name].to_numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
        lookback = REGISTRY[name].lookback
        assert np.isnan(actual[:lookback]).all(), name
        assert np.isfinite(actual[lookback:]).mean() > 0.9, name  # the oracle is not vacuous


def test_tie_conventions_by_hand() -> None:
    """IdxMax/IdxMin count the first extreme from the oldest bar; Rank averages tied ranks."""
    frame = make_bars(n=5)
    frame["high"] = [1.0, 3.0, 3.0, 2.0, 1.0]
    frame["low"] = [0.5, 0.2, 0.4, 0.2, 0.3]
    frame["close"] = [1.0, 2.0, 2.0, 3.0, 2.0]
    out = compute_features(
        frame, ["alpha158_imax_5", "alpha158_imin_5", "alpha158_imxd_5", "alpha158_rank_5"]
    )
    last = out.iloc[-1]
    assert last["alpha158_imax_5"] == pytest.approx(2 / 5)  # first of the two 3.0 highs, position 2
    assert last["alpha158_imin_5"] == pytest.approx(2 / 5)  # first of the two 0.2 lows, position 2
    assert last["alpha158_imxd_5"] == pytest.approx(0.0)
    # 2.0 among [1, 2, 2, 3, 2]: one below, three equal -> average rank 3 of 5.
    assert last["alpha158_rank_5"] == pytest.approx(0.6)


# --- K-bar and price ratios by hand ---------------------------------------------------------------


def test_kbar_and_price_ratios_by_hand() -> None:
    frame = make_bars(n=3)
    frame[["open", "high", "low", "close"]] = [[10.0, 12.0, 9.0, 11.0], [20.0, 21.0, 16.0, 17.0], [5.0] * 4]
    frame["vwap"] = [10.5, 18.0, np.nan]  # a vendor without vwap on the last bar
    out = compute_features(frame, ALPHA158[:13]).set_index(pd.Index([0, 1, 2]))
    third = 1 / (3 + 1e-12)
    expected = {
        # up bar: body 1, range 3, upper wick 1, lower wick 1
        0: {"kmid": 0.1, "klen": 0.3, "kmid2": third, "kup": 0.1, "kup2": third, "klow": 0.1,
            "klow2": third, "ksft": 0.1, "ksft2": third,
            "open_0": 10 / 11, "high_0": 12 / 11, "low_0": 9 / 11, "vwap_0": 10.5 / 11},
        # down bar: body -3, range 5, upper wick 1, lower wick 1
        1: {"kmid": -0.15, "klen": 0.25, "kmid2": -0.6, "kup": 0.05, "kup2": 0.2, "klow": 0.05,
            "klow2": 0.2, "ksft": -0.15, "ksft2": -0.6,
            "open_0": 20 / 17, "high_0": 21 / 17, "low_0": 16 / 17, "vwap_0": 18 / 17},
        # flat bar: Qlib's 1e-12 keeps the range ratios at 0, not NaN; a null vwap gives NaN
        2: {"kmid": 0.0, "klen": 0.0, "kmid2": 0.0, "kup": 0.0, "kup2": 0.0, "klow": 0.0,
            "klow2": 0.0, "ksft": 0.0, "ksft2": 0.0,
            "open_0": 1.0, "high_0": 1.0, "low_0": 1.0, "vwap_0": NAN},
    }  # fmt: skip
    for row, values in expected.items():
        for short, value in values.items():
            got = out.loc[row, f"alpha158_{short}"]
            assert got == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), (row, short)


# --- degenerate windows ---------------------------------------------------------------------------


def test_flat_and_near_flat_windows() -> None:
    flat = make_bars(n=80)
    flat[["open", "high", "low", "close", "vwap"]] = 50.0
    flat["volume"] = 1000.0
    out = compute_features(flat, ALPHA158)
    values = out[list(ALPHA158)]
    assert not np.isinf(values.to_numpy()).any()
    tail = out.iloc[70:]
    # A constant window has no regression fit or correlation (Qlib's std ~ 0 rule), zero slope and residual.
    for name in ("alpha158_rsqr_5", "alpha158_corr_5", "alpha158_cord_5"):
        assert tail[name].isna().all(), name
    for name in (
        "alpha158_beta_5",
        "alpha158_resi_5",
        "alpha158_std_5",
        "alpha158_sump_5",
        "alpha158_cntd_5",
    ):
        assert (tail[name] == 0).all(), name
    assert (tail["alpha158_rsv_5"] == 0).all() and (tail["alpha158_ma_60"] == 1).all()

    # Not constant but within Qlib's 2e-5 std tolerance: R^2 and Corr are still NaN.
    wiggle = make_bars(n=40)
    wiggle["close"] = 50.0 + 1e-6 * np.sin(np.arange(40))
    near = compute_features(wiggle, ["alpha158_rsqr_10", "alpha158_corr_10", "alpha158_beta_10"])
    assert near["alpha158_rsqr_10"].isna().all() and near["alpha158_corr_10"].isna().all()
    assert near["alpha158_beta_10"].iloc[9:].notna().all()


# --- lookahead and scale --------------------------------------------------------------------------


def test_lookahead_guard_is_clean() -> None:
    frame = make_bars(n=300, seed=11, price=40.0)
    assert check_lookahead(frame, ALPHA158) == {}


def test_two_symbols_by_500_bars() -> None:
    frame = pd.concat([make_bars("AAA", n=500, seed=3), make_bars("BBB", n=500, seed=4, price=80.0)])
    out = compute_features(frame, ALPHA158)
    assert out.shape == (1000, 2 + 158)
    assert list(out.columns[2:]) == list(ALPHA158)
    for symbol in ("AAA", "BBB"):
        part = out[out["symbol"] == symbol]
        alone = compute_features(frame[frame["symbol"] == symbol], ALPHA158)
        for name in ALPHA158:  # symbols laid end to end: equal up to the rounding of running sums
            assert same_values(part[name].to_numpy(), alone[name].to_numpy()).all(), (symbol, name)
            column = part[name].to_numpy()
            assert np.isnan(column[: REGISTRY[name].lookback]).all(), name
    assert not np.isinf(out[list(ALPHA158)].to_numpy()).any()
