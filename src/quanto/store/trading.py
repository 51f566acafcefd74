"""Repositories for a trading session's records: the control state, orders, fills, position and P&L
snapshots, risk decisions and the append-only audit log (migration 0005_trading.sql).

Every function takes a psycopg 3 connection first. Functions that write more than one row (an order and
its audit row, a control change and its audit row) do so in one transaction: on a connection with no
open transaction (autocommit, or idle) they commit before returning; inside the caller's transaction
they become a savepoint of it and commit with it.

The halt protocol rests on two functions. `submission_gate` holds a FOR SHARE lock on the session's
control row while one batch of orders is submitted; `set_control` updates that row, so it waits until
every batch that read the old state has finished. Once `set_control(..., "HALTED", ...)` returns, no
batch that saw ACTIVE is still submitting, and every later batch sees HALTED. The row lives in
PostgreSQL, so a halt survives worker and server restarts.

What is audited without being asked: control changes (`state_change`; the row's creation is a
`control` event), each new order or change of an order's status or filled quantity (`order`), each new
fill (`fill`) and each risk decision other than an approval (`risk`; approvals are in risk_events).
Signals received, reconciliations and session events are the caller's to `append_audit`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import SecretBytes, SecretStr

if TYPE_CHECKING:  # store sits below the domain layers: the broker records are read, never imported
    from quanto.execution.broker import Fill, Order, Position

STATES = ("ACTIVE", "REDUCING", "HALTED")
RISK_ACTIONS = ("approve", "refuse", "halt", "disable", "alert")
AUDIT_KINDS = ("signal", "state_change", "order", "fill", "risk", "reconcile", "session", "control")
# Alpaca statuses after which an order never fills again: a late event reporting an open status (a
# `new` that arrives after the `fill`) must not reopen it.
FINAL_STATUSES = ("filled", "canceled", "expired", "replaced", "rejected", "done_for_day")
# Payload keys containing one of these are refused: secrets never reach the records.
SECRET_KEY_PARTS = ("secret", "token", "password")

_CONTROL_COLUMNS = "workflow_id, account, state, reason, halted_at, updated_at, version"


# --- payloads -----------------------------------------------------------------------------------


def _json_ready(value: Any, path: str) -> Any:
    """`value` as plain JSON (dates as ISO strings, NaN as null), refusing secret-like keys and values.

    `path` names where the value sits in the payload, for the error message.
    """
    if isinstance(value, SecretStr | SecretBytes):
        raise ValueError(f"{path} holds a secret ({type(value).__name__}); records never carry secrets")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = str(key)
            if any(part in name.lower() for part in SECRET_KEY_PARTS):
                raise ValueError(
                    f"{path}.{name}: a key named like a secret ({'/'.join(SECRET_KEY_PARTS)}) is refused;"
                    " records never carry secrets"
                )
            out[name] = _json_ready(item, f"{path}.{name}")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_ready(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float | Decimal):
        v = float(value)
        return v if math.isfinite(v) else None  # jsonb has no NaN or Infinity
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Enum):
        return _json_ready(value.value, path)
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{path}: {type(value).__name__} is not JSON; pass plain values")


def _payload(value: Mapping[str, Any] | None, name: str) -> Jsonb:
    return Jsonb(_json_ready(dict(value or {}), name))


def _insert_audit(
    conn: psycopg.Connection, workflow_id: str, account: str, ts: dt.datetime, kind: str, payload: Jsonb
) -> None:
    conn.execute(
        "INSERT INTO audit_log (workflow_id, account, ts, kind, payload) VALUES (%s, %s, %s, %s, %s)",
        (workflow_id, account, ts, kind, payload),
    )


def append_audit(
    conn: psycopg.Connection,
    workflow_id: str,
    account: str,
    ts: dt.datetime,
    kind: str,
    payload: dict[str, Any],
) -> None:
    """Append one audit row (`kind` one of AUDIT_KINDS). The log is append-only: the database refuses
    UPDATE, DELETE and TRUNCATE on it. Raises ValueError for an unknown kind or a payload key named like
    a secret (*secret*, *token*, *password*, at any depth)."""
    if kind not in AUDIT_KINDS:
        raise ValueError(f"audit kind {kind!r} is not one of {list(AUDIT_KINDS)}")
    _insert_audit(conn, workflow_id, account, ts, kind, _payload(payload, "payload"))


# --- control state ------------------------------------------------------------------------------


def ensure_control(conn: psycopg.Connection, workflow_id: str, account: str) -> str:
    """Create the session's control row (ACTIVE) when it is absent; returns the current state.

    A restarted session finds its row as it was left: a halt stays a halt. The creation is audited
    (kind `control`). Raises ValueError when the row belongs to another account.
    """
    with conn.transaction():
        created = conn.execute(
            "INSERT INTO trading_controls (workflow_id, account) VALUES (%s, %s)"
            " ON CONFLICT (workflow_id) DO NOTHING RETURNING state, updated_at",
            (workflow_id, account),
        ).fetchone()
        if created is not None:
            _insert_audit(
                conn,
                workflow_id,
                account,
                created[1],
                "control",
                _payload({"event": "created", "state": "ACTIVE"}, "payload"),
            )
            return created[0]
        state, owner = conn.execute(
            "SELECT state, account FROM trading_controls WHERE workflow_id = %s", (workflow_id,)
        ).fetchone()
    if owner != account:
        raise ValueError(f"trading control {workflow_id!r} belongs to account {owner!r}, not {account!r}")
    return state


def control_state(conn: psycopg.Connection, workflow_id: str) -> dict[str, Any] | None:
    """{state, reason, halted_at, version} of the session, or None when it has no control row."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT state, reason, halted_at, version FROM trading_controls WHERE workflow_id = %s",
            (workflow_id,),
        )
        return cur.fetchone()


