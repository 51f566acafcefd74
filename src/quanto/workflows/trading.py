"""TradingDayWorkflow: one account's trading session — prepare, (bootstrap a model), trade, report.

The session itself is one long-running, heartbeating activity (`trading.session`) that holds the
latency-critical loop; this workflow supervises it, keeps the state that must survive (trading state,
when it halted, the last positions / orders / P&L it was told), and reacts to signals:

- `halt(reason)`: no new orders, open orders cancelled; `flatten(reason)`: halt and close every
  position; `resume()`: trade again. Each is applied by a `trading.control` activity that writes the
  state to the control row the loop reads before every submission batch, then cancels at the broker.
- update `set_risk_limits(limits)`: validated by an activity, then read by the loop at its next bar.
- queries `status`, `positions`, `orders`, `pnl`.

The halted state lives in this workflow's history and in PostgreSQL: it survives worker and server
restarts. One run per session: with `continue_as_new` the run continues as new for the next session.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from quanto.contracts import (
        QUEUE_CONTROL,
        QUEUE_EXEC,
        STATE_STRICTNESS,
        PipelineRequest,
        PipelineResult,
        TradingControl,
        TradingControlResult,
        TradingPrepared,
        TradingReportRequest,
        TradingRequest,
        TradingResult,
        TradingSessionRequest,
    )
    from quanto.workflows import search
    from quanto.workflows.retry import activity_retry

CONTROL_TIMEOUT = timedelta(seconds=10)  # a control lost with its worker is retried this soon
EXCHANGE_ZONE = "America/New_York"  # whose calendar day a scheduled run trades


@workflow.defn(name="TradingDayWorkflow")
class TradingDayWorkflow:
    """Supervises one session of one account (module docstring)."""

    def __init__(self) -> None:
        self._state = "ACTIVE"
        self._reason = ""
        self._halted_at: str | None = None
        self._phase = "starting"
        self._positions: list[dict[str, Any]] = []
        self._orders: list[dict[str, Any]] = []
        self._pnl: dict[str, Any] = {}
        self._bars_done = 0
        self._model_id: str | None = None
        self._controls: list[TradingControl] = []
        self._events: list[dict[str, Any]] = []
        self._request: TradingRequest | None = None

    # ------------------------------------------------------------------------------ signals
    @workflow.signal
    def halt(self, reason: str = "") -> None:
        """Stop trading: no new orders; open orders are cancelled."""
        self._control("HALTED", reason or "halt signal", "halt")

    @workflow.signal
    def flatten(self, reason: str = "") -> None:
        """Halt and close every position."""
        self._control("HALTED", reason or "flatten signal", "flatten", flatten=True)

    @workflow.signal
    def resume(self) -> None:
        """Trade again after a halt (or a risk disable)."""
        self._control("ACTIVE", "resume signal", "resume")

    @workflow.signal(name="_progress")
    def progress(self, snapshot: dict[str, Any]) -> None:
        """The session loop's snapshot after each bar (positions, orders, P&L)."""
        self._positions = snapshot.get("positions", self._positions)
        self._orders = snapshot.get("orders", self._orders)
        self._pnl = snapshot.get("pnl", self._pnl)
        self._bars_done = snapshot.get("bars_done", self._bars_done)

    @workflow.signal(name="_risk")
    def risk(self, event: dict[str, Any]) -> None:
        """A risk event of the loop; a halt or disable it applied becomes this workflow's state."""
        self._events = [*self._events[-49:], event]
        state = event.get("state", self._state)
        if STATE_STRICTNESS.get(state, 0) > STATE_STRICTNESS[self._state]:
            self._set_state(state, event.get("reason", ""))

    @workflow.update
    async def set_risk_limits(self, limits: dict[str, Any]) -> dict[str, Any]:
        """Change the risk limits (validated; a bad value fails the update and changes nothing)."""
        req = self._require_request()
        return await workflow.execute_activity(
            "trading.limits",
            TradingControl(
                workflow_id=workflow.info().workflow_id,
                account=req.config["account"],
                state=self._state,
                signal="limits",
                at=workflow.now().isoformat(),
                config=limits,
            ),
            task_queue=QUEUE_EXEC,
            start_to_close_timeout=CONTROL_TIMEOUT,
            retry_policy=activity_retry(3),
            result_type=dict,
        )

    # ------------------------------------------------------------------------------ queries
    @workflow.query
    def status(self) -> dict[str, Any]:
        """`quanto trade status --json`: state, when it halted, positions, orders, P&L."""
        return {
            "workflow_id": workflow.info().workflow_id,
            "state": self._state,
            "halted_at": self._halted_at,
            "reason": self._reason,
            "phase": self._phase,
            "model_id": self._model_id,
            "bars_done": self._bars_done,
            "positions": self._positions,
            "orders": self._orders,
            "pnl": self._pnl,
            "risk_events": self._events[-10:],
        }

    @workflow.query
    def positions(self) -> list[dict[str, Any]]:
        """Positions after the last bar."""
        return self._positions

    @workflow.query
    def orders(self) -> list[dict[str, Any]]:
        """Open orders and the latest others."""
        return self._orders

    @workflow.query
    def pnl(self) -> dict[str, Any]:
        """Equity, cash, P&L since the open, drawdown, exposures."""
        return self._pnl

    # ------------------------------------------------------------------------------ the day
    @workflow.run
    async def run(self, req: TradingRequest) -> TradingResult:
        cfg = req.config
        if not req.session_date:  # a scheduled run: the replay's date, else today on the exchange's clock
            replay = (cfg["feed"].get("replay") or {}).get("date")
            today = workflow.now().astimezone(ZoneInfo(EXCHANGE_ZONE)).date().isoformat()
            req = req.model_copy(update={"session_date": replay or today})
        self._request = req
        wid = workflow.info().workflow_id
        workflow.upsert_search_attributes(search.trading_attributes(cfg["account"], cfg["mode"]))
        self._phase = "preparing"
        prepared: TradingPrepared = await workflow.execute_activity(
            "trading.prepare",
            req,
            task_queue=QUEUE_EXEC,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=activity_retry(3),
            result_type=TradingPrepared,
        )
        if not prepared.is_session:
            self._phase = "holiday"
            self._next_day(req, prepared)
            return TradingResult(workflow_id=wid, session_date=req.session_date, status="holiday")
        if STATE_STRICTNESS[prepared.state] > STATE_STRICTNESS[self._state]:
            self._set_state(prepared.state, "recorded state")  # e.g. a halted run before a reset
        self._model_id = prepared.model_id or await self._bootstrap(req)

        self._phase = "waiting for the open"
        if cfg["feed"]["source"] != "replay":
            wait = datetime.fromisoformat(prepared.session_open) - workflow.now()
            if wait > timedelta(0):
                await workflow.sleep(wait)
        self._phase = "trading"
        session = workflow.start_activity(
            "trading.session",
            TradingSessionRequest(
                config=cfg,
                session_date=req.session_date,
                session_open=prepared.session_open or "",
                session_close=prepared.session_close or "",
                model_id=self._model_id,
            ),
            task_queue=QUEUE_EXEC,
            start_to_close_timeout=timedelta(hours=12),
            heartbeat_timeout=timedelta(seconds=cfg.get("heartbeat_timeout_s", 20.0)),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=10),
                maximum_attempts=20,
                non_retryable_error_types=["InputError", "LiveModeRefused", "ValidationError"],
            ),
            result_type=TradingResult,
        )
        while True:
            await workflow.wait_condition(lambda: bool(self._controls) or session.done())
            await self._apply_controls()
            if session.done() and not self._controls:
                break
        outcome: TradingResult = await session
        self._phase = "reporting"
        report = await workflow.execute_activity(
            "trading.report",
            TradingReportRequest(
                config=cfg,
                session_date=req.session_date,
                state=self._state,
                model_id=self._model_id,
                stats=outcome.stats,
            ),
            task_queue=QUEUE_EXEC,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=activity_retry(3),
            result_type=TradingResult,
        )
        self._phase = "closed"
        self._next_day(req, prepared)
        return report

    # ------------------------------------------------------------------------------ helpers
    def _control(self, state: str, reason: str, signal: str, flatten: bool = False) -> None:
        self._set_state(state, reason)
        self._controls.append(
            TradingControl(
                workflow_id=workflow.info().workflow_id,
                account="",  # filled in when applied (a signal can arrive before the run starts)
                state=state,
                reason=reason,
                signal=signal,
                flatten=flatten,
                at=workflow.now().isoformat(),
            )
        )

    def _set_state(self, state: str, reason: str) -> None:
        if state == "HALTED" and self._state != "HALTED":
            self._halted_at = workflow.now().isoformat()
        if state == "ACTIVE":
            self._halted_at = None
        self._state = state
        self._reason = reason

    async def _apply_controls(self) -> None:
        """Apply queued controls in the order the signals came (each waits for the loop's batch)."""
        req = self._require_request()
        while self._controls:
            control = self._controls.pop(0)
            control = control.model_copy(update={"account": req.config["account"], "config": req.config})
            await workflow.execute_activity(
                "trading.control",
                control,
                task_queue=QUEUE_EXEC,
                start_to_close_timeout=CONTROL_TIMEOUT,
                retry_policy=activity_retry(10),
                result_type=TradingControlResult,
            )

    async def _bootstrap(self, req: TradingRequest) -> str:
        """No production model: train one with the demo's research job (a child pipeline up to
        `train`) and promote it; without a bootstrap job that is an error the user must fix."""
        if req.bootstrap is None:
            raise ApplicationError(
                f"no production model for job {req.config['model']['job']!r}: train one and run "
                "`quanto models promote ID` (or set model.bootstrap for a demo)",
                type="InputError",
                non_retryable=True,
            )
        self._phase = "training a model (bootstrap)"
        result: PipelineResult = await workflow.execute_child_workflow(
            "ResearchPipelineWorkflow",
            PipelineRequest(
                config=req.bootstrap,
                config_name=req.bootstrap["name"],
                config_source="bootstrap",
                until="train",
            ),
            id=f"{workflow.info().workflow_id}-bootstrap",
            task_queue=QUEUE_CONTROL,
            result_type=PipelineResult,
        )
        model_id = result.results["train"].summary["model_id"]
        await workflow.execute_activity(
            "trading.promote",
            model_id,
            task_queue=QUEUE_EXEC,
            start_to_close_timeout=CONTROL_TIMEOUT,
            retry_policy=activity_retry(3),
            result_type=str,
        )
        return model_id

    def _next_day(self, req: TradingRequest, prepared: TradingPrepared) -> None:
        """With `continue_as_new` on a live feed: the next session is a new run of this workflow (one
        run per session keeps each history a day long). A replay has no next session."""
        if (
            req.config.get("continue_as_new")
            and req.config["feed"]["source"] != "replay"
            and prepared.next_session
        ):
            workflow.continue_as_new(req.model_copy(update={"session_date": prepared.next_session}))

    def _require_request(self) -> TradingRequest:
        if self._request is None:
            raise ApplicationError("the workflow has not started yet", non_retryable=True)
        return self._request
