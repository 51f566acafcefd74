"""The backtest stage: out-of-sample predictions + validated bars → equity, trades, positions, metrics."""

from __future__ import annotations

from quanto.config.models import PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize


def run_folder(cfg: PipelineConfig) -> str:
    """Lake folder of a pipeline's run outputs: runs/<business key of the job>/."""
    return f"runs/{cfg.workflow_id()}"


def run_backtest(req: StageRequest, ctx: StageContext) -> StageResult:
    """Simulate the strategy implied by the predictions, with costs, against buy-and-hold."""
    from quanto.backtest.engine import backtest_predictions
    from quanto.backtest.metrics import periods_per_year_for

    cfg = PipelineConfig.model_validate(req.config)
    bar_refs = req.inputs["validate"].files("bars")
    pred_refs = req.inputs["walk_forward"].files("predictions")
    stage_cfg = {
        "backtest": cfg.backtest.model_dump(mode="json"),
        "objective": cfg.model.objective,
        "run_folder": run_folder(cfg),  # outputs are written there
    }

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_frame(bar_refs)
        predictions = ctx.lake.read_frame(pred_refs)
        result = backtest_predictions(bars, predictions, cfg.backtest, cfg.model.objective)
        ppy = cfg.backtest.periods_per_year or periods_per_year_for(cfg.universe.timeframe)
        metrics = result.metrics(ppy)
        bench = result.metrics(ppy, benchmark=True)
        folder = run_folder(cfg)
        outputs = [
            ctx.lake.write_frame(folder, result.equity, role="equity"),
            ctx.lake.write_frame(folder, result.trades, role="trades"),
            ctx.lake.write_frame(folder, result.positions, role="positions"),
        ]
        return Materialized(
            outputs,
            counters={"bars": len(result.equity), "trades": len(result.trades)},
            summary={"metrics": metrics, "benchmark_metrics": bench, "periods_per_year": ppy},
        )

    return materialize("backtest", ctx, bar_refs + pred_refs, stage_cfg, compute)
