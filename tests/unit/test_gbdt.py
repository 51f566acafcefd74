"""LightGBM and XGBoost specifics: seeded bagging, early stopping on the validation window only,
progress every 10 rounds, native artifacts and the parameters that make fits reproducible.
(The interface every tabular family shares is tested in test_tabular_models.py.)"""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb

from quanto.models.base import load_model, make_model
from quanto.models.gbdt import positional_names
from tests.unit.test_tabular_models import config, labels, planted

BOOSTERS = ["lightgbm", "xgboost"]


@pytest.mark.parametrize("kind", BOOSTERS)
def test_subsampling_is_active_and_seeded(kind):
    # subsample < 1 must really sample rows: another seed samples others and predicts differently.
    d, rows, y = planted(400, 1)
    a = make_model(config(kind)).fit(d, rows, y).predict(d, rows)
    b = make_model(config(kind).model_copy(update={"seed": 7})).fit(d, rows, y).predict(d, rows)
    assert not np.array_equal(a, b)


def test_lightgbm_trains_with_the_reproducibility_parameters():
    params = make_model(config("lightgbm", n_jobs=3)).booster_params()
    assert params["deterministic"] is True and params["force_row_wise"] is True
    assert (params["seed"], params["num_threads"], params["bagging_freq"]) == (42, 3, 1)
    assert make_model(config("lightgbm", subsample=1.0)).booster_params()["bagging_freq"] == 0


def test_xgboost_trains_with_hist_a_fixed_seed_and_n_jobs_threads():
    d, rows, y = planted(200, 2)
    model = make_model(config("xgboost", n_jobs=3, n_estimators=5)).fit(d, rows, y)
    learner = json.loads(model.booster.save_config())["learner"]
    assert learner["gradient_booster"]["gbtree_train_param"]["tree_method"] == "hist"
    assert (learner["generic_param"]["seed"], learner["generic_param"]["nthread"]) == ("42", "3")


def first_rounds(model, X: np.ndarray, rounds: int) -> np.ndarray:
    """What `model` predicts for `X` from its first `rounds` boosting rounds only."""
    if model.family == "lightgbm":
        return model.booster.predict(X, num_iteration=rounds)
    return model.booster.inplace_predict(X, iteration_range=(0, rounds)).astype(np.float64)


def loss(objective: str, p: np.ndarray, y: np.ndarray) -> float:
    """The libraries' default early-stopping metric: squared error, or log loss for a classifier."""
    if objective == "regression":
        return float(np.mean((p - y) ** 2))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.parametrize("objective", ["regression", "classification"])
@pytest.mark.parametrize("kind", BOOSTERS)
def test_early_stopping_picks_rounds_on_the_validation_window_only(kind, objective, tmp_path):
    d, rows, y = planted(900, 3)
    y = labels(objective, y + np.random.default_rng(3).normal(scale=0.5, size=900))  # noisy: rounds overfit
    train, valid, test = rows[:400], rows[400:600], rows[600:]
    params = {"n_estimators": 400, "early_stopping_rounds": 5}
    stopped = make_model(config(kind, objective, **params)).fit(d, train, y[train], valid=(valid, y[valid]))
    rounds = stopped.booster.num_trees() if kind == "lightgbm" else stopped.booster.num_boosted_rounds()
    # Without a validation window early_stopping_rounds has nothing to watch: all 400 rounds grow.
    full = make_model(config(kind, objective, **params)).fit(d, train, y[train])
    # The stopped model is the first `rounds` rounds of the model trained without the validation
    # rows (so it never trained on them), and `rounds` is the best on the validation window among
    # those seen before stopping, 5 rounds later.
    assert rounds + 5 < 400
    losses = [
        loss(objective, first_rounds(full, d.tabular(valid), k), y[valid]) for k in range(1, rounds + 6)
    ]
    assert int(np.argmin(losses)) + 1 == rounds
    assert np.array_equal(stopped.predict(d, test), first_rounds(full, d.tabular(test), rounds))
    assert not np.array_equal(stopped.predict(d, test), full.predict(d, test))
    stopped.save(tmp_path)
    assert json.loads((tmp_path / "meta.json").read_text())["state"]["rounds"] == rounds
    assert np.array_equal(load_model(tmp_path).predict(d, test), stopped.predict(d, test))


@pytest.mark.parametrize("kind", BOOSTERS)
def test_progress_every_ten_rounds(kind):
    d, rows, y = planted(200, 4)
    steps = []
    make_model(config(kind, n_estimators=35)).fit(d, rows, y, progress=steps.append)
    assert steps == [{"step": s, "of": 35} for s in (10, 20, 30, 35)]


def test_artifacts_are_the_libraries_own_booster_files(tmp_path):
    d, rows, y = planted(300, 5, nan_share=0.1)
    X = d.tabular(rows)
    for kind in BOOSTERS:
        model = make_model(config(kind)).fit(d, rows, y)
        folder = tmp_path / kind
        model.save(folder)
        if kind == "lightgbm":
            native = lgb.Booster(model_file=str(folder / "model.txt")).predict(X)
        else:
            booster = xgb.Booster()
            booster.load_model(str(folder / "model.ubj"))
            native = booster.predict(xgb.DMatrix(X, feature_names=positional_names(3)))
        assert np.array_equal(native.astype(np.float64), model.predict(d, rows))
