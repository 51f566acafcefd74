"""Tuning and AutoML (quanto.models.tuning, quanto.models.automl) through `fit_fold`: validation-only
scoring, pruning, budgets, leaderboards, determinism and config errors.

Real families (linear, small LightGBM) where they suffice; a tiny epoch-based family stands in for
the torch families (which report `val_loss` per epoch) to exercise pruning quickly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from quanto.config.model_params import DEFAULT_SPACES, PARAMS, SearchDim, check_space
from quanto.config.models import ModelConfig
from quanto.models.base import FAMILIES, Design, Model
from quanto.models.selection import fit_fold
from quanto.models.tuning import realized_returns, validation_metrics, validation_score


def planted(n: int = 600, seed: int = 0, n_symbols: int = 2) -> tuple[Design, np.ndarray]:
    """A design sorted by (symbol, ts) with features x1 (the signal), x2, x3 (noise) and labels
    0.5 * x1 + noise."""
    rng = np.random.default_rng(seed)
    per = n // n_symbols
    frame = pd.DataFrame(
        {
            "symbol": np.repeat([f"S{i}" for i in range(n_symbols)], per),
            "ts": np.tile(pd.date_range("2020-01-01", periods=per, freq="D", tz="UTC"), n_symbols),
            **{c: rng.normal(size=per * n_symbols) for c in ("x1", "x2", "x3")},
        }
    )
    y = 0.5 * frame["x1"].to_numpy() + rng.normal(size=len(frame))
    return Design(frame, ["x1", "x2", "x3"]), y


def split(y: np.ndarray, n_train: int = 400, n_valid: int = 100):
    """(train, valid, test) as (rows, y) pairs over consecutive row ranges."""
    rows = np.arange(len(y))
    parts = np.split(rows, [n_train, n_train + n_valid])
    return [(r, y[r]) for r in parts]


def cfg(**data: Any) -> ModelConfig:
    return ModelConfig.model_validate(data)


class EpochFamily(Model):
    """Stands in for a torch family: full-batch gradient descent on a linear model, `epochs` epochs
    at `learning_rate`, reporting {"step", "of", "val_loss"} every epoch as the torch families do.
    `lookback` < 5 raises ValueError at fit (a candidate the family refuses); `weight_decay` is the
    seconds each fit sleeps (for the time budget)."""

    family = "lstm"
    fits: list[dict[str, Any]] = []

    def fit(self, design, rows, y, *, valid=None, progress=None, checkpoint=None):
        EpochFamily.fits.append({"rows": np.asarray(rows), "checkpoint": checkpoint})
        if self.params["lookback"] < 5:
            raise ValueError(f"lookback {self.params['lookback']} refused")
        time.sleep(self.params["weight_decay"])
        x, t = design.tabular(rows), np.asarray(y)
        self.w = np.zeros(x.shape[1])
        for epoch in range(self.params["epochs"]):
            self.w -= self.params["learning_rate"] * 2 * x.T @ (x @ self.w - t) / len(t)
            if progress is not None and valid is not None:
                loss = float(np.mean((design.tabular(valid[0]) @ self.w - valid[1]) ** 2))
                progress({"step": epoch, "of": self.params["epochs"], "val_loss": loss})
        self.features = list(design.columns)
        return self

    def predict(self, design, rows):
        return design.tabular(rows) @ self.w

    def feature_importance(self):
        return dict(zip(self.features, np.abs(self.w) / np.abs(self.w).sum(), strict=True))

    def _save_state(self, folder: Path) -> dict[str, Any]:
        return {"w": self.w.tolist()}

    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.w = np.asarray(state["w"])


@pytest.fixture
def epoch_family(monkeypatch):
    """Register EpochFamily as "lstm" for one test (the real torch family is not imported)."""
    monkeypatch.setitem(FAMILIES, "lstm", EpochFamily)
    EpochFamily.fits = []
    return EpochFamily


def epoch_cfg(**tuning: Any) -> ModelConfig:
    return cfg(
        kind="lstm",
        params={"epochs": 12, "lookback": 20},
        tuning={"space": {"learning_rate": [1e-4, 0.5, "log"]}, "metric": "mse", **tuning},
    )


def valid_score(metric: str, design: Design, valid, model: Model) -> float:
    """`model`'s score on the validation window, as the search computes it."""
    pred = model.predict(design, valid[0])
    return validation_score(metric, validation_metrics(design, valid[0], valid[1], pred, model.objective))


def without_timing(board: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "fit_s"} for e in board]


# -- tuning ---------------------------------------------------------------------------------------


