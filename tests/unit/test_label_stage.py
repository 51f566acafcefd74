"""The labels stage: the training target (triple barrier: binary label, return to the first touch,
t1 = the touch) and the `label.extra` targets written beside it in the gold labels table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quanto.config.loading import parse_config
from quanto.config.models import (
    HmmRegimeLabel,
    LabelConfig,
    NextBarRangeLabel,
    PipelineConfig,
    VolatilityRegimeLabel,
)
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.errors import InputError
from quanto.labels.barriers import meta_labels, triple_barrier
from quanto.labels.extra import extra_labels
from quanto.labels.forward import compute_labels
from quanto.labels.paths import forward_returns, next_bar_range
from quanto.labels.regimes import hmm_regimes, volatility_regimes
from quanto.labels.rewards import rl_reward
from quanto.labels.stage import label_key_config, run_labels, triple_barrier_labels
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.models.training import load_dataset


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


# --- label.extra: more targets in the same gold labels table -------------------------------------

TRAIN_BARS = 150
BASE = {"name": "t", "universe": {"symbols": ["A", "B"], "start": "2022-01-03", "end": "2023-03-01"}}
EVERY_KIND = [
    {"kind": "forward_returns", "horizons": [1, 5, 20]},
    {"kind": "next_bar_range"},
    {"kind": "direction", "horizon": 3, "threshold": 0.001},
    {"kind": "triple_barrier", "pt_mult": 1.5, "sl_mult": 1.0, "vol_window": 10, "horizon": 8},
    {"kind": "meta", "side_window": 5, "pt_mult": 2.5, "sl_mult": 1.5, "vol_window": 10, "horizon": 8},
    {"kind": "volatility_regime", "window": 10},
    {"kind": "hmm_regime", "n_states": 2, "use_volatility": True, "seed": 3},
    {"kind": "hmm_regime", "prefix": "hmm_early", "n_states": 3, "fit_bars": 120},
    {"kind": "rl_reward", "cost_bps": 5.0},
]
DOCUMENTED = [
    *["fwd_ret_1", "fwd_ret_1_t1", "fwd_ret_5", "fwd_ret_5_t1", "fwd_ret_20", "fwd_ret_20_t1"],
    *["range_label", "range_t1", "dir_label", "dir_ret", "dir_t1", "tb_label", "tb_ret", "tb_t1"],
    *[
        "meta_label",
        "meta_side",
        "meta_ret",
        "meta_t1",
        "vol_regime_label",
        "vol_regime_vol",
        "vol_regime_t1",
    ],
    *["hmm_label", "hmm_prob_0", "hmm_prob_1", "hmm_t1"],
    *["hmm_early_label", "hmm_early_prob_0", "hmm_early_prob_1", "hmm_early_prob_2", "hmm_early_t1"],
    *["rl_long", "rl_long_t1", "rl_short", "rl_short_t1"],
]


def random_walk_bars(n: int = 320, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2022-01-03", periods=n, freq="B", tz="UTC")
    frames = []
    for sym, vol in (("A", 0.01), ("B", 0.02)):
        close = 100 * np.exp(np.cumsum(rng.normal(0, vol, n)))
        frames.append(pd.DataFrame({"symbol": sym, "ts": ts, "timeframe": "1d", "open": close, "high": close * 1.01,
                                    "low": close * 0.99, "close": close, "volume": 1e6}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def job(extra: list[dict], train_bars: int = TRAIN_BARS) -> PipelineConfig:
    return parse_config(
        PipelineConfig,
        {**BASE, "label": {"extra": extra}, "walk_forward": {"train_bars": train_bars}},
        "job.yaml",
    )


def run_stage(ctx: StageContext, bars_ref: FileRef, cfg: PipelineConfig) -> tuple[StageResult, pd.DataFrame]:
    validated = StageResult(stage="validate", key="v", outputs=[bars_ref])
    req = StageRequest(stage="labels", config=cfg.model_dump(mode="json"), inputs={"validate": validated})
    result = run_labels(req, ctx)
    return result, ctx.lake.read_frame(result.files("labels"))


def window_end(bars: pd.DataFrame, fit_bars: int) -> pd.Timestamp:
    """The last timestamp of the panel's first `fit_bars` bars: the regimes' inclusive train_end."""
    return pd.DatetimeIndex(bars["ts"].drop_duplicates().sort_values())[fit_bars - 1]


def assert_column(out: pd.DataFrame, name: str, expected: pd.Series | np.ndarray) -> None:
    expected = pd.Series(np.asarray(expected) if isinstance(expected, np.ndarray) else expected.array)
    pd.testing.assert_series_equal(out[name], expected, check_names=False, obj=name)


def test_stage_writes_every_extra_target_as_the_library_computes_it(tmp_path):
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    bars_ref = ctx.lake.write_frame("silver/bars", random_walk_bars(), role="bars")
    bars = ctx.lake.read_frame([bars_ref])  # what the stage reads
    cfg = job(EVERY_KIND)
    result, out = run_stage(ctx, bars_ref, cfg)

    assert list(out.columns) == ["symbol", "ts", "fwd_return", "label", "t1", *DOCUMENTED]
    assert [c for spec in cfg.label.extra for c in spec.columns()] == DOCUMENTED  # the models document them
    assert len(out) == len(bars) == result.counters["rows"]

    # The training target is what it was without extras.
    base = compute_labels(bars, "forward_return", 5, 0.0)
    for col in ("fwd_return", "label", "t1"):
        assert_column(out, col, base[col])

    # Each extra target is its library function's output on the same bars (the library is the oracle).
    fr = forward_returns(bars, [1, 5, 20])
    for h in (1, 5, 20):
        assert_column(out, f"fwd_ret_{h}", fr[f"fwd_return_{h}"])
        assert_column(out, f"fwd_ret_{h}_t1", fr[f"t1_{h}"])
    nb = next_bar_range(bars)
    assert_column(out, "range_label", nb["label"])
    assert_column(out, "range_t1", nb["t1"])
    d = compute_labels(bars, "direction", 3, 0.001)
    for col, lib in (("dir_label", "label"), ("dir_ret", "fwd_return"), ("dir_t1", "t1")):
        assert_column(out, col, d[lib])
    tb = triple_barrier(bars, vol_window=10, pt_mult=1.5, sl_mult=1.0, max_bars=8)
    for col, lib in (("tb_label", "label"), ("tb_ret", "ret"), ("tb_t1", "t1")):
        assert_column(out, col, tb[lib])
    assert set(out["tb_label"].dropna()) <= {-1.0, 0.0, 1.0}

    # The primary side is the sign of the past 5-bar move, known at t (an independent oracle).
    side = np.sign(bars.groupby("symbol")["close"].diff(5))
    assert_column(out, "meta_side", side)
    meta = meta_labels(bars, side, vol_window=10, pt_mult=2.5, sl_mult=1.5, max_bars=8)
    for col, lib in (("meta_label", "label"), ("meta_ret", "ret"), ("meta_t1", "t1")):
        assert_column(out, col, meta[lib])

    # Regimes fit on the first walk_forward.train_bars bars unless they give their own fit_bars.
    vr, _ = volatility_regimes(bars, window=10, train_end=window_end(bars, TRAIN_BARS))
    for col, lib in (("vol_regime_label", "label"), ("vol_regime_vol", "vol"), ("vol_regime_t1", "t1")):
        assert_column(out, col, vr[lib])
    hmm, _ = hmm_regimes(
        bars, n_states=2, train_end=window_end(bars, TRAIN_BARS), seed=3, use_volatility=True
    )
    early, _ = hmm_regimes(bars, n_states=3, train_end=window_end(bars, 120), seed=0)
    for prefix, lib_out, k in (("hmm", hmm, 2), ("hmm_early", early, 3)):
        for lib in ("label", "t1", *(f"prob_{j}" for j in range(k))):
            assert_column(out, f"{prefix}_{lib}", lib_out[lib])
    assert out["hmm_label"].notna().any() and out["hmm_early_label"].notna().any()

    # RL: a one-bar trade from flat earns the held position's next-bar PnL minus one entry cost.
    for col, position in (("rl_long", 1.0), ("rl_short", -1.0)):
        held = rl_reward(bars, pd.Series(position, index=bars.index), cost_bps=5.0)
        assert_column(out, col, held["pnl"] - 5e-4)
        assert_column(out, f"{col}_t1", held["t1"])
    assert np.allclose((out["rl_long"] + out["rl_short"]).dropna(), -2 * 5e-4)  # both pay to enter


def test_every_extra_label_column_has_an_end_time_at_or_after_its_bar(tmp_path):
    bars = random_walk_bars()
    cfg = job(EVERY_KIND)
    out = extra_labels(bars, cfg.label.extra, TRAIN_BARS)
    groups = {t1: cols for spec in cfg.label.extra for t1, cols in spec.column_groups().items()}
    assert sorted(c for t1, cols in groups.items() for c in (t1, *cols)) == sorted(DOCUMENTED)
    for t1, cols in groups.items():
        assert t1.endswith("_t1") and out[t1].notna().any(), t1
        defined = out[t1].notna()
        assert (out.loc[defined, t1] >= out.loc[defined, "ts"]).all(), t1
        # A label's first column (the label itself) is known only together with its end time.
        assert (out[cols[0]].notna() <= defined).all(), cols[0]
        if t1.startswith(("vol_regime", "hmm")):  # a regime describes the present: t1 = ts
            assert (out.loc[defined, t1] == out.loc[defined, "ts"]).all(), t1
        else:  # every other label ends after its bar
            assert (out.loc[defined, t1] > out.loc[defined, "ts"]).all(), t1


def turbulent_after(bars: pd.DataFrame, end: pd.Timestamp, factor: float) -> pd.DataFrame:
    """The same bars, with every symbol's one-bar returns after `end` scaled by `factor`."""
    out = bars.copy()
    for _, rows in out.groupby("symbol").groups.items():
        close = out.loc[rows, "close"].to_numpy()
        r = np.diff(np.log(close), prepend=np.log(close[0]))
        r[(out.loc[rows, "ts"] > end).to_numpy()] *= factor
        new = close[0] * np.exp(np.cumsum(r))
        out.loc[rows, ["open", "close"]] = np.column_stack([new, new])
        out.loc[rows, "high"], out.loc[rows, "low"] = new * 1.01, new * 0.99
    return out


