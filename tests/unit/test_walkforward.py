"""Walk-forward folds (rolling, expanding, validation windows, cpcv), purging, one fold's run,
stitched out-of-sample predictions, resume and determinism.

Most tests fit `LeastSquares`, a tiny deterministic family registered here as "linear" for the test
only, so they exercise the walk-forward and not a family someone else is writing; the lightgbm tests
at the end go through `fit_fold` with the real family.
"""

from __future__ import annotations

import contextlib
import json
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from quanto.config.models import PipelineConfig, WalkForwardConfig
from quanto.errors import InputError
from quanto.evaluation.walkforward import (
    CANARY_COLUMN,
    PREDICTION_COLUMNS,
    Fold,
    cpcv_paths,
    fold_rows,
    make_folds,
    plan_folds,
    run_fold,
    stitch,
    stitch_path,
    walk_forward,
)
from quanto.models import base
from quanto.models.base import Design, Model, check_labels, one_class_note

FEATURES = ["signal", "other"]
FITS: list[dict] = []  # what each LeastSquares.fit received, for tests that look


class LeastSquares(Model):
    """Ordinary least squares with an intercept (classification: a linear probability, clipped to
    [0, 1]); NaN features are filled with the training mean."""

    family = "linear"

    def fit(self, design, rows, y, *, valid=None, progress=None, checkpoint=None):
        y = check_labels(self.objective, rows, y)
        FITS.append(
            {"rows": np.asarray(rows).copy(), "y": y.copy(), "valid": valid, "checkpoint": checkpoint}
        )
        self.features = list(design.columns)
        x = design.tabular(rows)
        self.fill = np.nan_to_num(np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0))
        self.note = one_class_note(self.objective, y)
        if self.note:
            self.coef = np.r_[y[0], np.zeros(x.shape[1])]
            return self
        a = np.column_stack([np.ones(len(x)), np.where(np.isnan(x), self.fill, x)])
        self.coef = np.linalg.lstsq(a, y, rcond=None)[0]
        if progress:
            progress({"step": 1, "of": 1})
        return self

    def predict(self, design, rows):
        x = design.tabular(rows)
        out = np.column_stack([np.ones(len(x)), np.where(np.isnan(x), self.fill, x)]) @ self.coef
        return np.clip(out, 0.0, 1.0) if self.objective == "classification" else out

    def feature_importance(self):
        return base.normalized_importance(self.features, np.abs(self.coef[1:]))

    def _save_state(self, folder: Path) -> dict:
        return {"coef": self.coef.tolist(), "fill": self.fill.tolist()}

    def _load_state(self, folder: Path, state: dict) -> None:
        self.coef, self.fill = np.array(state["coef"]), np.array(state["fill"])


@pytest.fixture(autouse=True)
def least_squares(monkeypatch):
    """`linear` is LeastSquares for the test (the real family is restored afterwards)."""
    # Register the real family first (when it exists), so importing it later cannot clash with the stand-in.
    with contextlib.suppress(ImportError, KeyError):
        base.family_class("linear")
    monkeypatch.setitem(base.FAMILIES, "linear", LeastSquares)
    FITS.clear()


def job(
    walk_forward: dict,
    objective: str = "regression",
    canary: bool = False,
    model: dict | None = None,
) -> PipelineConfig:
    """A job file for daily bars with the test's windows; the canary is off unless asked for."""
    return PipelineConfig.model_validate(
        {
            "name": "wf",
            "universe": {"symbols": ["AAA"], "start": "2024-01-01", "end": "2025-01-01"},
            "label": {"kind": "forward_return" if objective == "regression" else "direction", "horizon": 3},
            "model": model or {"kind": "linear", "objective": objective},
            "walk_forward": walk_forward,
            "evaluation": {"canary": canary},
        }
    )


def bars(n: int) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC")


def spans(folds: list[Fold], ts: pd.DatetimeIndex) -> list[tuple[int, ...]]:
    """Folds as bar positions (train_start, train_end, [valid_start, valid_end,] test_start, test_end)."""
    pos = {t: i for i, t in enumerate(ts)}
    out = []
    for f in folds:
        valid = (pos[f.valid_start], pos[f.valid_end]) if f.valid_start is not None else ()
        out.append((pos[f.train_start], pos[f.train_end], *valid, pos[f.test_start], pos[f.test_end]))
    return out


