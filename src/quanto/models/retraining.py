"""Retraining: hold out the window's last bars, train the challenger on the rest, and decide whether it
replaces the production model of the job name (the incumbent).

RetrainWorkflow runs three steps after the research job's features and labels on the rolling window:
- `run_holdout_split`: the training part of the window's features and labels — every row before the
  holdout, with the labels that end inside the holdout (purge) or start in the embargo before it
  nulled — so that the research job's own train stage, run on it, never sees the holdout;
- the train stage (`quanto.models.training.run_train`) on that part: the challenger, a candidate;
- `run_evaluate`: both models predict the holdout rows of the same feature table, `decide` applies the
  job's rule, and the decision is recorded (and the challenger promoted) in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from quanto.config.models import PipelineConfig
from quanto.config.retrain import LOWER_IS_BETTER, RetrainConfig
from quanto.contracts import PIPELINE_STAGES, STAGE_NAMES, RetrainDecision, StageRequest, StageResult
from quanto.errors import InputError
from quanto.evaluation.walkforward import label_horizon_bars, panel_bars, signal_periods_per_year
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.models.base import Design, Model
from quanto.store import records

KEYS = ("symbol", "ts")
# The research pipeline runs on the window up to this stage; the train stage runs on the split.
WINDOW_STAGE = "labels"
# Separates the promotions of one job name from other retraining runs' (promote_model uses 4).
_DECISION_LOCK = 5


@dataclass(frozen=True)
class Holdout:
    """The held-out period: labelled bars `start`..`end` (inclusive). Training keeps the labels of
    rows before `cutoff` (the embargo's first bar, else `start`) that end before `start`."""

    start: pd.Timestamp
    end: pd.Timestamp
    cutoff: pd.Timestamp
    bars: int

    def rows(self, data: pd.DataFrame) -> np.ndarray:
        """Positions of the labelled rows inside the holdout."""
        ts = data["ts"]
        return np.flatnonzero((data["label"].notna() & (ts >= self.start) & (ts <= self.end)).to_numpy())

    def trainable(self, labels: pd.DataFrame) -> np.ndarray:
        """Bool mask of the rows whose labels training may use: before the embargo, and ended (t1)
        before the holdout starts (a label that ends inside it saw its prices)."""
        return ((labels["ts"] < self.cutoff) & (labels["t1"] < self.start)).to_numpy()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the split stage's summary)."""
        return {
            "holdout_start": self.start.isoformat(),
            "holdout_end": self.end.isoformat(),
            "train_cutoff": self.cutoff.isoformat(),
            "holdout_bars": self.bars,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Holdout:
        """The holdout a split stage's summary describes."""
        return cls(
            start=pd.Timestamp(data["holdout_start"]),
            end=pd.Timestamp(data["holdout_end"]),
            cutoff=pd.Timestamp(data["train_cutoff"]),
            bars=int(data["holdout_bars"]),
        )


def find_holdout(labels: pd.DataFrame, bars: int, embargo_bars: int) -> Holdout:
    """The last `bars` labelled bars (unique timestamps with a known label) of the window, and the
    first of the `embargo_bars` panel bars before them. InputError when the window is too short."""
    labelled = panel_bars(labels.loc[labels["label"].notna(), "ts"])
    if len(labelled) <= bars:
        raise InputError(
            f"holdout.bars: {bars} bars would leave nothing to train on: the window has {len(labelled)} "
            "labelled bars; lengthen window.months or shorten the holdout"
        )
    start, end = labelled[len(labelled) - bars], labelled[-1]
    before = panel_bars(labels["ts"])
    before = before[before < start]
    if embargo_bars >= len(before):
        raise InputError(
            f"holdout.embargo_bars: {embargo_bars} covers all {len(before)} bars before the holdout"
        )
    cutoff = before[len(before) - embargo_bars] if embargo_bars else start
    return Holdout(start=start, end=end, cutoff=cutoff, bars=bars)


def run_holdout_split(req: StageRequest, retrain: RetrainConfig, ctx: StageContext) -> StageResult:
    """The training part of the window's features and labels (roles `features` and `labels`, for
    the train stage) and, in the summary, the holdout (`Holdout.to_json`)."""
    feat_refs = req.inputs["features"].files("features")
    label_refs = req.inputs["labels"].files("labels")
    config = {"holdout_bars": retrain.holdout.bars, "embargo_bars": retrain.embargo_bars}

    def compute(key: str) -> Materialized:
        labels = ctx.lake.read_frame(label_refs)
        holdout = find_holdout(labels, retrain.holdout.bars, retrain.embargo_bars)
        keep = holdout.trainable(labels)
        if not keep.any():
            raise InputError(
                f"no label before the holdout ({holdout.start}) ends before it: lengthen window.months"
            )
        before = (labels["ts"] < holdout.start).to_numpy()
        part = labels.loc[before].copy()
        for column in part.columns.difference(KEYS):  # every target, its end time included
            part[column] = part[column].where(keep[before])
        features = ctx.lake.read_frame(feat_refs)
        features = features.loc[features["ts"] < holdout.start]
        folder = f"gold/retrain/{key[:16]}"
        outputs = [
            ctx.lake.write_frame(folder, features, role="features"),
            ctx.lake.write_frame(folder, part, role="labels"),
        ]
        in_holdout = holdout.rows(labels)
        counters = {"train_labelled": int(keep.sum()), "holdout_rows": len(in_holdout)}
        return Materialized(outputs, counters=counters, summary={**holdout.to_json(), **counters})

    return materialize("retrain_split", ctx, feat_refs + label_refs, config, compute)


@dataclass(frozen=True)
class Score:
    """A model's holdout metrics (`prediction_metrics`), or why it could not be scored."""

    model_id: str
    metrics: dict[str, Any] | None = None
    unavailable: str | None = None

    def value(self, metric: str) -> float | None:
        """The metric's value; None when the model was not scored or the metric is undefined."""
        return None if self.metrics is None else self.metrics.get(metric)

    def why_none(self, metric: str) -> str:
        """Why `value(metric)` is None."""
        return self.unavailable or f"{metric} is undefined on the holdout"


def score_model(
    model_id: str,
    model: Model,
    data: pd.DataFrame,
    rows: np.ndarray,
    objective: str,
    periods_per_year: float,
) -> Score:
    """Predict `rows` of `data` (features and labels sorted by (symbol, ts)) and measure them.
    Unavailable when the table lacks the model's features or the model predicts another objective."""
    from quanto.evaluation.metrics import prediction_metrics

    missing = [c for c in model.features if c not in data.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return Score(model_id, unavailable=f"its features {shown} are missing from the new feature table")
    if model.objective != objective:
        return Score(model_id, unavailable=f"it is a {model.objective} model; the job now trains {objective}")
    pred = model.predict(Design(data, list(model.features)), rows)
    metrics = prediction_metrics(
        pred,
        data["label"].to_numpy(dtype=np.float64)[rows],
        data["fwd_return"].to_numpy(dtype=np.float64)[rows],
        data["ts"].to_numpy()[rows],
        objective,  # type: ignore[arg-type]
        periods_per_year,
    )
    return Score(model_id, metrics=metrics)


@dataclass(frozen=True)
class Verdict:
    """The rule's decision and the reason a reader of the record needs."""

    decision: Literal["promote", "keep"]
    reason: str


def decide(cfg: RetrainConfig, challenger: Score, incumbent: Score | None) -> Verdict:
    """Apply the job's rule (see RetrainConfig) to the challenger's and the incumbent's scores."""
    metric = cfg.metric
    c = challenger.value(metric)
    if c is None:
        return Verdict(
            "keep",
            f"challenger {challenger.model_id} cannot be scored ({challenger.why_none(metric)}); "
            "production unchanged",
        )
    if incumbent is not None and incumbent.model_id == challenger.model_id:
        return Verdict(
            "keep",
            f"challenger {challenger.model_id} is the production model already (same data, config and code)",
        )
    i = None if incumbent is None else incumbent.value(metric)
    if incumbent is None or i is None:
        context = (
            f"no production model of {cfg.job_name}"
            if incumbent is None
            else f"incumbent {incumbent.model_id} unavailable: {incumbent.why_none(metric)}"
        )
        if cfg.floor is None:
            return Verdict("promote", f"{context}; challenger {metric} {c:.6g} (no floor set)")
        lower = metric in LOWER_IS_BETTER
        passes = c <= cfg.floor if lower else c >= cfg.floor
        relation = ("<=" if lower else ">=") if passes else (">" if lower else "<")
        return Verdict(
            "promote" if passes else "keep",
            f"{context}; challenger {metric} {c:.6g} {relation} floor {cfg.floor:.6g}",
        )
    gain = i - c if metric in LOWER_IS_BETTER else c - i
    need = cfg.margin if cfg.margin_kind == "absolute" else cfg.margin * abs(i)
    scores = f"challenger {metric} {c:.6g} vs incumbent {incumbent.model_id} {i:.6g}"
    margin = f"margin {need:.6g} ({cfg.margin_kind} {cfg.margin:g})"
    if gain > need:
        return Verdict("promote", f"{scores}: improvement {gain:.6g} exceeds the {margin}")
    return Verdict("keep", f"{scores}: improvement {gain:.6g} does not exceed the {margin}")


def run_evaluate(req: StageRequest, retrain: RetrainConfig, ctx: StageContext) -> RetrainDecision:
    """Score the challenger (`inputs["train"]`) and the production model on the holdout
    (`inputs["split"]`) of the window's features and labels, decide, and record the decision —
    promoting the challenger in the same transaction when it wins and `promote` is auto.

    A retried run finds its recorded decision and returns it unchanged.
    """
    from quanto.models.registry import list_models, load_registered, promote
    from quanto.models.training import load_dataset

    job = PipelineConfig.model_validate(req.config)
    holdout = Holdout.from_json(req.inputs["split"].summary)
    challenger_id = req.inputs["train"].summary["model_id"]
    with ctx.db() as conn:
        done = records.select_retrain_decisions(conn, workflow_id=ctx.workflow_id, run_id=ctx.run_id)
        if done:
            return decision_of(done[0])
        production = [m.model_id for m in list_models(conn, name=job.name, stage="production")]

    feat_refs = req.inputs["features"].files("features")
    label_refs = req.inputs["labels"].files("labels")
    data, _ = load_dataset(ctx.lake, feat_refs, label_refs)
    rows = holdout.rows(data)
    ppy = signal_periods_per_year(job, label_horizon_bars(data))
    objective = job.model.objective
    ctx.progress(0, 2, "scoring the challenger")
    challenger = score_model(
        challenger_id, load_registered(ctx.lake, challenger_id), data, rows, objective, ppy
    )
    incumbent = None
    if production == [challenger_id]:
        incumbent = challenger
    elif production:
        ctx.progress(1, 2, "scoring the incumbent")
        try:
            model = load_registered(ctx.lake, production[0])
        except ValueError as err:  # InputError included: artifact missing or changed, unknown family
            incumbent = Score(production[0], unavailable=f"its artifact cannot be loaded ({err})")
        else:
            incumbent = score_model(production[0], model, data, rows, objective, ppy)
    verdict = decide(retrain, challenger, incumbent)
    promoted = verdict.decision == "promote" and retrain.promote == "auto"
    reason = verdict.reason
    if verdict.decision == "promote" and not promoted:
        reason += "; promote: never, so the decision is recorded only"
    row = {
        "workflow_id": ctx.workflow_id,
        "run_id": ctx.run_id,
        "name": job.name,
        "challenger": challenger_id,
        "incumbent": None if incumbent is None else incumbent.model_id,
        "metric": retrain.metric,
        "challenger_score": challenger.value(retrain.metric),
        "incumbent_score": None if incumbent is None else incumbent.value(retrain.metric),
        "margin": retrain.margin,
        "margin_kind": retrain.margin_kind,
        "decision": verdict.decision,
        "promoted": promoted,
        "reason": reason,
        "metrics": {
            "challenger": challenger.metrics,
            "incumbent": None if incumbent is None else incumbent.metrics,
            "incumbent_unavailable": None if incumbent is None else incumbent.unavailable,
            "holdout": {**holdout.to_json(), "rows": len(rows)},
            "window": {"start": job.universe.start.isoformat(), "end": job.universe.end.isoformat()},
            "data": {f.path: f.sha256 for f in feat_refs + label_refs},
            "rule": retrain.model_dump(
                mode="json", include={"metric", "margin", "margin_kind", "floor", "promote"}
            ),
        },
    }
    ctx.progress(2, 2, verdict.decision)
    with ctx.db() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (job.name, _DECISION_LOCK))
        now = [m.model_id for m in list_models(conn, name=job.name, stage="production")]
        if now != production:  # another run promoted meanwhile: the scores compare the wrong models
            raise RuntimeError(
                f"the production model of {job.name} changed while scoring ({production} -> {now})"
            )
        stored = records.insert_retrain_decision(conn, row)
        if promoted:  # idempotent: promoting the production model again changes nothing
            promote(conn, challenger_id)
    return decision_of(stored)


def decision_of(row: dict[str, Any]) -> RetrainDecision:
    """The workflow's view of a retrain_decisions row."""
    holdout = row["metrics"]["holdout"]
    return RetrainDecision(
        decision_id=row["id"],
        **{
            k: row[k]
            for k in (
                "name",
                "challenger",
                "incumbent",
                "metric",
                "challenger_score",
                "incumbent_score",
                "margin",
                "margin_kind",
                "decision",
                "promoted",
                "reason",
            )
        },  # fmt: skip
        holdout_start=holdout["holdout_start"],
        holdout_end=holdout["holdout_end"],
    )


def list_decisions(conn, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Recorded decisions, newest first, as plain JSON (`quanto retrain ls`)."""
    rows = records.select_retrain_decisions(conn, name=name, limit=limit)
    return [{k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()} for row in rows]


def run_retrain_local(cfg: RetrainConfig, ctx: StageContext, today: dt.date) -> RetrainDecision:
    """The whole retraining in this process (notebooks, tests): what RetrainWorkflow runs as a child
    pipeline and activities — features and labels on the window, split, train, evaluate."""
    from quanto.research import STAGE_FUNCTIONS

    research = cfg.research(cfg.window_end(today))
    config = research.model_dump(mode="json")
    results: dict[str, StageResult] = {}

    def stage(name: str, **inputs: StageResult) -> StageRequest:
        return StageRequest(
            stage=name, config=config, inputs=inputs, workflow_id=ctx.workflow_id, run_id=ctx.run_id
        )

    for spec in PIPELINE_STAGES[: STAGE_NAMES.index(WINDOW_STAGE) + 1]:
        inputs = {n: results[n] for n in spec.needs}
        results[spec.name] = STAGE_FUNCTIONS[spec.name](stage(spec.name, **inputs), ctx)
    window = {"features": results["features"], "labels": results["labels"]}
    split = run_holdout_split(stage("retrain_split", **window), cfg, ctx)
    challenger = STAGE_FUNCTIONS["train"](stage("train", features=split, labels=split), ctx)
    return run_evaluate(stage("retrain_evaluate", **window, split=split, train=challenger), cfg, ctx)
