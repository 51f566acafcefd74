"""Ensembles (quanto.models.ensemble) through `fit_fold`: mean, stacking on validation predictions,
capped Sharpe-optimal weights, save/load, and config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from quanto.models.base import FAMILIES, Model, family_class, load_model
from quanto.models.ensemble import EnsembleModel, sharpe_weights
from quanto.models.selection import fit_fold
from tests.unit.test_tuning import cfg, planted, split

LINEAR = {"kind": "linear"}
SMALL_GBM = {"kind": "lightgbm", "params": {"n_estimators": 15, "min_child_samples": 10}, "n_jobs": 1}


def ensemble(method: str, members: list[dict], top: dict | None = None, **extra: Any):
    """A model config with an ensemble block; `top` holds the model block's other keys."""
    return cfg(ensemble={"method": method, "members": members, **extra}, **(top or {}))


class Memorizer(Model):
    """Predicts the training label for every row it was trained on (a perfect in-sample fit) and
    deterministic noise for any other row (no skill out of sample). Records the rows it predicts
    and the checkpoint it was given."""

    family = "extra_trees"
    predicted: list[np.ndarray] = []
    checkpoints: list[Path | None] = []

    def fit(self, design, rows, y, *, valid=None, progress=None, checkpoint=None):
        Memorizer.checkpoints.append(checkpoint)
        self.seen = dict(zip(np.asarray(rows).tolist(), np.asarray(y).tolist(), strict=True))
        self.features = list(design.columns)
        return self

    def predict(self, design, rows):
        Memorizer.predicted.append(np.asarray(rows))
        noise = np.random.default_rng(list(np.asarray(rows)[:3])).normal(size=len(rows))
        return np.array([self.seen.get(r, noise[i]) for i, r in enumerate(np.asarray(rows).tolist())])

    def feature_importance(self):
        return dict.fromkeys(self.features, 1 / len(self.features))

    def _save_state(self, folder: Path) -> dict[str, Any]:
        return {}

    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.seen = {}


@pytest.fixture
def memorizer(monkeypatch):
    """Memorizer as family "extra_trees" for one test; the real tabular families load first so that
    importing them later cannot collide with it."""
    family_class("linear")
    monkeypatch.setitem(FAMILIES, "extra_trees", Memorizer)
    Memorizer.predicted, Memorizer.checkpoints = [], []
    return Memorizer


def test_mean_ensemble_is_the_mean_of_its_members_fitted_alone():
    design, y = planted()
    train, _, test = split(y)
    fit = fit_fold(ensemble("mean", [LINEAR, SMALL_GBM]), design, train)  # mean needs no validation
    alone = [fit_fold(cfg(**m), design, train).model.predict(design, test[0]) for m in (LINEAR, SMALL_GBM)]
    assert np.allclose(fit.model.predict(design, test[0]), (alone[0] + alone[1]) / 2, rtol=0, atol=1e-12)
    assert fit.n_trials == 2
    assert [e["weight"] for e in fit.leaderboard] == [0.5, 0.5]


def test_sharpe_weights_respect_the_cap_sum_to_one_and_are_optimal():
    rng = np.random.default_rng(3)
    n = 500
    outcome = rng.normal(size=n)
    # Member 0 carries most of the signal, 1 some, 2 and 3 none.
    signal = np.column_stack(
        [outcome + rng.normal(scale=s, size=n) for s in (0.5, 2.0)] + [rng.normal(size=n) for _ in range(2)]
    )

    pnl = signal * outcome[:, None]

    def sharpe(w):
        return (pnl @ w).mean() / (pnl @ w).std(ddof=1)

    w = sharpe_weights(pnl, max_weight=0.4)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert (w >= 0).all() and w.max() <= 0.4 + 1e-9
    assert w[0] == pytest.approx(0.4, abs=1e-6)  # the cap binds on the best member
    # No feasible weighting does better (random points of the capped simplex).
    others = rng.dirichlet(np.ones(4), size=4000)
    others = others[(others <= 0.4).all(axis=1)]
    assert len(others) > 100
    assert sharpe(w) >= max(sharpe(o) for o in others) - 1e-9
    # With a loose cap the best member takes more.
    assert sharpe_weights(pnl, max_weight=1.0)[0] > 0.4

    with pytest.raises(ValueError, match=r"max_weight 0.2 x 4 members < 1"):
        sharpe_weights(pnl, max_weight=0.2)


def test_sharpe_ensemble_combines_with_its_validation_weights():
    design, y = planted()
    train, valid, test = split(y)
    members = [LINEAR, SMALL_GBM, {**LINEAR, "params": {"alpha": 1e6}}]
    fit = fit_fold(ensemble("sharpe", members), design, train, valid)
    w = fit.model.weights
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all() and w.max() <= 0.4 + 1e-9
    preds = np.column_stack([m.predict(design, test[0]) for m in fit.model.members])
    assert np.allclose(fit.model.predict(design, test[0]), preds @ w)
    assert sorted(e["weight"] for e in fit.leaderboard) == pytest.approx(sorted(w))