def set_control(conn: psycopg.Connection, workflow_id: str, state: str, reason: str, ts: dt.datetime) -> dict:
    """Move the session to `state` (ACTIVE, REDUCING or HALTED) and audit it (kind `state_change`).

    Waits until every open `submission_gate` batch of the session has ended (the row lock), so when it
    returns no batch that read the old state is still submitting. `halted_at` is set to `ts` on the move
    to HALTED (a repeated halt keeps the first time) and cleared on ACTIVE. Setting the state and reason
    the row already has changes nothing and audits nothing (a retried signal). Returns the row
    (workflow_id, account, state, reason, halted_at, updated_at, version) with `previous_state` and
    `changed`. Raises ValueError for an unknown state, LookupError when `ensure_control` never ran.
    """
    if state not in STATES:
        raise ValueError(f"trading state {state!r} is not one of {list(STATES)}")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # FOR UPDATE conflicts with the gate's FOR SHARE: this is where a halt waits for a batch.
        cur.execute(
            f"SELECT {_CONTROL_COLUMNS} FROM trading_controls WHERE workflow_id = %s FOR UPDATE",
            (workflow_id,),
        )
        before = cur.fetchone()
        if before is None:
            raise LookupError(f"no trading control row for {workflow_id!r}: call ensure_control first")
        if (before["state"], before["reason"]) == (state, reason):
            return {**before, "previous_state": before["state"], "changed": False}
        cur.execute(
            f"""
            UPDATE trading_controls SET
                state = %(state)s,
                reason = %(reason)s,
                halted_at = CASE
                    WHEN %(state)s = 'HALTED' THEN CASE WHEN state = 'HALTED' THEN halted_at ELSE %(ts)s END
                    WHEN %(state)s = 'ACTIVE' THEN NULL
                    ELSE halted_at END,
                updated_at = %(ts)s,
                version = version + 1
            WHERE workflow_id = %(workflow_id)s
            RETURNING {_CONTROL_COLUMNS}
            """,
            {"state": state, "reason": reason, "ts": ts, "workflow_id": workflow_id},
        )
        after = cur.fetchone()
        payload = {"from": before["state"], "to": state, "reason": reason, "version": after["version"]}
        _insert_audit(conn, workflow_id, after["account"], ts, "state_change", _payload(payload, "payload"))
    return {**after, "previous_state": before["state"], "changed": True}


