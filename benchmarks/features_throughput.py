"""Benchmark: `compute_features(bars, ["default"])` vs the default set as raw TA-Lib calls and as pandas-ta.

Datasets (both built once, seeded):
- daily: 500 symbols x 2,520 business days (~10 years) of random-walk bars in the canonical bar
  columns (quanto.data.synthetic is minute-only); per-symbol price levels and volatilities differ,
  and a fifth of the symbols have no vendor vwap, so `vwap_dist` also takes its fallback path.
- minute: `generate_minute_bars` for 50 symbols x one XNYS year (~250 sessions of 390 minutes),
  bad_tick_rate 0 (compute_features rejects repeated (symbol, ts) rows).
$QUANTO_BENCH_SCALE (default 1) scales the symbol counts (history lengths stay); $QUANTO_BENCH_REPS
(default 3) sets the timed repetitions.

Peer "talib-per-symbol": what a user would write by hand: sort by (symbol, ts), loop over
`groupby("symbol")`, call talib on each symbol's numpy columns with the same parameters and the same
normalizations (ratios to close, pandas rolling z-scores, log returns, rolling std), build one frame
per symbol and `pd.concat` them. It produces the same columns in the same order; on the warm-up run
the two outputs must agree (engine.same_values: rtol 1e-7, NaN in the same places), or the benchmark fails.

Peer "pandas-ta": pandas-ta-classic (module `pandas_ta_classic`, a maintained pandas-ta fork that
supports Python 3.11 + numpy 2; upstream pandas-ta's numpy-2 releases 0.4.67b0/0.4.71b0 need
Python >= 3.12). Installed by the `dev` extra; without it this peer is skipped with a stderr note.
Every indicator is called with `talib=False`, so pandas-ta runs its own pandas/numpy code and never
delegates to TA-Lib (which is installed here, and would otherwise make this a TA-Lib comparison);
the peer runs with `sys.modules["talib"] = None`, so any TA-Lib import inside it fails the benchmark.
Written the way a pandas-ta user would: groupby("symbol"), per symbol `ta.<indicator>(Series, ...)`
calls plus the same pandas normalizations as ours, one frame per symbol, `pd.concat`.
Coverage: pandas-ta-classic has an indicator for all 67 default features, so the common subset is
the whole default set and nothing is lacking: sma/ema ratios (sma, ema), kama_ratio_10 (kama),
ht_trendline_ratio (ht_trendline), tsf_ratio_14 (tsf), linreg_slope_* (linregslope), sar_dist
(psar, long/short legs merged), macd* (macd), ppo_12_26 (ppo, mamode="ema"), trix_15 (trix),
adx/adxr/plus_di/minus_di (adx, adxr: DMP/DMN), aroon_* (aroon), ht_dcperiod, rsi_*, stoch_k/d
(stoch), stochrsi_k/d (stochrsi length=5, rsi_length=14, k=1, d=3 = TA-Lib's fastk 5, fastd 3),
cci_*, cmo_14, mom_ratio_10 (mom), roc_*, willr_14, ultosc (uo), bop, bb_width/bb_pctb (bbands
BBB/100, BBP), natr_*, mfi_14, obv_z_*/volume_z_* (obv, then (x - sma) / stdev(ddof=0): pandas-ta's
own `zscore` is fixed at ddof=1), vwap_dist (vendor vwap, else vwma(hlc3, volume, 20)), logret_*
(log_return), vol_* (stdev of log_return(1), ddof=1). Both sides are timed on
`compute_features(bars, <common names>)`. Values are not asserted equal: most match TA-Lib to ~1e-10,
but pandas-ta seeds and breaks ties its own way (macd and psar differ in their first bars; on
cent-rounded minute prices psar, mfi, stochrsi and bop treat ties and zero ranges differently) and
its cmo uses rolling sums where TA-Lib uses Wilder smoothing. A loose check (rtol/atol 1e-6, finite
on >= 99% of the same rows) on sma_ratio_20, roc_10, rsi_14, willr_14 and bb_pctb_20 catches wiring
bugs, and stderr lists the features that differ by more than 1e-6.
pandas-ta costs ~0.2 s per daily symbol and ~5 s per minute symbol (one core), so at full scale
it runs on the first PANDAS_TA_DAILY_SYMBOLS (50) daily and PANDAS_TA_MINUTE_SYMBOLS (5) minute
symbols (every symbol has the same number of bars); its median is scaled by rows(all)/rows(subset)
to `peer_s` (its cost is linear in symbols: each is computed on its own), the measured time is
`peer_measured_s`, and the subset size is `peer_symbols`. Ours always runs on all symbols.

Reps alternate ours/peer so machine noise hits both; medians of REPS after one warm-up each.
Prints one JSON line per dataset and peer (DESIGN.md section 9); progress goes to stderr.
Goals: ours at most 1.5x the raw TA-Lib time, i.e. ratio = peer_s / ours_s >= 0.67; ours at least
10x faster than pandas-ta, i.e. ratio >= 10.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd
import talib

from quanto.config.models import SyntheticSpec
from quanto.data.schemas import conform_bars
from quanto.data.synthetic import generate_minute_bars
from quanto.features.engine import same_values
from quanto.features.registry import DEFAULT_FEATURES, compute_features

try:
    import pandas_ta_classic as pandas_ta
except ImportError:  # the `dev` extra installs it; without it that peer is skipped
    pandas_ta = None

SCALE = float(os.environ.get("QUANTO_BENCH_SCALE", 1.0))
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
DAILY_SYMBOLS = max(1, round(500 * SCALE))
DAILY_DAYS = 2520  # ten years of ~252 sessions
MINUTE_SYMBOLS = max(1, round(50 * SCALE))
MINUTE_START, MINUTE_END = dt.date(2023, 1, 3), dt.date(2024, 1, 2)  # one XNYS year
GOAL = "ratio >= 0.67 (ours <= 1.5x raw TA-Lib per symbol)"
PANDAS_TA_GOAL = "ratio >= 10 (ours >= 10x faster than pandas-ta per symbol)"
PANDAS_TA_DAILY_SYMBOLS = 50  # the pandas-ta peer's subset (see the docstring)
PANDAS_TA_MINUTE_SYMBOLS = 5


def log(msg: str) -> None:
    print(f"[features_throughput] {msg}", file=sys.stderr, flush=True)


# --- data -----------------------------------------------------------------------------------------


def build_daily(n_symbols: int, n_days: int, seed: int = 3) -> pd.DataFrame:
    """Seeded random-walk daily bars, canonical columns, sorted by (symbol, ts)."""
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.01, 0.03, size=(n_symbols, 1))
    p0 = np.exp(rng.uniform(np.log(5.0), np.log(500.0), size=(n_symbols, 1)))
    rets = rng.normal(0.0003, 1.0, size=(n_symbols, n_days)) * vol
    close = p0 * np.exp(np.cumsum(rets, axis=1))
    gap = np.exp(rng.normal(0.0, 1.0, size=(n_symbols, n_days)) * 0.3 * vol)
    open_ = np.concatenate([p0, close[:, :-1]], axis=1) * gap
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = top * np.exp(np.abs(rng.normal(0.0, 1.0, size=top.shape)) * 0.5 * vol)
    low = bottom * np.exp(-np.abs(rng.normal(0.0, 1.0, size=top.shape)) * 0.5 * vol)
    volume = np.round(rng.lognormal(13.0, 0.5, size=top.shape))
    vwap = np.clip((high + low + close) / 3.0, low, high)
    vwap[rng.random(n_symbols) < 0.2] = np.nan  # symbols whose vendor gives no vwap
    days = pd.bdate_range("2014-01-02", periods=n_days, tz="UTC")
    symbols = np.asarray([f"D{i:04d}" for i in range(n_symbols)], dtype=object)
    bars = pd.DataFrame(
        {
            "symbol": np.repeat(symbols, n_days),
            "ts": np.tile(days.to_numpy(), n_symbols),
            "timeframe": "1d",
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": volume.ravel(),
            "vwap": vwap.ravel(),
            "trades": (volume.ravel() // 100).astype(np.int64),
            "vendor": "synthetic",
            "imputed": False,
        }
    )
    return conform_bars(bars)


def build_minute(n_symbols: int) -> pd.DataFrame:
    symbols = [f"M{i:03d}" for i in range(n_symbols)]
    return generate_minute_bars(symbols, MINUTE_START, MINUTE_END, SyntheticSpec(seed=11, bad_tick_rate=0.0))


# --- the peer: the default set as raw talib calls per symbol --------------------------------------


def _zscore(x: np.ndarray, window: int) -> np.ndarray:
    s = pd.Series(x)
    roll = s.rolling(window, min_periods=window)
    return ((s - roll.mean()) / roll.std(ddof=0)).to_numpy()


def _one_symbol(g: pd.DataFrame) -> pd.DataFrame:
    o, h, lo, c, v, vw = (
        np.ascontiguousarray(g[k].to_numpy(dtype=np.float64))
        for k in ("open", "high", "low", "close", "volume", "vwap")
    )
    f: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for n in (5, 10, 20, 50, 100, 200):
            f[f"sma_ratio_{n}"] = c / talib.SMA(c, timeperiod=n) - 1.0
        for n in (5, 10, 12, 20, 26, 50, 100, 200):
            f[f"ema_ratio_{n}"] = c / talib.EMA(c, timeperiod=n) - 1.0
        f["kama_ratio_10"] = c / talib.KAMA(c, timeperiod=10) - 1.0
        f["ht_trendline_ratio"] = c / talib.HT_TRENDLINE(c) - 1.0
        f["tsf_ratio_14"] = c / talib.TSF(c, timeperiod=14) - 1.0
        for n in (14, 50):
            f[f"linreg_slope_{n}"] = talib.LINEARREG_SLOPE(c, timeperiod=n) / c
        f["sar_dist"] = (c - talib.SAR(h, lo, acceleration=0.02, maximum=0.2)) / c
        macd, signal, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
        f["macd_12_26_9"], f["macd_signal_12_26_9"], f["macd_hist_12_26_9"] = macd / c, signal / c, hist / c
        f["ppo_12_26"] = talib.PPO(c, fastperiod=12, slowperiod=26, matype=1)
        f["trix_15"] = talib.TRIX(c, timeperiod=15)
        f["adx_14"] = talib.ADX(h, lo, c, timeperiod=14)
        f["adxr_14"] = talib.ADXR(h, lo, c, timeperiod=14)
        f["plus_di_14"] = talib.PLUS_DI(h, lo, c, timeperiod=14)
        f["minus_di_14"] = talib.MINUS_DI(h, lo, c, timeperiod=14)
        f["aroon_down_14"], f["aroon_up_14"] = talib.AROON(h, lo, timeperiod=14)
        f["aroon_osc_14"] = talib.AROONOSC(h, lo, timeperiod=14)
        f["ht_dcperiod"] = talib.HT_DCPERIOD(c)
        for n in (7, 14, 21):
            f[f"rsi_{n}"] = talib.RSI(c, timeperiod=n)
        f["stoch_k_14"], f["stoch_d_14"] = talib.STOCH(
            h, lo, c, fastk_period=14, slowk_period=3, slowk_matype=0, slowd_period=3, slowd_matype=0
        )
        f["stochrsi_k_14"], f["stochrsi_d_14"] = talib.STOCHRSI(
            c, timeperiod=14, fastk_period=5, fastd_period=3, fastd_matype=0
        )
        for n in (14, 20):
            f[f"cci_{n}"] = talib.CCI(h, lo, c, timeperiod=n)
        f["cmo_14"] = talib.CMO(c, timeperiod=14)
        f["mom_ratio_10"] = talib.MOM(c, timeperiod=10) / c
        for n in (5, 10, 20):
            f[f"roc_{n}"] = talib.ROC(c, timeperiod=n)
        f["willr_14"] = talib.WILLR(h, lo, c, timeperiod=14)
        f["ultosc_7_14_28"] = talib.ULTOSC(h, lo, c, timeperiod1=7, timeperiod2=14, timeperiod3=28)
        f["bop"] = talib.BOP(o, h, lo, c)
        for n in (20, 50):
            upper, middle, lower = talib.BBANDS(c, timeperiod=n, nbdevup=2.0, nbdevdn=2.0, matype=0)
            f[f"bb_width_{n}"] = (upper - lower) / middle
            f[f"bb_pctb_{n}"] = (c - lower) / (upper - lower)
        for n in (14, 28):
            f[f"natr_{n}"] = talib.NATR(h, lo, c, timeperiod=n)
        f["mfi_14"] = talib.MFI(h, lo, c, v, timeperiod=14)
        obv = talib.OBV(c, v)
        for n in (20, 60):
            f[f"obv_z_{n}"] = _zscore(obv, n)
        for n in (20, 60):
            f[f"volume_z_{n}"] = _zscore(v, n)
        rolling_vwap = talib.SUM((h + lo + c) / 3.0 * v, timeperiod=20) / talib.SUM(v, timeperiod=20)
        dist = c / np.where(np.isfinite(vw) & (vw > 0), vw, rolling_vwap) - 1.0
        dist[:19] = np.nan
        f["vwap_dist"] = dist
        logc = np.log(c)
        for n in (1, 5, 20):
            r = np.full_like(c, np.nan)
            r[n:] = logc[n:] - logc[:-n]
            f[f"logret_{n}"] = r
        r1 = pd.Series(f["logret_1"])
        for n in (20, 60):
            f[f"vol_{n}"] = r1.rolling(n, min_periods=n).std(ddof=1).to_numpy()
    f = {k: np.where(np.isinf(a), np.nan, a) for k, a in f.items()}  # inf means undefined: NaN
    out = pd.DataFrame({"symbol": g["symbol"].array, "ts": g["ts"].array})
    return pd.concat([out, pd.DataFrame({k: f[k] for k in DEFAULT_FEATURES})], axis=1)


def talib_per_symbol(bars: pd.DataFrame) -> pd.DataFrame:
    ordered = bars.sort_values(["symbol", "ts"], kind="mergesort").reset_index(drop=True)
    parts = [_one_symbol(g) for _, g in ordered.groupby("symbol", sort=False)]
    return pd.concat(parts, ignore_index=True)


# --- the pandas-ta peer: the default set through pandas-ta-classic's own implementations ----------

# Our default features that pandas-ta-classic has an indicator for: all of them (docstring).
PANDAS_TA_FEATURES: tuple[str, ...] = DEFAULT_FEATURES
PANDAS_TA_LACKS: tuple[str, ...] = tuple(n for n in DEFAULT_FEATURES if n not in PANDAS_TA_FEATURES)
# Bounded features whose pandas-ta and TA-Lib definitions agree: a loose match catches wiring bugs.
PANDAS_TA_SANITY = ("sma_ratio_20", "roc_10", "rsi_14", "willr_14", "bb_pctb_20")


def _pta_one_symbol(g: pd.DataFrame) -> pd.DataFrame:
    """One symbol's features as a pandas-ta user writes them: Series in, pandas-ta Series out."""
    ta, nt = pandas_ta, {"talib": False}  # talib=False: pandas-ta's own code, never TA-Lib
    o, h, lo, c, v, vw = (g[k].astype(np.float64) for k in ("open", "high", "low", "close", "volume", "vwap"))
    f: dict[str, pd.Series] = {}
    for n in (5, 10, 20, 50, 100, 200):
        f[f"sma_ratio_{n}"] = c / ta.sma(c, length=n, **nt) - 1.0
    for n in (5, 10, 12, 20, 26, 50, 100, 200):
        f[f"ema_ratio_{n}"] = c / ta.ema(c, length=n, **nt) - 1.0
    f["kama_ratio_10"] = c / ta.kama(c, length=10, fast=2, slow=30, **nt) - 1.0
    f["ht_trendline_ratio"] = c / ta.ht_trendline(c, **nt) - 1.0
    f["tsf_ratio_14"] = c / ta.tsf(c, length=14, **nt) - 1.0
    for n in (14, 50):
        f[f"linreg_slope_{n}"] = ta.linregslope(c, length=n, **nt) / c
    sar = ta.psar(h, lo, af0=0.02, af=0.02, max_af=0.2, **nt)
    f["sar_dist"] = (c - sar["PSARl_0.02_0.2"].fillna(sar["PSARs_0.02_0.2"])) / c
    macd = ta.macd(c, fast=12, slow=26, signal=9, **nt)
    f["macd_12_26_9"] = macd["MACD_12_26_9"] / c
    f["macd_signal_12_26_9"] = macd["MACDs_12_26_9"] / c
    f["macd_hist_12_26_9"] = macd["MACDh_12_26_9"] / c
    f["ppo_12_26"] = ta.ppo(c, fast=12, slow=26, mamode="ema", **nt)["PPO_12_26_9"]
    f["trix_15"] = ta.trix(c, length=15, **nt)["TRIX_15_9"]
    adx = ta.adx(h, lo, c, length=14, **nt)
    f["adx_14"] = adx["ADX_14"]
    f["adxr_14"] = ta.adxr(h, lo, c, length=14, **nt)["ADXR_14"]
    f["plus_di_14"], f["minus_di_14"] = adx["DMP_14"], adx["DMN_14"]
    aroon = ta.aroon(h, lo, length=14, **nt)
    f["aroon_up_14"], f["aroon_down_14"] = aroon["AROONU_14"], aroon["AROOND_14"]
    f["aroon_osc_14"] = aroon["AROONOSC_14"]
    f["ht_dcperiod"] = ta.ht_dcperiod(c, **nt)
    for n in (7, 14, 21):
        f[f"rsi_{n}"] = ta.rsi(c, length=n, **nt)
    stoch = ta.stoch(h, lo, c, k=14, d=3, smooth_k=3, **nt)
    f["stoch_k_14"], f["stoch_d_14"] = stoch["STOCHk_14_3_3"], stoch["STOCHd_14_3_3"]
    srsi = ta.stochrsi(c, length=5, rsi_length=14, k=1, d=3, **nt)  # = TA-Lib STOCHRSI(14, 5, 3)
    f["stochrsi_k_14"], f["stochrsi_d_14"] = srsi["STOCHRSIk_5_14_1_3"], srsi["STOCHRSId_5_14_1_3"]
    for n in (14, 20):
        f[f"cci_{n}"] = ta.cci(h, lo, c, length=n, **nt)
    f["cmo_14"] = ta.cmo(c, length=14, **nt)
    f["mom_ratio_10"] = ta.mom(c, length=10, **nt) / c
    for n in (5, 10, 20):
        f[f"roc_{n}"] = ta.roc(c, length=n, **nt)
    f["willr_14"] = ta.willr(h, lo, c, length=14, **nt)
    f["ultosc_7_14_28"] = ta.uo(h, lo, c, fast=7, medium=14, slow=28, **nt)
    f["bop"] = ta.bop(o, h, lo, c, **nt)
    for n in (20, 50):
        bb = ta.bbands(c, length=n, std=2.0, ddof=0, mamode="sma", **nt)
        f[f"bb_width_{n}"] = bb[f"BBB_{n}_2.0"] / 100.0
        f[f"bb_pctb_{n}"] = bb[f"BBP_{n}_2.0"]
    for n in (14, 28):
        f[f"natr_{n}"] = ta.natr(h, lo, c, length=n, **nt)
    f["mfi_14"] = ta.mfi(h, lo, c, v, length=14, **nt)
    obv = ta.obv(c, v, **nt)
    for name, x in (("obv", obv), ("volume", v)):
        for n in (20, 60):  # ours is a population z-score; ta.zscore is fixed at ddof=1
            f[f"{name}_z_{n}"] = (x - ta.sma(x, length=n, **nt)) / ta.stdev(x, length=n, ddof=0, **nt)
    rolling_vwap = ta.vwma(ta.hlc3(h, lo, c, **nt), v, length=20)
    dist = c / vw.where(np.isfinite(vw) & (vw > 0), rolling_vwap) - 1.0
    dist.iloc[:19] = np.nan
    f["vwap_dist"] = dist
    for n in (1, 5, 20):
        f[f"logret_{n}"] = ta.log_return(c, length=n)
    for n in (20, 60):
        f[f"vol_{n}"] = ta.stdev(f["logret_1"], length=n, ddof=1, **nt)
    out = pd.DataFrame({k: f[k] for k in PANDAS_TA_FEATURES}, dtype=np.float64)
    out = out.replace([np.inf, -np.inf], np.nan)  # inf means undefined: NaN, as ours
    out.insert(0, "ts", g["ts"].array)
    out.insert(0, "symbol", g["symbol"].array)
    return out.reset_index(drop=True)


