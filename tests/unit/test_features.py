"""Feature registry: TA-Lib oracles, lookahead guard, per-symbol independence, names and catalog."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
import talib
from pydantic import ValidationError

from quanto.config.models import FeaturesConfig
from quanto.data.schemas import BAR_COLUMNS, conform_bars
from quanto.features.engine import same_values
from quanto.features.registry import (
    DEFAULT_FEATURES,
    REGISTRY,
    check_lookahead,
    compute_features,
    expand_names,
    feature_catalog,
    feature_lookback,
)
from quanto.features.spec import register

N_BARS = 600  # comfortably past the longest warm-up (sma_ratio_200)


def make_bars(symbol: str = "AAA", n: int = N_BARS, seed: int = 1, price: float = 100.0) -> pd.DataFrame:
    """Seeded random-walk daily bars in the canonical schema."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    open_ = np.r_[price, close[:-1]] * np.exp(rng.normal(0, 0.003, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n)))
    frame = pd.DataFrame(
        {
            "symbol": symbol,
            "ts": pd.date_range("2020-01-01", periods=n, freq="D", tz="UTC"),
            "timeframe": "1d",
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.lognormal(12, 0.5, n).round(),
            "vwap": (high + low + close) / 3,
            "trades": rng.integers(100, 1000, n),
            "vendor": "test",
            "imputed": False,
        }
    )
    return conform_bars(frame)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars()


@pytest.fixture(scope="module")
def features(bars: pd.DataFrame) -> pd.DataFrame:
    return compute_features(bars, ["default"])


# Per-name guards cover every family except the raw TA-Lib catalog, which test_talib_catalog checks
# as a whole against TA-Lib itself (its inverse-trig functions are NaN on prices by definition).
# The talib and tsfresh families have their own guard tests (test_talib_catalog, test_tsfresh_features).
GUARDED = [n for n, s in REGISTRY.items() if s.family not in {"talib", "tsfresh"}]


@pytest.fixture(scope="module")
def features_all(bars: pd.DataFrame) -> pd.DataFrame:
    return compute_features(bars, GUARDED)