def panel(
    n_bars: int = 120,
    symbols: tuple[str, ...] = ("AAA", "BBB", "CCC"),
    horizon: int = 3,
    seed: int = 0,
    strength: float = 1.0,
    noise: float = 0.3,
) -> pd.DataFrame:
    """A dataset as the label stage builds it, sorted by (symbol, ts): fwd_return = 0.01 (strength x
    signal + noise x N(0, 1)); label = fwd_return; the last `horizon` bars of a symbol unlabeled."""
    rng = np.random.default_rng(seed)
    ts = bars(n_bars)
    frames = []
    for symbol in symbols:
        signal = rng.normal(size=n_bars)
        other = rng.normal(size=n_bars)
        other[rng.random(n_bars) < 0.05] = np.nan
        fwd = 0.01 * (strength * signal + noise * rng.normal(size=n_bars))
        fwd[-horizon:] = np.nan
        t1 = pd.Series(ts).shift(-horizon).to_numpy()
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
            ).assign(t1=t1)
        )
    return pd.concat(frames, ignore_index=True)


def as_direction(data: pd.DataFrame) -> pd.DataFrame:
    """The same panel with direction labels (1 when the forward return is positive)."""
    return data.assign(label=(data["fwd_return"] > 0).astype(float).where(data["fwd_return"].notna()))


def design(data: pd.DataFrame, columns: list[str] = FEATURES) -> Design:
    return Design(data, columns)


# -- make_folds: rolling and expanding ----------------------------------------------------------


def test_rolling_folds_by_hand_with_a_short_last_fold():
    ts = bars(20)
    folds = make_folds(ts, WalkForwardConfig(train_bars=10, test_bars=3))
    assert spans(folds, ts) == [(0, 9, 10, 12), (3, 12, 13, 15), (6, 15, 16, 18), (9, 18, 19, 19)]
    assert [f.index for f in folds] == [0, 1, 2, 3]
    assert all(f.valid_start is None and not f.is_cpcv for f in folds)


def test_expanding_folds_start_at_the_first_bar():
    ts = bars(20)
    folds = make_folds(ts, WalkForwardConfig(scheme="expanding", train_bars=10, test_bars=4))
    assert spans(folds, ts) == [(0, 9, 10, 13), (0, 13, 14, 17), (0, 17, 18, 19)]


def test_embargo_skips_bars_between_train_and_test():
    ts = bars(20)
    folds = make_folds(ts, WalkForwardConfig(train_bars=10, test_bars=3, embargo_bars=2))
    assert spans(folds, ts) == [(0, 9, 12, 14), (3, 12, 15, 17), (6, 15, 18, 19)]


def test_validation_window_sits_between_train_and_test_with_an_embargo_after_each():
    ts = bars(30)
    cfg = WalkForwardConfig(train_bars=10, valid_bars=4, test_bars=3, embargo_bars=1, step_bars=5)
    # train 0-9 | embargo 10 | valid 11-14 | embargo 15 | test 16-18; then everything moves by 5.
    assert spans(make_folds(ts, cfg), ts) == [
        (0, 9, 11, 14, 16, 18),
        (5, 14, 16, 19, 21, 23),
        (10, 19, 21, 24, 26, 28),
    ]
    expanding = make_folds(ts, cfg.model_copy(update={"scheme": "expanding"}))
    assert [s[0] for s in spans(expanding, ts)] == [0, 0, 0]


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
    cfg = WalkForwardConfig(train_bars=10, test_bars=5)
    assert make_folds(shuffled, cfg) == make_folds(ts, cfg)


def test_exactly_enough_bars_gives_one_fold_of_one_test_bar():
    ts = bars(13)
    folds = make_folds(ts, WalkForwardConfig(train_bars=10, test_bars=5, embargo_bars=2))
    assert spans(folds, ts) == [(0, 9, 12, 12)]


def test_not_enough_bars_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 13 bars .* has 12 unique timestamps"):
        make_folds(bars(12), WalkForwardConfig(train_bars=10, test_bars=5, embargo_bars=2))
    with pytest.raises(ValueError, match=r"at least 18 bars \(train_bars=10 .* valid_bars=3 .* has 17"):
        make_folds(bars(17), WalkForwardConfig(train_bars=10, valid_bars=3, test_bars=5, embargo_bars=2))


