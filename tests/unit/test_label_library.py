"""The label library: multi-horizon returns, triple barrier, meta-labels, regimes and rewards.

Checked by hand on tiny paths, against plain-loop oracles, and for the two leaks a label can have:
across symbols and from the future.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quanto.labels.barriers import meta_labels, triple_barrier
from quanto.labels.forward import compute_labels
from quanto.labels.paths import forward_returns, next_bar_range
from quanto.labels.regimes import filter_states, hmm_regimes, volatility_regimes
from quanto.labels.rewards import rl_reward, spread_explosion

DAYS = pd.date_range("2024-01-01", periods=400, freq="D", tz="UTC").as_unit("ns")
HOURS = pd.date_range("2024-01-01", periods=2000, freq="h", tz="UTC").as_unit("ns")


def bars_from_log_prices(paths: dict[str, list[float]], shuffle: int | None = 7) -> pd.DataFrame:
    """Bars whose closes are 100·exp(log price), one symbol per path, rows shuffled, odd index."""
    frames = [
        pd.DataFrame({"symbol": s, "ts": DAYS[: len(p)], "close": 100.0 * np.exp(np.asarray(p, dtype=float))})
        for s, p in paths.items()
    ]
    bars = pd.concat(frames, ignore_index=True)
    bars["high"] = bars["close"] * 1.01
    bars["low"] = bars["close"] * 0.99
    if shuffle is not None:
        bars = bars.sample(frac=1.0, random_state=shuffle)
    bars.index = pd.RangeIndex(1000, 1000 + len(bars) * 3, 3)
    return bars


def row(out: pd.DataFrame, bars: pd.DataFrame, symbol: str, i: int) -> pd.Series:
    """The output row of `symbol`'s i-th bar."""
    return out.loc[bars.index[(bars["symbol"] == symbol) & (bars["ts"] == DAYS[i])][0]]


# With log prices 0, 0.01, 0 the returns are ±0.01, so vol at bar 2 = 0.01·√2 ≈ 0.01414:
# barriers (mult 1) at ±0.01414 from bar 2's close.
VOL2 = 0.01 * math.sqrt(2)
PATHS = {
    "PT": [0, 0.01, 0, 0.005, 0.02, -0.03],  # +0.005, then +0.02 beyond the upper barrier at bar 4
    "SL": [0, 0.01, 0, -0.02, -0.02, -0.02],  # −0.02 beyond the lower barrier at bar 3
    "VT": [0, 0.01, 0, 0.005, -0.005, 0.01],  # stays inside: the vertical barrier, bar 2 + 3
}
KW = {"vol_window": 2, "pt_mult": 1.0, "sl_mult": 1.0, "max_bars": 3}


def test_triple_barrier_by_hand() -> None:
    bars = bars_from_log_prices(PATHS)
    out = triple_barrier(bars, **KW)
    assert list(out.columns) == ["symbol", "ts", "label", "t1", "ret", "barrier"]
    assert list(out.index) == list(bars.index) and list(out["symbol"]) == list(bars["symbol"])
    assert str(out["t1"].dtype) == "datetime64[ns, UTC]"
    expected = {"PT": (1.0, 4, 0.02, "pt"), "SL": (-1.0, 3, -0.02, "sl"), "VT": (0.0, 5, 0.01, "vertical")}
    for symbol, (label, end, ret, barrier) in expected.items():
        r = row(out, bars, symbol, 2)
        assert r["label"] == label and r["barrier"] == barrier, symbol
        assert r["t1"] == DAYS[end]
        assert r["ret"] == pytest.approx(ret, abs=1e-12)
    # Bars 0 and 1 have no vol yet; the last bar has no future.
    for symbol in PATHS:
        for i in (0, 1, 5):
            r = row(out, bars, symbol, i)
            assert np.isnan(r["label"]) and np.isnan(r["ret"]) and pd.isna(r["t1"]) and pd.isna(r["barrier"])
    # SL bar 3: flat afterwards, and the history ends before its vertical barrier → unknown, not 0.
    assert np.isnan(row(out, bars, "SL", 3)["label"])
    # PT bar 3 (vol of returns −0.01, +0.005 = 0.0106): +0.015 at bar 4 takes profit before the history
    # ends, so that outcome is known although the vertical barrier (bar 6) lies beyond it.
    r = row(out, bars, "PT", 3)
    assert (r["label"], r["barrier"], r["t1"]) == (1.0, "pt", DAYS[4])
    assert r["ret"] == pytest.approx(0.015)