def _ohlcv(bars: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(bars[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume"))


def assert_nan_equal(actual, expected, rtol: float = 1e-12) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, float), np.asarray(expected, float), rtol=rtol, atol=0, equal_nan=True
    )


# --- registry contents ----------------------------------------------------------------------------


def test_registry_has_the_promised_families() -> None:
    families = [s.family for s in REGISTRY.values()]
    assert families.count("technical") >= 60
    assert {"logret_1", "logret_5", "logret_20", "vol_20", "vol_60"} <= set(REGISTRY)
    assert len(DEFAULT_FEATURES) >= 60
    # The default set is the curated technical set plus five statistical features, nothing else.
    technical = {n for n, s in REGISTRY.items() if s.family == "technical"}
    statistical = set(DEFAULT_FEATURES) - technical
    assert technical <= set(DEFAULT_FEATURES)
    assert statistical == {"logret_1", "logret_5", "logret_20", "vol_20", "vol_60"}


def test_catalog_rows() -> None:
    rows = feature_catalog()
    assert [r["name"] for r in rows] == list(REGISTRY)
    for row in rows:
        assert set(row) == {"name", "family", "params", "lookback", "version", "description"}
        assert row["description"] and "\n" not in row["description"]
        assert isinstance(row["version"], int) and row["version"] >= 1
    assert next(r for r in rows if r["name"] == "rsi_14")["params"] == {"timeperiod": 14}


def test_register_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("rsi_14", family="technical", inputs=("close",), lookback=0, description="x")
    with pytest.raises(ValueError, match="reserved"):
        register("default", family="technical", inputs=("close",), lookback=0, description="x")
    with pytest.raises(ValueError, match="lowercase"):
        register("RSI-14", family="technical", inputs=("close",), lookback=0, description="x")


# --- names ----------------------------------------------------------------------------------------


def test_expand_default_keeps_order_and_drops_repeats() -> None:
    assert expand_names(["default"]) == list(DEFAULT_FEATURES)
    assert expand_names(["rsi_14", "default", "rsi_14"]) == [
        "rsi_14",
        *[n for n in DEFAULT_FEATURES if n != "rsi_14"],
    ]
    assert expand_names(["vol_20", "logret_1", "vol_20"]) == ["vol_20", "logret_1"]
    assert expand_names([]) == []


def test_expand_unknown_names_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown feature 'rsi_41'; known: .*rsi_14") as err:
        expand_names(["default", "rsi_41"])
    # A few suggestions, not the whole registry.
    assert "sma_ratio_200" not in str(err.value)
    with pytest.raises(ValueError, match="unknown feature 'xyz'; known: "):
        expand_names(["xyz"])


def test_features_config_rejects_unknown_names() -> None:
    with pytest.raises(ValidationError, match="nope"):
        FeaturesConfig(names=["nope"])
    assert FeaturesConfig().names == ["default"]
    assert FeaturesConfig(names=["rsi_14", "default"]).names == ["rsi_14", "default"]


def test_feature_lookback() -> None:
    assert feature_lookback(["rsi_14"]) == 14
    assert feature_lookback(["default"]) == 199
    assert feature_lookback([]) == 0


# --- TA-Lib and hand oracles ----------------------------------------------------------------------


def test_oracles_against_talib(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    o, h, lo, c, v = _ohlcv(bars)
    assert_nan_equal(features["rsi_14"], talib.RSI(c, timeperiod=14))
    assert_nan_equal(features["sma_ratio_20"], c / talib.SMA(c, timeperiod=20) - 1)
    assert_nan_equal(features["ema_ratio_26"], c / talib.EMA(c, timeperiod=26) - 1)
    assert_nan_equal(features["macd_hist_12_26_9"], talib.MACD(c, 12, 26, 9)[2] / c)
    upper, middle, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2)
    assert_nan_equal(features["bb_pctb_20"], (c - lower) / (upper - lower))
    assert_nan_equal(features["bb_width_20"], (upper - lower) / middle)
    assert_nan_equal(features["stoch_d_14"], talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)[1])
    assert_nan_equal(features["adx_14"], talib.ADX(h, lo, c, timeperiod=14))
    assert_nan_equal(features["natr_14"], 100 * talib.ATR(h, lo, c, timeperiod=14) / c, rtol=1e-9)
    assert_nan_equal(features["mfi_14"], talib.MFI(h, lo, c, v, timeperiod=14))
    assert_nan_equal(features["ultosc_7_14_28"], talib.ULTOSC(h, lo, c, 7, 14, 28))
    assert_nan_equal(features["bop"], talib.BOP(o, h, lo, c))