def pandas_ta_per_symbol(bars: pd.DataFrame) -> pd.DataFrame:
    """pandas-ta over every symbol, with TA-Lib made unimportable so no call can delegate to it."""
    saved = sys.modules.get("talib")
    sys.modules["talib"] = None  # type: ignore[assignment]  # `import talib` now raises ImportError
    try:
        ordered = bars.sort_values(["symbol", "ts"], kind="mergesort").reset_index(drop=True)
        parts = [_pta_one_symbol(g) for _, g in ordered.groupby("symbol", sort=False)]
        return pd.concat(parts, ignore_index=True)
    finally:
        sys.modules["talib"] = saved


# --- run ------------------------------------------------------------------------------------------


def check_same(ours: pd.DataFrame, peer: pd.DataFrame, label: str) -> None:
    """Column by column: same keys, same values (`engine.same_values`: rtol 1e-7 with an absolute
    tolerance scaled to the column, since our bounded features run over symbols laid end to end and
    their running sums round differently), NaN in the same places."""
    if list(ours.columns) != list(peer.columns) or len(ours) != len(peer):
        raise AssertionError(f"{label}: shapes/columns differ: {ours.shape} vs {peer.shape}")
    if not (ours["symbol"].to_numpy() == peer["symbol"].to_numpy()).all():
        raise AssertionError(f"{label}: symbol order differs")
    if not (ours["ts"].to_numpy("datetime64[ns]") == peer["ts"].to_numpy("datetime64[ns]")).all():
        raise AssertionError(f"{label}: ts order differs")
    worst = 0.0
    for name in DEFAULT_FEATURES:
        a, b = ours[name].to_numpy(), peer[name].to_numpy()
        same = same_values(a, b)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise AssertionError(f"{label}: {name} differs at row {i}: ours {a[i]!r}, peer {b[i]!r}")
        both = np.isfinite(a) & np.isfinite(b)
        if both.any():
            worst = max(worst, float(np.max(np.abs(a[both] - b[both]))))
    log(f"{label}: ours == peer on all {len(DEFAULT_FEATURES)} features x {len(ours):,} rows "
        f"(max abs diff {worst:.2e})")  # fmt: skip


