"""PyTorch sequence families (lstm, cnn, transformer) and the sequence windows they read.

Everything runs on the CPU with tiny networks: a few hundred rows, a few epochs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from quanto.config.models import ModelConfig
from quanto.models import sequences
from quanto.models.base import Design, load_model, make_model
from quanto.models.sequence import CHECKPOINT_FILE, NETWORK_FILE, WarmupInverseSqrt
from quanto.models.sequences import Standardizer, windows

FEATURES = ["a", "b", "c"]
LAG = 3  # the planted signal: y at bar t is feature `a` at bar t - LAG of the same symbol

SMALL = {
    "lstm": {"hidden": [16]},
    "cnn": {"channels": [16]},
    "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32, "warmup_steps": 10},
}


def panel(n: int = 160, symbols: tuple[str, ...] = ("AAA", "BBB"), seed: int = 0) -> pd.DataFrame:
    """Random features per symbol; y = a lagged LAG bars within the symbol, plus a little noise."""
    rng = np.random.default_rng(seed)
    parts = []
    for symbol in symbols:
        x = rng.normal(size=(n, len(FEATURES)))
        y = np.r_[np.zeros(LAG), x[:-LAG, 0]] + 0.1 * rng.normal(size=n)
        part = pd.DataFrame(x, columns=FEATURES)
        part.insert(0, "ts", pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC"))
        part.insert(0, "symbol", symbol)
        part["y"] = y
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def split(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test positions by time (70 % / 15 % / 15 % of the bars)."""
    ts = frame["ts"]
    bars = np.sort(ts.unique())
    cut1, cut2 = bars[int(len(bars) * 0.7)], bars[int(len(bars) * 0.85)]
    return (
        np.flatnonzero(ts < cut1),
        np.flatnonzero((ts >= cut1) & (ts < cut2)),
        np.flatnonzero(ts >= cut2),
    )


def config(kind: str, objective: str = "regression", **overrides: object) -> ModelConfig:
    params = {
        "lookback": 6,
        "epochs": 25,
        "batch_size": 32,
        "learning_rate": 1e-2,
        "patience": 25,
        "dropout": 0.0,
        **SMALL[kind],
        **overrides,
    }
    return ModelConfig(kind=kind, objective=objective, params=params, seed=7, n_jobs=1)


