"""The steps of a trading day as plain functions (the trading workflow's activities call them; a test
or a notebook can too): prepare the day, run the session, apply a control, write the session report.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quanto.config.trading import RiskLimits, TradingConfig
from quanto.errors import InputError
from quanto.execution.broker import Broker, OrderRequest, client_order_id
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake

log = logging.getLogger(__name__)


class LiveModeRefused(InputError):
    """mode: live without the explicit confirmation flag."""


def check_live(cfg: TradingConfig, confirmed: bool) -> None:
    """Live trading needs `mode: live` in the job AND the command line's confirmation."""
    if cfg.mode == "live" and not confirmed:
        raise LiveModeRefused(
            f"account {cfg.account}: mode is live; refusing to start without --confirm-live "
            "(real money: say so explicitly on the command line)"
        )


def open_broker(cfg: TradingConfig) -> Broker:
    """The job's broker: the Alpaca adapter on the local exchange (one exchange account per Quanto
    account; the exchange must be running: `quanto trade exchange start`, or the trading activities
    start it) or on Alpaca (keys from the environment)."""
    from quanto.execution.alpaca import LOCAL_SECRET, AlpacaBroker

    if cfg.broker.kind == "local":
        return AlpacaBroker(cfg.broker.base_url(cfg.mode), account_key(cfg), LOCAL_SECRET)
    try:
        return AlpacaBroker.from_env(cfg.broker, cfg.mode)
    except ValueError as err:  # missing keys: retrying cannot fix it
        raise InputError(f"account {cfg.account}: {err}") from err


def account_key(cfg: TradingConfig) -> str:
    """The local exchange's account of a Quanto account: it keys accounts by API key id."""
    return f"local-{cfg.account}"


def production_model(dsn: str | None, job: str) -> str | None:
    """The production model id of `job` in the registry, or None."""
    from quanto.models.registry import list_models
    from quanto.store.db import connect

    with connect(dsn) as conn:
        rows = list_models(conn, name=job, stage="production")
    return rows[0].model_id if rows else None


def prepare_day(cfg: TradingConfig, ctx: StageContext, date: dt.date, confirmed: bool) -> dict[str, Any]:
    """Check the day: live confirmation, the calendar (a holiday is not traded), the production model,
    the replay's bars (ingested and validated now, so the session starts at once), the control row."""
    from quanto.execution.replay import next_session, replay_bars, session_times
    from quanto.store import trading as records

    check_live(cfg, confirmed)
    times = session_times(cfg.calendar, date)
    following = next_session(cfg.calendar, date).isoformat()
    if not times.is_session:
        return {"is_session": False, "next_session": following}
    bars = 0
    if cfg.feed.source == "replay":
        frame, _ = replay_bars(cfg, ctx, date)
        day = frame[(frame["ts"] >= times.open) & (frame["ts"] < times.close)]
        if day.empty:
            raise InputError(f"replay {date}: no validated bars of {cfg.universe.symbols} in the session")
        bars = len(day)
    else:  # live: the warm-up must be in the lake already (the nightly ingestion)
        frame, _ = replay_bars(cfg, ctx, date, with_day=False)
        if frame.empty:
            raise InputError(
                f"{date}: no validated bars of {cfg.universe.symbols} before the session to warm up on"
            )
    with ctx.db() as conn:
        state = records.ensure_control(conn, ctx.workflow_id, cfg.account)
    return {
        "is_session": True,
        "session_open": times.open.isoformat(),
        "session_close": times.close.isoformat(),
        "model_id": production_model(ctx.dsn, cfg.model.job),
        "state": state,
        "bars": bars,
        "next_session": following,
    }


def promote_bootstrap(dsn: str | None, model_id: str) -> str:
    """Promote the model a demo's bootstrap pipeline trained (the registry had no production model)."""
    from quanto.models.registry import promote
    from quanto.store.db import connect

    with connect(dsn) as conn:
        promote(conn, model_id)
    return model_id


