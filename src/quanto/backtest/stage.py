"""The backtest stage: out-of-sample predictions + validated bars → equity, trades, positions, fills, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quanto.config.models import PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.errors import InputError
from quanto.lake.materialize import Materialized, StageContext, materialize

if TYPE_CHECKING:  # the engine and pandas load when a backtest runs, not when activities are imported
    import pandas as pd

    from quanto.backtest.portfolio import PortfolioResult


def run_folder(cfg: PipelineConfig) -> str:
    """Lake folder of a pipeline's run outputs: runs/<business key of the job>/."""
    return f"runs/{cfg.workflow_id()}"


def simulate_predictions(
    bars: pd.DataFrame, predictions: pd.DataFrame, cfg: PipelineConfig
) -> tuple[PortfolioResult, float]:
    """The job's portfolio over its out-of-sample predictions: predictions → signals
    (`signals.target_positions`) → sizing → `portfolio.simulate`. Returns (PortfolioResult, periods
    per year). Bad data or settings (a prediction without a bar, a benchmark symbol without bars, ...)
    are InputErrors."""
    from quanto.backtest.metrics import periods_per_year_for
    from quanto.backtest.portfolio import simulate
    from quanto.backtest.signals import signals_from_predictions

    ppy = cfg.backtest.periods_per_year or periods_per_year_for(cfg.universe.timeframe)
    try:
        decisions = signals_from_predictions(predictions, cfg.backtest, cfg.model.objective)
        return simulate(bars, decisions, cfg.backtest, periods_per_year=ppy), ppy
    except (KeyError, ValueError) as err:
        raise InputError(f"backtest: {err}") from err


BOOTSTRAP_PATHS = 1000


def bootstrap_summary(result: PortfolioResult, ppy: float, cfg: PipelineConfig) -> dict | None:
    """Confidence intervals and a stress distribution of the strategy's returns by a stationary block
    bootstrap (block length chosen from the data, seeded with model.seed); None for fewer than 20
    periods, too few to resample meaningfully."""
    from quanto.backtest.bootstrap import block_bootstrap

    returns = result.equity.loc[result.period_rows(), "returns"].to_numpy()
    if len(returns) < 20:
        return None
    boot = block_bootstrap(returns, "auto", BOOTSTRAP_PATHS, cfg.model.seed, periods_per_year=ppy)
    return boot.summary()


def run_backtest(req: StageRequest, ctx: StageContext) -> StageResult:
    """Simulate the portfolio that trades the predictions' signals, with costs, against buy-and-hold;
    write equity, trades, positions and fills under the run's folder; the summary adds the block
    bootstrap of its returns."""
    cfg = PipelineConfig.model_validate(req.config)
    bar_refs = req.inputs["validate"].files("bars")
    pred_refs = req.inputs["walk_forward"].files("predictions")
    stage_cfg = {
        "backtest": cfg.backtest.model_dump(mode="json"),
        "objective": cfg.model.objective,
        "run_folder": run_folder(cfg),  # outputs are written there
    }

    def compute(key: str) -> Materialized:
        result, ppy = simulate_predictions(ctx.lake.read_frame(bar_refs), ctx.lake.read_frame(pred_refs), cfg)
        folder = run_folder(cfg)
        outputs = [
            ctx.lake.write_frame(folder, result.equity, role="equity"),
            ctx.lake.write_frame(folder, result.trades, role="trades"),
            ctx.lake.write_frame(folder, result.positions, role="positions"),
            ctx.lake.write_frame(folder, result.fills, role="fills"),
        ]
        return Materialized(
            outputs,
            counters={
                "bars": len(result.equity),
                "trades": len(result.trades),
                "fills": len(result.fills),
                "scaled_orders": len(result.scaled_orders),
            },
            summary={
                "metrics": result.metrics(ppy),
                "benchmark_metrics": result.metrics(ppy, benchmark=True),
                "periods_per_year": ppy,
                "bootstrap": bootstrap_summary(result, ppy, cfg),
            },
        )

    return materialize("backtest", ctx, bar_refs + pred_refs, stage_cfg, compute)