def test_triple_barrier_with_side_and_meta_labels() -> None:
    bars = bars_from_log_prices(PATHS)
    out = triple_barrier(bars, side=pd.Series(-1.0, index=bars.index), **KW)
    # Short trades: the rise on PT is the short's stop, the fall on SL its profit-take.
    r = row(out, bars, "PT", 2)
    assert (r["label"], r["barrier"], r["t1"]) == (-1.0, "sl", DAYS[4]) and r["ret"] == pytest.approx(-0.02)
    r = row(out, bars, "SL", 2)
    assert (r["label"], r["barrier"], r["t1"]) == (1.0, "pt", DAYS[3]) and r["ret"] == pytest.approx(0.02)
    r = row(out, bars, "VT", 2)
    assert (r["label"], r["barrier"]) == (0.0, "vertical") and r["ret"] == pytest.approx(-0.01)

    # Meta-labels: did acting on the side pay? Long PT (pt) yes, long SL (sl) no, long VT (vertical,
    # +0.01) yes, short VT (vertical, −0.01) no; side 0 is no bet.
    sides = {"PT": 1.0, "SL": 1.0, "VT": 1.0}
    long_ = pd.Series(bars["symbol"].map(sides), index=bars.index)
    meta = meta_labels(bars, long_, **KW)
    assert [row(meta, bars, s, 2)["label"] for s in ("PT", "SL", "VT")] == [1.0, 0.0, 1.0]
    assert row(meta, bars, "VT", 2)["t1"] == DAYS[5]
    short_vt = meta_labels(bars, pd.Series(-1.0, index=bars.index), **KW)
    assert row(short_vt, bars, "VT", 2)["label"] == 0.0
    assert row(short_vt, bars, "SL", 2)["label"] == 1.0
    no_bet = meta_labels(bars, pd.Series(0.0, index=bars.index), **KW)
    assert no_bet["label"].isna().all() and no_bet["t1"].isna().all()
    # A missing side (a side series that lacks the row) is no bet either.
    partial = meta_labels(bars, long_.iloc[:5], **KW)
    assert partial["label"].iloc[5:].isna().all()


def test_triple_barrier_gap_and_disabled_barrier() -> None:
    bars = bars_from_log_prices(PATHS, shuffle=None)
    # A missing close before any touch leaves the outcome unknown ...
    gap = bars.copy()
    gap.loc[(gap["symbol"] == "PT") & (gap["ts"] == DAYS[3]), "close"] = np.nan
    assert np.isnan(row(triple_barrier(gap, **KW), gap, "PT", 2)["label"])
    # ... but a touch before the gap is a known outcome.
    gap = bars.copy()
    gap.loc[(gap["symbol"] == "SL") & (gap["ts"] == DAYS[4]), "close"] = np.nan
    assert row(triple_barrier(gap, **KW), gap, "SL", 2)["label"] == -1.0
    # math.inf disables a barrier: without a profit-take, PT rides on until −0.03 stops it at bar 5.
    r = row(triple_barrier(bars, **{**KW, "pt_mult": math.inf}), bars, "PT", 2)
    assert (r["label"], r["barrier"], r["t1"]) == (-1.0, "sl", DAYS[5])


def loop_triple_barrier(close: np.ndarray, window: int, pt: float, sl: float, h: int) -> list[tuple]:
    """Plain-loop oracle for one symbol: (label, end offset, ret) per bar, None when undefined."""
    r = np.r_[np.nan, np.diff(np.log(close))]
    out: list[tuple | None] = []
    for t in range(len(close)):
        w = r[t - window + 1 : t + 1]
        if t < window or np.isnan(w).any():
            out.append(None)
            continue
        vol = float(np.std(w, ddof=1))
        result = None
        for k in range(1, h + 1):
            if t + k >= len(close) or np.isnan(close[t + k]):
                break
            ret = math.log(close[t + k] / close[t])
            if ret > pt * vol:
                result = (1.0, k, ret)
                break
            if ret < -sl * vol:
                result = (-1.0, k, ret)
                break
            if k == h:
                result = (0.0, k, ret)
        out.append(result)
    return out


