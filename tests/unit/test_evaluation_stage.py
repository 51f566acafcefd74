"""The walk-forward stage on a local lake: stitched predictions, the summary the report reads,
resume from checkpointed folds, cpcv paths, and bad windows as input errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quanto.contracts import StageRequest, StageResult
from quanto.errors import InputError
from quanto.evaluation import walkforward
from quanto.evaluation.stage import load_design, summarize
from quanto.evaluation.training import run_walk_forward
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.reports.render import ReportData, render_html
from tests.unit.test_walkforward import FEATURES, job, least_squares, panel  # noqa: F401


def request(ctx: StageContext, data: pd.DataFrame, walk_forward: dict, canary: bool = True) -> StageRequest:
    features = ctx.lake.write_frame("gold/features/t", data[["symbol", "ts", *FEATURES]], role="features")
    labels = ctx.lake.write_frame(
        "gold/labels/t", data[["symbol", "ts", "fwd_return", "label", "t1"]], role="labels"
    )
    cfg = job(walk_forward, canary=canary)
    return StageRequest(
        stage="walk_forward",
        config=cfg.model_dump(mode="json"),
        inputs={
            "features": StageResult(stage="features", key="f", outputs=[features]),
            "labels": StageResult(stage="labels", key="l", outputs=[labels]),
        },
    )


WINDOWS = {"train_bars": 40, "valid_bars": 10, "test_bars": 15, "embargo_bars": 1}


def test_stage_writes_the_stitched_predictions_and_an_honest_summary(tmp_path):
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    data = panel(n_bars=120, seed=7)
    result = run_walk_forward(request(ctx, data, WINDOWS), ctx)
    preds = ctx.lake.read_frame(result.files("predictions"))
    assert list(preds.columns[:6]) == walkforward.PREDICTION_COLUMNS
    assert not preds.duplicated(["symbol", "ts"]).any() and len(preds) == result.counters["predictions"]
    s = result.summary
    json.dumps(s, allow_nan=False)
    assert result.counters["folds"] == len(s["folds"]) == 5 and result.counters["folds_resumed"] == 0
    assert s["objective"] == "regression" and s["scheme"] == "rolling"
    # The report's fold table: bounds, sizes and the metrics, flat.
    row = s["folds"][0]
    assert {
        "index",
        "train_start",
        "valid_start",
        "test_end",
        "n_train",
        "n_valid",
        "n_test",
        "n_trials",
    } <= set(row)
    assert {"n", "mse", "accuracy", "auc", "ic", "rank_ic", "sharpe"} <= set(row)
    assert s["metrics"]["n"] == preds["label"].notna().sum()
    assert set(s["baselines"]) == {"buy_and_hold", "majority", "prev_return_sign"}
    assert all(b["n"] == s["metrics"]["n"] for b in s["baselines"].values())
    assert s["metrics"]["accuracy"] > max(b["accuracy"] for b in s["baselines"].values())
    assert s["fold_baselines"][0]["index"] == 0 and set(s["fold_baselines"][0]["majority"]) == {
        "accuracy",
        "rank_ic",
        "sharpe",
    }
    assert s["prev_return_source"].startswith("last realized fwd_return")  # no logret_1 feature here
    # The canary ran on every fold: 15 test bars of 3-bar labels give shifts 3..12; the last fold's
    # 8 bars give 3, too few to test.
    assert [f["shifts"] for f in s["canary"]["per_fold"]] == [10, 10, 10, 10, 3]
    assert isinstance(s["canary"]["leaking"], bool) and s["canary"]["ic"]["df"] == 4
    assert result.counters["canary_leaking"] == int(s["canary"]["leaking"])
    # PSR/DSR count the 5 fits as trials.
    assert s["statistics"]["n_trials"] == 5 and s["statistics"]["psr"] is not None
    assert s["leaderboards"] == []
    html = render_html(
        ReportData(
            title="t",
            subtitle="s",
            generated_at="now",
            config_summary={},
            equity=pd.DataFrame(
                {
                    "ts": preds["ts"].drop_duplicates().sort_values().to_numpy(),
                    "equity": 1.0,
                    "benchmark": 1.0,
                    "drawdown": 0.0,
                    "benchmark_drawdown": 0.0,
                }
            ),
            metrics={},
            benchmark_metrics={},
            folds=s["folds"],
        )
    )
    assert "Rank IC" in html and "Valid start" in html


def test_a_retry_reuses_the_checkpointed_folds(tmp_path, monkeypatch):
    data = panel(n_bars=120, seed=8)
    clean_ctx = StageContext(lake=Lake(tmp_path / "clean"), record=False)
    clean = run_walk_forward(request(clean_ctx, data, WINDOWS, canary=False), clean_ctx)

    ctx = StageContext(lake=Lake(tmp_path / "crash"), record=False)
    req = request(ctx, data, WINDOWS, canary=False)
    real = walkforward.run_fold

    def crash_at_fold_2(design, fold, cfg, **kw):
        if fold.index == 2:
            raise RuntimeError("worker killed")
        return real(design, fold, cfg, **kw)

    monkeypatch.setattr(walkforward, "run_fold", crash_at_fold_2)
    with pytest.raises(RuntimeError, match="worker killed"):
        run_walk_forward(req, ctx)
    finished = sorted(p.name for p in ctx.lake.abspath("scratch/walk_forward").glob("*/fold-*.json"))
    assert finished == ["fold-0000.json", "fold-0001.json"]  # each fold's info file marks it finished

    monkeypatch.setattr(walkforward, "run_fold", real)
    retry = StageContext(lake=ctx.lake, record=False)
    result = run_walk_forward(req, retry)
    assert result.counters["folds_resumed"] == 2
    pd.testing.assert_frame_equal(
        retry.lake.read_frame(result.files("predictions")),
        clean_ctx.lake.read_frame(clean.files("predictions")),
        check_exact=True,
    )
    assert result.summary == clean.summary


def test_cpcv_stage_backtests_path_zero_and_reports_every_path(tmp_path):
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    data = panel(n_bars=60, seed=9)
    cpcv = {"scheme": "cpcv", "n_groups": 4, "k_test_groups": 2, "embargo_bars": 1}
    result = run_walk_forward(request(ctx, data, cpcv, canary=False), ctx)
    s = result.summary
    assert s["stitched"] == "cpcv path 0 of 3" and [p["path"] for p in s["paths"]] == [0, 1, 2]
    assert all(row["groups"] for row in s["folds"]) and len(s["folds"]) == 6
    preds = ctx.lake.read_frame(result.files("predictions"))
    paths = ctx.lake.read_frame(result.files("path_predictions"))
    assert len(preds) == len(data) and len(paths) == 3 * len(data)
    pd.testing.assert_frame_equal(
        paths[paths["path"] == 0].drop(columns="path").reset_index(drop=True), preds, check_exact=True
    )


def test_too_few_bars_is_an_input_error(tmp_path):
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    with pytest.raises(InputError, match=r"walk-forward needs at least 53 bars .* the panel has 50"):
        run_walk_forward(request(ctx, panel(n_bars=50), WINDOWS), ctx)


def test_summarize_counts_search_trials_and_their_sharpe_spread(tmp_path):
    data = panel(n_bars=100, seed=10)
    cfg = job({"train_bars": 40, "test_bars": 20})
    ctx = StageContext(lake=Lake(tmp_path), record=False)
    req = request(ctx, data, {"train_bars": 40, "test_bars": 20})
    design = load_design(ctx.lake, req.inputs["features"].outputs, req.inputs["labels"].outputs)
    folds = walkforward.make_folds(design.frame["ts"], cfg.walk_forward)
    outcomes = walkforward.walk_forward(design, cfg, folds)
    # As a search would report them: 4 and 6 candidates with per-period validation Sharpe ratios.
    outcomes[0].info.update(
        n_trials=4, trial_sharpes={"n": 4, "var": 0.01}, leaderboard=[{"family": "linear"}]
    )
    outcomes[1].info.update(n_trials=6, trial_sharpes={"n": 6, "var": 0.02})
    s = summarize(cfg, folds, outcomes).summary
    assert s["statistics"]["n_trials"] == 4 + 6 + 1
    assert s["statistics"]["trial_sharpe_var"] == pytest.approx((0.01 * 3 + 0.02 * 5) / 8)
    assert s["statistics"]["trial_sharpe_var_source"] == "trials"
    assert s["leaderboards"] == [{"index": 0, "rows": [{"family": "linear"}]}]
    assert summarize(cfg, folds, outcomes, n_trials=200).summary["statistics"]["n_trials"] == 200
    assert np.isfinite(s["statistics"]["dsr"])


class Killed(Exception):
    """Stands in for a worker killed mid-fold."""


def test_an_interrupted_torch_fold_resumes_from_its_last_epoch(tmp_path):
    """The walk-forward's fold step (what TrainingWorkflow's `training.fold` activity runs) keeps each
    epoch's checkpoint in the lake: a retry after a kill continues at the next epoch and predicts
    exactly what an uninterrupted fold predicts."""
    from quanto.evaluation.training import plan_training, train_fold

    lstm = {
        "kind": "lstm",
        "params": {"lookback": 3, "hidden": [4], "epochs": 4, "batch_size": 32, "patience": 4},
    }
    data = panel(n_bars=90, seed=3)

    def run(lake_dir, kill_after: int | None):
        ctx = StageContext(lake=Lake(lake_dir), record=False)
        req = request(ctx, data, WINDOWS, canary=False)
        req = req.model_copy(update={"config": {**req.config, "model": {**req.config["model"], **lstm}}})
        plan = plan_training(req, ctx)
        epochs: list[int] = []

        def progress(done: int, total: int, note: str = "") -> None:
            epochs.append(done)
            if kill_after is not None and len(epochs) == kill_after:
                raise Killed

        ctx.progress = progress
        return ctx, req, plan, epochs

    ctx, req, plan, epochs = run(tmp_path / "killed", kill_after=2)
    with pytest.raises(Killed):
        train_fold(req, plan.key, plan.folds[0], ctx)
    assert epochs == [1, 2]
    resumed: list[int] = []
    ctx.progress = lambda done, total, note="": resumed.append(done)
    result = train_fold(req, plan.key, plan.folds[0], ctx)
    assert resumed == [3, 4] and not result.reused  # epochs 1-2 came from the checkpoint

    clean_ctx, clean_req, clean_plan, clean_epochs = run(tmp_path / "clean", kill_after=None)
    clean = train_fold(clean_req, clean_plan.key, clean_plan.folds[0], clean_ctx)
    assert clean_epochs == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(
        pd.read_parquet(ctx.lake.abspath(result.predictions.path)),
        pd.read_parquet(clean_ctx.lake.abspath(clean.predictions.path)),
        check_exact=True,
    )
    again = train_fold(req, plan.key, plan.folds[0], ctx)  # a finished fold is reused, not retrained
    assert again.reused and again.predictions == result.predictions
