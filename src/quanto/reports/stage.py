"""The report stage: HTML and PDF from one template, into the run's folder."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from quanto.config.models import PipelineConfig
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.evaluation.metrics import directions
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import sha256_file

FILL_WORDS = {
    "next_open": "fill at the next bar's open",
    "next_close": "fill at the next bar's close",
    "this_close": "fill at the decision bar's close",
}


def config_summary(cfg: PipelineConfig) -> dict[str, str]:
    """The job's key choices in words, for the report header."""
    u, wf, bt, m, lab = cfg.universe, cfg.walk_forward, cfg.backtest, cfg.model, cfg.label
    label = f"forward log return, {lab.horizon} bars"
    if lab.kind == "direction":
        label = f"direction of the {lab.horizon}-bar return (threshold {lab.threshold:g})"
    return {
        "Universe": f"{', '.join(u.symbols)} ({u.vendor}, {u.timeframe})",
        "Dates": f"{u.start} to {u.end}",
        "Label": label,
        "Model": f"{m.kind} {m.objective} ({', '.join(f'{k}={v}' for k, v in m.params.items() if v is not None)})",
        "Walk-forward": f"{wf.scheme}, train {wf.train_bars} / test {wf.test_bars} / step {wf.step} bars,"
        f" embargo {wf.embargo_bars}",
        "Positions": f"{bt.mode.replace('_', '/')}, {FILL_WORDS[bt.fill]}",
        "Costs": costs_summary(bt),
    }


# What the report shows of the train stage's summary (the final model, next to the search).
MODEL_KEYS = ("model_id", "family", "n_trials", "note")