@pytest.fixture(scope="module")
def data() -> tuple[Design, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    frame = panel()
    return Design(frame, FEATURES), frame["y"].to_numpy(), split(frame)


# -- windows -----------------------------------------------------------------------------------------


def oracle_window(frame: pd.DataFrame, row: int, lookback: int) -> tuple[np.ndarray, bool]:
    """The window of `row` by a plain pandas selection: same symbol, ts at or before the row's."""
    symbol, ts = frame.at[row, "symbol"], frame.at[row, "ts"]
    history = frame[(frame["symbol"] == symbol) & (frame["ts"] <= ts)].sort_values("ts").tail(lookback)
    values = history[FEATURES].to_numpy(dtype=np.float64)
    full = len(values) == lookback
    values = np.vstack([np.zeros((lookback - len(values), len(FEATURES))), np.nan_to_num(values)])
    return values.astype(np.float32), full


def test_windows_match_a_plain_per_symbol_selection(monkeypatch):
    monkeypatch.setattr(sequences, "CHUNK_ROWS", 7)  # several gather chunks, one partial
    frame = panel(n=12, symbols=("AAA", "BBB", "CCC"))
    frame.loc[[4, 17], "b"] = np.nan
    design = Design(frame, FEATURES)
    rows = np.arange(len(frame))[::-1]  # any order: windows follow the rows asked for
    x, full = design.windows(rows, 5)  # the contract's entry point
    assert x.dtype == np.float32 and x.shape == (len(rows), 5, len(FEATURES))
    for i, row in enumerate(rows):
        expected, expected_full = oracle_window(frame, int(row), 5)
        np.testing.assert_array_equal(x[i], expected)
        assert full[i] == expected_full
    # The first lookback - 1 bars of every symbol lack a full window.
    assert (~full).sum() == 3 * 4


def test_windows_never_look_ahead_nor_cross_symbols():
    frame = panel(n=30, symbols=("AAA", "BBB"))
    design = Design(frame, FEATURES)
    rows = np.arange(len(frame))
    before, _ = windows(design, rows, 8)
    rng = np.random.default_rng(1)
    for r in (0, 7, 20, 29, 30, 37, 59):
        changed = frame.copy()
        changed.loc[r + 1 :, FEATURES] = rng.normal(size=(len(frame) - r - 1, len(FEATURES))) * 100
        after, _ = windows(Design(changed, FEATURES), rows[: r + 1], 8)
        np.testing.assert_array_equal(after, before[: r + 1])
    # BBB's first rows hold only BBB's bars: what precedes them (AAA's tail) is padding, not data.
    changed = frame.copy()
    changed.loc[:29, FEATURES] = 1e6
    first_b, full = windows(Design(changed, FEATURES), np.arange(30, 38), 8)
    np.testing.assert_array_equal(first_b, before[30:38])
    assert not full[:7].any() and full[7]
    assert (first_b[0, :7] == 0).all()


def test_windows_standardize_with_given_statistics_then_fill_nan_with_zero():
    frame = panel(n=10, symbols=("AAA",))
    frame.loc[9, "c"] = np.nan
    design = Design(frame, FEATURES)
    scaler = Standardizer(mean=np.array([1.0, 2.0, 3.0]), std=np.array([2.0, 4.0, 0.5]))
    x, full = windows(
        design,
        np.array([9]),
        3,
        features=["c", "a"],
        standardizer=Standardizer(mean=scaler.mean[[2, 0]], std=scaler.std[[2, 0]]),
    )
    assert full[0]
    expected = (frame.loc[7:9, ["c", "a"]].to_numpy() - [3.0, 1.0]) / [0.5, 2.0]
    np.testing.assert_allclose(x[0], np.nan_to_num(expected), rtol=1e-6)
    assert x[0, -1, 0] == 0.0


def test_standardizer_uses_observed_values_and_survives_constant_columns():
    values = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan], [np.nan, 5.0, np.nan]])
    s = Standardizer.fit(values)
    np.testing.assert_array_equal(s.mean, [2.0, 5.0, 0.0])
    np.testing.assert_array_equal(s.std, [1.0, 1.0, 1.0])


def test_windows_reject_bad_input():
    frame = panel(n=10)
    design = Design(frame, FEATURES)
    with pytest.raises(ValueError, match="lookback must be a positive integer, got 0"):
        windows(design, np.array([1]), 0)
    with pytest.raises(ValueError, match="row 20 is outside"):
        windows(design, np.array([1, 20]), 3)
    with pytest.raises(ValueError, match=r"lacks feature columns \['zz'\]"):
        windows(design, np.array([1]), 3, features=["a", "zz"])
    shuffled = frame.iloc[[0, 2, 1, *range(3, 20)]].reset_index(drop=True)
    with pytest.raises(ValueError, match="row 2 .* does not come after"):
        windows(Design(shuffled, FEATURES), np.array([1]), 3)
    interleaved = frame.iloc[[0, 10, 1, *range(2, 10), *range(11, 20)]].reset_index(drop=True)
    with pytest.raises(ValueError, match="not contiguous"):
        windows(Design(interleaved, FEATURES), np.array([1]), 3)


# -- learning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "cnn", "transformer"])
def test_each_family_learns_a_signal_three_bars_back(data, kind):
    design, y, (train, valid, test) = data
    steps = []
    model = make_model(config(kind)).fit(
        design, train, y[train], valid=(valid, y[valid]), progress=steps.append
    )
    pred = model.predict(design, test)
    assert np.isfinite(pred).all()
    assert np.corrcoef(pred, y[test])[0, 1] > 0.8
    assert next(iter(model.feature_importance())) == "a"
    assert [s["step"] for s in steps] == list(range(1, 26))
    assert all(s["of"] == 25 and math.isfinite(s["loss"]) and math.isfinite(s["val_loss"]) for s in steps)


def test_a_window_too_short_to_see_the_signal_learns_nothing(data):
    # The control for the test above: with lookback LAG the bar t - LAG is outside every window.
    design, y, (train, valid, test) = data
    model = make_model(config("lstm", lookback=LAG)).fit(design, train, y[train], valid=(valid, y[valid]))
    assert abs(np.corrcoef(model.predict(design, test), y[test])[0, 1]) < 0.3


