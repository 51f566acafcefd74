"""Trading records in a real PostgreSQL: the append-only audit log, order and fill idempotency, the
durable control state and the submission gate that a halt waits for."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import psycopg
import pytest

from quanto.execution.broker import Fill, Order, Position
from quanto.reports.session import render_session_html
from quanto.store import db
from quanto.store import trading as tr

pytestmark = pytest.mark.integration

T0 = dt.datetime(2024, 3, 4, 14, 30, tzinfo=dt.UTC)
ACCOUNT = "acct"


@pytest.fixture
def conn(pg_dsn):
    """An autocommit connection to the migrated test database (the way the trading loop holds one)."""
    with db.connect(pg_dsn) as c:
        c.autocommit = True
        yield c


@pytest.fixture
def wf() -> str:
    """A workflow id of this test alone, so tests sharing the session database never see each other."""
    return f"trading-{ACCOUNT}-{uuid.uuid4().hex[:8]}"


def _order(status: str, filled_qty: float = 0.0, price: float | None = None, **kw) -> Order:
    base = {
        "id": "b-1",
        "client_order_id": "q-" + kw.pop("suffix", "1"),
        "symbol": "AAA",
        "side": "buy",
        "qty": 10.0,
        "type": "market",
        "time_in_force": "day",
        "status": status,
        "filled_qty": filled_qty,
        "filled_avg_price": price,
        "submitted_at": T0,
    }
    return Order(**{**base, **kw})


def _audit(conn, wf, kind=None):
    rows = conn.execute(
        "SELECT kind, payload FROM audit_log WHERE workflow_id = %s ORDER BY id", (wf,)
    ).fetchall()
    return [p for k, p in rows if kind is None or k == kind]


def test_migration_creates_the_trading_tables(conn):
    tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {
        "trading_controls",
        "orders",
        "fills",
        "positions",
        "position_snapshots",
        "pnl_snapshots",
        "risk_events",
        "audit_log",
    } <= tables
    versions = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    assert "0005_trading" in versions
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO trading_controls (workflow_id, account, state) VALUES ('x', 'a', 'PAUSED')")


def test_audit_log_is_append_only(conn, wf):
    tr.append_audit(conn, wf, ACCOUNT, T0, "session", {"event": "open"})
    for statement in (
        "UPDATE audit_log SET payload = '{}'::jsonb WHERE workflow_id = %s",
        "DELETE FROM audit_log WHERE workflow_id = %s",
        "DELETE FROM audit_log WHERE workflow_id = %s AND false",  # even when no row matches
    ):
        with pytest.raises(psycopg.errors.RaiseException, match="audit_log is append-only"):
            conn.execute(statement, (wf,))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: TRUNCATE"):
        conn.execute("TRUNCATE audit_log")
    assert _audit(conn, wf) == [{"event": "open"}]
    with pytest.raises(ValueError, match="audit kind"):
        tr.append_audit(conn, wf, ACCOUNT, T0, "gossip", {})


def test_secret_like_payload_keys_are_refused(conn, wf):
    for payload in ({"api_secret": "x"}, {"nested": {"Access_Token": "x"}}, {"list": [{"password": 1}]}):
        with pytest.raises(ValueError, match="secret"):
            tr.append_audit(conn, wf, ACCOUNT, T0, "signal", payload)
    with pytest.raises(ValueError, match="secret"):
        tr.record_risk(conn, wf, ACCOUNT, T0, rule="r", action="refuse", reason="x", details={"token": "t"})
    assert _audit(conn, wf) == []
    assert conn.execute("SELECT count(*) FROM risk_events WHERE workflow_id = %s", (wf,)).fetchone()[0] == 0
    # Plain values of other kinds are stored as JSON (dates as ISO strings, NaN as null).
    tr.append_audit(conn, wf, ACCOUNT, T0, "signal", {"at": T0, "score": float("nan"), "symbols": ("A", "B")})
    assert _audit(conn, wf) == [{"at": T0.isoformat(), "score": None, "symbols": ["A", "B"]}]


def test_record_order_upsert_moves_status_forward(conn, wf):
    tr.record_order(conn, wf, ACCOUNT, _order("new"), intent="entry", decision_ts=T0)
    tr.record_order(conn, wf, ACCOUNT, _order("new"), intent="entry", decision_ts=T0)  # same state again
    tr.record_order(conn, wf, ACCOUNT, _order("partially_filled", 4, 100.0), intent="entry", decision_ts=T0)
    tr.record_order(conn, wf, ACCOUNT, _order("filled", 10, 100.5), intent="entry", decision_ts=T0)
    # A late event (an open status, a smaller fill) arriving after the fill changes nothing.
    tr.record_order(conn, wf, ACCOUNT, _order("partially_filled", 4, 100.0), intent="entry", decision_ts=T0)
    row = conn.execute(
        "SELECT status, filled_qty, filled_avg_price, intent, decision_ts, broker_order_id FROM orders"
        " WHERE client_order_id = 'q-1'"
    ).fetchone()
    assert row == ("filled", 10.0, 100.5, "entry", T0, "b-1")
    trail = [(p["previous_status"], p["status"], p["filled_qty"]) for p in _audit(conn, wf, "order")]
    assert trail == [
        (None, "new", 0.0),
        ("new", "partially_filled", 4.0),
        ("partially_filled", "filled", 10.0),
    ]


def test_bracket_legs_are_recorded_under_their_parent(conn, wf):
    legs = (
        _order("held", suffix="tp", id="b-tp", side="sell", type="limit", limit_price=110.0),
        _order("held", suffix="sl", id="b-sl", side="sell", type="stop", stop_price=95.0),
    )
    tr.record_order(
        conn, wf, ACCOUNT, _order("new", suffix="parent", legs=legs), intent="entry", decision_ts=T0
    )
    rows = conn.execute(
        "SELECT client_order_id, parent_client_order_id, intent FROM orders WHERE workflow_id = %s ORDER BY 1",
        (wf,),
    ).fetchall()
    assert rows == [("q-parent", None, "entry"), ("q-sl", "q-parent", "entry"), ("q-tp", "q-parent", "entry")]


def test_record_fill_is_idempotent(conn, wf):
    fill = Fill("b-1", "q-1", "AAA", "buy", 4.0, 100.0, T0, commission=0.4, fill_id="e-1")
    assert tr.record_fill(conn, wf, ACCOUNT, fill) is True
    assert tr.record_fill(conn, wf, ACCOUNT, fill) is False
    second = Fill("b-1", "q-1", "AAA", "buy", 6.0, 101.0, T0 + dt.timedelta(seconds=5))  # no fill id
    assert tr.record_fill(conn, wf, ACCOUNT, second) is True
    assert tr.record_fill(conn, wf, ACCOUNT, second) is False
    assert conn.execute("SELECT sum(qty) FROM fills WHERE workflow_id = %s", (wf,)).fetchone()[0] == 10.0
    assert [p["qty"] for p in _audit(conn, wf, "fill")] == [4.0, 6.0]


def test_set_control_audits_and_keeps_halted_at(conn, wf):
    assert tr.control_state(conn, wf) is None
    with pytest.raises(LookupError, match="ensure_control"):
        tr.set_control(conn, wf, "HALTED", "x", T0)
    assert tr.ensure_control(conn, wf, ACCOUNT) == "ACTIVE"
    assert tr.ensure_control(conn, wf, ACCOUNT) == "ACTIVE"  # a second start finds the row
    halted = tr.set_control(conn, wf, "HALTED", "operator", T0)
    assert (halted["state"], halted["halted_at"], halted["changed"]) == ("HALTED", T0, True)
    # A retried signal changes nothing; a restart (new connection) still finds the halt.
    assert tr.set_control(conn, wf, "HALTED", "operator", T0 + dt.timedelta(1))["changed"] is False
    assert tr.ensure_control(conn, wf, ACCOUNT) == "HALTED"
    reducing = tr.set_control(conn, wf, "REDUCING", "flatten", T0 + dt.timedelta(seconds=1))
    assert reducing["halted_at"] == T0
    active = tr.set_control(conn, wf, "ACTIVE", "resume", T0 + dt.timedelta(seconds=2))
    state = tr.control_state(conn, wf)
    assert state == {"state": "ACTIVE", "reason": "resume", "halted_at": None, "version": active["version"]}
    assert active["version"] == 4
    changes = [(p["from"], p["to"], p["reason"]) for p in _audit(conn, wf, "state_change")]
    assert changes == [
        ("ACTIVE", "HALTED", "operator"),
        ("HALTED", "REDUCING", "flatten"),
        ("REDUCING", "ACTIVE", "resume"),
    ]
    assert _audit(conn, wf, "control") == [{"event": "created", "state": "ACTIVE"}]
    with pytest.raises(ValueError, match="belongs to account"):
        tr.ensure_control(conn, wf, "other")
    with pytest.raises(ValueError, match="trading state"):
        tr.set_control(conn, wf, "PAUSED", "x", T0)


def test_submission_gate_holds_a_halt_until_the_batch_ends(pg_dsn, conn, wf):
    tr.ensure_control(conn, wf, ACCOUNT)
    events: list[str] = []
    in_batch = threading.Event()
    halted = threading.Event()
    errors: list[BaseException] = []

    def halt() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                in_batch.wait()
                events.append("halt requested")
                tr.set_control(other, wf, "HALTED", "operator", T0)
                events.append("halt returned")
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)
        finally:
            halted.set()

    thread = threading.Thread(target=halt)
    thread.start()
    with tr.submission_gate(conn, wf) as state:
        assert state == "ACTIVE"
        events.append("batch started")
        in_batch.set()
        # Wait, by the database's own account, until set_control is blocked on this batch's row lock.
        with psycopg.connect(pg_dsn, autocommit=True) as observer:
            while not observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                " AND query LIKE %s",
                ("%trading_controls%FOR UPDATE%",),
            ).fetchone()[0]:
                assert not halted.is_set(), f"set_control finished while the batch held the gate: {errors}"
                time.sleep(0.01)
        assert not halted.is_set()
        events.append("batch ended")
    thread.join(timeout=30)
    assert not errors
    assert events == ["batch started", "halt requested", "batch ended", "halt returned"]
    with tr.submission_gate(conn, wf) as state:
        assert state == "HALTED"
    conn.autocommit = False
    conn.execute("SELECT 1")  # a transaction is open now
    with pytest.raises(RuntimeError, match="no open transaction"), tr.submission_gate(conn, wf):
        pass
    conn.rollback()


def test_session_records_returns_the_frames(conn, wf):
    tr.ensure_control(conn, wf, ACCOUNT)
    tr.record_order(conn, wf, ACCOUNT, _order("filled", 10, 100.0, suffix=wf), intent="entry", decision_ts=T0)
    tr.record_fill(conn, wf, ACCOUNT, Fill("b-1", "q-" + wf, "AAA", "buy", 10.0, 100.0, T0, 1.0, "e-" + wf))
    for i, equity in enumerate((100_000.0, 100_050.0, 99_900.0)):
        tr.record_pnl(
            conn,
            wf,
            ACCOUNT,
            T0 + dt.timedelta(minutes=i),
            equity=equity,
            cash=99_000.0,
            pnl=equity - 100_000.0,
            drawdown=0.0,
            gross=0.01,
            net=0.01,
            state="ACTIVE",
        )
    tr.record_risk(
        conn, wf, ACCOUNT, T0, rule="max_order_notional", action="approve", reason="", symbol="AAA"
    )
    tr.record_risk(
        conn, wf, ACCOUNT, T0, rule="max_order_notional", action="refuse", reason="too big", qty=1e6
    )
    tr.record_positions(conn, wf, T0, [Position("AAA", 10.0, 100.0, 101.0, 1010.0)])
    tr.record_positions(conn, wf, T0, [Position("AAA", 10.0, 100.0, 102.0, 1020.0)])  # same ts: replaced
    frames = tr.session_records(conn, wf)
    assert set(frames) == {"orders", "fills", "pnl", "risk", "audit", "positions"}
    assert frames["orders"]["status"].tolist() == ["filled"]
    assert frames["fills"]["commission"].tolist() == [1.0]
    assert frames["pnl"]["equity"].tolist() == [100_000.0, 100_050.0, 99_900.0]
    assert str(frames["pnl"]["ts"].dt.tz) == "UTC"
    assert frames["risk"]["action"].tolist() == ["approve", "refuse"]
    assert frames["positions"]["price"].tolist() == [102.0]
    assert frames["audit"]["kind"].tolist() == ["control", "order", "fill", "risk"]  # approvals not audited
    # The frames are what the session report reads.
    page = render_session_html(frames, {"account": ACCOUNT, "date": T0.date(), "state": "ACTIVE"})
    assert "99,900.00" in page and "too big" in page
    # The book went flat at the close: the last snapshot is empty, not the earlier position.
    tr.record_positions(conn, wf, T0 + dt.timedelta(hours=6), [])
    assert tr.session_records(conn, wf)["positions"].empty
    assert list(tr.session_records(conn, "trading-nobody-x")["fills"].columns)[:2] == ["order_id", "fill_id"]
