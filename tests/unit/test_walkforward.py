"""Walk-forward folds, purging, stitched out-of-sample predictions, resume and fold metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from quanto.config.models import ModelConfig, WalkForwardConfig
from quanto.evaluation.walkforward import Fold, fold_metrics, fold_rows, make_folds, walk_forward

MODEL = ModelConfig(n_estimators=25, learning_rate=0.1, num_leaves=7, min_child_samples=10, n_jobs=1)
FEATURES = ["signal", "other"]


def bars(n: int) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC")


def spans(folds: list[Fold], ts: pd.DatetimeIndex) -> list[tuple[int, int, int, int]]:
    """Folds as bar positions (train_start, train_end, test_start, test_end) for by-hand checks."""
    pos = {t: i for i, t in enumerate(ts)}
    return [(pos[f.train_start], pos[f.train_end], pos[f.test_start], pos[f.test_end]) for f in folds]


def panel(
    n_bars: int = 120,
    symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"),
    horizon: int = 3,
    seed: int = 0,
    planted: bool = True,
) -> pd.DataFrame:
    """A dataset as the label stage builds it, sorted by (symbol, ts); the last `horizon` bars unlabeled."""
    rng = np.random.default_rng(seed)
    ts = bars(n_bars)
    frames = []
    for symbol in symbols:
        signal = rng.normal(size=n_bars)
        other = rng.normal(size=n_bars)
        other[rng.random(n_bars) < 0.05] = np.nan
        noise = rng.normal(scale=0.1 if planted else 1.0, size=n_bars)
        fwd = 0.01 * ((signal if planted else 0.0) + noise)
        t1 = pd.Series(ts).shift(-horizon)
        fwd[-horizon:] = np.nan
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "ts": ts,
                    "signal": signal,
                    "other": other,
                    "label": fwd,
                    "fwd_return": fwd,
                }
            ).assign(t1=t1.to_numpy())
        )
    return pd.concat(frames, ignore_index=True)


# -- make_folds -------------------------------------------------------------------------------


def test_rolling_folds_by_hand_with_a_short_last_fold():
    ts = bars(20)
    folds = make_folds(ts, WalkForwardConfig(train_bars=10, test_bars=3))
    assert spans(folds, ts) == [(0, 9, 10, 12), (3, 12, 13, 15), (6, 15, 16, 18), (9, 18, 19, 19)]
    assert [f.index for f in folds] == [0, 1, 2, 3]


def test_expanding_folds_start_at_the_first_bar():
    ts = bars(20)
    folds = make_folds(ts, WalkForwardConfig(scheme="expanding", train_bars=10, test_bars=4))
    assert spans(folds, ts) == [(0, 9, 10, 13), (0, 13, 14, 17), (0, 17, 18, 19)]


def test_embargo_skips_bars_between_train_and_test():
    ts = bars(20)
    folds = make_folds(ts, WalkForwardConfig(train_bars=10, test_bars=3, embargo_bars=2))
    assert spans(folds, ts) == [(0, 9, 12, 14), (3, 12, 15, 17), (6, 15, 18, 19)]


def test_step_larger_than_test_leaves_gaps_and_max_folds_keeps_the_last():
    ts = bars(30)
    cfg = WalkForwardConfig(train_bars=10, test_bars=3, step_bars=5)
    assert spans(make_folds(ts, cfg), ts) == [
        (0, 9, 10, 12),
        (5, 14, 15, 17),
        (10, 19, 20, 22),
        (15, 24, 25, 27),
    ]
    last = make_folds(ts, cfg.model_copy(update={"max_folds": 2}))
    assert spans(last, ts) == [(10, 19, 20, 22), (15, 24, 25, 27)]
    assert [f.index for f in last] == [0, 1]


def test_folds_use_the_unique_sorted_bars_of_a_panel():
    ts = bars(15)
    shuffled = list(ts[::-1]) + list(ts) + [pd.NaT]  # several symbols → repeated timestamps
    assert make_folds(shuffled, WalkForwardConfig(train_bars=10, test_bars=5)) == make_folds(
        ts, WalkForwardConfig(train_bars=10, test_bars=5)
    )


def test_exactly_enough_bars_gives_one_fold_of_one_test_bar():
    ts = bars(13)
    folds = make_folds(ts, WalkForwardConfig(train_bars=10, test_bars=5, embargo_bars=2))
    assert spans(folds, ts) == [(0, 9, 12, 12)]


def test_not_enough_bars_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 13 bars .* has 12 unique timestamps"):
        make_folds(bars(12), WalkForwardConfig(train_bars=10, test_bars=5, embargo_bars=2))


def test_fold_dict_is_json_and_round_trips():
    fold = make_folds(bars(20), WalkForwardConfig(train_bars=10, test_bars=3))[1]
    d = json.loads(json.dumps(fold.to_dict()))
    assert d["index"] == 1 and d["test_start"] == "2024-01-14T00:00:00+00:00"
    assert Fold.from_dict(d) == fold


# -- fold_rows: purging -----------------------------------------------------------------------


def test_training_rows_whose_label_reaches_the_test_window_are_purged():
    ts = bars(12)
    horizon = 2
    data = pd.DataFrame(
        {
            "symbol": "AAA",
            "ts": ts,
            "label": np.arange(12.0),
            "fwd_return": np.arange(12.0),
            "t1": pd.Series(ts).shift(-horizon).to_numpy(),
        }
    )
    data.loc[1, "label"] = np.nan  # an unlabeled row is never trained on
    data.loc[10:, "label"] = np.nan  # the unlabeled tail (t1 is NaT there)
    fold = Fold(0, ts[0], ts[5], ts[6], ts[11])
    train, test = fold_rows(data, fold)
    # Rows 4 and 5 end their horizon at bars 6 and 7 — inside the test window — so they are purged.
    assert train.tolist() == [0, 2, 3]
    assert test.tolist() == [6, 7, 8, 9, 10, 11]  # the unlabeled tail is still predicted
    assert (data["t1"].iloc[train] < fold.test_start).all()


def test_fold_rows_returns_positions_not_labels():
    data = panel(n_bars=30, symbols=("AAA", "BBB"))
    data.index = data.index + 1000
    fold = make_folds(data["ts"], WalkForwardConfig(train_bars=20, test_bars=5))[0]
    train, test = fold_rows(data, fold)
    assert data.iloc[train]["ts"].max() <= fold.train_end
    assert set(data.iloc[test]["symbol"]) == {"AAA", "BBB"} and len(test) == 10


# -- walk_forward -----------------------------------------------------------------------------


def test_every_prediction_is_out_of_sample_and_unique():
    data = panel()
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=40, test_bars=20, embargo_bars=1))
    preds, infos = walk_forward(data, FEATURES, MODEL, "regression", folds)
    assert list(preds.columns) == ["symbol", "ts", "fold", "prediction", "label", "fwd_return"]
    assert not preds.duplicated(["symbol", "ts"]).any()
    assert str(preds["ts"].dtype) == str(data["ts"].dtype)
    for fold, info in zip(folds, infos, strict=True):
        train, test = fold_rows(data, fold)
        mine = preds[preds["fold"] == fold.index]
        assert len(mine) == len(test) == info["n_test"] and info["n_train"] == len(train)
        assert mine["ts"].min() > data["ts"].iloc[train].max()
        assert (data["t1"].iloc[train] < mine["ts"].min()).all()
    # Every bar after the first training window is predicted once per symbol, the unlabeled tail too.
    assert len(preds) == 3 * (120 - 41)
    assert preds["label"].isna().sum() == 3 * 3


def test_overlapping_test_windows_keep_the_latest_fold():
    data = panel(n_bars=60)
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=30, test_bars=10, step_bars=5))
    preds, infos = walk_forward(data, FEATURES, MODEL, "regression", folds)
    assert not preds.duplicated(["symbol", "ts"]).any()
    for fold in folds:
        rows = preds[(preds["ts"] >= fold.test_start) & (preds["ts"] <= fold.test_end)]
        assert (rows["fold"] >= fold.index).all()
    assert infos[0]["n_test"] == 30  # each fold's metrics still cover its whole test window


def test_learns_a_planted_signal_out_of_sample():
    data = panel(n_bars=150, seed=1)
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=60, test_bars=30, embargo_bars=3))
    preds, infos = walk_forward(data, FEATURES, MODEL, "regression", folds)
    labelled = preds.dropna(subset=["label"])
    assert spearmanr(labelled["prediction"], labelled["fwd_return"]).statistic > 0.5
    assert all(info["ic"] > 0.5 and info["accuracy"] > 0.6 for info in infos)
    json.dumps(infos, allow_nan=False)


def test_noise_is_not_learned():
    # Fixed seeds → deterministic; the mean over seeds sits well inside the bound.
    ics = []
    for seed in range(6):
        data = panel(n_bars=150, symbols=("A", "B", "C", "D", "E"), seed=50 + seed, planted=False)
        folds = make_folds(data["ts"], WalkForwardConfig(train_bars=60, test_bars=30))
        preds, _ = walk_forward(data, FEATURES, MODEL, "regression", folds)
        labelled = preds.dropna(subset=["label"])
        ics.append(spearmanr(labelled["prediction"], labelled["fwd_return"]).statistic)
    assert abs(float(np.mean(ics))) < 0.1


def test_two_runs_are_bit_identical():
    data = panel(seed=2)
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=40, test_bars=20))
    a, infos_a = walk_forward(data, FEATURES, MODEL, "regression", folds)
    b, infos_b = walk_forward(data, FEATURES, MODEL, "regression", folds)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert np.array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())
    assert infos_a == infos_b


def test_resume_with_done_folds_matches_a_full_run():
    data = panel(seed=3)
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=40, test_bars=20))
    assert len(folds) == 4
    calls: list[tuple[int, pd.DataFrame, dict]] = []
    full, full_infos = walk_forward(
        data, FEATURES, MODEL, "regression", folds, on_fold=lambda i, p, info: calls.append((i, p, info))
    )
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert calls[1][2] == full_infos[1]

    # A crashed run checkpointed folds 0 and 1 (say, to Parquet and back).
    done = {i: p.copy() for i, p, _ in calls[:2]}
    resumed_calls: list[int] = []
    resumed, resumed_infos = walk_forward(
        data,
        FEATURES,
        MODEL,
        "regression",
        folds,
        done=done,
        on_fold=lambda i, p, info: resumed_calls.append(i),
    )
    assert resumed_calls == [2, 3]
    pd.testing.assert_frame_equal(resumed, full, check_exact=True)
    assert resumed_infos == full_infos


def test_done_for_an_unknown_fold_is_an_error():
    data = panel(n_bars=60)
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=40, test_bars=20))
    with pytest.raises(ValueError, match=r"folds \[7\]"):
        walk_forward(data, FEATURES, MODEL, "regression", folds, done={7: pd.DataFrame()})


def test_classification_with_a_one_class_fold_is_handled():
    data = panel(n_bars=60, seed=4)
    data["label"] = (data["fwd_return"] > 0).astype(float).where(data["fwd_return"].notna())
    first = data["ts"] < data["ts"].iloc[30]
    data.loc[first & data["label"].notna(), "label"] = 0.0  # the first training window sees only class 0
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=30, test_bars=10))
    preds, infos = walk_forward(data, FEATURES, MODEL, "classification", folds)
    assert infos[0]["note"] is not None and "one class" in infos[0]["note"]
    assert (preds.loc[preds["fold"] == 0, "prediction"] == 0.0).all()
    assert infos[1]["note"] is None
    assert ((preds["prediction"] >= 0) & (preds["prediction"] <= 1)).all()
    assert all(set(info) >= {"auc", "accuracy", "ic", "n"} for info in infos)
    json.dumps(infos, allow_nan=False)


def test_a_fold_without_training_rows_names_the_fold():
    data = panel(n_bars=40, horizon=15)  # every label in the 10-bar window reaches the test window
    folds = make_folds(data["ts"], WalkForwardConfig(train_bars=10, test_bars=5))
    with pytest.raises(ValueError, match="fold 0 .* no labelled training rows"):
        walk_forward(data, FEATURES, MODEL, "regression", folds)


# -- fold_metrics -----------------------------------------------------------------------------


def test_fold_metrics_regression_by_hand():
    pred = np.array([0.1, -0.2, 0.3, 0.05, 0.7])
    fwd = np.array([0.2, -0.1, -0.3, 0.1, np.nan])
    label = fwd.copy()  # the last row is unlabeled and ignored
    m = fold_metrics(pred, label, fwd, "regression")
    # ranks pred (3,1,4,2) vs fwd (4,2,1,3): sum d^2 = 12, rho = 1 - 6*12/(4*15) = -0.2
    assert m["n"] == 4
    assert m["ic"] == pytest.approx(-0.2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["mse"] == pytest.approx((0.01 + 0.01 + 0.36 + 0.0025) / 4)
    assert m["auc"] is None


def test_fold_metrics_classification_by_hand():
    pred = np.array([0.9, 0.2, 0.6, 0.4])
    label = np.array([1.0, 0.0, 0.0, 1.0])
    fwd = np.array([0.03, -0.01, -0.02, 0.01])
    m = fold_metrics(pred, label, fwd, "classification")
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered right
    assert m["ic"] == pytest.approx(0.4)  # ranks (4,1,3,2) vs (4,2,1,3): sum d^2 = 6
    assert m["mse"] is None


def test_fold_metrics_undefined_values_are_none():
    one_class = fold_metrics(
        np.array([0.2, 0.3]), np.array([1.0, 1.0]), np.array([0.1, 0.2]), "classification"
    )
    assert one_class["auc"] is None and one_class["accuracy"] == 0.0
    constant = fold_metrics(np.zeros(3), np.array([0.1, -0.1, 0.2]), np.array([0.1, -0.1, 0.2]), "regression")
    assert constant["ic"] is None
    empty = fold_metrics(np.array([0.1]), np.array([np.nan]), np.array([np.nan]), "regression")
    assert empty == {"n": 0, "ic": None, "accuracy": None, "mse": None, "auc": None}
    for m in (one_class, constant, empty):
        json.dumps(m, allow_nan=False)