def test_fold_dict_is_json_and_round_trips():
    fold = make_folds(bars(30), WalkForwardConfig(train_bars=10, valid_bars=3, test_bars=3))[1]
    d = json.loads(json.dumps(fold.to_dict()))
    assert d["index"] == 1 and d["valid_start"] == "2024-01-14T00:00:00+00:00"
    assert Fold.from_dict(d) == fold
    plain = make_folds(bars(20), WalkForwardConfig(train_bars=10, test_bars=3))[0]
    assert plain.to_dict()["valid_start"] is None and Fold.from_dict(plain.to_dict()) == plain


# -- make_folds: cpcv ---------------------------------------------------------------------------


def test_cpcv_folds_test_every_pair_of_groups_and_block_the_embargo_on_both_sides():
    ts = bars(12)
    folds = make_folds(ts, WalkForwardConfig(scheme="cpcv", n_groups=4, k_test_groups=2, embargo_bars=1))
    assert [f.groups for f in folds] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    pos = {t: i for i, t in enumerate(ts)}
    by_pos = [[(pos[a], pos[b]) for a, b in f.test_spans] for f in folds]
    assert by_pos[1] == [(0, 2), (6, 8)]  # groups of 3 bars
    assert [(pos[a], pos[b]) for a, b in folds[1].blocked_spans] == [(0, 3), (5, 9)]
    assert (pos[folds[1].test_start], pos[folds[1].test_end]) == (0, 8)
    assert Fold.from_dict(json.loads(json.dumps(folds[4].to_dict()))) == folds[4]


def test_cpcv_paths_cover_every_group_once_each():
    folds = make_folds(bars(60), WalkForwardConfig(scheme="cpcv", n_groups=6, k_test_groups=2))
    assert len(folds) == comb(6, 2)
    paths = cpcv_paths(folds)
    assert len(paths) == comb(5, 1)
    for g in range(6):
        testers = [p[g] for p in paths]
        assert len(set(testers)) == 5 and all(g in folds[i].groups for i in testers)


def test_cpcv_needs_enough_bars_and_refuses_walk_forward_only_keys():
    with pytest.raises(ValueError, match="n_groups=6 needs at least 12 bars; the panel has 11"):
        make_folds(bars(11), WalkForwardConfig(scheme="cpcv"))
    with pytest.raises(ValidationError, match="valid_bars apply to scheme rolling or expanding, not cpcv"):
        WalkForwardConfig(scheme="cpcv", valid_bars=5)
    with pytest.raises(ValidationError, match=r"k_test_groups \(4\) must be below n_groups \(4\)"):
        WalkForwardConfig(scheme="cpcv", n_groups=4, k_test_groups=4)
    with pytest.raises(ValidationError, match="n_groups apply to scheme cpcv, not rolling"):
        WalkForwardConfig(n_groups=3)


def test_a_dumped_config_validates_again_for_every_scheme():
    for cfg in (
        WalkForwardConfig(scheme="cpcv", n_groups=5, k_test_groups=2, embargo_bars=2),
        WalkForwardConfig(train_bars=100, valid_bars=10, step_bars=5, max_folds=3),
    ):
        assert WalkForwardConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    old = {"scheme": "expanding", "train_bars": 500, "test_bars": 126, "embargo_bars": 15}  # an existing job
    assert WalkForwardConfig.model_validate(old).valid_bars == 0


def test_cpcv_refuses_features_fitted_on_a_fixed_window():
    cfg = job({"scheme": "cpcv", "n_groups": 4})
    cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"pca": {"n_components": 1}})})
    with pytest.raises(
        ValueError, match="cpcv tests every part of the panel, including the window features.pca"
    ):
        plan_folds(cfg, bars(40))


# -- fold_rows: purging -------------------------------------------------------------------------


def one_symbol(n: int, horizon: int) -> pd.DataFrame:
    ts = bars(n)
    return pd.DataFrame(
        {
            "symbol": "AAA",
            "ts": ts,
            "label": np.arange(float(n)),
            "fwd_return": np.arange(float(n)),
            "t1": pd.Series(ts).shift(-horizon).to_numpy(),
        }
    )


def test_training_rows_whose_label_reaches_the_test_window_are_purged():
    data = one_symbol(12, horizon=2)
    ts = data["ts"]
    data.loc[1, "label"] = np.nan  # an unlabeled row is never trained on
    data.loc[10:, "label"] = np.nan  # the unlabeled tail (t1 is NaT there)
    fold = Fold(0, ts[0], ts[5], ts[6], ts[11])
    rows = fold_rows(data, fold)
    # Rows 4 and 5 end their horizon at bars 6 and 7 — inside the test window — so they are purged.
    assert rows.train.tolist() == [0, 2, 3] and rows.valid.tolist() == []
    assert rows.test.tolist() == [6, 7, 8, 9, 10, 11]  # the unlabeled tail is still predicted


