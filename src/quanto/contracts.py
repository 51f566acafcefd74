"""Pydantic request/result models that cross the Temporal boundary.

Everything here is plain JSON (a worker in another SDK can serve a queue) and light to import:
workflows pass this module through the sandbox. Data travels as references (path + SHA-256), never frames.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

QUEUE_CONTROL = "quanto-control"
QUEUE_IO = "quanto-io"
QUEUE_COMPUTE = "quanto-compute"
QUEUE_TRAIN = "quanto-train"
QUEUE_EXEC = "quanto-exec"
ALL_QUEUES = (QUEUE_CONTROL, QUEUE_IO, QUEUE_COMPUTE, QUEUE_TRAIN, QUEUE_EXEC)


class StageSpec(BaseModel):
    """One stage of the research pipeline: its name, task queue and the stages it reads."""

    model_config = ConfigDict(frozen=True)

    name: str
    queue: str
    needs: tuple[str, ...] = ()

    @property
    def activity(self) -> str:
        """Activity type name of the stage."""
        return f"pipeline.{self.name}"


PIPELINE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(name="ingest", queue=QUEUE_IO),
    StageSpec(name="validate", queue=QUEUE_COMPUTE, needs=("ingest",)),
    StageSpec(name="features", queue=QUEUE_COMPUTE, needs=("validate",)),
    StageSpec(name="labels", queue=QUEUE_COMPUTE, needs=("validate",)),
    StageSpec(name="train", queue=QUEUE_TRAIN, needs=("features", "labels")),
    StageSpec(name="walk_forward", queue=QUEUE_TRAIN, needs=("features", "labels")),
    StageSpec(name="backtest", queue=QUEUE_COMPUTE, needs=("validate", "walk_forward")),
    StageSpec(name="report", queue=QUEUE_COMPUTE, needs=("validate", "train", "walk_forward", "backtest")),
)
STAGE_NAMES = tuple(s.name for s in PIPELINE_STAGES)


class FileRef(BaseModel):
    """A file in the lake: path relative to the lake root, content hash and row count."""

    path: str
    sha256: str
    rows: int = 0
    role: str = "data"


class StageResult(BaseModel):
    """What a stage produced: references to its outputs plus small counters and a summary."""

    stage: str
    key: str
    skipped: bool = False
    outputs: list[FileRef] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(default_factory=dict)
    manifest: str = ""
    seconds: float = 0.0
    # True when `outputs` was left out to keep workflow payloads small: the manifest lists them.
    outputs_in_manifest: bool = False

    def files(self, role: str) -> list[FileRef]:
        """Outputs of one role (e.g. 'bars', 'quarantine')."""
        return [f for f in self.outputs if f.role == role]


class StageRequest(BaseModel):
    """Input of every pipeline stage activity: the validated job file as JSON plus upstream results."""

    stage: str
    config: dict[str, Any]
    config_source: str = ""
    inputs: dict[str, StageResult] = Field(default_factory=dict)
    workflow_id: str = ""
    run_id: str = ""


class PipelineRequest(BaseModel):
    """Input of ResearchPipelineWorkflow; `until` stops after that stage (e.g. `quanto data validate`)."""

    config: dict[str, Any]
    config_source: str = ""
    config_name: str = ""
    until: str | None = None


class StageStatus(BaseModel):
    """Progress of one stage as the workflow sees it (query `progress`)."""

    name: str
    status: str = "pending"  # pending | running | completed | failed
    seconds: float | None = None
    skipped: bool = False


class PipelineResult(BaseModel):
    """Output of ResearchPipelineWorkflow."""

    workflow_id: str
    status: str
    report_html: str | None = None
    report_pdf: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageStatus] = Field(default_factory=list)
    results: dict[str, StageResult] = Field(default_factory=dict)


# --- Training (TrainingWorkflow, the walk-forward stage as a child workflow) -------------------------


class TrainingPlan(BaseModel):
    """The walk-forward stage's key and folds; `result` is set instead when the stage is already
    materialized (a rerun), so no fold runs."""

    key: str
    folds: list[dict[str, Any]] = Field(default_factory=list)
    result: StageResult | None = None


class FoldRequest(BaseModel):
    """One walk-forward fold to train and predict (an activity on quanto-train)."""

    stage: StageRequest
    key: str
    fold: dict[str, Any]


class FoldResult(BaseModel):
    """One fold's out-of-sample predictions (a lake file) and its info (bounds, sizes, metrics)."""

    index: int
    predictions: FileRef
    info: dict[str, Any] = Field(default_factory=dict)
    reused: bool = False  # an earlier attempt had finished it
    seconds: float = 0.0