def test_classification_predicts_probabilities(data):
    design, y, (train, valid, test) = data
    up = (y > 0).astype(float)
    model = make_model(config("cnn", "classification")).fit(
        design, train, up[train], valid=(valid, up[valid])
    )
    p = model.predict(design, test)
    assert ((p > 0) & (p < 1)).all()
    assert roc_auc_score(up[test], p) > 0.85
    assert ((p > 0.5) == (up[test] == 1)).mean() > 0.7
    proba = model.predict_proba(design, test)
    np.testing.assert_array_equal(proba[:, 1], p)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_one_class_training_window_predicts_a_constant(data):
    design, _, (train, _, test) = data
    model = make_model(config("lstm", "classification")).fit(design, train, np.ones(len(train)))
    assert model.network is None and "one class" in model.note
    p = model.predict(design, test)
    np.testing.assert_array_equal(p, np.ones(len(test)))


def test_rows_without_full_history_are_predicted_nan_and_not_trained_on(data):
    design, y, _ = data
    first = np.arange(0, 10)  # AAA's first 10 bars: the first lookback - 1 = 5 lack history
    model = make_model(config("cnn", epochs=2)).fit(design, np.arange(0, 100), y[:100])
    pred = model.predict(design, first)
    assert np.isnan(pred[:5]).all() and np.isfinite(pred[5:]).all()
    with pytest.raises(ValueError, match="no training row has lookback=6 bars"):
        make_model(config("cnn")).fit(design, np.arange(0, 5), y[:5])


def test_features_are_standardized_with_training_rows_only(data):
    design, y, (train, _, _) = data
    model = make_model(config("lstm", epochs=1)).fit(design, train, y[train])
    np.testing.assert_allclose(model.standardizer.mean, np.nanmean(design.tabular(train), axis=0))
    np.testing.assert_allclose(model.standardizer.std, np.nanstd(design.tabular(train), axis=0))


def test_early_stopping_keeps_the_best_epoch(data):
    design, y, (train, valid, test) = data
    # Labels the validation window cannot confirm: its loss soon stops improving.
    noise = np.random.default_rng(3).normal(size=len(y))
    cfg = config("lstm", epochs=60, patience=3, learning_rate=3e-2)
    stopped = make_model(cfg).fit(design, train, noise[train], valid=(valid, noise[valid]))
    assert stopped.epochs_run < 60 and stopped.epochs_run == stopped.best_epoch + 3
    # Training is deterministic, so a fit that runs exactly best_epoch epochs holds the same weights.
    exact = make_model(config("lstm", epochs=stopped.best_epoch, patience=60, learning_rate=3e-2))
    exact.fit(design, train, noise[train], valid=(valid, noise[valid]))
    np.testing.assert_array_equal(stopped.predict(design, test), exact.predict(design, test))


def test_warmup_then_inverse_sqrt_schedule():
    f = WarmupInverseSqrt(10)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(39) == pytest.approx(0.5) and f(159) == pytest.approx(0.25)


# -- reproducibility, checkpoints, artifacts --------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "cnn", "transformer"])
def test_two_fits_give_bit_identical_predictions_on_cpu(data, kind):
    design, y, (train, valid, test) = data
    cfg = config(kind, epochs=4, dropout=0.2)  # dropout: the fit draws random numbers
    first = make_model(cfg).fit(design, train, y[train], valid=(valid, y[valid])).predict(design, test)
    second = make_model(cfg).fit(design, train, y[train], valid=(valid, y[valid])).predict(design, test)
    np.testing.assert_array_equal(first, second)
    other_seed = make_model(cfg.model_copy(update={"seed": 8})).fit(design, train, y[train])
    assert not np.array_equal(first, other_seed.predict(design, test))


def test_fit_restores_global_torch_numpy_state(data):
    design, y, (train, _, _) = data
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    np.random.seed(123)
    expected = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state()
    make_model(config("cnn", epochs=1, dropout=0.2)).fit(design, train, y[train])
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    np.testing.assert_array_equal(np.random.get_state()[1], expected)
    assert torch.equal(torch.get_rng_state(), torch_state)