@contextmanager
def submission_gate(conn: psycopg.Connection, workflow_id: str) -> Iterator[str]:
    """Hold a FOR SHARE lock on the control row for one submission batch and yield the state. A
    concurrent set_control (UPDATE) waits until the batch ends, so once set_control has returned, no
    batch that saw the old state is still submitting — the halt protocol depends on it.

    The batch is one transaction on `conn`, which must have none open (an autocommit connection is
    simplest): a lock inside the caller's longer transaction would hold halts back until it commits.
    Batches run concurrently with each other; keep them short (a halt waits for the longest). Writes
    made on `conn` inside the batch commit when it ends and roll back when it raises, so record orders
    on another connection (or catch broker errors inside the batch). Raises LookupError when the
    session has no control row.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError(
            "submission_gate needs a connection with no open transaction (use autocommit=True or commit"
            " first): its lock must end with the batch"
        )
    with conn.transaction():
        row = conn.execute(
            "SELECT state FROM trading_controls WHERE workflow_id = %s FOR SHARE", (workflow_id,)
        ).fetchone()
        if row is None:
            raise LookupError(f"no trading control row for {workflow_id!r}: call ensure_control first")
        yield row[0]


# --- orders and fills ---------------------------------------------------------------------------

_UPSERT_ORDER = """
    INSERT INTO orders (client_order_id, workflow_id, account, broker_order_id, parent_client_order_id,
                        symbol, side, qty, type, time_in_force, limit_price, stop_price, intent,
                        decision_ts, status, filled_qty, filled_avg_price, submitted_at, updated_at)
    VALUES (%(client_order_id)s, %(workflow_id)s, %(account)s, %(broker_order_id)s, %(parent)s,
            %(symbol)s, %(side)s, %(qty)s, %(type)s, %(time_in_force)s, %(limit_price)s, %(stop_price)s,
            %(intent)s, %(decision_ts)s, %(status)s, %(filled_qty)s, %(filled_avg_price)s,
            %(submitted_at)s, now())
    ON CONFLICT (client_order_id) DO UPDATE SET
        broker_order_id = coalesce(EXCLUDED.broker_order_id, orders.broker_order_id),
        qty = EXCLUDED.qty,
        type = EXCLUDED.type,
        time_in_force = EXCLUDED.time_in_force,
        limit_price = EXCLUDED.limit_price,
        stop_price = EXCLUDED.stop_price,
        decision_ts = coalesce(orders.decision_ts, EXCLUDED.decision_ts),
        status = CASE
            WHEN orders.status = ANY(%(final)s) AND NOT EXCLUDED.status = ANY(%(final)s) THEN orders.status
            ELSE EXCLUDED.status END,
        filled_qty = greatest(orders.filled_qty, EXCLUDED.filled_qty),
        filled_avg_price = CASE
            WHEN EXCLUDED.filled_qty >= orders.filled_qty
            THEN coalesce(EXCLUDED.filled_avg_price, orders.filled_avg_price)
            ELSE orders.filled_avg_price END,
        submitted_at = coalesce(orders.submitted_at, EXCLUDED.submitted_at),
        updated_at = now()
    RETURNING status, filled_qty, filled_avg_price