def bench(name: str, bars: pd.DataFrame) -> None:
    n = len(bars)
    ours_s, peer_s = [], []
    for rep in range(REPS + 1):  # rep 0 warms up
        t = time.perf_counter()
        ours = compute_features(bars, ["default"])
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer = talib_per_symbol(bars)
        peer_s.append(time.perf_counter() - t)
        log(f"{name} rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {ours_s[-1]:.2f} s, "
            f"talib per symbol {peer_s[-1]:.2f} s")  # fmt: skip
        if rep == 0:
            check_same(ours, peer, name)
        del ours, peer
    ours_med, peer_med = statistics.median(ours_s[1:]), statistics.median(peer_s[1:])
    print(json.dumps({
        "bench": name, "n": n, "ours_s": round(ours_med, 3), "peer": "talib-per-symbol",
        "peer_s": round(peer_med, 3), "ratio": round(peer_med / ours_med, 2),
        "unit_rate": round(n / ours_med, 1), "symbols": int(bars["symbol"].nunique()),
        "features": len(DEFAULT_FEATURES), "goal": GOAL, "reps": REPS, "scale": SCALE,
    }), flush=True)  # fmt: skip


def check_loose(ours: pd.DataFrame, peer: pd.DataFrame, label: str) -> None:
    """Same keys row for row; PANDAS_TA_SANITY features agree loosely; others' gaps to stderr."""
    if len(ours) != len(peer) or list(ours.columns) != list(peer.columns):
        raise AssertionError(f"{label}: shapes/columns differ: {ours.shape} vs {peer.shape}")
    if (
        not (ours["symbol"].to_numpy() == peer["symbol"].to_numpy()).all()
        or not (ours["ts"].to_numpy("datetime64[ns]") == peer["ts"].to_numpy("datetime64[ns]")).all()
    ):
        raise AssertionError(f"{label}: (symbol, ts) rows differ")
    differ = []
    for name in PANDAS_TA_FEATURES:
        a, b = ours[name].to_numpy(), peer[name].to_numpy()
        both = np.isfinite(a) & np.isfinite(b)
        close = np.isclose(a[both], b[both], rtol=1e-6, atol=1e-6)
        if name in PANDAS_TA_SANITY and (both.sum() < 0.99 * np.isfinite(a).sum() or not close.all()):
            raise AssertionError(f"{label}: pandas-ta {name} disagrees with ours: finite on "
                                 f"{both.sum()} of {np.isfinite(a).sum()} rows, {(~close).sum()} far apart")  # fmt: skip
        if not close.all():
            differ.append(
                f"{name} ({(~close).mean():.1%} of rows, max abs {np.max(np.abs(a[both] - b[both])):.3g})"
            )
    log(f"{label}: pandas-ta agrees with ours on {', '.join(PANDAS_TA_SANITY)} (rtol/atol 1e-6); "
        f"features differing by > 1e-6: {'; '.join(differ) or 'none'}")  # fmt: skip