def run_session(
    cfg: TradingConfig,
    ctx: StageContext,
    date: dt.date,
    session_open: dt.datetime,
    session_close: dt.datetime,
    model_id: str,
    notify: Callable[[str, dict], None],
    heartbeat: Callable[[dict], None],
    resume: dict | None,
    workflow_state: str | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Trade the session (quanto.execution.session.TradingLoop) and return its stats.
    `workflow_state`: the state the workflow holds now; a stricter one than the control row's (a halt
    accepted while its control activity was lost with a worker) is applied before any order."""
    from dataclasses import asdict

    from quanto.backtest.metrics import periods_per_year_for
    from quanto.execution.replay import replay_bars
    from quanto.execution.session import TradingLoop
    from quanto.execution.strategy import SessionModel
    from quanto.store.db import connect

    broker = open_broker(cfg)
    market = None
    live = cfg.feed.source != "replay"
    bars, _ = replay_bars(cfg, ctx, date, with_day=not live)
    if cfg.broker.kind == "local":  # the local exchange fills from the bars the loop hands it
        from quanto.execution.replay_market import LocalReplayMarket

        market = LocalReplayMarket(cfg.broker.base_url(cfg.mode), account_key(cfg))
    loop = TradingLoop(
        cfg,
        ctx.workflow_id,
        broker,
        SessionModel.load(ctx.lake, model_id),
        bars,
        session_open,
        session_close,
        db=lambda: connect(ctx.dsn),
        market=market,
        notify=notify,
        heartbeat=heartbeat,
        periods_per_year=cfg.strategy.periods_per_year or periods_per_year_for(cfg.universe.timeframe),
        workflow_state=workflow_state,
        stopping=stopping,
    )
    if not live:
        return asdict(loop.run(resume))
    from quanto.execution.feeds import alpaca_bars
    from quanto.execution.replay import TIMEFRAME_SECONDS

    seconds = TIMEFRAME_SECONDS[cfg.universe.timeframe]
    with alpaca_bars(
        cfg.feed.feed, cfg.feed.url, cfg.universe.symbols, session_close, seconds, cfg.feed.grace_s
    ) as feed:
        return asdict(loop.run(resume, feed=feed))


def prepare_local_account(cfg: TradingConfig, ctx: StageContext) -> None:
    """The account on the local exchange: a replay starts from a fresh one (unless this session
    already traded: a retried prepare must not wipe it); live paper trading keeps its account from
    day to day and creates it the first time."""
    from quanto.execution.broker import BrokerError
    from quanto.store import trading as records

    if cfg.feed.source == "replay":
        with ctx.db() as conn:
            traded = not records.session_records(conn, ctx.workflow_id)["orders"].empty
        if not traded:
            reset_local_account(cfg)
        return
    try:
        open_broker(cfg).account()
    except BrokerError:
        reset_local_account(cfg)


def reset_local_account(cfg: TradingConfig) -> None:
    """A replay on the local exchange starts from a fresh account with the strategy's capital and costs
    (the backtest's starting point)."""
    from quanto.execution.replay_market import LocalReplayMarket

    s = cfg.strategy
    market = LocalReplayMarket(cfg.broker.base_url(cfg.mode), account_key(cfg))
    market.create_account(
        cash=s.initial_capital,
        costs={
            "commission_bps": s.commission_bps,
            "commission_per_share": s.commission_per_share,
            "commission_per_order": s.commission_per_order,
            "commission_min": s.commission_min,
            "slippage_bps": s.slippage_bps,
            "borrow_rate": s.borrow_rate,
            "periods_per_year": s.periods_per_year or 252 * 390,
        },
        fractional=s.fractional_units,
    )


def apply_control(
    cfg: TradingConfig,
    dsn: str | None,
    workflow_id: str,
    state: str,
    reason: str,
    signal: str,
    at: dt.datetime,
    flatten: bool,
) -> dict[str, Any]:
    """Apply a control: write the state to the control row (waiting for a submission batch in flight,
    see `store.trading.submission_gate`), audit the signal, cancel every open order when the new state
    is not ACTIVE, and for flatten submit an order closing each position."""
    from quanto.observability import metrics
    from quanto.store import trading as records
    from quanto.store.db import connect

    broker = open_broker(cfg)
    with connect(dsn) as conn:
        conn.autocommit = True  # the state is committed (and seen by the loop) before the broker acts
        records.ensure_control(conn, workflow_id, cfg.account)
        records.append_audit(
            conn, workflow_id, cfg.account, at, "signal", {"signal": signal, "reason": reason}
        )
        records.set_control(conn, workflow_id, state, reason, at)
        metrics.set_trading_state(cfg.account, state)
        cancelled = broker.cancel_all() if state != "ACTIVE" else []
        closing = []
        positions = broker.positions() if flatten else []
        for p in positions:
            if p.qty == 0:
                continue
            request = OrderRequest(
                client_order_id=client_order_id(workflow_id, at, p.symbol, "flatten"),
                symbol=p.symbol,
                side="sell" if p.qty > 0 else "buy",
                qty=abs(p.qty),
            )
            order = broker.submit(request)
            closing.append(order.client_order_id)
            records.record_order(conn, workflow_id, cfg.account, order, intent="flatten", decision_ts=at)
        records.append_audit(
            conn, workflow_id, cfg.account, at, "control",
            {"signal": signal, "state": state, "cancelled": cancelled, "closing_orders": closing},
        )  # fmt: skip
    return {"state": state, "cancelled": cancelled, "closing_orders": closing}


def set_limits(dsn: str | None, workflow_id: str, account: str, limits: dict, at: dt.datetime) -> dict:
    """Validate new risk limits (RiskLimits: a bad value is an InputError naming it) and record them;
    the session loop reads them before every bar."""
    from pydantic import ValidationError

    from quanto.store import trading as records
    from quanto.store.db import connect

    try:
        valid = RiskLimits.model_validate(limits).model_dump(mode="json")
    except ValidationError as err:
        raise InputError(f"risk limits: {err}") from err
    with connect(dsn) as conn:
        records.ensure_control(conn, workflow_id, account)
        records.set_risk_limits(conn, workflow_id, valid)
        records.append_audit(conn, workflow_id, account, at, "control", {"signal": "limits", "limits": valid})
    return valid


def write_report(
    cfg: TradingConfig, dsn: str | None, lake: Lake, workflow_id: str, meta: dict
) -> tuple[str, str]:
    """The daily session report (HTML and PDF) under runs/<workflow id>/ in the lake."""
    from quanto.reports.session import render_session_report
    from quanto.store import trading as records
    from quanto.store.db import connect

    with connect(dsn) as conn:
        frames = records.session_records(conn, workflow_id)
    stamps = frames["pnl"].get("ts", [])
    if len(stamps):  # the session's first and last recorded bar closes
        meta = {"started_at": min(stamps), "finished_at": max(stamps), **meta}
    out: Path = lake.abspath(f"runs/{workflow_id}")
    out.mkdir(parents=True, exist_ok=True)
    html, pdf = render_session_report(frames, meta, out)
    return str(html), str(pdf)