def test_stacking_learns_from_validation_predictions_only(memorizer):
    design, y = planted()
    train, valid, test = split(y)
    fit = fit_fold(ensemble("stacking", [{"kind": "extra_trees"}, LINEAR]), design, train, valid)
    # By construction: during the fit the members predicted the validation rows and nothing else,
    assert len(memorizer.predicted) == 1 and np.array_equal(memorizer.predicted[0], valid[0])
    # so the memorizer, perfect in sample and noise out of sample, gets (almost) no weight.
    coef = fit.model.stack["coef"]
    assert coef[1] > 0.2 and abs(coef[0]) < 0.25 * coef[1]
    assert fit.leaderboard[0]["family"] == "linear"

    # The stacked prediction is the meta-model on standardized member predictions.
    preds = np.column_stack([m.predict(design, test[0]) for m in fit.model.members])
    s = fit.model.stack
    expected = (preds - s["center"]) / s["scale"] @ np.asarray(s["coef"]) + s["intercept"]
    assert np.allclose(fit.model.predict(design, test[0]), expected)


def test_members_get_their_own_checkpoint_folders(memorizer, tmp_path):
    design, y = planted()
    train, valid, _ = split(y)
    fit_fold(
        ensemble("mean", [{"kind": "extra_trees"}, {"kind": "extra_trees"}]),
        design,
        train,
        valid,
        checkpoint=tmp_path,
    )
    assert memorizer.checkpoints == [tmp_path / "member-0", tmp_path / "member-1"]


@pytest.mark.parametrize("method", ["mean", "stacking", "sharpe"])
def test_classifier_ensembles_predict_probabilities(method):
    design, y = planted()
    x1 = design.frame["x1"].to_numpy()
    labels = (x1 + 0.5 * (y - 0.5 * x1) > 0).astype(float)  # direction of x1 plus noise (sd 0.5)
    train, valid, test = split(labels)
    fit = fit_fold(
        ensemble(method, [LINEAR, SMALL_GBM], max_weight=0.5, top={"objective": "classification"}),
        design,
        train,
        valid,
    )
    assert all(m.objective == "classification" for m in fit.model.members)  # inherited
    p = fit.model.predict(design, test[0])
    assert ((p > 0) & (p < 1)).all()
    proba = fit.model.predict_proba(design, test[0])
    assert proba.shape == (len(test[0]), 2) and np.allclose(proba.sum(axis=1), 1)
    hit_rate = np.mean((p > 0.5) == (test[1] == 1))
    assert hit_rate > 0.7  # the planted signal carries through the combination


def test_save_and_load_give_identical_predictions(tmp_path):
    design, y = planted()
    train, valid, test = split(y)
    for method in ("stacking", "sharpe"):
        model = fit_fold(ensemble(method, [LINEAR, SMALL_GBM], max_weight=0.6), design, train, valid).model
        files = model.save(tmp_path / method)
        assert {f.relative_to(tmp_path / method).parts[0] for f in files} == {
            "member-0",
            "member-1",
            "meta.json",
        }
        loaded = load_model(tmp_path / method)
        assert isinstance(loaded, EnsembleModel)
        assert np.array_equal(loaded.predict(design, test[0]), model.predict(design, test[0]))
        assert loaded.feature_importance() == model.feature_importance()
        assert next(iter(loaded.feature_importance())) == "x1"


def test_trial_count_sums_the_members_and_tuned_members_are_tuned_on_validation():
    design, y = planted()
    train, valid, _ = split(y)
    tuned = {**LINEAR, "tuning": {"n_trials": 3}}
    fit = fit_fold(ensemble("mean", [tuned, SMALL_GBM]), design, train, valid)
    assert fit.n_trials == 4
    assert {e["family"]: e["n_trials"] for e in fit.leaderboard} == {"linear": 3, "lightgbm": 1}
    with pytest.raises(ValueError, match=r"walk_forward\.valid_bars"):
        fit_fold(ensemble("mean", [tuned, SMALL_GBM]), design, train)


@pytest.mark.parametrize("method", ["stacking", "sharpe"])
def test_weighted_ensembles_need_a_validation_window(method):
    design, y = planted()
    train, _, _ = split(y)
    with pytest.raises(
        ValueError, match=rf"model\.ensemble \(method {method}\) .* walk_forward\.valid_bars > 0"
    ):
        fit_fold(ensemble(method, [LINEAR, SMALL_GBM], max_weight=0.5), design, train)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"method": "sharpe", "members": [LINEAR, SMALL_GBM]},
            r"max_weight 0.4 x 2 members < 1.*at least 0.5",
        ),
        ({"method": "mean", "members": [LINEAR]}, "at least 2 items"),
        ({"method": "vote", "members": [LINEAR, SMALL_GBM]}, "method"),
        (
            {"members": [LINEAR, {"ensemble": {"members": [LINEAR, LINEAR]}}]},
            r"members\[1\] is an ensemble itself",
        ),
        (
            {"members": [LINEAR, {**LINEAR, "objective": "classification"}]},
            r"members\[1\]\.objective 'classification' differs",
        ),
        ({"members": [LINEAR, {**LINEAR, "params": {"alpha": -1}}]}, "params for linear: alpha"),
    ],
)
def test_bad_ensemble_config_is_refused(data, message):
    with pytest.raises(ValidationError, match=message):
        cfg(ensemble=data)


def test_an_ensemble_is_not_tuned_as_a_whole():
    with pytest.raises(ValidationError, match="tuning and ensemble exclude each other"):
        cfg(kind="linear", tuning={}, ensemble={"members": [LINEAR, LINEAR]})