def test_validation_purges_training_at_its_start_and_itself_at_the_test_start():
    data = one_symbol(20, horizon=2)
    ts = data["ts"]
    fold = Fold(0, ts[0], ts[7], ts[13], ts[16], valid_start=ts[9], valid_end=ts[11])
    rows = fold_rows(data, fold)
    # Training rows 7 (t1 = bar 9) and 6 (bar 8 < 9 is fine) : only 7 reaches the validation window.
    assert rows.train.tolist() == [0, 1, 2, 3, 4, 5, 6]
    # Validation rows 9..11 end at 11..13; row 11 reaches the test window (bar 13).
    assert rows.valid.tolist() == [9, 10]
    assert rows.test.tolist() == [13, 14, 15, 16]


def test_cpcv_purges_labels_overlapping_a_test_group_and_embargoes_both_sides():
    data = one_symbol(20, horizon=2)
    ts = data["ts"]
    data.loc[18:, "label"] = np.nan
    # Test group bars 8..11, embargo 1 → bars 7..12 never trained on; row 6's label (bars 6..8)
    # reaches the group, row 5's (5..7) ends in the embargo, which only blocks rows starting there.
    fold = Fold(
        0,
        ts[0],
        ts[19],
        ts[8],
        ts[11],
        groups=(1,),
        test_spans=((ts[8], ts[11]),),
        blocked_spans=((ts[7], ts[12]),),
    )
    rows = fold_rows(data, fold)
    assert rows.train.tolist() == [0, 1, 2, 3, 4, 5, 13, 14, 15, 16, 17]
    assert rows.test.tolist() == [8, 9, 10, 11] and rows.valid.tolist() == []


def test_fold_rows_returns_positions_not_labels():
    data = panel(n_bars=30, symbols=("AAA", "BBB"))
    data.index = data.index + 1000
    fold = make_folds(data["ts"], WalkForwardConfig(train_bars=20, test_bars=5))[0]
    rows = fold_rows(data, fold)
    assert data.iloc[rows.train]["ts"].max() <= fold.train_end
    assert set(data.iloc[rows.test]["symbol"]) == {"AAA", "BBB"} and len(rows.test) == 10


# -- run_fold / walk_forward ------------------------------------------------------------------


def test_every_prediction_is_out_of_sample_and_unique():
    data = panel()
    cfg = job({"train_bars": 40, "test_bars": 20, "embargo_bars": 1})
    folds = make_folds(data["ts"], cfg.walk_forward)
    outcomes = walk_forward(design(data), cfg, folds)
    preds = stitch([o.predictions for o in outcomes])
    assert list(preds.columns[:6]) == PREDICTION_COLUMNS
    assert not preds.duplicated(["symbol", "ts"]).any()
    assert str(preds["ts"].dtype) == str(data["ts"].dtype)
    for fold, outcome, fit in zip(folds, outcomes, FITS, strict=True):
        rows = fold_rows(data, fold)
        mine = preds[preds["fold"] == fold.index]
        assert len(mine) == len(rows.test) == outcome.info["n_test"] and outcome.info["n_train"] == len(
            rows.train
        )
        assert np.array_equal(fit["rows"], rows.train)  # the model saw exactly the purged rows
        assert mine["ts"].min() > data["ts"].iloc[fit["rows"]].max()
        assert (data["t1"].iloc[fit["rows"]] < mine["ts"].min()).all()
        json.dumps(outcome.info, allow_nan=False)
    # Every bar after the first training window is predicted once per symbol, the unlabeled tail too.
    assert len(preds) == 3 * (120 - 41)
    assert preds["label"].isna().sum() == 3 * 3


def test_fit_fold_gets_the_validation_rows_and_a_checkpoint_folder(tmp_path):
    data = panel(n_bars=80)
    cfg = job({"train_bars": 30, "valid_bars": 10, "test_bars": 10, "embargo_bars": 2})
    fold = make_folds(data["ts"], cfg.walk_forward)[1]
    outcome = run_fold(design(data), fold, cfg, checkpoint=tmp_path / "f1")
    rows = fold_rows(data, fold)
    (fit,) = FITS
    valid_rows, valid_y = fit["valid"]
    assert np.array_equal(valid_rows, rows.valid) and len(valid_rows) == outcome.info["n_valid"] > 0
    assert np.array_equal(valid_y, data["label"].to_numpy()[rows.valid])
    assert not set(valid_rows) & set(fit["rows"])
    assert fit["checkpoint"] == tmp_path / "f1" / "model"
    assert outcome.info["valid_start"] == fold.valid_start.isoformat()