def test_regimes_are_fitted_on_the_fit_window_only():
    bars = random_walk_bars()
    end = window_end(bars, TRAIN_BARS)
    wild = turbulent_after(bars, end, factor=5.0)
    inside = (bars["ts"] <= end).to_numpy()
    assert np.allclose(wild.loc[inside, "close"], bars.loc[inside, "close"])
    specs = [VolatilityRegimeLabel(window=10), HmmRegimeLabel(seed=1)]
    calm, rough = extra_labels(bars, specs, TRAIN_BARS), extra_labels(wild, specs, TRAIN_BARS)

    # The tertiles come from the window, which both panels share: the later turbulence does not move
    # them, so the wild panel's labels are its vol placed among the calm window's thresholds.
    _, fitted = volatility_regimes(bars, window=10, train_end=end)
    _, fitted_wild = volatility_regimes(wild, window=10, train_end=end)
    pd.testing.assert_frame_equal(fitted, fitted_wild)
    low = wild["symbol"].map(fitted["low"]).to_numpy()
    high = wild["symbol"].map(fitted["high"]).to_numpy()
    vol = rough["vol_regime_vol"].to_numpy()
    expected = np.where(np.isnan(vol), np.nan, np.where(vol <= low, 0.0, np.where(vol <= high, 1.0, 2.0)))
    np.testing.assert_array_equal(rough["vol_regime_label"].to_numpy(), expected)
    after = ~inside & np.isfinite(vol)
    assert (rough.loc[after, "vol_regime_label"] == 2.0).mean() > 0.9  # turbulent against the window
    # Power: fitted on the whole wild panel, the thresholds would have moved.
    _, leaky = volatility_regimes(wild, window=10, train_end=wild["ts"].max())
    assert (leaky["high"] > 2 * fitted["high"]).all()

    # Inside the window nothing changes, the HMM included (it is fitted there and filters forward only).
    regime_columns = [c for spec in specs for c in spec.columns()]
    pd.testing.assert_frame_equal(calm.loc[inside, regime_columns], rough.loc[inside, regime_columns])
    assert not np.allclose(calm.loc[~inside, "hmm_prob_1"], rough.loc[~inside, "hmm_prob_1"])