def test_tuning_beats_a_deliberately_bad_default_and_refits_on_train_only():
    design, y = planted()
    train, valid, _ = split(y)
    bad = cfg(kind="linear", params={"alpha": 1e6})  # shrinks every coefficient to ~0
    tuned_cfg = bad.model_copy(
        update={"tuning": cfg(kind="linear", tuning={"n_trials": 10, "metric": "mse"}).tuning}
    )

    default = fit_fold(bad, design, train, valid).model
    tuned = fit_fold(tuned_cfg, design, train, valid)
    default_mse = valid_score("mse", design, valid, default)
    tuned_mse = valid_score("mse", design, valid, tuned.model)
    assert tuned_mse < default_mse - 0.05

    best = tuned.leaderboard[0]
    assert best["score"] == pytest.approx(tuned_mse)
    assert tuned.model.cfg.tuning is None
    assert tuned.model.cfg.params["alpha"] == best["params"]["alpha"]
    # The fold's model is the winning config fitted on the training rows alone.
    refit = fit_fold(tuned.model.cfg, design, train, valid).model
    assert np.array_equal(refit.predict(design, valid[0]), tuned.model.predict(design, valid[0]))
    assert tuned.n_trials == 10


def test_leaderboard_is_sorted_by_score_in_the_metrics_direction():
    design, y = planted()
    train, valid, _ = split(y)
    for metric, descending in (("ic", True), ("mse", False)):
        fit = fit_fold(cfg(kind="linear", tuning={"n_trials": 6, "metric": metric}), design, train, valid)
        scores = [e["score"] for e in fit.leaderboard]
        assert scores == sorted(scores, reverse=descending)
        assert {e["state"] for e in fit.leaderboard} == {"complete"}
        assert all(e["metric"] == metric and e["family"] == "linear" for e in fit.leaderboard)
        # Each candidate's per-period validation Sharpe ratio, for the deflated Sharpe ratio.
        assert all(isinstance(e["sharpe"], float) for e in fit.leaderboard)
        assert len({e["sharpe"] for e in fit.leaderboard}) > 1


def test_search_is_deterministic():
    design, y = planted()
    train, valid, test = split(y)
    config = cfg(
        kind="lightgbm",
        params={"n_estimators": 15, "min_child_samples": 10},
        tuning={"n_trials": 4, "n_startup_trials": 2},
        n_jobs=1,
    )
    a = fit_fold(config, design, train, valid)
    b = fit_fold(config, design, train, valid)
    assert without_timing(a.leaderboard) == without_timing(b.leaderboard)
    assert len({str(e["params"]) for e in a.leaderboard}) == 4  # four distinct configurations tried
    assert np.array_equal(a.model.predict(design, test[0]), b.model.predict(design, test[0]))


def test_pruning_stops_trials_whose_validation_loss_falls_behind(epoch_family):
    design, y = planted()
    train, valid, _ = split(y)
    seen: list[dict] = []
    fit = fit_fold(
        epoch_cfg(n_trials=14, n_startup_trials=3, n_warmup_steps=1),
        design,
        train,
        valid,
        progress=seen.append,
    )
    pruned = [e for e in fit.leaderboard if e["state"] == "pruned"]
    complete = [e for e in fit.leaderboard if e["state"] == "complete"]
    assert pruned and complete
    assert fit.n_trials == 14  # pruned trials count: the deflated Sharpe ratio needs every one
    assert any(e["step"] < 11 for e in pruned)  # stopped before the last epoch
    assert all(e["step"] == 11 for e in complete)
    assert fit.leaderboard[: len(complete)] == complete  # complete trials rank first
    # The caller's progress sees every epoch, tagged with its trial.
    assert {"trial", "trials", "step", "val_loss"} <= set(seen[-1])

    unpruned = fit_fold(epoch_cfg(n_trials=14, n_startup_trials=3, pruner="none"), design, train, valid)
    assert {e["state"] for e in unpruned.leaderboard} == {"complete"}


def test_validation_rows_are_never_trained_on(epoch_family):
    design, y = planted()
    train, valid, _ = split(y)
    fit_fold(epoch_cfg(n_trials=3), design, train, valid)
    assert len(epoch_family.fits) == 3
    assert all(np.array_equal(f["rows"], train[0]) for f in epoch_family.fits)


def test_trial_budget_and_time_budget(epoch_family):
    design, y = planted()
    train, valid, _ = split(y)
    fit = fit_fold(epoch_cfg(n_trials=5, pruner="none"), design, train, valid)
    assert fit.n_trials == len(fit.leaderboard) == len(epoch_family.fits) == 5

    # 1000 trials of >= 20 ms each would take 20 s; a 0.3 s budget stops the search long before.
    slow = cfg(
        kind="lstm",
        params={"epochs": 2, "weight_decay": 0.02, "lookback": 20},
        tuning={"n_trials": 1000, "timeout_s": 0.3, "space": {"learning_rate": [1e-3, 0.1]}},
    )
    fit = fit_fold(slow, design, train, valid)
    assert 1 <= fit.n_trials < 1000


