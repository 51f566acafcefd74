"""The report stage: HTML and PDF from one template, into the run's folder."""

from __future__ import annotations

import datetime as dt
from typing import Any

from quanto.config.models import PipelineConfig
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import sha256_file


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
        "Positions": f"{bt.mode.replace('_', '/')}, fill at next bar's open",
        "Costs": f"commission {bt.commission_bps:g} bps + slippage {bt.slippage_bps:g} bps per side",
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


def run_report(req: StageRequest, ctx: StageContext) -> StageResult:
    """Render the research report from the outputs of the earlier stages."""
    from quanto.backtest.stage import run_folder
    from quanto.reports.render import ReportData, render_report

    cfg = PipelineConfig.model_validate(req.config)
    validate, train, wf, bt = (req.inputs[k] for k in ("validate", "train", "walk_forward", "backtest"))
    equity_refs = bt.files("equity")
    inputs = equity_refs + train.files("model") + train.files("model_card")
    stage_cfg = {
        "report": cfg.report.model_dump(mode="json"),
        "summary": config_summary(cfg),
        "run_folder": run_folder(cfg),  # where it writes, and the subtitle, depend on the job's name
    }

    def compute(key: str) -> Materialized:
        equity = ctx.lake.read_frame(equity_refs)
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
            **evaluation_fields(wf.summary, train.summary),
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