"""


def _order_event_ts(order: Order, decision_ts: dt.datetime | None) -> dt.datetime:
    """When the order's latest reported event happened (the broker's clock: the replay's on the local
    exchange), else the decision time, else now."""
    stamps = [t for t in (order.submitted_at, order.filled_at, order.canceled_at) if t is not None]
    return max(stamps) if stamps else decision_ts or dt.datetime.now(dt.UTC)


def _record_order(
    conn: psycopg.Connection,
    workflow_id: str,
    account: str,
    order: Order,
    intent: str,
    decision_ts: dt.datetime | None,
    parent: str | None,
) -> None:
    before = conn.execute(
        "SELECT status, filled_qty FROM orders WHERE client_order_id = %s FOR UPDATE",
        (order.client_order_id,),
    ).fetchone()
    status, filled_qty, filled_avg_price = conn.execute(
        _UPSERT_ORDER,
        {
            "client_order_id": order.client_order_id,
            "workflow_id": workflow_id,
            "account": account,
            "broker_order_id": order.id or None,
            "parent": parent,
            "symbol": order.symbol,
            "side": order.side,
            "qty": order.qty,
            "type": order.type,
            "time_in_force": order.time_in_force,
            "limit_price": order.limit_price,
            "stop_price": order.stop_price,
            "intent": intent,
            "decision_ts": decision_ts,
            "status": order.status,
            "filled_qty": order.filled_qty,
            "filled_avg_price": order.filled_avg_price,
            "submitted_at": order.submitted_at,
            "final": list(FINAL_STATUSES),
        },
    ).fetchone()
    if before is None or (status, filled_qty) != tuple(before):
        payload = {
            "client_order_id": order.client_order_id,
            "broker_order_id": order.id or None,
            "parent_client_order_id": parent,
            "symbol": order.symbol,
            "side": order.side,
            "qty": order.qty,
            "type": order.type,
            "intent": intent,
            "status": status,
            "previous_status": None if before is None else before[0],
            "filled_qty": filled_qty,
            "filled_avg_price": filled_avg_price,
        }
        ts = _order_event_ts(order, decision_ts)
        _insert_audit(conn, workflow_id, account, ts, "order", _payload(payload, "payload"))
    for leg in order.legs:
        _record_order(conn, workflow_id, account, leg, intent, decision_ts, order.client_order_id)


def record_order(
    conn: psycopg.Connection,
    workflow_id: str,
    account: str,
    order: Order,
    *,
    intent: str,
    decision_ts: dt.datetime | None,
) -> None:
    """Insert or update the order (keyed by client_order_id) as the broker reports it now, with its
    bracket legs (which point at it). Status only moves forward: a final status (FINAL_STATUSES) is
    never replaced by an open one, and the filled quantity never shrinks — so events that arrive out of
    order (stream and poll) leave the latest state. A new order or a change of status or filled
    quantity is audited (kind `order`); recording the same state again writes nothing new."""
    with conn.transaction():
        _record_order(conn, workflow_id, account, order, intent, decision_ts, None)


def _fill_key(fill: Fill) -> str:
    """The fill's id; without one (a broker that gives none), a key made of what identifies the
    execution, so a fill reported twice still maps to one row."""
    return fill.fill_id or f"{fill.ts.astimezone(dt.UTC).isoformat()}|{fill.qty!r}|{fill.price!r}"


def record_fill(conn: psycopg.Connection, workflow_id: str, account: str, fill: Fill) -> bool:
    """Insert one execution, keyed by (order_id, fill_id); returns False when it was already recorded.
    A new fill is audited (kind `fill`)."""
    with conn.transaction():
        inserted = conn.execute(
            """
            INSERT INTO fills (order_id, fill_id, client_order_id, workflow_id, account, symbol, side, qty,
                               price, commission, ts)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (order_id, fill_id) DO NOTHING
            RETURNING 1
            """,
            (
                fill.order_id,
                _fill_key(fill),
                fill.client_order_id,
                workflow_id,
                account,
                fill.symbol,
                fill.side,
                fill.qty,
                fill.price,
                fill.commission,
                fill.ts,
            ),
        ).fetchone()
        if inserted is None:
            return False
        payload = {
            "order_id": fill.order_id,
            "fill_id": _fill_key(fill),
            "client_order_id": fill.client_order_id,
            "symbol": fill.symbol,
            "side": fill.side,
            "qty": fill.qty,
            "price": fill.price,
            "commission": fill.commission,
        }
        _insert_audit(conn, workflow_id, account, fill.ts, "fill", _payload(payload, "payload"))
    return True


# --- snapshots and risk decisions ----------------------------------------------------------------


def record_positions(
    conn: psycopg.Connection, workflow_id: str, ts: dt.datetime, positions: Sequence[Position]
) -> None:
    """Store the positions at `ts` as one snapshot (an empty sequence records a flat book). Recording
    the same `ts` again replaces that snapshot."""
    with conn.transaction():
        # Deleting the snapshot row cascades to its positions; the snapshot tables are not an audit log.
        conn.execute("DELETE FROM position_snapshots WHERE workflow_id = %s AND ts = %s", (workflow_id, ts))
        conn.execute(
            "INSERT INTO position_snapshots (workflow_id, ts, n_positions) VALUES (%s, %s, %s)",
            (workflow_id, ts, len(positions)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO positions (workflow_id, ts, symbol, qty, avg_entry_price, price, market_value)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (workflow_id, ts, p.symbol, p.qty, p.avg_entry_price, p.current_price, p.market_value)
                    for p in positions
                ],
            )


def record_pnl(
    conn: psycopg.Connection,
    workflow_id: str,
    account: str,
    ts: dt.datetime,
    *,
    equity: float,
    cash: float,
    pnl: float,
    drawdown: float,
    gross: float,
    net: float,
    state: str,
) -> None:
    """Store the account's P&L snapshot at `ts` (replacing one already stored at `ts`): equity and cash
    in currency, `pnl` the session's P&L in currency, `drawdown` from the day's peak and the gross and
    net exposure as fractions of equity (RiskLimits' meaning), and the control state then."""
    if state not in STATES:
        raise ValueError(f"trading state {state!r} is not one of {list(STATES)}")
    conn.execute(
        """
        INSERT INTO pnl_snapshots (workflow_id, ts, account, equity, cash, pnl, drawdown, gross_exposure,
                                   net_exposure, state)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (workflow_id, ts) DO UPDATE SET
            equity = EXCLUDED.equity, cash = EXCLUDED.cash, pnl = EXCLUDED.pnl, drawdown = EXCLUDED.drawdown,
            gross_exposure = EXCLUDED.gross_exposure, net_exposure = EXCLUDED.net_exposure,
            state = EXCLUDED.state
        """,
        (workflow_id, ts, account, equity, cash, pnl, drawdown, gross, net, state),
    )


def record_risk(
    conn: psycopg.Connection,
    workflow_id: str,
    account: str,
    ts: dt.datetime,
    *,
    rule: str,
    action: str,
    reason: str,
    symbol: str | None = None,
    side: str | None = None,
    qty: float | None = None,
    notional: float | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Store one risk decision (`action` one of RISK_ACTIONS; approvals too). Decisions other than an
    approval are also audited (kind `risk`). `details` follows the audit payload rules (no secret-like
    keys)."""
    if action not in RISK_ACTIONS:
        raise ValueError(f"risk action {action!r} is not one of {list(RISK_ACTIONS)}")
    details_json = _payload(details, "details")
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO risk_events (workflow_id, account, ts, rule, action, symbol, side, qty, notional,
                                     reason, details)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            (workflow_id, account, ts, rule, action, symbol, side, qty, notional, reason, details_json),
        )
        if action != "approve":
            payload = {
                "rule": rule,
                "action": action,
                "reason": reason,
                "symbol": symbol,
                "side": side,
                "qty": qty,
                "notional": notional,
                "details": details_json.obj,
            }
            _insert_audit(conn, workflow_id, account, ts, "risk", _payload(payload, "payload"))


# --- reading a session back ---------------------------------------------------------------------

_SESSION_QUERIES = {
    "orders": """
        SELECT client_order_id, broker_order_id, parent_client_order_id, workflow_id, account, symbol, side,
               qty, type, time_in_force, limit_price, stop_price, intent, decision_ts, status, filled_qty,
               filled_avg_price, submitted_at, updated_at
        FROM orders WHERE workflow_id = %s
        ORDER BY coalesce(submitted_at, decision_ts, updated_at), client_order_id
    """,
    "fills": """
        SELECT order_id, fill_id, client_order_id, workflow_id, account, symbol, side, qty, price, commission, ts
        FROM fills WHERE workflow_id = %s ORDER BY ts, order_id, fill_id
    """,
    "pnl": """
        SELECT ts, account, equity, cash, pnl, drawdown, gross_exposure, net_exposure, state
        FROM pnl_snapshots WHERE workflow_id = %s ORDER BY ts
    """,
    "risk": """
        SELECT id, ts, account, rule, action, symbol, side, qty, notional, reason, details
        FROM risk_events WHERE workflow_id = %s ORDER BY ts, id
    """,
    "audit": """
        SELECT id, ts, account, kind, payload, recorded_at
        FROM audit_log WHERE workflow_id = %s ORDER BY id
    """,
    "positions": """
        SELECT p.ts, p.symbol, p.qty, p.avg_entry_price, p.price, p.market_value
        FROM positions p
        WHERE p.workflow_id = %(wf)s
          AND p.ts = (SELECT max(ts) FROM position_snapshots WHERE workflow_id = %(wf)s)
        ORDER BY p.symbol
    """,
}


def _frame(cur: psycopg.Cursor) -> pd.DataFrame:
    """The cursor's rows as a frame: timestamptz columns as UTC datetimes, float columns as float64
    (NULL as NaN), whatever the rows; an empty result keeps its columns."""
    types = cur.connection.adapters.types
    timestamptz, float8 = types["timestamptz"].oid, types["float8"].oid
    names = [d.name for d in cur.description]
    frame = pd.DataFrame.from_records(cur.fetchall(), columns=names)
    for d in cur.description:
        if d.type_code == timestamptz:
            frame[d.name] = pd.to_datetime(frame[d.name], utc=True)
        elif d.type_code == float8:
            frame[d.name] = frame[d.name].astype("float64")
    return frame


def session_records(conn: psycopg.Connection, workflow_id: str) -> dict[str, pd.DataFrame]:
    """Everything recorded for one session, as frames in time order: `orders`, `fills`, `pnl` (the P&L
    snapshots), `risk` (every decision), `audit` (in insertion order) and `positions` (the last
    snapshot's; empty when the book was flat or none was recorded). The input of the session report."""
    out = {}
    with conn.cursor() as cur:
        for name, query in _SESSION_QUERIES.items():
            cur.execute(query, {"wf": workflow_id} if name == "positions" else (workflow_id,))
            out[name] = _frame(cur)
    return out


# --- risk limits changed during a session --------------------------------------------------------


def set_risk_limits(conn: psycopg.Connection, workflow_id: str, limits: dict[str, Any]) -> None:
    """Store validated risk limits for the session (they replace the job file's at the next bar)."""
    with conn.transaction():
        done = conn.execute(
            "UPDATE trading_controls SET risk_limits = %s, updated_at = now(), version = version + 1"
            " WHERE workflow_id = %s",
            (Jsonb(limits), workflow_id),
        ).rowcount
    if not done:
        raise LookupError(f"no trading control row for {workflow_id!r}: call ensure_control first")


def risk_limits(conn: psycopg.Connection, workflow_id: str) -> dict[str, Any] | None:
    """The session's changed risk limits, or None when the job file's apply."""
    row = conn.execute(
        "SELECT risk_limits FROM trading_controls WHERE workflow_id = %s", (workflow_id,)
    ).fetchone()
    return row[0] if row else None


def last_snapshot_ts(conn: psycopg.Connection, workflow_id: str) -> dt.datetime | None:
    """Time of the session's last P&L snapshot (the loop writes it when a bar is complete), or None."""
    row = conn.execute("SELECT max(ts) FROM pnl_snapshots WHERE workflow_id = %s", (workflow_id,)).fetchone()
    return row[0] if row else None