def evaluation_fields(walk_forward: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """The `ReportData` fields of the honest evaluation, from the walk-forward and train stages'
    summaries; a summary written before a field existed leaves its default (its section is omitted)."""
    return {
        "oos_metrics": walk_forward.get("metrics") or {},
        "baselines": walk_forward.get("baselines") or {},
        "stitched": walk_forward.get("stitched") or "",
        "prev_return_source": walk_forward.get("prev_return_source"),
        "statistics": walk_forward.get("statistics") or {},
        "canary": walk_forward.get("canary"),
        "leaderboards": walk_forward.get("leaderboards") or [],
        "paths": walk_forward.get("paths") or [],
        "model": {k: train[k] for k in MODEL_KEYS if k in train},
    }


# The probability above which a classifier's prediction counts as "up" (`evaluation.metrics.directions`).
CLASSIFICATION_THRESHOLD = 0.5
ROC_MAX_POINTS = 400  # a ROC curve thinned to this many points draws the same line from any number of rows


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def classification_summary(predictions: pd.DataFrame) -> dict[str, Any] | None:
    """A classifier's confusion matrix and ROC curve over the stitched out-of-sample predictions.

    `predictions` has columns prediction (P(label 1)) and label (0 or 1); rows where either is missing
    are left out. A prediction above CLASSIFICATION_THRESHOLD predicts 1 (the walk-forward's
    accuracy uses the same rule). Returns n, threshold, confusion ([[tn, fp], [fn, tp]]: rows the
    actual class 0 and 1, columns the predicted one), accuracy, precision and recall of class 1,
    specificity (recall of class 0), and with both classes present auc and roc ({fpr, tpr}, at most
    ROC_MAX_POINTS points); None without a scorable row.
    """
    missing = [c for c in ("prediction", "label") if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; have {list(predictions.columns)}")
    p = predictions["prediction"].to_numpy(dtype=float)
    y = predictions["label"].to_numpy(dtype=float)
    keep = np.isfinite(p) & np.isfinite(y)
    p, y = p[keep], y[keep]
    if not p.size:
        return None
    bad = np.unique(y[(y != 0) & (y != 1)])
    if bad.size:
        raise ValueError(f"a classifier's label must be 0 or 1, got {bad[:5].tolist()}")
    up, real_up = directions(p, y, y, "classification")
    tp, fp = int((up & real_up).sum()), int((up & ~real_up).sum())
    fn, tn = int((~up & real_up).sum()), int((~up & ~real_up).sum())
    out: dict[str, Any] = {
        "n": int(p.size),
        "threshold": CLASSIFICATION_THRESHOLD,
        "confusion": [[tn, fp], [fn, tp]],
        "accuracy": (tp + tn) / p.size,
        "precision": _share(tp, tp + fp),
        "recall": _share(tp, tp + fn),
        "specificity": _share(tn, tn + fp),
    }
    if tp + fn and tn + fp:  # both classes occur: a ROC curve exists
        fpr, tpr, _ = roc_curve(y, p)
        if fpr.size > ROC_MAX_POINTS:
            pick = np.unique(np.linspace(0, fpr.size - 1, ROC_MAX_POINTS).round().astype(int))
            fpr, tpr = fpr[pick], tpr[pick]
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        out["auc"] = float(roc_auc_score(y, p))
    return out


def costs_summary(bt: Any) -> str:
    """The backtest's cost settings in words: only the parts that are set."""
    parts = [f"commission {bt.commission_bps:g} bps"]
    if bt.commission_per_share:
        parts.append(f"{bt.commission_per_share:g} per share")
    if bt.commission_per_order:
        parts.append(f"{bt.commission_per_order:g} per order")
    if bt.commission_min:
        parts.append(f"minimum {bt.commission_min:g}")
    text = ", ".join(parts) + f" + slippage {bt.slippage_bps:g} bps per side"
    return text + (f"; borrow {bt.borrow_rate:.2%} a year on shorts" if bt.borrow_rate else "")


def backtest_fields(backtest: dict[str, Any], fill: str) -> dict[str, Any]:
    """The `ReportData` fields of the backtest stage's summary beyond its metrics: periods per year,
    and the honest statistics (pbo, bootstrap) when the backtest computed them; `fill` (the job's
    backtest.fill) tells whether the equity's first row is a period."""
    return {
        "periods_per_year": backtest.get("periods_per_year"),
        "first_row_is_period": fill == "this_close",
        "pbo": backtest.get("pbo"),
        "bootstrap": backtest.get("bootstrap"),
    }


def run_report(req: StageRequest, ctx: StageContext) -> StageResult:
    """Render the research report from the outputs of the earlier stages."""
    from quanto.backtest.stage import run_folder
    from quanto.reports.render import ReportData, render_report

    cfg = PipelineConfig.model_validate(req.config)
    validate, train, wf, bt = (req.inputs[k] for k in ("validate", "train", "walk_forward", "backtest"))
    equity_refs = bt.files("equity")
    trade_refs, position_refs = bt.files("trades"), bt.files("positions")
    # A classifier's stitched predictions give its confusion matrix and ROC curve; a regressor has none.
    prediction_refs = wf.files("predictions") if wf.summary.get("objective") == "classification" else []
    inputs = (
        equity_refs
        + trade_refs
        + position_refs
        + prediction_refs
        + train.files("model")
        + train.files("model_card")
    )
    stage_cfg = {
        "report": cfg.report.model_dump(mode="json"),
        "summary": config_summary(cfg),
        "run_folder": run_folder(cfg),  # where it writes, and the subtitle, depend on the job's name
    }

    def compute(key: str) -> Materialized:
        equity = ctx.lake.read_frame(equity_refs)
        trades = ctx.lake.read_frame(trade_refs) if trade_refs else None
        positions = None
        # Positions (symbols × bars: large) are read only for exposure the equity frame lacks.
        if position_refs and not {"gross_exposure", "net_exposure"} <= set(equity.columns):
            positions = ctx.lake.read_frame(position_refs)
        classification = None
        if prediction_refs:
            classification = classification_summary(
                ctx.lake.read_frame(prediction_refs, columns=["prediction", "label"])
            )
        data = ReportData(
            title=cfg.report.title,
            subtitle=f"{cfg.name} · {cfg.workflow_id()}",
            generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            config_summary=config_summary(cfg),
            equity=equity,
            metrics=bt.summary["metrics"],
            benchmark_metrics=bt.summary["benchmark_metrics"],
            folds=wf.summary.get("folds", []),
            feature_importance=[tuple(x) for x in train.summary.get("feature_importance", [])],
            quality=validate.summary,
            trades=trades,
            positions=positions,
            classification=classification,
            **evaluation_fields(wf.summary, train.summary),
            **backtest_fields(bt.summary, cfg.backtest.fill),
        )
        paths = render_report(data, ctx.lake.abspath(run_folder(cfg)), cfg.report.formats)
        outputs = [
            FileRef(path=ctx.lake.relpath(p), sha256=sha256_file(p), rows=0, role=f"report_{fmt}")
            for fmt, p in sorted(paths.items())
        ]
        return Materialized(outputs, counters={"files": len(outputs)})

    # Upstream summaries shape the report (metrics, folds, quality, and the honest evaluation: baselines,
    # canary, PSR/DSR, leaderboards, cpcv paths, the final model), so they are part of its key. Each
    # stage's key addresses its summary: the walk-forward's covers the model, walk_forward and
    # evaluation config (canary on/off, leaderboard_rows) and its input files, and a key that exists
    # is reused with the summary its manifest stored.
    key_cfg = {**stage_cfg, "upstream": [validate.key, train.key, wf.key, bt.key]}
    return materialize("report", ctx, inputs, key_cfg, compute)