def test_refused_candidates_fail_their_trial_and_the_search_goes_on(epoch_family):
    design, y = planted()
    train, valid, _ = split(y)
    config = cfg(
        kind="lstm",
        params={"epochs": 3},
        tuning={"n_trials": 8, "pruner": "none", "space": {"lookback": [2, 9]}},
    )
    fit = fit_fold(config, design, train, valid)
    failed = [e for e in fit.leaderboard if e["state"] == "failed"]
    assert failed and all("refused" in e["error"] and e["params"]["lookback"] < 5 for e in failed)
    assert fit.n_trials == 8 - len(failed)
    assert fit.model.params["lookback"] >= 5

    never = config.model_copy(
        update={"tuning": config.tuning.model_copy(update={"space": {"lookback": SearchDim(low=2, high=4)}})}
    )
    with pytest.raises(ValueError, match="none of 8 trials completed; the first failed with: lookback"):
        fit_fold(never, design, train, valid)


@pytest.mark.parametrize("block", ["tuning", "automl"])
def test_search_refuses_a_fold_without_validation_window(block):
    design, y = planted()
    train, _, _ = split(y)
    config = cfg(
        kind="linear", **{block: {"n_trials": 2, **({"families": ["linear"]} if block == "automl" else {})}}
    )
    for valid in (None, (np.array([], dtype=np.int64), np.array([]))):
        with pytest.raises(ValueError, match=rf"model\.{block} scores .* walk_forward\.valid_bars > 0"):
            fit_fold(config, design, train, valid)


# -- AutoML ---------------------------------------------------------------------------------------


def test_automl_searches_families_and_ranks_them():
    design, y = planted()
    train, valid, test = split(y)
    config = cfg(
        automl={
            "families": ["linear", "lightgbm"],
            "n_trials": 8,
            "n_startup_trials": 4,
            "params": {"lightgbm": {"n_estimators": 15, "min_child_samples": 10}},
            "space": {"lightgbm": {"num_leaves": [3, 15]}},
        },
        n_jobs=1,
    )
    fit = fit_fold(config, design, train, valid)
    board = fit.leaderboard
    assert fit.n_trials == len(board) == 8
    assert {e["family"] for e in board} == {"linear", "lightgbm"}
    assert [e["score"] for e in board] == sorted((e["score"] for e in board), reverse=True)
    assert all(set(e) >= {"family", "params", "score", "fit_s"} for e in board)
    assert all(
        set(e["params"]) == ({"num_leaves"} if e["family"] == "lightgbm" else {"alpha", "penalty"})
        for e in board
    )
    # The winner is the top row's family, its fixed params applied, scoring what the board says.
    assert fit.model.family == board[0]["family"]
    assert valid_score("ic", design, valid, fit.model) == board[0]["score"]
    if fit.model.family == "lightgbm":
        assert fit.model.params["n_estimators"] == 15
    again = fit_fold(config, design, train, valid)
    assert np.array_equal(again.model.predict(design, test[0]), fit.model.predict(design, test[0]))


# -- scores ---------------------------------------------------------------------------------------