def test_new_default_features_against_talib(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    o, h, lo, c, v = _ohlcv(bars)
    assert_nan_equal(features["sma_ratio_100"], c / talib.SMA(c, timeperiod=100) - 1)
    assert_nan_equal(features["ema_ratio_200"], c / talib.EMA(c, timeperiod=200) - 1)
    assert_nan_equal(features["rsi_7"], talib.RSI(c, timeperiod=7))
    assert_nan_equal(features["rsi_21"], talib.RSI(c, timeperiod=21))
    assert_nan_equal(features["stochrsi_k_14"], talib.STOCHRSI(c, 14, 5, 3, 0)[0])
    assert_nan_equal(features["stochrsi_d_14"], talib.STOCHRSI(c, 14, 5, 3, 0)[1])
    upper, middle, lower = talib.BBANDS(c, timeperiod=50, nbdevup=2, nbdevdn=2)
    assert_nan_equal(features["bb_width_50"], (upper - lower) / middle)
    assert_nan_equal(features["bb_pctb_50"], (c - lower) / (upper - lower))
    assert_nan_equal(features["natr_28"], talib.NATR(h, lo, c, timeperiod=28))
    assert_nan_equal(features["adxr_14"], talib.ADXR(h, lo, c, timeperiod=14))
    assert_nan_equal(features["cci_14"], talib.CCI(h, lo, c, timeperiod=14))
    assert_nan_equal(features["roc_5"], talib.ROC(c, timeperiod=5))
    assert_nan_equal(features["roc_20"], talib.ROC(c, timeperiod=20))
    assert_nan_equal(features["aroon_up_14"], talib.AROON(h, lo, timeperiod=14)[1])
    assert_nan_equal(features["aroon_down_14"], talib.AROON(h, lo, timeperiod=14)[0])
    assert_nan_equal(features["trix_15"], talib.TRIX(c, timeperiod=15))
    assert_nan_equal(features["ppo_12_26"], talib.PPO(c, 12, 26, matype=1))
    assert_nan_equal(features["cmo_14"], talib.CMO(c, timeperiod=14))
    assert_nan_equal(features["mom_ratio_10"], talib.MOM(c, timeperiod=10) / c)
    assert_nan_equal(features["kama_ratio_10"], c / talib.KAMA(c, timeperiod=10) - 1)
    assert_nan_equal(features["sar_dist"], (c - talib.SAR(h, lo, 0.02, 0.2)) / c)
    assert_nan_equal(features["ht_trendline_ratio"], c / talib.HT_TRENDLINE(c) - 1)
    assert_nan_equal(features["ht_dcperiod"], talib.HT_DCPERIOD(c))
    assert_nan_equal(features["tsf_ratio_14"], c / talib.TSF(c, timeperiod=14) - 1)
    assert_nan_equal(features["linreg_slope_50"], talib.LINEARREG_SLOPE(c, timeperiod=50) / c)
    # The fixture's bars carry a vendor vwap, so the distance is to it (after the fixed warm-up).
    vwap = bars["vwap"].to_numpy()
    assert_nan_equal(features["vwap_dist"].iloc[19:], (c / vwap - 1)[19:])
    assert np.isnan(features["vwap_dist"].iloc[:19]).all()


def test_vwap_dist_falls_back_to_a_rolling_typical_price_vwap(bars: pd.DataFrame) -> None:
    gappy = bars.copy()
    gappy.loc[gappy.index[300:], "vwap"] = np.nan  # the vendor stops sending vwap
    got = compute_features(gappy, ["vwap_dist"])["vwap_dist"]
    _, h, lo, c, v = _ohlcv(bars)
    tp = (h + lo + c) / 3
    t = 420
    rolling = (tp[t - 19 : t + 1] * v[t - 19 : t + 1]).sum() / v[t - 19 : t + 1].sum()
    assert got.iloc[t] == pytest.approx(c[t] / rolling - 1, rel=1e-9)
    assert got.iloc[250] == pytest.approx(c[250] / bars["vwap"].iloc[250] - 1, rel=1e-12)


def test_zscores_and_statistical_by_hand(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    c, v = bars["close"], bars["volume"]
    t = 250
    window = v.iloc[t - 19 : t + 1]
    assert features["volume_z_20"].iloc[t] == pytest.approx((v.iloc[t] - window.mean()) / window.std(ddof=0))
    obv = pd.Series(talib.OBV(c.to_numpy(), v.to_numpy()))
    w = obv.iloc[t - 19 : t + 1]
    assert features["obv_z_20"].iloc[t] == pytest.approx((obv.iloc[t] - w.mean()) / w.std(ddof=0))
    assert features["logret_5"].iloc[t] == pytest.approx(np.log(c.iloc[t] / c.iloc[t - 5]))
    one_bar = np.log(c / c.shift(1))
    assert features["vol_20"].iloc[t] == pytest.approx(one_bar.iloc[t - 19 : t + 1].std(ddof=1))


@pytest.mark.parametrize("name", GUARDED)
def test_declared_lookback_is_exact(name: str, features_all: pd.DataFrame) -> None:
    values = features_all[name].to_numpy()
    lookback = REGISTRY[name].lookback
    assert np.isnan(values[:lookback]).all(), "values before the declared warm-up must be NaN"
    assert np.isfinite(values[lookback:]).all(), "values after the declared warm-up must be defined"


# --- lookahead and leakage guards -----------------------------------------------------------------


@pytest.mark.parametrize("name", GUARDED)
def test_no_lookahead(name: str, bars: pd.DataFrame) -> None:
    """Values at or before a cut do not change when the history after the cut is removed."""
    full = compute_features(bars, [name])[name].to_numpy()
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # seeded per feature
    cuts = [*rng.integers(1, N_BARS - 1, size=5), REGISTRY[name].lookback, N_BARS - 2]
    for cut in cuts:
        truncated = compute_features(bars.iloc[: cut + 1], [name])[name].to_numpy()
        assert len(truncated) == cut + 1
        assert_nan_equal(truncated, full[: cut + 1])


def test_check_lookahead_clean_and_catches_a_leak(bars: pd.DataFrame) -> None:
    assert check_lookahead(bars, ["default"], n_cuts=3) == {}
    leaky = "leaky_next_close"
    register(leaky, family="test", inputs=("close",), lookback=0, description="peeks at t+1")(
        lambda b: b["close"].shift(-1).to_numpy()
    )
    try:
        assert set(check_lookahead(bars, [leaky, "rsi_14"], n_cuts=3)) == {leaky}
    finally:
        REGISTRY.pop(leaky)


def test_symbols_are_independent(bars: pd.DataFrame) -> None:
    other = make_bars("BBB", n=450, seed=9, price=3.0)
    alone = compute_features(bars, ["default"])
    # Unsorted, interleaved input: the result is sorted and A's values are untouched by B.
    mixed = pd.concat([other, bars]).sample(frac=1.0, random_state=3)
    both = compute_features(mixed, ["default"])
    assert list(both["symbol"].unique()) == ["AAA", "BBB"]
    assert both["ts"].is_monotonic_increasing is False  # resets at the symbol boundary
    # Bounded features run over symbols laid end to end: equal up to the rounding of running sums.
    for symbol, expected in (("AAA", alone), ("BBB", compute_features(other, ["default"]))):
        got = both[both["symbol"] == symbol].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[["symbol", "ts"]], expected[["symbol", "ts"]])
        for name in expected.columns[2:]:
            assert same_values(got[name].to_numpy(), expected[name].to_numpy()).all(), (symbol, name)
    got_b = both[both["symbol"] == "BBB"].reset_index(drop=True)
    # B's warm-up restarts: its first bars are NaN even though A's rows precede it.
    assert np.isnan(got_b["rsi_14"].iloc[:14]).all()


# --- output shape and bad input -------------------------------------------------------------------


def test_output_columns_and_dtypes(bars: pd.DataFrame, features: pd.DataFrame) -> None:
    assert list(features.columns) == ["symbol", "ts", *DEFAULT_FEATURES]
    assert len(features) == len(bars)
    assert (features[list(DEFAULT_FEATURES)].dtypes == np.float64).all()
    assert str(features["ts"].dtype) == "datetime64[ns, UTC]"
    assert not np.isinf(features[list(DEFAULT_FEATURES)].to_numpy()).any()


def test_zero_denominators_are_nan_not_inf() -> None:
    flat = make_bars(n=60)
    flat[["open", "high", "low", "close"]] = 50.0
    flat["volume"] = 1000.0
    out = compute_features(flat, ["bb_pctb_20", "volume_z_20", "bop", "logret_1", "vol_20"])
    assert np.isnan(out["bb_pctb_20"]).all()
    assert np.isnan(out["volume_z_20"]).all()
    assert not np.isinf(out.drop(columns=["symbol", "ts"]).to_numpy()).any()
    assert (out["logret_1"].iloc[1:] == 0).all()
    assert (out["vol_20"].iloc[20:] == 0).all()


def test_empty_and_bad_input(bars: pd.DataFrame) -> None:
    empty = compute_features(bars.iloc[:0], ["rsi_14"])
    assert list(empty.columns) == ["symbol", "ts", "rsi_14"] and empty.empty
    short = compute_features(bars.iloc[:5], ["sma_ratio_200"])
    assert np.isnan(short["sma_ratio_200"]).all()
    with pytest.raises(KeyError, match="volume"):
        compute_features(bars.drop(columns=["volume"]), ["mfi_14"])
    assert "rsi_14" in compute_features(bars.drop(columns=["volume"]), ["rsi_14"])
    with pytest.raises(ValueError, match="repeated"):
        compute_features(pd.concat([bars, bars.iloc[:1]]), ["rsi_14"])
    with pytest.raises(ValueError, match="unknown feature"):
        compute_features(bars, ["nope"])


def test_canonical_columns_are_enough() -> None:
    assert {c for s in REGISTRY.values() for c in s.inputs} <= set(BAR_COLUMNS)
