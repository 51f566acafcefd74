"""The trading loop of one session: bars in, orders out, everything recorded.

At each bar (all symbols of one timestamp), in order:

1. **Market.** A replay delivers the bar to the local exchange first (orders of the previous close
   fill at this bar's open there, as in the backtest); a live feed's bar has already reached Alpaca.
2. **Sync.** New fills and order states are read from the broker and recorded (PostgreSQL, audit log,
   metrics); the account and positions are read back — the broker is the book of record.
3. **Account risk.** `risk.check_account`: the daily loss limit halts, a drawdown or
   underperformance breach disables the strategy (REDUCING), drift alerts (and halts per config).
   A state change is written to the control row and reported to the workflow (`notify`).
4. **Decisions.** At the session's last bar, with `at_close: flatten`, every position is closed at
   that close (market-on-close orders: the backtest's close_at_end); otherwise the model predicts,
   the strategy plans orders (`strategy.plan_orders`), and each order is risk-checked
   (`risk.check_order`, every decision recorded with its reason) and submitted with its
   deterministic client_order_id — all inside the control row's submission gate, so a halt that has
   been applied can never be overtaken by an order of a batch that read the old state.
5. **Snapshot.** P&L and positions are recorded, the workflow gets a progress snapshot, and the
   activity heartbeats the bar's timestamp: a retried activity resumes at that bar (its orders are
   looked up by their ids, never doubled) after reconciling positions and open orders with the broker.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from quanto.config.trading import RiskLimits, TradingConfig
from quanto.contracts import STATE_STRICTNESS
from quanto.execution.broker import (
    Account,
    Broker,
    BrokerError,
    Fill,
    Order,
    OrderRequest,
    Position,
    client_order_id,
)
from quanto.execution.replay import bar_groups, bar_payload
from quanto.execution.strategy import OrderPlan, SessionModel, plan_orders

log = logging.getLogger(__name__)

RECENT_ORDERS = 10  # orders kept in the workflow's snapshot besides the open ones (history size)
SUBMIT_THREADS = 4


@dataclass
class SessionStats:
    """What a session did, returned to the workflow (small: it crosses the activity boundary)."""

    bars: int = 0
    orders: int = 0
    fills: int = 0
    refused: int = 0
    state: str = "ACTIVE"
    equity: float = 0.0
    pnl: float = 0.0
    resumed_at: str | None = None
    reconciled: list[str] = field(default_factory=list)


class TradingLoop:
    """One session of one account (module docstring).

    broker: the Broker (AlpacaBroker on the local exchange or Alpaca). market: the local exchange's
    replay endpoint (None for a live feed). bars: the session's bars and the warm-up history (symbol,
    ts sorted). db: a psycopg connection factory. notify(kind, payload): reports to the workflow
    (kinds: "progress", "risk", "reconcile"). heartbeat(details): the activity's heartbeat. sleep:
    time.sleep (tests pass a no-op for an instant replay). stopping(): True once the session must end
    now (its activity was cancelled). workflow_state: the workflow's state when the activity started.
    """

    def __init__(
        self,
        cfg: TradingConfig,
        workflow_id: str,
        broker: Broker,
        model: SessionModel,
        bars: pd.DataFrame,
        session_open: dt.datetime,
        session_close: dt.datetime,
        db: Callable[[], Any],
        market: Any = None,
        notify: Callable[[str, dict], None] = lambda kind, payload: None,
        heartbeat: Callable[[dict], None] = lambda details: None,
        sleep: Callable[[float], None] = time.sleep,
        periods_per_year: float | None = None,
        workflow_state: str | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg = cfg
        self.workflow_id = workflow_id
        self.account_name = cfg.account
        self.broker = broker
        self.model = model
        self.bars = bars
        self.open = session_open
        self.close = session_close
        self.db = db
        self.market = market
        self.notify = notify
        self.heartbeat = heartbeat
        self.sleep = sleep
        self.periods_per_year = periods_per_year
        self.workflow_state = workflow_state
        self.stopping = stopping
        self.stats = SessionStats()
        self.equity_history: list[float] = []
        self.hits: deque[bool] = deque(maxlen=cfg.risk.drift.window)
        self.submitted: deque[dt.datetime] = deque()
        self.orders: dict[str, Order] = {}
        self.intents: dict[str, tuple[str, dt.datetime]] = {}
        self.last_predictions: dict[str, float] = {}
        self.last_closes: dict[str, float] = {}
        self.fills_seen: set[str] = set()
        self.opening_equity: float | None = None
        self.peak_equity = 0.0
        self.state = "ACTIVE"
        self.limits_seen: dict | None = None
        self.recorded_book: tuple | None = None  # the positions last recorded
        self.breaches: set[tuple[str, str]] = set()  # (rule, action) already acted on
        # Orders of one bar go out concurrently: 50 sequential round trips would miss the latency goal.
        self.pool = ThreadPoolExecutor(max_workers=SUBMIT_THREADS, thread_name_prefix="submit")
        self.last_fill_ts: dt.datetime | None = None
        self.conn: Any = None  # the records connection, open while `run` runs
        self.gate: Any = None  # the submission gate's connection

    # ----------------------------------------------------------------------------------- the loop
    def run(
        self, resume: dict | None = None, feed: Iterable[tuple[pd.Timestamp, pd.DataFrame]] | None = None
    ) -> SessionStats:
        """Trade every bar of the session (from the bar after `resume["bar_ts"]` on a retry): the
        replay's bars from `self.bars`, or those of a live `feed` (appended to the history as they come)."""
        from quanto.store import trading as records

        groups: list | None = None
        if feed is None:
            groups = bar_groups(self.bars, self.open, self.close)
            replay = self.cfg.feed.replay
            if replay is not None and replay.bars is not None:
                groups = groups[: replay.bars]
            if not groups:
                raise BrokerError(f"no bars between {self.open} and {self.close}: nothing to trade")
        # Two autocommit connections for the session: records, and the submission gate's lock (a
        # gate's transaction must hold nothing else, so its records go through the other one).
        with self.db() as self.conn, self.db() as self.gate:
            self.conn.autocommit = True
            self.gate.autocommit = True
            self.state = records.ensure_control(self.conn, self.workflow_id, self.account_name)
            if STATE_STRICTNESS.get(self.workflow_state or "", 0) > STATE_STRICTNESS[self.state]:
                # The workflow accepted a halt whose control activity has not run yet (its worker died):
                # apply it before anything else, so no order goes out in between.
                records.set_control(
                    self.conn,
                    self.workflow_id,
                    self.workflow_state,
                    "the workflow's state",
                    dt.datetime.now(dt.UTC),
                )
                self.state = self.workflow_state  # type: ignore[assignment]
            try:
                self._trade(groups if groups is not None else feed, groups is None, resume)  # type: ignore[arg-type]
            finally:
                self.pool.shutdown(wait=True)
        self.stats.state = self.state
        return self.stats

    def _trade(
        self, groups: Iterable[tuple[pd.Timestamp, pd.DataFrame]], live: bool, resume: dict | None
    ) -> None:
        """Reconcile, then every bar after the resume point: a replay paced to its speed, a live
        feed as its minutes complete."""
        from quanto.store import trading as records

        done_until = pd.Timestamp(resume["bar_ts"]) if resume and resume.get("bar_ts") else None
        # Heartbeats are throttled: the bars recorded complete after the last one that reached the
        # server must not be traded again (their decisions would see later positions).
        recorded = records.last_snapshot_ts(self.conn, self.workflow_id)
        if recorded is not None:
            last_done = pd.Timestamp(recorded) - pd.Timedelta(self._timeframe_seconds(), "s")
            done_until = last_done if done_until is None else max(done_until, last_done)
        if resume:
            self.opening_equity = resume.get("opening_equity")
            self.peak_equity = resume.get("peak_equity", 0.0)
            self.equity_history = list(resume.get("equity_history", []))
        if done_until is not None:
            self.stats.resumed_at = str(done_until)
        self._reconcile()
        if self.opening_equity is None:
            self.opening_equity = self.broker.account().last_equity
        self.peak_equity = max(self.peak_equity, self.opening_equity)
        speed = self.cfg.feed.replay.speed if self.cfg.feed.replay and not live else 0.0
        step = pd.Timedelta(self._timeframe_seconds(), "s")
        n = None if live else len(groups)  # type: ignore[arg-type]
        started, first = time.monotonic(), None
        for i, (ts, group) in enumerate(groups):
            if done_until is not None and ts <= done_until:  # finished before the restart
                continue
            if self.stopping():  # the activity was cancelled: the workflow no longer wants this session
                log.info("session %s stops before %s: cancelled", self.workflow_id, ts)
                return
            if live:
                self.bars = pd.concat([self.bars, group], ignore_index=True)
            first = ts if first is None else first
            if speed > 0 and self.market is not None:  # a replay at `speed` times real time
                self.sleep(
                    max(
                        0.0,
                        started + (ts - first) / step * self._timeframe_seconds() / speed - time.monotonic(),
                    )
                )
            last = ts + step >= pd.Timestamp(self.close) if live else i == n - 1  # type: ignore[operator]
            self.bar(ts, group, last=last)
            self.heartbeat(self._checkpoint(ts))
        self._sync(self.close)  # the close's own fills (market-on-close) come after the last bar

    def bar(self, ts: pd.Timestamp, group: pd.DataFrame, last: bool) -> None:
        """Steps 1–5 of the module docstring for the bars of one timestamp."""

        decided_at = (ts + pd.Timedelta(self._timeframe_seconds(), "s")).to_pydatetime()
        # The model needs only the bars: it predicts while the broker is read (latency).
        history = self.bars[self.bars["ts"] <= ts]
        predicting = None if last else self.pool.submit(self.model.predict, history, ts)
        if self.market is not None:
            self.market.deliver(bar_payload(group, self.cfg.universe.timeframe))
        closes = dict(zip(group["symbol"], group["close"].astype(float), strict=True))
        self._score_predictions(closes)
        self.last_closes.update(closes)
        self._sync(decided_at)
        account = self.broker.account()
        positions = {p.symbol: p for p in self.broker.positions()}
        self.equity_history.append(account.equity)
        self.peak_equity = max(self.peak_equity, account.equity)
        self._account_risk(decided_at, account.equity, positions)
        if last and self.cfg.at_close == "flatten":
            plans = [
                OrderPlan(s, p.qty, 0.0, self.last_closes.get(s, p.current_price))
                for s, p in sorted(positions.items())
                if p.qty != 0
            ]
            self._submit(plans, decided_at, ts, account.equity, positions, intent="close", tif="cls")
        elif predicting is not None:
            predictions = predicting.result()
            self.last_predictions = predictions
            grid = None
            if self.cfg.strategy.sizing in ("kelly", "vol_target"):
                grid = history.pivot(index="ts", columns="symbol", values="close")
            plans = plan_orders(
                predictions,
                closes,
                {s: p.qty for s, p in positions.items()},
                account.equity,
                self.cfg.strategy,
                self.model.objective,
                len(self.cfg.universe.symbols),
                grid,
                self.periods_per_year,
            )
            self._submit(plans, decided_at, ts, account.equity, positions, intent="rebalance", tif="day")
        if last:  # market-on-close orders filled at this close: read the book again
            account = self.broker.account()
            positions = {p.symbol: p for p in self.broker.positions()}
        self._snapshot(decided_at, ts, account, list(positions.values()))
        self.stats.bars += 1

    # ------------------------------------------------------------------------------ the steps
    def _submit(
        self,
        plans: list[OrderPlan],
        decided_at: dt.datetime,
        bar_ts: pd.Timestamp,
        equity: float,
        positions: dict[str, Position],
        intent: str,
        tif: str,
    ) -> None:
        """Risk-check the bar's orders one by one (each sees the ones approved before it), submit the
        approved ones concurrently, all inside the submission gate (module docstring); then record
        every decision and order — after the acknowledgements, which is what the latency is about
        (a restart in between re-records them: the retried bar finds its orders by id)."""
        from quanto.execution.risk import ProposedOrder, RiskView, check_order
        from quanto.observability import metrics
        from quanto.store import trading as records

        if not plans:
            return
        projected = {s: p.qty for s, p in positions.items()}
        prices = {s: self.last_closes.get(s, p.current_price) for s, p in positions.items()}
        prices.update({p.symbol: p.price for p in plans})
        decisions, approved = [], []
        with records.submission_gate(self.gate, self.workflow_id) as state:
            self.state = state
            if state == "HALTED":  # nothing to decide: the halt itself is recorded, once
                return
            cutoff = decided_at - dt.timedelta(seconds=60)
            while self.submitted and self.submitted[0] < cutoff:
                self.submitted.popleft()
            for plan in plans:
                view = RiskView(
                    ts=decided_at,
                    state=state,  # type: ignore[arg-type]
                    equity=equity,
                    opening_equity=float(self.opening_equity or equity),
                    peak_equity=self.peak_equity,
                    positions=projected,
                    prices=prices,
                    sectors=self.cfg.universe.sectors,
                    submitted=tuple(self.submitted),
                )
                proposed = ProposedOrder(symbol=plan.symbol, side=plan.side, qty=plan.qty, price=plan.price)  # type: ignore[arg-type]
                decision = check_order(proposed, view, self.cfg.risk)
                decisions.append((plan, decision))
                if decision.approved:
                    projected = {**projected, plan.symbol: plan.target}
                    self.submitted.append(decided_at)
                    cid = client_order_id(self.workflow_id, bar_ts.to_pydatetime(), plan.symbol, intent)
                    approved.append(
                        OrderRequest(cid, plan.symbol, plan.side, plan.qty, time_in_force=tif)  # type: ignore[arg-type]
                    )
            results = list(self.pool.map(self._send, approved))
        for plan, decision in decisions:
            records.record_risk(
                self.conn, self.workflow_id, self.account_name, decided_at, rule=decision.rule,
                action="approve" if decision.approved else "refuse", reason=decision.reason,
                symbol=plan.symbol, side=plan.side, qty=plan.qty, notional=decision.notional,
            )  # fmt: skip
            if not decision.approved:
                self.stats.refused += 1
                metrics.count_order(self.account_name, "rejected")
                metrics.count_risk_breach(self.account_name, decision.rule)
        for request, result in zip(approved, results, strict=True):
            if isinstance(result, BrokerError):
                self.stats.refused += 1
                metrics.count_order(self.account_name, "rejected")
                records.append_audit(
                    self.conn, self.workflow_id, self.account_name, decided_at, "order",
                    {"client_order_id": request.client_order_id, "symbol": request.symbol, "rejected": str(result)},
                )  # fmt: skip
                continue
            self.orders[request.client_order_id] = result
            self.intents[request.client_order_id] = (intent, decided_at)
            records.record_order(
                self.conn, self.workflow_id, self.account_name, result, intent=intent, decision_ts=decided_at
            )
            self.stats.orders += 1
            metrics.count_order(self.account_name, "submitted")

    def _send(self, request: OrderRequest) -> Order | BrokerError:
        """Submit one order; a rejection is returned (recorded by the caller), a network failure that
        retrying may fix is raised (the activity retries, and the retried bar looks its orders up)."""
        try:
            return self.broker.submit(request)
        except BrokerError as err:
            if err.retryable:
                raise
            return err

    def _sync(self, now: dt.datetime) -> None:
        """Record the broker's new fills and the state of the orders this loop placed."""
        from quanto.observability import metrics
        from quanto.store import trading as records

        fills = self.broker.fills(after=self.last_fill_ts)
        new: list[Fill] = [f for f in fills if (f.fill_id or f.order_id) not in self.fills_seen]
        if fills:  # fills at the same time as the last one seen are read again and skipped by id
            self.last_fill_ts = max(f.ts for f in fills) - dt.timedelta(microseconds=1)
        open_ids = [cid for cid, o in self.orders.items() if o.is_open]
        if not new and not open_ids:
            return
        conn = self.conn
        for fill in new:
            self.fills_seen.add(fill.fill_id or fill.order_id)
            if records.record_fill(conn, self.workflow_id, self.account_name, fill):
                self.stats.fills += 1
                metrics.count_fill(self.account_name, fill.symbol)
        current = {}
        if open_ids:  # the orders since the oldest one still open: about a bar's worth, not the day's
            since = min(
                (self.orders[c].submitted_at for c in open_ids if self.orders[c].submitted_at), default=None
            )
            after = since - dt.timedelta(microseconds=1) if since else self.open
            current = {o.client_order_id: o for o in self.broker.orders("all", after=after)}
        for cid in open_ids:
            order = current.get(cid)
            if order is None or order.status == self.orders[cid].status:
                continue
            self.orders[cid] = order
            intent, decided = self.intents.get(cid, ("rebalance", None))
            records.record_order(
                conn, self.workflow_id, self.account_name, order, intent=intent, decision_ts=decided
            )
            if order.status in ("filled", "canceled", "rejected", "expired"):
                metrics.count_order(
                    self.account_name, "cancelled" if order.status == "canceled" else order.status
                )

    def _account_risk(self, now: dt.datetime, equity: float, positions: dict[str, Position]) -> None:
        """Step 3: account-level limits; a state change is applied and reported."""
        from quanto.execution.risk import RiskView, check_account
        from quanto.observability import metrics
        from quanto.store import trading as records

        control = records.control_state(self.conn, self.workflow_id)
        if control is not None:
            if control["state"] == "ACTIVE" and self.state != "ACTIVE":
                self.breaches.clear()  # resumed: a breach that persists acts (and is recorded) again
            self.state = control["state"]
        changed = records.risk_limits(self.conn, self.workflow_id)
        if changed is not None and changed != self.limits_seen:  # the workflow's set_risk_limits update
            self.cfg = self.cfg.model_copy(update={"risk": RiskLimits.model_validate(changed)})
            self.limits_seen = changed
        view = RiskView(
            ts=now,
            state=self.state,  # type: ignore[arg-type]
            equity=equity,
            opening_equity=float(self.opening_equity or equity),
            peak_equity=self.peak_equity,
            positions={s: p.qty for s, p in positions.items()},
            prices={s: self.last_closes.get(s, p.current_price) for s, p in positions.items()},
            sectors=self.cfg.universe.sectors,
            submitted=tuple(self.submitted),
        )
        check = check_account(view, self.cfg.risk, self.equity_history, list(self.hits))
        # check_account reports every breach that holds; act on (and record) each one once.
        fresh = [e for e in check.events if (e.rule, e.action) not in self.breaches]
        if not fresh:
            return
        self.breaches.update((e.rule, e.action) for e in fresh)
        for event in fresh:
            metrics.count_risk_breach(self.account_name, event.rule)
            records.record_risk(
                self.conn, self.workflow_id, self.account_name, now, rule=event.rule, action=event.action,
                reason=event.reason, details={"value": event.value, "limit": event.limit},
            )  # fmt: skip
        if check.state != self.state:
            reason = "; ".join(e.reason for e in fresh if e.action != "alert")
            records.set_control(self.conn, self.workflow_id, check.state, reason, now)
            self.state = check.state
            if check.state == "HALTED":
                self.broker.cancel_all()
        for event in fresh:
            self.notify(
                "risk",
                {"rule": event.rule, "action": event.action, "reason": event.reason, "state": self.state},
            )

    def _score_predictions(self, closes: dict[str, float]) -> None:
        """Directional hits of the previous bar's predictions against this bar's close-to-close move
        (the drift monitor's input): regression predicts the sign of the return, classification
        P(up) above or below 0.5."""
        centre = 0.5 if self.model.objective == "classification" else 0.0
        for symbol, pred in self.last_predictions.items():
            before, now = self.last_closes.get(symbol), closes.get(symbol)
            if before is None or now is None or not np.isfinite(pred) or pred == centre or now == before:
                continue
            self.hits.append((pred > centre) == (now > before))

    def _snapshot(
        self, now: dt.datetime, ts: pd.Timestamp, account: Account, positions: list[Position]
    ) -> None:
        """Step 5: P&L (every bar) and positions (when they changed) to PostgreSQL and metrics, a
        progress snapshot to the workflow. The book is the one read at this bar: orders decided at
        this close fill at the next bar, so it is still the book after the decisions."""
        from quanto.observability import metrics
        from quanto.store import trading as records

        gross = sum(abs(p.market_value) for p in positions)
        net = sum(p.market_value for p in positions)
        pnl = account.equity - float(self.opening_equity or account.equity)
        drawdown = 1.0 - account.equity / self.peak_equity if self.peak_equity > 0 else 0.0
        conn = self.conn
        scale = account.equity if account.equity > 0 else float("nan")  # exposures as fractions of equity
        records.record_pnl(
            conn, self.workflow_id, self.account_name, now, equity=account.equity, cash=account.cash,
            pnl=pnl, drawdown=drawdown, gross=gross / scale, net=net / scale, state=self.state,
        )  # fmt: skip
        book = tuple(sorted((p.symbol, p.qty) for p in positions))
        if book != self.recorded_book:
            records.record_positions(conn, self.workflow_id, now, positions)
            self.recorded_book = book
        metrics.set_pnl(self.account_name, pnl)
        metrics.set_drawdown(self.account_name, drawdown)
        metrics.set_exposure(self.account_name, gross, net)
        if self.opening_equity:
            metrics.set_daily_loss_fraction(
                self.account_name, max(0.0, -pnl) / (self.opening_equity * self.cfg.risk.max_daily_loss)
            )
        if self.hits:
            metrics.set_live_accuracy(self.account_name, float(np.mean(self.hits)), len(self.hits))
        metrics.set_trading_state(self.account_name, self.state)
        self.stats.equity = account.equity
        self.stats.pnl = pnl
        recent = sorted(self.orders.values(), key=lambda o: o.submitted_at or now)
        shown = [o for o in recent if o.is_open] + [o for o in recent[-RECENT_ORDERS:] if not o.is_open]
        self.notify(
            "progress",
            {
                "bar_ts": ts.isoformat(),
                "bars_done": self.stats.bars + 1,
                "state": self.state,
                "positions": [
                    {"symbol": p.symbol, "qty": p.qty, "avg_entry_price": p.avg_entry_price, "market_value": p.market_value}
                    for p in positions
                ],
                "orders": [order_json(o) for o in shown],
                "pnl": {"equity": account.equity, "cash": account.cash, "pnl": pnl, "drawdown": drawdown,
                        "gross": gross, "net": net},
            },
        )  # fmt: skip

    def _reconcile(self) -> None:
        """On start and after a restart: compare the broker's positions and open orders with the last
        recorded ones; log, audit and report every difference (the broker wins)."""
        from quanto.store import trading as records

        broker_positions = {p.symbol: p.qty for p in self.broker.positions()}
        broker_open = {o.client_order_id: o for o in self.broker.orders("open")}
        conn = self.conn
        recorded = records.session_records(conn, self.workflow_id)
        last = recorded.get("positions")
        known = (
            {}
            if last is None or last.empty
            else dict(zip(last["symbol"], last["qty"].astype(float), strict=True))
        )
        orders = recorded.get("orders")
        recorded_open = set()
        if orders is not None and not orders.empty:
            for row in orders.itertuples(index=False):
                self.intents[row.client_order_id] = (row.intent, row.decision_ts)
                if row.status in ("new", "accepted", "pending_new", "partially_filled"):
                    recorded_open.add(row.client_order_id)
        diffs = []
        for symbol in sorted(set(broker_positions) | set(known)):
            if abs(broker_positions.get(symbol, 0.0) - known.get(symbol, 0.0)) > 1e-9:
                diffs.append(
                    f"position {symbol}: recorded {known.get(symbol, 0.0)}, broker {broker_positions.get(symbol, 0.0)}"
                )
        for cid in sorted(set(broker_open) ^ recorded_open):
            where = "broker only" if cid in broker_open else "recorded only"
            diffs.append(f"open order {cid}: {where}")
        for cid, order in broker_open.items():
            self.orders[cid] = order
        now = dt.datetime.now(dt.UTC)
        records.append_audit(
            conn, self.workflow_id, self.account_name, now, "reconcile",
            {"positions": broker_positions, "open_orders": sorted(broker_open), "differences": diffs},
        )  # fmt: skip
        for fill in self.broker.fills():
            self.fills_seen.add(fill.fill_id or fill.order_id)
        self.stats.reconciled = diffs
        for d in diffs:
            log.warning("reconcile %s: %s", self.workflow_id, d)
        if diffs:
            self.notify("reconcile", {"differences": diffs[:50]})

    # --------------------------------------------------------------------------------- helpers
    def _checkpoint(self, ts: pd.Timestamp) -> dict:
        """Heartbeat details: where a retried activity resumes, and the risk state it needs."""
        return {
            "bar_ts": ts.isoformat(),
            "opening_equity": self.opening_equity,
            "peak_equity": self.peak_equity,
            "equity_history": self.equity_history[-self.cfg.risk.underperformance_bars :],
        }

    def _timeframe_seconds(self) -> int:
        from quanto.execution.replay import TIMEFRAME_SECONDS

        return TIMEFRAME_SECONDS[self.cfg.universe.timeframe]


def order_json(order: Order) -> dict:
    """An order as `quanto trade status --json` shows it."""
    return {
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side,
        "qty": order.qty,
        "status": order.status,
        "submitted_at": order.submitted_at.isoformat() if order.submitted_at else None,
        "filled_qty": order.filled_qty,
        "filled_avg_price": order.filled_avg_price,
    }