class Interrupted(Exception):
    pass


def interrupt_after(k: int, steps: list[int]):
    def progress(info: dict) -> None:
        steps.append(info["step"])
        if info["step"] == k:
            raise Interrupted

    return progress


@pytest.mark.parametrize(("kind", "learning_rate"), [("lstm", 1e-2), ("transformer", 1e-3)])
def test_resumed_fit_ends_like_an_uninterrupted_one(data, tmp_path, kind, learning_rate):
    design, y, (train, valid, test) = data
    cfg = config(kind, epochs=6, dropout=0.2, learning_rate=learning_rate)

    def fit(progress=None, checkpoint=None):
        return make_model(cfg).fit(
            design, train, y[train], valid=(valid, y[valid]), progress=progress, checkpoint=checkpoint
        )

    whole = fit()
    # The best epoch is the last, so the epochs run after the interruption decide the weights.
    assert whole.best_epoch == 6
    steps: list[int] = []
    with pytest.raises(Interrupted):
        fit(interrupt_after(3, steps), tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    resumed = fit(lambda i: steps.append(i["step"]), tmp_path)
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed fit ran epochs 4..6 only
    np.testing.assert_array_equal(resumed.predict(design, test), whole.predict(design, test))
    # A fit finished but not yet reported (the worker died after it) trains nothing more.
    again = fit(lambda i: steps.append(i["step"]), tmp_path)
    assert steps == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(again.predict(design, test), whole.predict(design, test))


def test_a_checkpoint_of_another_fit_is_not_resumed(data, tmp_path):
    design, y, (train, _, test) = data
    with pytest.raises(Interrupted):
        make_model(config("lstm", epochs=4)).fit(
            design, train, y[train], progress=interrupt_after(2, []), checkpoint=tmp_path
        )
    steps: list[int] = []
    other = config("lstm", epochs=4).model_copy(update={"seed": 9})
    model = make_model(other).fit(
        design, train, y[train], progress=lambda i: steps.append(i["step"]), checkpoint=tmp_path
    )
    assert steps == [1, 2, 3, 4]
    fresh = make_model(other).fit(design, train, y[train])
    np.testing.assert_array_equal(model.predict(design, test), fresh.predict(design, test))


@pytest.mark.parametrize("kind", ["lstm", "cnn", "transformer"])
def test_save_and_load_give_identical_predictions(data, tmp_path, kind):
    design, y, (train, valid, test) = data
    model = make_model(config(kind, epochs=3)).fit(design, train, y[train], valid=(valid, y[valid]))
    files = {p.name for p in model.save(tmp_path)}
    assert files == {NETWORK_FILE, "meta.json"}
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model) and loaded.features == FEATURES
    np.testing.assert_array_equal(loaded.predict(design, test), model.predict(design, test))
    assert loaded.feature_importance() == model.feature_importance()
    # Predicting needs the model's features, whatever else the design holds and in whatever order.
    reordered = Design(design.frame.assign(extra=1.0), ["extra", "c", "b", "a"])
    np.testing.assert_array_equal(loaded.predict(reordered, test), model.predict(design, test))


def test_unfitted_model_refuses_to_predict(data):
    design, _, (_, _, test) = data
    with pytest.raises(RuntimeError, match="not fitted"):
        make_model(config("transformer")).predict(design, test)


# -- bad parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("lstm", {"hidden": []}, "hidden"),
        ("lstm", {"hiden": [8]}, "hiden"),
        ("cnn", {"kernel_size": 0}, "kernel_size"),
        ("transformer", {"d_model": 30, "n_heads": 4}, r"d_model \(30\) must be divisible by n_heads \(4\)"),
        ("lstm", {"lookback": 1}, "lookback"),
        ("cnn", {"device": "tpu"}, "device"),
    ],
)
def test_bad_params_are_rejected_naming_the_field(kind, params, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(kind=kind, params=params)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(data):
    design, y, (train, _, _) = data
    with pytest.raises(ValueError, match="params.device is 'cuda' but torch sees no GPU"):
        make_model(config("lstm", device="cuda")).fit(design, train, y[train])