def test_fold_info_has_metrics_baselines_and_search_facts():
    data = panel(n_bars=80, seed=5)
    cfg = job({"train_bars": 40, "test_bars": 20})
    outcome = run_fold(design(data), make_folds(data["ts"], cfg.walk_forward)[0], cfg)
    info = outcome.info
    assert info["n_trials"] == 1 and info["leaderboard"] == [] and info["trial_sharpes"] is None
    assert set(info["metrics"]) == {"n", "mse", "accuracy", "auc", "ic", "rank_ic", "sharpe"}
    assert set(info["baselines"]) == {"buy_and_hold", "majority", "prev_return_sign"}
    # Baselines are scored on exactly the model's rows.
    assert all(m["n"] == info["metrics"]["n"] == 60 for m in info["baselines"].values())
    assert info["horizon_bars"] == 3.0 and info["periods_per_year"] == pytest.approx(252 / 3)
    assert info["canary"] is None and CANARY_COLUMN not in outcome.predictions
    json.dumps(info, allow_nan=False)


def test_overlapping_test_windows_keep_the_latest_fold():
    data = panel(n_bars=60)
    cfg = job({"train_bars": 30, "test_bars": 10, "step_bars": 5})
    folds = make_folds(data["ts"], cfg.walk_forward)
    outcomes = walk_forward(design(data), cfg, folds)
    preds = stitch([o.predictions for o in outcomes])
    assert not preds.duplicated(["symbol", "ts"]).any()
    for fold in folds:
        rows = preds[(preds["ts"] >= fold.test_start) & (preds["ts"] <= fold.test_end)]
        assert (rows["fold"] >= fold.index).all()
    assert outcomes[0].info["n_test"] == 30  # each fold's metrics still cover its whole test window


def test_learns_a_planted_signal_out_of_sample():
    data = panel(n_bars=150, seed=1)
    cfg = job({"train_bars": 60, "test_bars": 30, "embargo_bars": 3})
    outcomes = walk_forward(design(data), cfg, make_folds(data["ts"], cfg.walk_forward))
    assert all(o.info["metrics"]["rank_ic"] > 0.8 and o.info["metrics"]["accuracy"] > 0.8 for o in outcomes)
    # The model beats every baseline's accuracy in every fold.
    for o in outcomes:
        assert all(o.info["metrics"]["accuracy"] > b["accuracy"] for b in o.info["baselines"].values())


def test_two_runs_are_identical_and_resume_matches_a_full_run():
    data = panel(seed=3)
    cfg = job({"train_bars": 40, "test_bars": 20})
    folds = make_folds(data["ts"], cfg.walk_forward)
    assert len(folds) == 4
    calls: list[tuple[Fold, object]] = []
    full = walk_forward(design(data), cfg, folds, on_fold=lambda f, o: calls.append((f, o)))
    again = walk_forward(design(data), cfg, folds)
    for a, b in zip(full, again, strict=True):
        pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=True)
        assert a.info == b.info
    assert [f.index for f, _ in calls] == [0, 1, 2, 3]

    # A crashed run checkpointed folds 0 and 1 (say, to Parquet and JSON and back).
    done = {f.index: o for f, o in calls[:2]}
    resumed_calls: list[int] = []
    FITS.clear()
    resumed = walk_forward(
        design(data), cfg, folds, done=done, on_fold=lambda f, o: resumed_calls.append(f.index)
    )
    assert resumed_calls == [2, 3] and len(FITS) == 2
    pd.testing.assert_frame_equal(
        stitch([o.predictions for o in resumed]), stitch([o.predictions for o in full]), check_exact=True
    )


def test_done_for_an_unknown_fold_is_an_error():
    data = panel(n_bars=60)
    cfg = job({"train_bars": 40, "test_bars": 20})
    with pytest.raises(ValueError, match=r"folds \[7\]"):
        walk_forward(design(data), cfg, make_folds(data["ts"], cfg.walk_forward), done={7: None})