def test_regime_fit_window_must_fit_the_walk_forward_and_the_panel():
    bars = random_walk_bars()
    with pytest.raises(InputError, match=r"label.extra\[1\] \(volatility_regime\): fit_bars \(200\) must not exceed walk_forward.train_bars \(150\)"):  # fmt: skip
        extra_labels(bars, [NextBarRangeLabel(), VolatilityRegimeLabel(fit_bars=200)], TRAIN_BARS)
    # The job file is refused earlier, when it is loaded.
    with pytest.raises(ValueError, match=r"label.extra\[0\].fit_bars \(800\) must not exceed walk_forward.train_bars \(756\)"):  # fmt: skip
        PipelineConfig.model_validate(
            {
                "name": "x",
                "universe": {
                    "vendor": "sample",
                    "symbols": ["AAPL"],
                    "start": "2010-01-04",
                    "end": "2012-01-03",
                },
                "label": {"extra": [{"kind": "volatility_regime", "fit_bars": 800}]},
            }  # fmt: skip
        )
    short = bars[bars["ts"] <= window_end(bars, TRAIN_BARS)]
    with pytest.raises(InputError, match=r"label.extra\[0\] \(hmm_regime\): the fit window of 150 bars .* 150 unique"):  # fmt: skip
        extra_labels(short, [HmmRegimeLabel()], TRAIN_BARS)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([{"kind": "moon"}], r"label.extra\[0\]: Input tag 'moon' found using 'kind' does not match"),
        ([{"horizons": [1]}], r"label.extra\[0\]: Unable to extract tag using discriminator 'kind'"),
        (
            [{"kind": "triple_barrier"}, {"kind": "triple_barrier", "pt_mult": 1.0}],
            r"label.extra: extra\[1\] \(triple_barrier\) would write column 'tb_label', which extra\[0\] "
            r"\(triple_barrier\) writes too; give one of them another prefix",
        ),
        (
            [
                {"kind": "forward_returns", "horizons": [1, 5]},
                {"kind": "forward_returns", "horizons": [5, 20]},
            ],
            r"extra\[1\] \(forward_returns\) would write column 'fwd_ret_5'",
        ),
        (
            [{"kind": "forward_returns", "prefix": "fwd"}, {"kind": "triple_barrier", "prefix": "fwd_5"}],
            r"extra\[1\] \(triple_barrier\) would write column 'fwd_5_t1'",
        ),
        (
            [{"kind": "spread_explosion"}],
            r"job.yaml: <root>: label.extra\[0\] \(spread_explosion\) needs quotes",
        ),  # fmt: skip
        (
            [{"kind": "forward_returns", "horizons": [5, 5]}],
            r"extra\[0\].forward_returns.horizons: horizons must be distinct",
        ),  # fmt: skip
        (
            [{"kind": "forward_returns", "horizons": []}],
            r"extra\[0\].forward_returns.horizons: List should have at least 1",
        ),  # fmt: skip
        (
            [{"kind": "triple_barrier", "pt_mult": 0}],
            r"extra\[0\].triple_barrier.pt_mult: Input should be greater than 0",
        ),  # fmt: skip
        (
            [{"kind": "meta", "side_window": 0}],
            r"extra\[0\].meta.side_window: Input should be greater than or equal to 1",
        ),  # fmt: skip
        (
            [{"kind": "direction", "horizn": 3}],
            r"extra\[0\].direction.horizn: Extra inputs are not permitted",
        ),
        (
            [{"kind": "volatility_regime", "window": 1}],
            r"extra\[0\].volatility_regime.window: Input should be greater",
        ),  # fmt: skip
        ([{"kind": "hmm_regime", "n_states": 1}], r"extra\[0\].hmm_regime.n_states: Input should be greater"),
        (
            [{"kind": "hmm_regime", "n_states": 3, "min_train_rows": 2}],
            r"extra\[0\].hmm_regime: min_train_rows \(2\) must be >= n_states \(3\)",
        ),  # fmt: skip
        (
            [{"kind": "rl_reward", "cost_bps": -1}],
            r"extra\[0\].rl_reward.cost_bps: Input should be greater than or equal to 0",
        ),  # fmt: skip
        (
            [{"kind": "rl_reward", "sides": ["long", "long"]}],
            r"extra\[0\].rl_reward.sides: sides must be distinct",
        ),
        (
            [{"kind": "next_bar_range", "prefix": "Range"}],
            r"extra\[0\].next_bar_range.prefix: String should match",
        ),
    ],
)
def test_bad_extra_labels_are_rejected_naming_the_field(extra, message):
    with pytest.raises(ValueError, match=message):
        job(extra)