class FinalizeRequest(BaseModel):
    """Stitch the folds into the walk-forward stage's result."""

    stage: StageRequest
    key: str
    folds: list[FoldResult]


class TrainingProgress(BaseModel):
    """Query `progress` of TrainingWorkflow."""

    folds: int = 0
    done: int = 0
    running: list[int] = Field(default_factory=list)
    stage: str = "planning"  # planning | training | finalizing | done


# --- Sweeps (SweepWorkflow) ------------------------------------------------------------------------


class SweepRequest(BaseModel):
    """Input of SweepWorkflow: the sweep job file (a research job plus its grid) as JSON."""

    config: dict[str, Any]
    config_source: str = ""
    config_name: str = ""


class SweepPointRequest(BaseModel):
    """One grid point to backtest over the job's validated bars and out-of-sample predictions."""

    config: dict[str, Any]
    index: int
    point: dict[str, Any]
    bars_from: StageResult  # the validate stage: its bars (from its manifest when the result was slimmed)
    predictions_from: StageResult  # the walk-forward stage: its out-of-sample predictions


class SweepFinalizeRequest(BaseModel):
    """Rank the points and measure the selection (PBO, DSR)."""

    config: dict[str, Any]
    points: list[dict[str, Any]]


class SweepResult(BaseModel):
    """Output of SweepWorkflow: the pipeline run that made the predictions and the sweep's summary."""

    workflow_id: str
    pipeline_workflow_id: str
    summary: dict[str, Any] = Field(default_factory=dict)


# --- Ingestion (IngestionWorkflow) ---------------------------------------------------------------------


class IngestRequest(BaseModel):
    """Input of IngestionWorkflow. `today` (ISO date) is fixed by the starter, or left empty by a
    schedule so the plan activity fixes it when the run starts; `cursor`, `totals` and `plan` carry
    progress across continue-as-new."""

    config: dict[str, Any]
    config_source: str = ""
    config_name: str = ""
    today: str = ""
    cursor: int = 0
    totals: dict[str, int] = Field(default_factory=dict)
    plan: IngestPlanRef | None = None
    seconds_before: float = 0.0
    stop_stream: bool = False  # a stop_stream signal received before a continue-as-new


class IngestPlanRef(BaseModel):
    """The partition plan, kept in the lake (it can hold tens of thousands of partitions)."""

    path: str
    partitions: int
    batch_size: int
    batches: int
    route: str
    reason: str
    end: str
    today: str = ""


class IngestBatchRequest(BaseModel):
    """One fan-out unit: partitions [batch * batch_size, (batch + 1) * batch_size) of the plan."""

    config: dict[str, Any]
    plan: IngestPlanRef
    batch: int


class IngestBatchResult(BaseModel):
    """What one batch did: partitions fetched or skipped (already in the lake), rows and requests."""

    batch: int
    fetched: int = 0
    skipped: int = 0
    rows: int = 0
    rejected: int = 0
    files: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0


class IngestProgress(BaseModel):
    """Query `progress` of IngestionWorkflow."""

    partitions: int = 0
    batches: int = 0
    batches_done: int = 0
    fetched: int = 0
    skipped: int = 0
    rows: int = 0
    rejected: int = 0
    route: str = ""
    stage: str = "planning"  # planning | fetching | streaming | finalizing | done


class StreamRequest(BaseModel):
    """Input of the live-stream activity: follow today's session, backfilling outages over REST."""

    config: dict[str, Any]
    today: str


class StreamResult(BaseModel):
    """What the live stream wrote."""

    messages: int = 0
    bars: int = 0
    trades: int = 0
    quotes: int = 0
    depth: int = 0
    reconnects: int = 0
    gaps: int = 0
    backfilled_rows: int = 0
    backfill_failures: int = 0
    rejected: int = 0
    files: int = 0


class IngestResult(BaseModel):
    """Output of IngestionWorkflow; the run manifest in the lake has the full record."""

    workflow_id: str
    status: str
    route: str
    reason: str
    partitions: int
    totals: dict[str, int] = Field(default_factory=dict)
    stream: StreamResult | None = None
    manifest: str = ""
    seconds: float = 0.0


