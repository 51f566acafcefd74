"""The research pipeline's stages in one table, and an in-process runner (notebooks, tests, benchmarks).

The Temporal workflow runs the same stage functions as activities, in the order of
`quanto.contracts.PIPELINE_STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable

from quanto.backtest.stage import run_backtest
from quanto.config.models import PipelineConfig
from quanto.contracts import PIPELINE_STAGES, StageRequest, StageResult
from quanto.data.ingest import run_ingest
from quanto.evaluation.training import run_walk_forward
from quanto.features.stage import run_features
from quanto.labels.stage import run_labels
from quanto.lake.materialize import StageContext
from quanto.models.training import run_train
from quanto.reports.stage import run_report
from quanto.validation.stage import run_validate

StageFn = Callable[[StageRequest, StageContext], StageResult]

STAGE_FUNCTIONS: dict[str, StageFn] = {
    "ingest": run_ingest,
    "validate": run_validate,
    "features": run_features,
    "labels": run_labels,
    "train": run_train,
    "walk_forward": run_walk_forward,
    "backtest": run_backtest,
    "report": run_report,
}
assert tuple(STAGE_FUNCTIONS) == tuple(s.name for s in PIPELINE_STAGES)


def run_pipeline_local(
    cfg: PipelineConfig, ctx: StageContext, source: str = "", until: str | None = None
) -> dict[str, StageResult]:
    """Run the stages in order in this process (up to and including `until`, and only the stages it
    needs); returns each stage's result."""
    config = cfg.model_dump(mode="json")
    results: dict[str, StageResult] = {}
    wanted = _needed(until) if until else {s.name for s in PIPELINE_STAGES}
    for spec in PIPELINE_STAGES:
        if spec.name not in wanted:
            continue
        req = StageRequest(
            stage=spec.name,
            config=config,
            config_source=source,
            inputs={n: results[n] for n in spec.needs},
            workflow_id=ctx.workflow_id,
            run_id=ctx.run_id,
        )
        results[spec.name] = STAGE_FUNCTIONS[spec.name](req, ctx)
    return results


def _needed(stage: str) -> set[str]:
    """`stage` and every stage it reads, transitively."""
    specs = {s.name: s for s in PIPELINE_STAGES}
    if stage not in specs:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(specs)}")
    out, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(specs[name].needs)
    return out