def small_design(**columns: Any) -> Design:
    """Symbols A and B over three days (rows 0-2 are A, 3-5 are B), feature x, extra columns."""
    frame = pd.DataFrame(
        {
            "symbol": ["A"] * 3 + ["B"] * 3,
            "ts": np.tile(pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC"), 2),
            "x": np.arange(6.0),
            **columns,
        }
    )
    return Design(frame, ["x"])


def score(metric: str, design: Design, y, pred, objective: str = "regression") -> float:
    rows = np.arange(len(design))
    return validation_score(
        metric, validation_metrics(design, rows, np.asarray(y), np.asarray(pred), objective)
    )


def test_validation_scores_are_the_walk_forward_metrics_per_period():
    y = np.array([0.01, -0.02, 0.03, 0.03, 0.00, -0.01])
    design = small_design()
    # Long everything: per day the mean over A and B is 0.02, -0.01, 0.01; Sharpe per period.
    per_day = np.array([0.02, -0.01, 0.01])
    assert score("sharpe", design, y, np.ones(6)) == pytest.approx(per_day.mean() / per_day.std(ddof=1))
    assert score("accuracy", design, y, np.array([1, -1, 1, 1, 1, -1.0])) == pytest.approx(5 / 6)
    assert score("mse", design, y, y + 0.1) == pytest.approx(0.01)
    # Ranks (the tie averaged): pred 3 1 5 6 4 2, y 4 1 5.5 5.5 3 2.
    assert score("rank_ic", design, y, np.array([2, 0, 4, 5, 3, 1.0])) == pytest.approx(
        16 / np.sqrt(17.5 * 17)
    )
    # Rows a sequence model cannot predict (NaN) are left out; none at all is an error.
    assert score("mse", design, y, np.r_[np.nan, y[1:] + 0.1]) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no validation row has a finite prediction"):
        score("ic", design, y, np.full(6, np.nan))


def test_undefined_scores_count_as_chance():
    y = np.array([0.01, -0.02, 0.03, 0.03, 0.00, -0.01])
    for metric in ("ic", "rank_ic", "sharpe"):
        assert score(metric, small_design(), y, np.zeros(6)) == 0.0  # flat: no skill
    one_class = np.ones(6)
    assert score("auc", small_design(), one_class, np.linspace(0.1, 0.9, 6), "classification") == 0.5


def test_returns_come_from_the_forward_return_column_when_there_is_one():
    labels = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    fwd = np.array([0.01, 0.02, -0.03, 0.04, -0.05, 0.06])
    rows = np.array([1, 4])
    assert np.array_equal(
        realized_returns(small_design(fwd_return=fwd), rows, labels[rows], "classification"), fwd[rows]
    )
    assert np.array_equal(realized_returns(small_design(), rows, labels[rows], "classification"), [-1.0, 1.0])
    assert np.array_equal(realized_returns(small_design(), rows, fwd[rows], "regression"), fwd[rows])


# -- config ---------------------------------------------------------------------------------------


def test_default_spaces_are_valid_for_their_families():
    assert set(DEFAULT_SPACES) == set(PARAMS)
    for family, space in DEFAULT_SPACES.items():
        check_space(family, space, {})


def test_space_shorthand():
    assert SearchDim.model_validate([0.01, 0.2, "log"]) == SearchDim(low=0.01, high=0.2, log=True)
    assert SearchDim.model_validate([7, 63]) == SearchDim(low=7, high=63)
    assert SearchDim.model_validate(["l1", "l2"]).choices == ["l1", "l2"]
    assert SearchDim.model_validate([16, 32, 64]).choices == [16, 32, 64]
    assert SearchDim.model_validate({"choices": [16, 32]}).choices == [16, 32]
    tuned = cfg(
        kind="lightgbm", tuning={"space": {"num_leaves": [7, 63], "learning_rate": [0.01, 0.2, "log"]}}
    )
    assert tuned.tuning.space["learning_rate"].log
    assert cfg(kind="linear", tuning={}).tuning.space_for("linear") == DEFAULT_SPACES["linear"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"kind": "linear", "tuning": {"space": {"depth": [1, 3]}}},
            "tuning.space.depth: linear has no parameter 'depth'",
        ),
        (
            {"kind": "linear", "tuning": {"space": {"alpha": [-1.0, 2.0]}}},
            "tuning.space.alpha: -1.0 is not a valid linear alpha",
        ),
        (
            {"kind": "lightgbm", "tuning": {"space": {"num_leaves": [2.5, 9]}}},
            "lightgbm.num_leaves takes integers",
        ),
        (
            {"kind": "linear", "tuning": {"space": {"alpha": [2.0, 1.0]}}},
            r"low \(2.0\) must be below high \(1.0\)",
        ),
        ({"kind": "linear", "tuning": {"space": {"alpha": [0.0, 1.0, "log"]}}}, "a log range needs low > 0"),
        ({"kind": "linear", "tuning": {"n_trials": None}}, "a search needs a budget"),
        ({"kind": "linear", "tuning": {"metric": "sharp"}}, r"tuning\.metric\s+Input should be 'ic'"),
        ({"kind": "linear", "tuning": {"metric": "auc"}}, "tuning.metric auc needs objective classification"),
        ({"tuning": {}, "automl": {}}, "tuning and automl exclude each other"),
        ({"automl": {"families": ["linear", "linear"]}}, "families must be distinct"),
        (
            {"automl": {"families": ["linear"], "space": {"lightgbm": {}}}},
            r"space names families \['lightgbm'\]",
        ),
        (
            {"automl": {"families": ["linear"], "params": {"linear": {"alpha": 0}}}},
            "params.linear.alpha: Input should be greater than 0",
        ),
        (
            {"automl": {"families": ["linear"], "space": {"linear": {"beta": [1, 2]}}}},
            "linear: space.beta: linear has no parameter",
        ),
    ],
)
def test_bad_search_config_is_refused_with_the_key_and_value(data, message):
    with pytest.raises(ValidationError, match=message):
        cfg(**data)
