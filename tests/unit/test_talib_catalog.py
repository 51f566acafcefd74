"""The TA-Lib catalog: completeness, TA-Lib oracles, lookahead, call strings, canonical names,
and the curated default set's scale-freeness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import talib
import talib.abstract
from pydantic import ValidationError

from quanto.config.models import FeaturesConfig
from quanto.features import talib_catalog
from quanto.features.registry import (
    DEFAULT_FEATURES,
    REGISTRY,
    check_lookahead,
    compute_features,
    expand_names,
    feature_lookback,
)
from tests.unit.test_features import assert_nan_equal, make_bars

# Static catalog names, fixed at import (dynamic features registered by tests come later).
CATALOG = [n for n, s in REGISTRY.items() if s.family == talib_catalog.FAMILY]
# Inverse trigonometry is defined on [-1, 1] only; on prices it is NaN throughout (TA-Lib's answer).
OUT_OF_DOMAIN = {"talib_acos", "talib_asin"}
BAR_COLUMNS = ("open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars(n=600, seed=5)


def _oracle(bars: pd.DataFrame, function: str, output: str, params: dict | None = None) -> np.ndarray:
    """TA-Lib's abstract API on the bar columns (an independent path from the catalog's own call),
    with warm-up rows and +-inf as NaN the way the registry reports them."""
    fn = talib.abstract.Function(function, **(params or {}))
    result = fn({c: bars[c].to_numpy(dtype=np.float64) for c in BAR_COLUMNS})
    outputs = result if isinstance(result, list) else [result]
    expected = np.asarray(outputs[fn.info["output_names"].index(output)], dtype=np.float64)
    expected[: fn.lookback] = np.nan
    expected[np.isinf(expected)] = np.nan
    return expected


# --- completeness ---------------------------------------------------------------------------------


def test_every_talib_function_is_registered_or_skipped_with_a_reason() -> None:
    functions = talib.get_functions()
    assert set(talib_catalog.SKIPPED) <= set(functions)
    expected_names = []
    for function in functions:
        if function in talib_catalog.SKIPPED:
            assert talib_catalog.SKIPPED[function].strip(), function
            continue
        outputs = talib.abstract.Function(function).info["output_names"]
        stem = f"talib_{function.lower()}"
        names = [stem] if len(outputs) == 1 else [f"{stem}_{o}" for o in outputs]
        for name in names:
            spec = REGISTRY[name]
            assert spec.family == "talib"
            assert spec.params == dict(talib.abstract.Function(function).info["parameters"])
            assert set(spec.inputs) <= set(BAR_COLUMNS)
        expected_names.extend(names)
    assert sorted(CATALOG) == sorted(expected_names)
    assert "periods" in talib_catalog.SKIPPED["MAVP"]
    assert {"talib_rsi", "talib_bbands_upperband", "talib_macd_macdhist", "talib_cdldoji"} <= set(CATALOG)


def test_catalog_equals_talib_called_directly(bars: pd.DataFrame) -> None:
    got = compute_features(bars, CATALOG)
    for name in CATALOG:
        function, output = talib_catalog.BASE_NAMES[name]
        spec = REGISTRY[name]
        assert spec.lookback == talib.abstract.Function(function).lookback, name
        values = got[name].to_numpy()
        try:
            assert_nan_equal(values, _oracle(bars, function, output))
        except AssertionError as err:
            raise AssertionError(f"{name} differs from TA-Lib {function}.{output}") from err
        # The declared warm-up is exact: NaN before it, defined after (inside the function's domain).
        assert np.isnan(values[: spec.lookback]).all(), name
        if name not in OUT_OF_DOMAIN:
            assert np.isfinite(values[spec.lookback :]).all(), name


def test_integer_outputs_are_nan_during_warmup_not_zero(bars: pd.DataFrame) -> None:
    doji = compute_features(bars, ["talib_cdldoji"])["talib_cdldoji"].to_numpy()
    lookback = REGISTRY["talib_cdldoji"].lookback
    assert lookback > 0 and np.isnan(doji[:lookback]).all()
    raw = talib.CDLDOJI(*(bars[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close")))
    assert_nan_equal(doji[lookback:], raw[lookback:])


def test_whole_catalog_has_no_lookahead() -> None:
    assert check_lookahead(make_bars(n=400, seed=11), CATALOG, n_cuts=8, seed=3) == {}


# --- call strings ---------------------------------------------------------------------------------


def test_call_string_registers_a_canonical_feature(bars: pd.DataFrame) -> None:
    call = "talib:BBANDS(timeperiod=30,nbdevup=2.5).upperband"
    name = "talib_bbands_upperband_nbdevup2p5_timeperiod30"
    assert expand_names([call]) == [name]
    spec = REGISTRY[name]
    assert spec.family == "talib"
    assert spec.params == {"timeperiod": 30, "nbdevup": 2.5, "nbdevdn": 2.0, "matype": 0}
    assert spec.lookback == 29 == feature_lookback([call])
    got = compute_features(bars, [call])
    assert list(got.columns) == ["symbol", "ts", name]
    params = {"timeperiod": 30, "nbdevup": 2.5}
    assert_nan_equal(got[name], _oracle(bars, "BBANDS", "upperband", params))

    rsi = compute_features(bars, ["talib:RSI(timeperiod=21)"])["talib_rsi_timeperiod21"]
    assert_nan_equal(rsi, talib.RSI(bars["close"].to_numpy(), timeperiod=21))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        ("talib:RSI(timeperiod=21)", "talib_rsi_timeperiod21"),
        ("talib: rsi ( timeperiod = 21 )", "talib_rsi_timeperiod21"),  # blanks and case are free
        ("talib:RSI(timeperiod=21).real", "talib_rsi_timeperiod21"),  # the only output may be named
        ("talib:RSI", "talib_rsi"),
        ("talib:RSI()", "talib_rsi"),
        ("talib:RSI(timeperiod=14)", "talib_rsi"),  # TA-Lib's defaults are left out of the name
        ("talib:BBANDS(nbdevup=2).upperband", "talib_bbands_upperband"),  # 2 == 2.0, the default
        ("talib:BBANDS(nbdevdn=-0.5).lowerband", "talib_bbands_lowerband_nbdevdnm0p5"),
        ("talib:SAR(maximum=0.3,acceleration=0.025)", "talib_sar_acceleration0p025_maximum0p3"),
        (
            "talib:STOCH(slowk_matype=1,fastk_period=9).slowd",
            "talib_stoch_slowd_fastk_period9_slowk_matype1",
        ),
        ("talib:ULTOSC(timeperiod1=5)", "talib_ultosc_timeperiod15"),
        ("talib:MACD(fastperiod=5).macdhist", "talib_macd_macdhist_fastperiod5"),
    ],
)
def test_call_strings_canonical_names(call: str, name: str) -> None:
    assert expand_names([call]) == [name]
    assert name in REGISTRY


def test_same_feature_twice_is_one_column() -> None:
    names = [
        "talib:RSI(timeperiod=9)",
        "rsi_14",
        "talib:RSI( timeperiod=9 )",
        "talib_rsi_timeperiod9",
        "talib:rsi(timeperiod=9).real",
    ]
    assert expand_names(names) == ["talib_rsi_timeperiod9", "rsi_14"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("talib:RSX(timeperiod=3)", r"unknown TA-Lib function 'RSX'; close matches: RSI"),
        ("talib:RSI(period=3)", r"RSI has no parameter 'period'; its parameters: timeperiod"),
        (
            "talib:BBANDS(width=3).upperband",
            r"no parameter 'width'; its parameters: timeperiod, nbdevup, nbdevdn, matype",
        ),
        ("talib:CDLDOJI(x=1)", r"CDLDOJI has no parameter 'x'; its parameters: none"),
        ("talib:RSI(timeperiod=2.5)", r"bad value timeperiod='2\.5'; RSI expects an integer"),
        ("talib:RSI(timeperiod=abc)", r"bad value timeperiod='abc'; RSI expects an integer"),
        ("talib:SAR(acceleration=fast)", r"bad value acceleration='fast'; SAR expects a finite number"),
        ("talib:SAR(acceleration=nan)", r"bad value acceleration='nan'"),
        ("talib:RSI(timeperiod=1)", r"bad value: TA-Lib RSI rejects timeperiod=1 \(out of range\)"),
        ("talib:BBANDS(matype=99).upperband", r"bad value: TA-Lib BBANDS rejects matype=99"),
        ("talib:RSI(timeperiod=3,timeperiod=4)", r"parameter 'timeperiod' is given twice"),
        ("talib:RSI(timeperiod=)", r"malformed argument 'timeperiod='"),
        ("talib:RSI(timeperiod=21,)", r"malformed argument ''"),
        ("talib:RSI(timeperiod=3", r"malformed TA-Lib feature; expected talib:FUNCTION"),
        ("talib:", r"malformed TA-Lib feature"),
        (
            "talib:BBANDS(timeperiod=30)",
            r"BBANDS has several outputs \(upperband, middleband, lowerband\); name one",
        ),
        ("talib:BBANDS.upper", r"BBANDS has no output 'upper'; outputs: upperband, middleband, lowerband"),
        ("talib:RSI.value", r"RSI has no output 'value'; outputs: real"),
        ("talib:MAVP", r"MAVP is not available as a feature: needs input\(s\) \['periods'\]"),
    ],
)
def test_bad_call_strings(call: str, message: str) -> None:
    before = set(REGISTRY)
    with pytest.raises(ValueError, match=message):
        expand_names(["rsi_14", call])
    assert set(REGISTRY) == before  # a rejected string registers nothing


def test_features_config_accepts_call_strings() -> None:
    call = "talib:BBANDS(timeperiod=30,nbdevup=2.5).upperband"
    config = FeaturesConfig(names=["default", call, call])
    assert config.names == ["default", call, call]  # kept as written; the stage expands them
    expanded = expand_names(config.names)
    assert expanded == [*DEFAULT_FEATURES, "talib_bbands_upperband_nbdevup2p5_timeperiod30"]
    with pytest.raises(ValidationError, match="RSI has no parameter 'period'"):
        FeaturesConfig(names=["talib:RSI(period=3)"])


# --- canonical names alone ------------------------------------------------------------------------


def test_canonical_name_recreates_the_feature(bars: pd.DataFrame) -> None:
    name = "talib_stochrsi_fastd_fastk_period7_timeperiod10"
    REGISTRY.pop(name, None)  # as in a process that never saw the call string
    got = compute_features(bars, [name])[name]
    assert REGISTRY[name].params == {
        "timeperiod": 10,
        "fastk_period": 7,
        "fastd_period": 3,
        "fastd_matype": 0,
    }
    params = {"timeperiod": 10, "fastk_period": 7}
    assert_nan_equal(got, _oracle(bars, "STOCHRSI", "fastd", params))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("talib_rsi_timeperiod14", r"not in canonical form; write it as 'talib_rsi'"),
        ("talib_bbands_upperband_timeperiod30_nbdevup2p5", r"write it as 'talib_bbands_upperband_nbdevup2"),
        ("talib_rsi_timeperiod021", r"write it as 'talib_rsi_timeperiod21'"),
        ("talib_rsi_timeperiod1", r"TA-Lib RSI rejects timeperiod=1"),
        ("talib_rsi_period21", r"unknown feature 'talib_rsi_period21'; known: "),
        ("talib_bbands_timeperiod30", r"unknown feature 'talib_bbands_timeperiod30'"),
        ("talib_rsx", r"unknown feature 'talib_rsx'; known: .*talib_rsi"),
    ],
)
def test_bad_canonical_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_names([name])


def test_canonical_name_resolves_in_a_fresh_process(bars: pd.DataFrame) -> None:
    """A worker gets only the expanded names; it must rebuild the feature from the name alone."""
    name = expand_names(["talib:BBANDS(timeperiod=30,nbdevup=2.5).upperband"])[0]
    script = (
        "import json, sys\n"
        "from quanto.features.registry import REGISTRY, compute_features\n"
        "from tests.unit.test_features import make_bars\n"
        f"name = {name!r}\n"
        "assert name not in REGISTRY\n"
        "out = compute_features(make_bars(n=600, seed=5), [name])\n"
        "spec = REGISTRY[name]\n"
        "print(json.dumps({'params': spec.params, 'lookback': spec.lookback,"
        " 'values': out[name].fillna(-1.0).tolist()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],  # the repository root, so `tests` imports
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["params"] == REGISTRY[name].params
    assert answer["lookback"] == REGISTRY[name].lookback == 29
    here = compute_features(bars, [name])[name].fillna(-1.0).to_numpy()
    np.testing.assert_array_equal(np.asarray(answer["values"]), here)


# --- the curated default set ----------------------------------------------------------------------


def test_default_set_is_curated() -> None:
    assert len(DEFAULT_FEATURES) >= 60
    assert len(set(DEFAULT_FEATURES)) == len(DEFAULT_FEATURES)
    families = {REGISTRY[n].family for n in DEFAULT_FEATURES}
    assert families == {"technical", "statistical"}  # never alpha158, risk or the raw catalog
    technical = [n for n in DEFAULT_FEATURES if REGISTRY[n].family == "technical"]
    assert len(technical) >= 60
    assert {"logret_1", "logret_5", "logret_20", "vol_20", "vol_60"} <= set(DEFAULT_FEATURES)


def test_default_set_is_scale_free() -> None:
    """Two symbols with identical returns at price levels 10 and 1000 get identical features.

    Volume is scaled too (x7): every volume feature in the set is a ratio or a z-score (MFI, OBV and
    volume z-scores, VWAP distance), so none needs excluding.
    """
    low = make_bars("LOW", n=600, seed=21, price=10.0)
    high = low.assign(symbol="HIGH", volume=low["volume"] * 7)
    for column in ("open", "high", "low", "close", "vwap"):
        high[column] = low[column] * 100.0
    assert high["close"].iloc[0] == pytest.approx(1000.0, rel=0.05)
    got = compute_features(pd.concat([low, high]), ["default"])
    a = got[got["symbol"] == "LOW"].reset_index(drop=True)
    b = got[got["symbol"] == "HIGH"].reset_index(drop=True)
    for name in DEFAULT_FEATURES:
        # atol for values that cross zero (ratios, oscillator floors); rtol for the rest.
        np.testing.assert_allclose(b[name], a[name], rtol=1e-7, atol=1e-9, equal_nan=True, err_msg=name)