def test_triple_barrier_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    closes = {s: 50 * np.exp(np.cumsum(rng.normal(0, 0.02, 150))) for s in ("A", "B")}
    closes["B"][[40, 41, 90]] = np.nan
    bars = pd.concat([pd.DataFrame({"symbol": s, "ts": DAYS[:150], "close": c}) for s, c in closes.items()])
    bars = bars.sample(frac=1.0, random_state=1).reset_index(drop=True)
    out = triple_barrier(bars, vol_window=5, pt_mult=1.5, sl_mult=1.0, max_bars=6)
    labelled = 0
    for s, c in closes.items():
        mine = out[out["symbol"] == s].sort_values("ts")
        for t, expected in enumerate(loop_triple_barrier(c, 5, 1.5, 1.0, 6)):
            got = mine.iloc[t]
            if expected is None:
                assert np.isnan(got["label"]) and pd.isna(got["t1"]), (s, t)
            else:
                labelled += 1
                assert got["label"] == expected[0] and got["t1"] == DAYS[t + expected[1]], (s, t)
                assert got["ret"] == pytest.approx(expected[2], rel=1e-12)
    assert labelled > 250


def test_triple_barrier_never_looks_past_its_path() -> None:
    rng = np.random.default_rng(5)
    bars = bars_from_log_prices({"A": list(np.cumsum(rng.normal(0, 0.02, 120)))}, shuffle=None)
    full = triple_barrier(bars, vol_window=10, max_bars=8, pt_mult=1.0, sl_mult=1.0)
    for cut in (30, 57, 100):
        part = triple_barrier(bars.iloc[:cut], vol_window=10, max_bars=8, pt_mult=1.0, sl_mult=1.0)
        # A label is known exactly when its end lies inside the truncated history, and then it is the
        # final one; the rest is NaN, never guessed.
        known = part["label"].notna()
        ends_inside = full["t1"].iloc[:cut] <= bars["ts"].iloc[cut - 1]
        pd.testing.assert_series_equal(known, ends_inside, check_names=False)
        pd.testing.assert_frame_equal(part[known], full.iloc[:cut][known])
        assert 0 < known.sum() < cut - 10


def test_forward_returns_and_next_bar_range() -> None:
    bars = bars_from_log_prices({"A": [0, 0.1, -0.2, 0.05], "B": [0, 0.3, 0.1]})
    out = forward_returns(bars, [1, 2])
    assert list(out.columns) == ["symbol", "ts", "fwd_return_1", "t1_1", "fwd_return_2", "t1_2"]
    for h in (1, 2):
        one = compute_labels(bars, "forward_return", horizon=h, threshold=0.0)
        np.testing.assert_array_equal(out[f"fwd_return_{h}"], one["fwd_return"])
        pd.testing.assert_series_equal(out[f"t1_{h}"], one["t1"], check_names=False)
    assert row(out, bars, "A", 1)["fwd_return_2"] == pytest.approx(-0.05)
    assert row(out, bars, "B", 1)["t1_1"] == DAYS[2] and pd.isna(row(out, bars, "B", 1)["t1_2"])
    with pytest.raises(ValueError, match="horizons"):
        forward_returns(bars, [0])
    with pytest.raises(ValueError, match="horizons"):
        forward_returns(bars, [2, 2])

    rng_ = next_bar_range(bars)
    assert list(rng_.columns) == ["symbol", "ts", "label", "t1"]
    # high/low = 1.01/0.99 on every bar; the last bar of each symbol has no next bar.
    r = row(rng_, bars, "A", 2)
    assert r["label"] == pytest.approx(math.log(1.01 / 0.99)) and r["t1"] == DAYS[3]
    assert rng_["label"].isna().sum() == 2 and rng_["t1"].isna().sum() == 2
    assert np.isnan(row(rng_, bars, "B", 2)["label"])


