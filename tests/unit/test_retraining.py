"""Retraining: the job file and its window, the holdout split (purge, embargo), scoring, the promotion
rule, and whole retrains in process on the sample data with real models and a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml

from quanto.config.loading import ConfigError, parse_config
from quanto.config.models import ModelConfig
from quanto.config.retrain import RetrainConfig, load_retrain, months_before
from quanto.contracts import StageRequest, StageResult
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.models.base import Design, make_model
from quanto.models.registry import list_models
from quanto.models.retraining import (
    Holdout,
    Score,
    decide,
    find_holdout,
    run_evaluate,
    run_holdout_split,
    run_retrain_local,
    score_model,
)
from quanto.models.training import run_train
from quanto.store import records

# Two sample stocks, a ridge regression on three cheap features: a whole retrain takes a few seconds.
JOB = {
    "name": "rt",
    "universe": {"vendor": "sample", "symbols": ["IBM", "MSFT"], "start": "2009-01-01", "end": "2011-01-01"},
    "features": {"names": ["sma_ratio_5", "sma_ratio_10", "ema_ratio_5"]},
    "model": {"kind": "linear", "n_jobs": 1},
    "walk_forward": {"train_bars": 200, "test_bars": 20, "embargo_bars": 2},
}


def retrain(**over) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {"pipeline": JOB, "window": {"months": 12}, "holdout": {"bars": 40}, **over}
    )


# --- the job file ------------------------------------------------------------------------------------


def test_load_resolves_the_research_job_relative_to_the_file(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "research.yaml").write_text(yaml.safe_dump(JOB))
    (tmp_path / "jobs" / "retrain.yaml").write_text(
        yaml.safe_dump({"pipeline": "research.yaml", "margin": 0.02})
    )
    cfg = load_retrain(tmp_path / "jobs" / "retrain.yaml")
    assert cfg.job.universe.symbols == ["IBM", "MSFT"] and cfg.job_name == "rt" and cfg.margin == 0.02
    assert cfg.embargo_bars == 2  # the research job's walk_forward.embargo_bars

    (tmp_path / "jobs" / "research.yaml").write_text(yaml.safe_dump({**JOB, "label": {"horizon": 0}}))
    with pytest.raises(ConfigError, match=r"research.yaml: label.horizon"):
        load_retrain(tmp_path / "jobs" / "retrain.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml: metric: auc needs a classification job"):
        parse_config(RetrainConfig, {"pipeline": JOB, "metric": "auc"}, "r.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml: margin: Input should be greater than or equal to 0"):
        parse_config(RetrainConfig, {"pipeline": JOB, "margin": -1}, "r.yaml")


def test_window_and_workflow_id():
    cfg = retrain()
    assert cfg.window_end(dt.date(2030, 5, 1)) == dt.date(2011, 1, 1)  # end: pipeline
    research = cfg.research(dt.date(2011, 1, 1))
    assert (research.universe.start, research.universe.end) == (dt.date(2010, 1, 1), dt.date(2011, 1, 1))
    # Never before the research job's own start.
    assert retrain(window={"months": 60}).window_start(dt.date(2011, 1, 1)) == dt.date(2009, 1, 1)
    today = retrain(window={"end": "today"})
    assert today.window_end(dt.date(2030, 5, 1)) == dt.date(2030, 5, 1)
    assert months_before(dt.date(2013, 3, 31), 1) == dt.date(2013, 2, 28)
    assert months_before(dt.date(2012, 1, 15), 13) == dt.date(2010, 12, 15)

    wid = cfg.workflow_id(dt.date(2011, 1, 1))
    assert wid.startswith("retrain-rt-") and len(wid) == len("retrain-rt-") + 8
    moved = retrain(pipeline={**JOB, "lake_root": "/elsewhere", "runtime": {"max_attempts": 2}})
    assert moved.workflow_id(dt.date(2011, 1, 1)) == wid  # where and how fast: not part of the key
    assert cfg.workflow_id(dt.date(2011, 2, 1)) != wid
    assert retrain(margin=0.5).workflow_id(dt.date(2011, 1, 1)) != wid
    assert retrain(name="other").research(dt.date(2011, 1, 1)).name == "other"


# --- the holdout split ------------------------------------------------------------------------------


def label_frame(n_bars: int = 60, horizon: int = 5) -> pd.DataFrame:
    """Forward-return labels of two symbols over `n_bars` daily bars; the last `horizon` unlabelled."""
    ts = pd.date_range("2021-01-04 14:30", periods=n_bars, freq="D", tz="UTC")
    rows = []
    rng = np.random.default_rng(0)
    for symbol in ("AAA", "BBB"):
        ret = rng.normal(0, 0.01, n_bars)
        t1 = pd.Series(ts).shift(-horizon)
        rows.append(pd.DataFrame({"symbol": symbol, "ts": ts, "fwd_return": ret, "label": ret, "t1": t1}))
    frame = pd.concat(rows, ignore_index=True)
    frame.loc[frame["t1"].isna(), ["fwd_return", "label"]] = np.nan
    return frame


def test_holdout_is_the_last_labelled_bars_and_training_is_purged():
    labels = label_frame()
    stamps = pd.DatetimeIndex(sorted(labels["ts"].unique()))
    holdout = find_holdout(labels, bars=10, embargo_bars=3)
    labelled = stamps[:-5]  # the last 5 bars have no label yet
    assert (holdout.start, holdout.end) == (labelled[-10], labelled[-1])
    assert holdout.cutoff == stamps[stamps < holdout.start][-3]

    keep = holdout.trainable(labels)
    trained = labels[keep]
    assert (trained["t1"] < holdout.start).all() and (trained["ts"] < holdout.cutoff).all()
    # Purged: the 5 bars whose 5-bar label ends inside the holdout (the embargo's 3 among them).
    assert trained["ts"].max() == stamps[stamps < holdout.start][-6]
    assert not set(np.flatnonzero(keep)) & set(holdout.rows(labels))
    assert len(holdout.rows(labels)) == 2 * 10
    assert Holdout.from_json(holdout.to_json()) == holdout

    with pytest.raises(ValueError, match="holdout.bars: 55 bars would leave nothing to train on"):
        find_holdout(labels, bars=55, embargo_bars=0)


def test_split_stage_and_train_stage_never_see_the_holdout(tmp_path):
    lake = Lake(tmp_path)
    labels = label_frame(n_bars=120)
    features = labels[["symbol", "ts"]].assign(f1=np.arange(len(labels), dtype=float), f2=1.0)
    inputs = {
        "features": StageResult(
            stage="features", key="f", outputs=[lake.write_frame("f", features, role="features")]
        ),
        "labels": StageResult(
            stage="labels", key="l", outputs=[lake.write_frame("l", labels, role="labels")]
        ),
    }
    cfg = retrain(pipeline={**JOB, "walk_forward": {"train_bars": 50, "test_bars": 10, "embargo_bars": 4}})
    ctx = StageContext(lake=lake, record=False)
    config = cfg.research(dt.date(2011, 1, 1)).model_dump(mode="json")
    split = run_holdout_split(StageRequest(stage="retrain_split", config=config, inputs=inputs), cfg, ctx)
    holdout = Holdout.from_json(split.summary)
    assert split.summary["holdout_rows"] == 2 * 40 and holdout.bars == 40

    part_features = lake.read_frame(split.files("features"))
    part_labels = lake.read_frame(split.files("labels"))
    assert (part_features["ts"] < holdout.start).all() and (part_labels["ts"] < holdout.start).all()
    known = part_labels["label"].notna()
    assert known.sum() == split.counters["train_labelled"] > 0
    assert (part_labels.loc[known, "t1"] < holdout.start).all()
    assert part_labels.loc[~known, "t1"].isna().all()  # the end times of purged labels go too

    trained = run_train(
        StageRequest(stage="train", config=config, inputs={"features": split, "labels": split}), ctx
    )
    assert pd.Timestamp(trained.summary["train_end"]) < holdout.cutoff
    again = run_holdout_split(StageRequest(stage="retrain_split", config=config, inputs=inputs), cfg, ctx)
    assert again.skipped and again.key == split.key


# --- scoring and the rule ----------------------------------------------------------------------------


def fitted_linear(columns: list[str], n: int = 80) -> tuple[object, pd.DataFrame]:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "symbol": "AAA",
            "ts": pd.date_range("2021-01-04", periods=n, freq="D", tz="UTC"),
            **{c: rng.normal(size=n) for c in columns},
        }
    )
    frame["fwd_return"] = frame[columns[0]] * 0.01 + rng.normal(0, 0.001, n)
    frame["label"] = frame["fwd_return"]
    model = make_model(ModelConfig(kind="linear", n_jobs=1))
    model.fit(Design(frame, columns), np.arange(60), frame["label"].to_numpy()[:60])
    return model, frame


def test_score_model_predicts_the_holdout_or_says_why_it_cannot():
    model, frame = fitted_linear(["a", "b"])
    rows = np.arange(60, 80)
    score = score_model("m1", model, frame, rows, "regression", 252.0)
    assert score.metrics["n"] == 20 and score.value("ic") > 0.9  # the label is mostly feature a
    missing = score_model("m1", model, frame.drop(columns=["b"]), rows, "regression", 252.0)
    assert missing.metrics is None and missing.value("ic") is None
    assert missing.unavailable == "its features b are missing from the new feature table"
    other = score_model("m1", model, frame, rows, "classification", 252.0)
    assert other.unavailable == "it is a regression model; the job now trains classification"


def scored(model_id: str, **metrics) -> Score:
    return Score(model_id, metrics={"n": 100, **metrics})


@pytest.mark.parametrize(
    "over, challenger, incumbent, decision, reason",
    [
        ({"margin": 0.01}, 0.05, 0.03, "promote", "improvement 0.02 exceeds the margin 0.01 (absolute 0.01)"),
        ({"margin": 0.01}, 0.035, 0.03, "keep", "improvement 0.005 does not exceed the margin 0.01"),
        ({}, 0.03, 0.03, "keep", "improvement 0 does not exceed the margin 0 (absolute 0)"),
        ({"margin": 0.5, "margin_kind": "relative"}, 0.05, 0.03, "promote", "margin 0.015 (relative 0.5)"),
        ({"margin": 0.5, "margin_kind": "relative"}, 0.04, 0.03, "keep", "improvement 0.01 does not exceed"),
        (
            {"margin": 0.5, "margin_kind": "relative"},
            0.0,
            -0.04,
            "promote",
            "0.04 exceeds the margin 0.02 (relative",
        ),
        ({"metric": "mse", "margin": 0.1}, 0.5, 0.7, "promote", "challenger mse 0.5 vs incumbent old 0.7"),
        ({"metric": "mse", "margin": 0.1}, 0.65, 0.7, "keep", "improvement 0.05 does not exceed"),
        ({"metric": "mse"}, 0.8, 0.7, "keep", "improvement -0.1 does not exceed"),
    ],
)
def test_challenger_must_beat_the_incumbent_by_more_than_the_margin(
    over, challenger, incumbent, decision, reason
):
    cfg = retrain(**over)
    verdict = decide(cfg, scored("new", **{cfg.metric: challenger}), scored("old", **{cfg.metric: incumbent}))
    assert verdict.decision == decision and reason in verdict.reason, verdict.reason


def test_without_a_comparable_incumbent_the_floor_decides():
    good, bad = scored("new", ic=0.02), scored("new", ic=-0.01)
    assert decide(retrain(), bad, None).decision == "promote"  # no floor: any defined score
    assert (
        decide(retrain(), bad, None).reason == "no production model of rt; challenger ic -0.01 (no floor set)"
    )
    assert decide(retrain(floor=0.0), good, None).decision == "promote"
    kept = decide(retrain(floor=0.0), bad, None)
    assert kept.decision == "keep" and kept.reason.endswith("challenger ic -0.01 < floor 0")
    ceiling = decide(retrain(metric="mse", floor=0.5), scored("new", mse=0.6), None)
    assert ceiling.decision == "keep" and ceiling.reason.endswith("challenger mse 0.6 > floor 0.5")

    gone = Score("old", unavailable="its features b are missing from the new feature table")
    verdict = decide(retrain(floor=0.0), good, gone)
    assert verdict.decision == "promote"
    assert verdict.reason.startswith(
        "incumbent old unavailable: its features b are missing from the new feature table"
    )
    undefined = decide(retrain(), good, scored("old", ic=None))
    assert (
        undefined.decision == "promote" and "incumbent old unavailable: ic is undefined" in undefined.reason
    )


def test_a_challenger_without_a_score_is_never_promoted():
    verdict = decide(retrain(), scored("new", ic=None), scored("old", ic=0.01))
    assert verdict.decision == "keep" and "challenger new cannot be scored (ic is undefined" in verdict.reason
    assert decide(retrain(), scored("same", ic=0.2), scored("same", ic=0.2)).decision == "keep"


# --- whole retrains with records ------------------------------------------------------------------


def production(dsn: str, name: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [m.model_id for m in list_models(conn, name=name, stage="production")]


def decisions(dsn: str, name: str) -> list[dict]:
    with psycopg.connect(dsn) as conn:
        return records.select_retrain_decisions(conn, name=name)


def test_retrain_promotes_keeps_and_records_every_decision(pg_dsn, tmp_path):
    lake = Lake(tmp_path / "lake")
    today = dt.date(2030, 1, 1)

    def run(cfg: RetrainConfig, run_id: str):
        ctx = StageContext(lake=lake, workflow_id="retrain-local", run_id=run_id, dsn=pg_dsn)
        return run_retrain_local(cfg, ctx, today), ctx

    first, _ = run(retrain(name="rt-db"), "r1")
    assert first.decision == "promote" and first.promoted and first.incumbent is None
    assert first.reason.startswith("no production model of rt-db; challenger ic")
    assert production(pg_dsn, "rt-db") == [first.challenger]

    # Same data, config and code: the same model, which already is production.
    second, ctx = run(retrain(name="rt-db", margin=0.01), "r2")
    assert second.challenger == first.challenger == second.incumbent
    assert second.decision == "keep" and not second.promoted
    assert second.challenger_score == second.incumbent_score == first.challenger_score

    # A retried evaluation finds the decision of its run instead of deciding again.
    cfg = retrain(name="rt-db", margin=0.01)
    research = cfg.research(cfg.window_end(today)).model_dump(mode="json")
    split = StageResult.model_validate({"stage": "retrain_split", "key": "", "summary": {
        "holdout_start": second.holdout_start, "holdout_end": second.holdout_end,
        "train_cutoff": second.holdout_start, "holdout_bars": 40, "model_id": second.challenger}})  # fmt: skip
    again = run_evaluate(
        StageRequest(stage="retrain_evaluate", config=research, inputs={"split": split, "train": split}),
        cfg,
        ctx,
    )
    assert again == second

    # Other features: the incumbent cannot be fed, so it is scored as unavailable and the floor decides.
    changed = {**JOB, "features": {"names": ["sma_ratio_20", "ema_ratio_10"]}}
    third, _ = run(retrain(name="rt-db", pipeline=changed, floor=-1.0), "r3")
    assert third.incumbent == first.challenger and third.incumbent_score is None
    assert third.decision == "promote" and third.promoted and third.challenger != first.challenger
    assert "sma_ratio_5" in third.reason and "missing from the new feature table" in third.reason
    assert production(pg_dsn, "rt-db") == [third.challenger]

    # promote: never records a winning challenger and leaves the registry alone.
    other_model = {**changed, "model": {"kind": "linear", "params": {"alpha": 50.0}, "n_jobs": 1}}
    fourth, _ = run(retrain(name="rt-db", pipeline=other_model, promote="never"), "r4")
    assert fourth.incumbent == third.challenger and fourth.incumbent_score is not None
    assert not fourth.promoted and production(pg_dsn, "rt-db") == [third.challenger]
    if fourth.decision == "promote":
        assert fourth.reason.endswith("promote: never, so the decision is recorded only")

    rows = decisions(pg_dsn, "rt-db")
    assert [r["run_id"] for r in rows] == ["r4", "r3", "r2", "r1"]
    assert [r["promoted"] for r in rows] == [False, True, False, True]
    latest = rows[1]["metrics"]
    assert latest["incumbent"] is None and "missing" in latest["incumbent_unavailable"]
    assert latest["challenger"]["n"] == latest["holdout"]["rows"] > 0
    assert latest["rule"] == {
        "metric": "ic",
        "margin": 0.0,
        "margin_kind": "absolute",
        "floor": -1.0,
        "promote": "auto",
    }
    assert latest["window"] == {"start": "2010-01-01", "end": "2011-01-01"}


def test_the_monthly_schedule_starts_retrain_workflow():
    from quanto.config.loading import load_config
    from quanto.config.schedules import SchedulesConfig
    from quanto.starter.schedules import build_schedule

    path = Path(__file__).resolve().parents[2] / "configs" / "schedules.yaml"
    schedules = load_config(SchedulesConfig, path)
    entry = next(e for e in schedules.schedules if e.name == "monthly-retrain")
    schedule, digest = build_schedule(entry, schedules.timezone, path.parent)
    action = schedule.action
    assert (action.workflow, action.id) == ("RetrainWorkflow", "retrain-demo-scheduled")
    request = action.args[0]
    assert request.today == "" and request.config_name == "demo"  # each run fixes its own date
    assert Path(request.config["pipeline"]["lake_root"]).is_absolute()
    assert build_schedule(entry, schedules.timezone, path.parent)[1] == digest
