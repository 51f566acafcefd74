"""Activities of TradingDayWorkflow (quanto-exec): thin adapters over `quanto.execution.day`.

`trading.session` is the long-running one: the loop runs in a thread, heartbeats each bar (a retry
resumes after the last bar it finished) and reports to its workflow with signals (`_progress` after
each bar, `_risk` when a limit changes the trading state). The others are short.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import threading
import time
from pathlib import Path

from temporalio import activity

from quanto.activities.heartbeat import resume_details
from quanto.activities.pipeline import bad_input_is_final
from quanto.config.trading import TradingConfig
from quanto.contracts import (
    TradingControl,
    TradingControlResult,
    TradingPrepared,
    TradingReportRequest,
    TradingRequest,
    TradingResult,
    TradingSessionRequest,
)
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake

PROGRESS_EVERY_S = 1.0  # snapshots of the book to the workflow at most this often


def _exchange_up(cfg: TradingConfig) -> None:
    """Start the local paper exchange when the job trades on it and nothing answers on its port.
    (Its process handling is the CLI's, shared with the dev server: the one upward import here.)"""
    if cfg.broker.kind == "local" and cfg.broker.url is None:
        from quanto.starter.exchange import ensure_exchange

        ensure_exchange(cfg.broker.port)


def _context(cfg: TradingConfig, info: activity.Info | None = None) -> StageContext:
    """The stage context of this activity's workflow on the job's lake."""
    info = info or activity.info()
    return StageContext(
        lake=Lake(Path(cfg.lake_root)), workflow_id=info.workflow_id, run_id=info.workflow_run_id
    )


@activity.defn(name="trading.prepare")
def prepare(req: TradingRequest) -> TradingPrepared:
    """The day's calendar, model, replay bars and recorded state (`day.prepare_day`); a replay on the
    local exchange starts from a fresh account when this is the run's first attempt at the session."""
    from quanto.execution import day

    with bad_input_is_final():
        cfg = TradingConfig.model_validate(req.config)
        ctx = _context(cfg)
        prepared = day.prepare_day(cfg, ctx, dt.date.fromisoformat(req.session_date), req.confirm_live)
        if prepared["is_session"] and cfg.broker.kind == "local":
            _exchange_up(cfg)
            day.prepare_local_account(cfg, ctx)
        return TradingPrepared(**prepared)


@activity.defn(name="trading.promote")
def promote(model_id: str) -> str:
    """Promote the bootstrap pipeline's model to production."""
    from quanto.execution import day

    return day.promote_bootstrap(None, model_id)


@activity.defn(name="trading.session")
async def session(req: TradingSessionRequest) -> TradingResult:
    """Trade the session; heartbeats each bar and signals progress to the workflow."""
    from quanto.execution import day
    from quanto.observability.logging import configure_logging

    configure_logging(console=False, filename="worker.log")
    info = activity.info()
    cfg = TradingConfig.model_validate(req.config)
    handle = activity.client().get_workflow_handle(info.workflow_id)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()

    held: dict = {"snapshot": None, "sent": 0.0}

    def notify(kind: str, payload: dict) -> None:
        if kind == "progress":
            # At most one snapshot a second reaches the history (a fast replay makes many bars a
            # second); the one held back is sent when the next is due, or when the session ends.
            if time.monotonic() - held["sent"] < PROGRESS_EVERY_S:
                held["snapshot"] = payload
                return
            held.update(snapshot=None, sent=time.monotonic())
            asyncio.run_coroutine_threadsafe(handle.signal("_progress", payload), loop)
            return
        # A state change must reach the workflow before the loop goes on.
        asyncio.run_coroutine_threadsafe(handle.signal("_risk", payload), loop).result(timeout=30)

    latest = {"details": resume_details()}
    stopping = threading.Event()
    # The workflow's state now: a halt it accepted reaches the loop even when its control activity
    # was lost with a worker (the retried session may start first).
    workflow_state = (await handle.query("status"))["state"]

    def heartbeat(details: dict) -> None:
        latest["details"] = details
        loop.call_soon_threadsafe(activity.heartbeat, dict(latest), context=context)

    def trade() -> dict:
        with bad_input_is_final():
            _exchange_up(cfg)
            return day.run_session(
                cfg,
                _context(cfg, info),
                dt.date.fromisoformat(req.session_date),
                dt.datetime.fromisoformat(req.session_open),
                dt.datetime.fromisoformat(req.session_close),
                req.model_id,
                notify,
                heartbeat,
                latest["details"],
                workflow_state,
                stopping.is_set,
            )

    every = info.heartbeat_timeout.total_seconds() / 4 if info.heartbeat_timeout else 5.0
    beating = asyncio.create_task(_keep_alive(context, latest, every))
    worker = asyncio.ensure_future(asyncio.to_thread(trade))
    try:
        stats = await asyncio.shield(worker)
    except asyncio.CancelledError:  # the workflow was cancelled or terminated: stop at the next bar
        stopping.set()
        await asyncio.wait([worker], timeout=60)
        raise
    finally:
        beating.cancel()
    if held["snapshot"] is not None:  # the last bar's book (flat after the close) for the queries
        await handle.signal("_progress", held["snapshot"])
    return TradingResult(
        workflow_id=info.workflow_id,
        session_date=req.session_date,
        status="completed",
        state=stats["state"],
        model_id=req.model_id,
        stats=stats,
    )


async def _keep_alive(context: contextvars.Context, latest: dict, every: float) -> None:
    """Heartbeat the latest details between bars too (a slow replay leaves minutes between them), so
    the heartbeat timeout measures a dead worker, not a quiet market."""
    while True:
        await asyncio.sleep(every)
        context.run(activity.heartbeat, dict(latest))


@activity.defn(name="trading.control")
def control(req: TradingControl) -> TradingControlResult:
    """Apply halt / flatten / resume (`day.apply_control`)."""
    from quanto.execution import day

    with bad_input_is_final():
        cfg = TradingConfig.model_validate(req.config)
        _exchange_up(cfg)
        done = day.apply_control(
            cfg,
            None,
            req.workflow_id,
            req.state,
            req.reason,
            req.signal,
            dt.datetime.fromisoformat(req.at),
            req.flatten,
        )
    return TradingControlResult(**done)


@activity.defn(name="trading.limits")
def limits(req: TradingControl) -> dict:
    """Validate and record new risk limits (`day.set_limits`)."""
    from quanto.execution import day

    with bad_input_is_final():
        return day.set_limits(
            None, req.workflow_id, req.account, req.config, dt.datetime.fromisoformat(req.at)
        )


@activity.defn(name="trading.report")
def report(req: TradingReportRequest) -> TradingResult:
    """The daily session report (HTML and PDF) under runs/<workflow id>/."""
    from quanto.execution import day

    info = activity.info()
    with bad_input_is_final():
        cfg = TradingConfig.model_validate(req.config)
        meta = {
            "workflow_id": info.workflow_id,
            "account": cfg.account,
            "date": req.session_date,
            "mode": cfg.mode,
            "model_id": req.model_id,
            "state": req.state,
        }
        html, pdf = day.write_report(cfg, None, Lake(Path(cfg.lake_root)), info.workflow_id, meta)
    return TradingResult(
        workflow_id=info.workflow_id,
        session_date=req.session_date,
        status="completed",
        state=req.state,
        model_id=req.model_id,
        stats=req.stats,
        report_html=html,
        report_pdf=pdf,
    )


TRADING_ACTIVITIES = [prepare, promote, session, control, limits, report]