def two_regime_bars(symbols: dict[str, int], n: int = 600) -> tuple[pd.DataFrame, np.ndarray]:
    """Log returns alternating calm (σ 0.5%) and turbulent (σ 3%) blocks of 100 bars, per symbol."""
    turbulent = (np.arange(n) // 100) % 2 == 1
    sigma = np.where(turbulent, 0.03, 0.005)
    frames = []
    for s, seed in symbols.items():
        r = np.random.default_rng(seed).normal(0, sigma)
        frames.append(pd.DataFrame({"symbol": s, "ts": HOURS[:n], "close": 100 * np.exp(np.cumsum(r))}))
    return pd.concat(frames, ignore_index=True), turbulent


def test_volatility_regimes_fit_on_training_rows_only() -> None:
    bars, _ = two_regime_bars({"A": 1, "B": 2})
    train_end = HOURS[299]
    labels, thresholds = volatility_regimes(bars, window=20, train_end=train_end)
    assert list(labels.columns) == ["symbol", "ts", "label", "t1", "vol"]
    assert list(thresholds.columns) == ["low", "high", "n_train"]
    for s in ("A", "B"):
        mine = labels[labels["symbol"] == s]
        vol = mine["vol"].to_numpy()
        # The first `window` bars have no vol; thresholds are the tertiles of the training vol.
        assert np.isnan(vol[:20]).all() and np.isfinite(vol[20:]).all()
        train_vol = vol[20:300]
        low, high = np.quantile(train_vol, [1 / 3, 2 / 3])
        assert thresholds.loc[s, "low"] == pytest.approx(low) and thresholds.loc[s, "high"] == pytest.approx(
            high
        )
        assert thresholds.loc[s, "n_train"] == 280
        expected = np.where(vol <= low, 0.0, np.where(vol <= high, 1.0, 2.0))
        np.testing.assert_array_equal(mine["label"].to_numpy()[20:], expected[20:])
        assert mine["label"].iloc[:20].isna().all() and mine["t1"].iloc[:20].isna().all()
        assert (mine["t1"].iloc[20:] == mine["ts"].iloc[20:]).all()

    # Rewriting everything after train_end moves no threshold and no training-window label.
    changed = bars.copy()
    late = changed["ts"] > train_end
    changed.loc[late, "close"] *= np.exp(np.random.default_rng(9).normal(0, 0.2, late.sum()))
    labels2, thresholds2 = volatility_regimes(changed, window=20, train_end=train_end)
    pd.testing.assert_frame_equal(thresholds2, thresholds)
    pd.testing.assert_frame_equal(labels2[~late], labels[~late])
    assert not labels2[late]["label"].equals(labels[late]["label"])

    # Per symbol: A alone gets exactly A's thresholds and labels.
    alone, th_alone = volatility_regimes(bars[bars["symbol"] == "A"], window=20, train_end=train_end)
    pd.testing.assert_frame_equal(alone, labels[labels["symbol"] == "A"])
    pd.testing.assert_series_equal(th_alone.loc["A"], thresholds.loc["A"])
    # A symbol without training rows has no thresholds, hence no labels.
    _, none = volatility_regimes(bars, window=20, train_end=HOURS[0] - pd.Timedelta("1h"))
    assert none[["low", "high"]].isna().all().all() and (none["n_train"] == 0).all()
    with pytest.raises(ValueError, match="timezone"):
        volatility_regimes(bars, window=20, train_end=pd.Timestamp("2024-01-05"))


def test_filter_states_matches_a_sequential_forward_pass() -> None:
    rng = np.random.default_rng(4)
    k, n = 3, 257
    transmat = rng.dirichlet(np.ones(k) * 2, size=k)
    startprob = np.array([0.0, 0.3, 0.7])  # a zero start probability must not break normalization
    log_b = rng.normal(0, 30, size=(n, k))  # wide range: raw likelihood products underflow
    alpha = startprob * np.exp(log_b[0] - log_b[0].max())
    expected = [alpha / alpha.sum()]
    for t in range(1, n):
        alpha = (expected[-1] @ transmat) * np.exp(log_b[t] - log_b[t].max())
        expected.append(alpha / alpha.sum())
    got = filter_states(startprob, transmat, log_b)
    np.testing.assert_allclose(got, np.array(expected), atol=1e-12)
    # Row t is reproduced bit for bit from rows <= t alone.
    np.testing.assert_array_equal(filter_states(startprob, transmat, log_b[:100]), got[:100])


def test_hmm_regimes_forward_only_ordered_and_deterministic() -> None:
    bars, turbulent = two_regime_bars({"A": 1, "B": 2})
    train_end = HOURS[399]
    labels, models = hmm_regimes(bars, n_states=2, train_end=train_end, seed=0)
    assert list(labels.columns) == ["symbol", "ts", "label", "t1", "prob_0", "prob_1"]
    assert set(models) == {"A", "B"}
    for s, model in models.items():
        mine = labels[labels["symbol"] == s]
        # State 0 is calm: variances ascend, and the labels recover the turbulent blocks.
        assert model.covars_[0, 0, 0] < model.covars_[1, 0, 0]
        assert np.isnan(mine["label"].iloc[0]) and pd.isna(mine["t1"].iloc[0])  # no return yet
        hits = (mine["label"].to_numpy()[1:] == turbulent[1:]).mean()
        assert hits > 0.9, (s, hits)
        assert (mine["t1"].iloc[1:] == mine["ts"].iloc[1:]).all()
        np.testing.assert_allclose(mine[["prob_0", "prob_1"]].iloc[1:].sum(axis=1), 1.0)
        # The filtered probability at t is what hmmlearn's posterior says at the END of the prefix
        # x_1..x_t (smoothing and filtering agree on a series' last row).
        x = np.diff(np.log(bars.loc[bars["symbol"] == s, "close"].to_numpy()))
        train = x[:399]
        z = ((x - train.mean()) / train.std())[:, None]
        for t in (0, 7, 150, 450, 598):
            np.testing.assert_allclose(
                model.predict_proba(z[: t + 1])[-1],
                mine.iloc[t + 1][["prob_0", "prob_1"]].to_numpy(dtype=float),
                atol=1e-9,
            )

    # Lookahead: truncating the future (after the training window) changes no label or probability.
    for cut in (400, 451, 555):
        part, _ = hmm_regimes(bars.groupby("symbol").head(cut), n_states=2, train_end=train_end, seed=0)
        pd.testing.assert_frame_equal(part, labels.loc[part.index])
    # Same seed, same everything; symbols are independent.
    again, _ = hmm_regimes(bars, n_states=2, train_end=train_end, seed=0)
    pd.testing.assert_frame_equal(again, labels)
    alone, _ = hmm_regimes(bars[bars["symbol"] == "B"], n_states=2, train_end=train_end, seed=0)
    pd.testing.assert_frame_equal(alone, labels[labels["symbol"] == "B"])


def test_hmm_regimes_with_volatility_and_too_little_training() -> None:
    bars, turbulent = two_regime_bars({"A": 1}, n=500)
    labels, models = hmm_regimes(bars, train_end=HOURS[299], use_volatility=True, vol_window=10, seed=3)
    mine = labels["label"].to_numpy()
    assert np.isnan(mine[:10]).all()  # log-vol needs 10 returns
    assert (mine[10:] == turbulent[10:]).mean() > 0.9
    assert models["A"].means_.shape == (2, 2)
    # Fewer training observations than min_train_rows: no model and no labels.
    labels, models = hmm_regimes(bars, train_end=HOURS[50], min_train_rows=100)
    assert models == {} and labels["label"].isna().all() and labels["t1"].isna().all()
    with pytest.raises(ValueError, match="n_states"):
        hmm_regimes(bars, n_states=1, train_end=HOURS[299])


def test_rl_reward_by_hand() -> None:
    bars = pd.DataFrame(
        {
            "symbol": ["A", "B", "A", "B", "A"],
            "ts": [DAYS[0], DAYS[0], DAYS[1], DAYS[1], DAYS[2]],
            "close": [100.0, 10.0, 110.0, 12.0, 99.0],
        },
        index=[5, 6, 7, 8, 9],
    )
    position = pd.Series([1.0, -1.0, -0.5, 0.0, 0.0], index=bars.index)
    out = rl_reward(bars, position, cost_bps=10.0)
    assert list(out.columns) == ["symbol", "ts", "label", "t1", "pnl", "cost"]
    # A: long 1 from 100 to 110 (+10%), entering from flat costs 1·10 bps; then short 0.5 from 110 to
    # 99 (+5%) after trading 1.5; then flat at the last bar (no next close). B: short 1, 10 → 12.
    np.testing.assert_allclose(out["pnl"], [0.1, -0.2, 0.05, np.nan, np.nan], rtol=1e-12)
    np.testing.assert_allclose(out["cost"], [0.001, 0.001, 0.0015, 0.001, 0.0005], rtol=1e-12)
    np.testing.assert_allclose(out["label"], [0.099, -0.201, 0.0485, np.nan, np.nan], rtol=1e-12)
    assert list(out["t1"].iloc[:3]) == [DAYS[1], DAYS[1], DAYS[2]] and out["t1"].iloc[3:].isna().all()
    # A missing position is NaN, never a silent zero, and spoils the next row's trading cost too.
    gap = rl_reward(bars, position.drop(index=5), cost_bps=10.0)
    assert gap.loc[[5, 7], "label"].isna().all() and gap.loc[6, "label"] == pytest.approx(-0.201)
    with pytest.raises(ValueError, match="cost_bps"):
        rl_reward(bars, position, cost_bps=-1.0)


def test_spread_explosion_by_hand() -> None:
    spreads = [1.0, 1.0, 1.0, 1.0, 5.0, 1.0, np.nan, 1.0]
    quotes = pd.DataFrame(
        {
            "symbol": "A",
            # Quotes may share a timestamp: they keep their input order.
            "ts": [DAYS[0], DAYS[0], DAYS[1], DAYS[2], DAYS[3], DAYS[4], DAYS[5], DAYS[6]],
            "bid_px": 100.0,
            "ask_px": 100.0 + np.array(spreads),
        }
    )
    other = quotes.assign(symbol="B", ask_px=100.0 + 50.0)  # a huge but steady spread elsewhere
    both = pd.concat([quotes, other], ignore_index=True)
    out = spread_explosion(both, window=3, k=1.0)
    assert list(out.columns) == ["symbol", "ts", "label", "t1", "spread", "threshold"]
    a = out.iloc[:8]
    # t=2: window 1,1,1 → threshold 1, next 1 is not above it. t=3: next 5 > 1. t=4: window 1,1,5
    # (mean 7/3, std 2.309) → threshold 4.642, next 1. t=5: next spread missing. t=6, 7: NaN in the
    # window / no next quote. t=0, 1: window incomplete.
    np.testing.assert_allclose(
        a["threshold"].iloc[2:6], [1.0, 1.0, 7 / 3 + math.sqrt(16 / 3), 7 / 3 + math.sqrt(16 / 3)]
    )
    np.testing.assert_array_equal(a["label"], [np.nan, np.nan, 0.0, 1.0, 0.0, np.nan, np.nan, np.nan])
    assert (
        list(a["t1"].iloc[2:5]) == [DAYS[2], DAYS[3], DAYS[4]] and a["t1"].iloc[[0, 1, 5, 6, 7]].isna().all()
    )
    # B's steady spread never explodes, and A's history does not leak into it.
    assert (out.iloc[8:]["label"].iloc[2:7] == 0.0).all()
    pd.testing.assert_frame_equal(spread_explosion(quotes, window=3, k=1.0), a)


def test_bad_input() -> None:
    bars = bars_from_log_prices(PATHS)
    with pytest.raises(ValueError, match="max_bars"):
        triple_barrier(bars, max_bars=0)
    with pytest.raises(ValueError, match="pt_mult"):
        triple_barrier(bars, pt_mult=0.0)
    with pytest.raises(ValueError, match="side"):
        triple_barrier(bars, side=pd.Series(2.0, index=bars.index))
    with pytest.raises(ValueError, match="repeated"):
        triple_barrier(pd.concat([bars, bars.iloc[:1]]))
    with pytest.raises(KeyError, match="close"):
        triple_barrier(bars.drop(columns=["close"]))
    with pytest.raises(KeyError, match="bid_px"):
        spread_explosion(bars)
    empty = triple_barrier(bars.iloc[:0])
    assert empty.empty and list(empty.columns) == ["symbol", "ts", "label", "t1", "ret", "barrier"]