def bench_pandas_ta(name: str, bars: pd.DataFrame, peer_symbols: int) -> None:
    n = len(bars)
    names = list(PANDAS_TA_FEATURES)
    symbols = sorted(bars["symbol"].unique())
    subset_symbols = symbols[: max(1, min(peer_symbols, len(symbols)))]
    subset = bars[bars["symbol"].isin(subset_symbols)]
    scale_up = n / len(subset)  # the peer's cost is per symbol: rows(all) / rows(subset)
    ours_s, peer_s = [], []
    for rep in range(REPS + 1):  # rep 0 warms up
        t = time.perf_counter()
        ours = compute_features(bars, names)
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer = pandas_ta_per_symbol(subset)
        peer_s.append(time.perf_counter() - t)
        log(f"{name} vs pandas-ta rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {ours_s[-1]:.2f} s, "
            f"pandas-ta on {len(subset_symbols)} symbols {peer_s[-1]:.2f} s (x{scale_up:.1f} for all)")  # fmt: skip
        if rep == 0:
            mine = ours[ours["symbol"].isin(subset_symbols)].reset_index(drop=True)
            check_loose(mine, peer, f"{name} vs pandas-ta")
        del ours, peer
    ours_med, peer_med = statistics.median(ours_s[1:]), statistics.median(peer_s[1:])
    print(json.dumps({
        "bench": f"{name}_vs_pandas_ta", "n": n, "ours_s": round(ours_med, 3),
        "peer": f"pandas-ta-classic {pandas_ta.version} (talib=False)",
        "peer_s": round(peer_med * scale_up, 3), "ratio": round(peer_med * scale_up / ours_med, 2),
        "unit_rate": round(n / ours_med, 1), "symbols": len(symbols), "peer_symbols": len(subset_symbols),
        "peer_measured_s": round(peer_med, 3), "features": len(names), "goal": PANDAS_TA_GOAL,
        "reps": REPS, "scale": SCALE,
    }), flush=True)  # fmt: skip