def test_classification_with_a_one_class_fold_is_handled():
    data = as_direction(panel(n_bars=60, seed=4))
    first = data["ts"] < data["ts"].iloc[30]
    data.loc[first & data["label"].notna(), "label"] = 0.0  # the first training window sees only class 0
    cfg = job({"train_bars": 30, "test_bars": 10}, objective="classification")
    outcomes = walk_forward(design(data), cfg, make_folds(data["ts"], cfg.walk_forward))
    assert "one class" in outcomes[0].info["note"]
    assert (outcomes[0].predictions["prediction"] == 0.0).all()
    assert outcomes[1].info["note"] is None
    preds = stitch([o.predictions for o in outcomes])
    assert ((preds["prediction"] >= 0) & (preds["prediction"] <= 1)).all()
    assert outcomes[1].info["metrics"]["auc"] is not None
    for o in outcomes:
        json.dumps(o.info, allow_nan=False)


def test_a_fold_without_training_rows_names_the_fold():
    data = panel(n_bars=40, horizon=15)  # every label in the 10-bar window reaches the test window
    cfg = job({"train_bars": 10, "test_bars": 5})
    with pytest.raises(InputError, match="fold 0 .* no labelled training rows"):
        walk_forward(design(data), cfg, make_folds(data["ts"], cfg.walk_forward))


def test_a_fully_purged_validation_window_is_noted_and_skipped():
    data = panel(n_bars=60, horizon=6)
    cfg = job({"train_bars": 30, "valid_bars": 4, "test_bars": 10})  # 4 bars < the 6-bar labels
    outcome = run_fold(design(data), make_folds(data["ts"], cfg.walk_forward)[0], cfg)
    assert outcome.info["n_valid"] == 0 and FITS[0]["valid"] is None
    assert "every validation row was purged" in outcome.info["note"]


def test_cpcv_paths_are_out_of_sample_and_cover_every_row_once():
    data = panel(n_bars=60, seed=6)
    cfg = job({"scheme": "cpcv", "n_groups": 4, "k_test_groups": 2, "embargo_bars": 2})
    folds = plan_folds(cfg, data["ts"])
    outcomes = walk_forward(design(data), cfg, folds)
    parts = [o.predictions for o in outcomes]
    for fold, fit in zip(folds, FITS, strict=True):
        trained = data.iloc[fit["rows"]]
        for (a, b), (block_a, block_b) in zip(fold.test_spans, fold.blocked_spans, strict=True):
            assert not ((trained["ts"] >= block_a) & (trained["ts"] <= block_b)).any()
            assert not ((trained["ts"] <= b) & (trained["t1"] >= a)).any()
    for j in range(len(cpcv_paths(folds))):
        path = stitch_path(parts, folds, j)
        assert len(path) == len(data) and not path.duplicated(["symbol", "ts"]).any()
    # Paths differ: group 0 comes from a different fold in each.
    assert stitch_path(parts, folds, 0)["fold"].iloc[0] != stitch_path(parts, folds, 1)["fold"].iloc[0]


# -- lightgbm through fit_fold ----------------------------------------------------------------

LIGHTGBM = {
    "kind": "lightgbm",
    "params": {"n_estimators": 25, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 10},
    "n_jobs": 1,
}


def test_lightgbm_folds_learn_a_signal_and_rerun_bit_identically():
    data = panel(n_bars=150, seed=1)
    cfg = job({"train_bars": 60, "test_bars": 30, "embargo_bars": 3}, model=LIGHTGBM)
    folds = make_folds(data["ts"], cfg.walk_forward)
    a = walk_forward(design(data), cfg, folds)
    b = walk_forward(design(data), cfg, folds)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.predictions["prediction"].to_numpy(), y.predictions["prediction"].to_numpy())
        assert x.info == y.info
    assert all(o.info["metrics"]["rank_ic"] > 0.5 for o in a)


def test_lightgbm_classifier_with_a_validation_window():
    data = as_direction(panel(n_bars=120, seed=2))
    model = {**LIGHTGBM, "objective": "classification"}
    cfg = job(
        {"train_bars": 50, "valid_bars": 15, "test_bars": 20, "embargo_bars": 3},
        "classification",
        model=model,
    )
    outcomes = walk_forward(design(data), cfg, make_folds(data["ts"], cfg.walk_forward))
    assert all(o.info["n_valid"] > 0 and o.info["metrics"]["auc"] > 0.7 for o in outcomes)