IngestRequest.model_rebuild()


# --- Retraining (RetrainWorkflow) --------------------------------------------------------------------


class RetrainRequest(BaseModel):
    """Input of RetrainWorkflow: the retrain job file as JSON (its research job inline). `today` (ISO
    date) is fixed by the starter, or left empty by a schedule so the plan fixes it when the run starts."""

    config: dict[str, Any]
    config_source: str = ""
    config_name: str = ""
    today: str = ""


class RetrainPlan(BaseModel):
    """The research job on the run's rolling window (a PipelineConfig as JSON) and the window."""

    research: dict[str, Any]
    name: str
    window_start: str
    window_end: str


class RetrainStepRequest(BaseModel):
    """One retraining step (holdout split, evaluation): the step as a stage of the windowed research
    job, and the retrain job (holdout, metric, margin, promotion)."""

    stage: StageRequest
    retrain: dict[str, Any]


class RetrainDecision(BaseModel):
    """What the evaluation decided (its row in PostgreSQL's retrain_decisions has the metric sets)."""

    decision_id: int
    name: str
    challenger: str
    incumbent: str | None = None
    metric: str
    challenger_score: float | None = None
    incumbent_score: float | None = None
    margin: float
    margin_kind: str
    decision: str  # promote | keep
    promoted: bool
    reason: str
    holdout_start: str
    holdout_end: str


class RetrainResult(BaseModel):
    """Output of RetrainWorkflow."""

    workflow_id: str
    status: str
    pipeline_workflow_id: str
    window_start: str
    window_end: str
    decision: RetrainDecision
    stages: list[StageStatus] = Field(default_factory=list)


# --- Trading (TradingDayWorkflow) ------------------------------------------------------------------


# Trading states by strictness: a state only gives way to a stricter one, except on `resume`.
STATE_STRICTNESS = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}


class TradingRequest(BaseModel):
    """Input of TradingDayWorkflow: the trading job (secrets are never in it), the session's date, and
    for a demo the research job that trains the model when the registry has no production model."""

    config: dict[str, Any]
    config_source: str = ""
    config_name: str = ""
    session_date: str = ""  # YYYY-MM-DD; "" (scheduled runs): the day the run starts, or the replay's
    confirm_live: bool = False
    bootstrap: dict[str, Any] | None = None  # a research pipeline config (model.bootstrap)


class TradingPrepared(BaseModel):
    """What `trading.prepare` found: whether the day is a session, its open and close, the production
    model (None: bootstrap it), the account's state from the records."""

    is_session: bool
    session_open: str | None = None
    session_close: str | None = None
    model_id: str | None = None
    state: str = "ACTIVE"
    bars: int = 0
    next_session: str | None = None  # the calendar's next session (continue-as-new)


class TradingControl(BaseModel):
    """A control applied by `trading.control`: the new state and, for flatten, close every position."""

    workflow_id: str
    account: str
    state: str  # ACTIVE | REDUCING | HALTED
    reason: str = ""
    signal: str = ""  # halt | flatten | resume | risk | limits
    flatten: bool = False
    at: str = ""  # workflow time of the signal (ISO)
    config: dict[str, Any] = Field(default_factory=dict)


class TradingControlResult(BaseModel):
    """What a control did at the broker."""

    state: str
    cancelled: list[str] = Field(default_factory=list)
    closing_orders: list[str] = Field(default_factory=list)


class TradingSessionRequest(BaseModel):
    """Input of `trading.session`: the job, the session times and the model to trade."""

    config: dict[str, Any]
    session_date: str
    session_open: str
    session_close: str
    model_id: str


class TradingReportRequest(BaseModel):
    """Input of `trading.report`: the job and how the session ended."""

    config: dict[str, Any]
    session_date: str
    state: str
    model_id: str | None = None
    stats: dict[str, Any] = Field(default_factory=dict)


class TradingResult(BaseModel):
    """Output of TradingDayWorkflow (and of `trading.session` for its `stats`)."""

    workflow_id: str
    session_date: str
    status: str  # completed | holiday | halted
    state: str = "ACTIVE"
    model_id: str | None = None
    stats: dict[str, Any] = Field(default_factory=dict)
    report_html: str | None = None
    report_pdf: str | None = None