def main() -> None:
    if pandas_ta is None:
        log("pandas-ta peer skipped: pandas-ta-classic is not installed (pip install -e '.[dev]')")
    elif PANDAS_TA_LACKS:
        log(f"pandas-ta lacks {len(PANDAS_TA_LACKS)} default features: {', '.join(PANDAS_TA_LACKS)}")

    t0 = time.perf_counter()
    daily = build_daily(DAILY_SYMBOLS, DAILY_DAYS)
    log(f"daily: {len(daily):,} bars ({DAILY_SYMBOLS} symbols x {DAILY_DAYS} days) "
        f"built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    bench("features_default_daily", daily)
    if pandas_ta is not None:
        bench_pandas_ta("features_default_daily", daily, PANDAS_TA_DAILY_SYMBOLS)
    del daily

    t0 = time.perf_counter()
    minute = build_minute(MINUTE_SYMBOLS)
    log(f"minute: {len(minute):,} bars ({MINUTE_SYMBOLS} symbols, {MINUTE_START} to {MINUTE_END}) "
        f"built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    bench("features_default_minute", minute)
    if pandas_ta is not None:
        bench_pandas_ta("features_default_minute", minute, PANDAS_TA_MINUTE_SYMBOLS)


if __name__ == "__main__":
    main()