def test_the_stage_key_covers_the_extra_targets(tmp_path):
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    bars_ref = ctx.lake.write_frame("silver/bars", random_walk_bars(), role="bars")
    regime = [{"kind": "volatility_regime", "window": 10}]
    first, with_regime = run_stage(ctx, bars_ref, job(regime))
    again, _ = run_stage(ctx, bars_ref, job(regime))
    assert again.skipped and again.key == first.key
    assert label_key_config(job(regime))["extra"][0]["fit_bars"] == TRAIN_BARS  # the default window, keyed
    other_window, _ = run_stage(ctx, bars_ref, job(regime, train_bars=120))
    other_param, _ = run_stage(ctx, bars_ref, job([{**regime[0], "window": 12}]))
    plain, without = run_stage(ctx, bars_ref, job([]))
    assert len({first.key, other_window.key, other_param.key, plain.key}) == 4
    assert not (other_window.skipped or other_param.skipped or plain.skipped)
    assert list(without.columns) == ["symbol", "ts", "fwd_return", "label", "t1"]
    pd.testing.assert_frame_equal(with_regime[list(without.columns)], without)


def test_train_and_walk_forward_still_read_only_the_training_target(tmp_path):
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    bars = random_walk_bars()
    bars_ref = ctx.lake.write_frame("silver/bars", bars, role="bars")
    result, labels = run_stage(ctx, bars_ref, job(EVERY_KIND))
    features = bars[["symbol", "ts"]].assign(momentum=bars.groupby("symbol")["close"].pct_change(5))
    feature_ref = ctx.lake.write_frame("gold/features/x", features, role="features")
    data, columns = load_dataset(ctx.lake, [feature_ref], result.files("labels"))
    assert columns == ["momentum"]  # extra targets never become features
    assert {"label", "fwd_return", "t1", *DOCUMENTED} <= set(data.columns) and len(data) == len(bars)
