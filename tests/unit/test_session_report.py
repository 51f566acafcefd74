"""The trading session report, rendered from hand-made record frames (the columns of
`quanto.store.trading.session_records`): its sections, its numbers, and a PDF a reader can open."""

from __future__ import annotations

import datetime as dt
import html
import re

import pandas as pd
import pytest
from pypdf import PdfReader

from quanto.reports.session import TABLE_ROWS, render_session_html, render_session_report

T0 = pd.Timestamp("2024-03-04 14:30", tz="UTC")
META = {
    "workflow_id": "trading-demo-2024-03-04",
    "account": "demo",
    "date": dt.date(2024, 3, 4),
    "mode": "paper",
    "model_id": "lgbm-1234abcd",
    "state": "HALTED",
    "started_at": T0,
    "finished_at": T0 + pd.Timedelta(hours=6, minutes=30),
}


def _minutes(*m: int) -> list[pd.Timestamp]:
    return [T0 + pd.Timedelta(minutes=i) for i in m]


def _records() -> dict[str, pd.DataFrame]:
    orders = pd.DataFrame(
        {
            "client_order_id": ["q-aaa", "q-bbb", "q-ccc"],
            "broker_order_id": ["b-1", "b-2", None],
            "parent_client_order_id": [None, None, None],
            "symbol": ["AAA", "BBB", "AAA"],
            "side": ["buy", "sell", "buy"],
            "qty": [10.0, 5.0, 1000.0],
            "type": ["market", "limit", "market"],
            "time_in_force": ["day"] * 3,
            "limit_price": [None, 49.5, None],
            "stop_price": [None, None, None],
            "intent": ["entry", "entry", "rebalance"],
            "decision_ts": _minutes(0, 1, 2),
            "status": ["filled", "filled", "rejected"],
            "filled_qty": [10.0, 5.0, 0.0],
            "filled_avg_price": [100.0, 49.5, None],
            "submitted_at": _minutes(0, 1, 2),
            "updated_at": _minutes(1, 2, 2),
        }
    )
    fills = pd.DataFrame(
        {
            "order_id": ["b-1", "b-2"],
            "fill_id": ["e-1", "e-2"],
            "client_order_id": ["q-aaa", "q-bbb"],
            "symbol": ["AAA", "BBB"],
            "side": ["buy", "sell"],
            "qty": [10.0, 5.0],
            "price": [100.0, 49.5],
            "commission": [1.0, 0.5],
            "ts": _minutes(1, 2),
        }
    )
    pnl = pd.DataFrame(
        {
            "ts": _minutes(0, 1, 2, 3),
            "account": ["demo"] * 4,
            "equity": [100_000.0, 100_400.0, 99_800.0, 99_750.25],
            "cash": [100_000.0, 99_000.0, 99_247.5, 99_247.5],
            "pnl": [0.0, 400.0, -200.0, -249.75],
            "drawdown": [0.0, 0.0, 0.005976, 0.006474],
            "gross_exposure": [0.0, 0.0125, 0.0123, 0.0101],
            "net_exposure": [0.0, 0.0125, 0.0075, 0.0101],
            "state": ["ACTIVE", "ACTIVE", "ACTIVE", "HALTED"],
        }
    )
    risk = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "ts": _minutes(0, 1, 2, 3),
            "rule": ["all", "all", "max_order_notional", "max_daily_loss"],
            "action": ["approve", "approve", "refuse", "halt"],
            "symbol": ["AAA", "BBB", "AAA", None],
            "side": ["buy", "sell", "buy", None],
            "qty": [10.0, 5.0, 1000.0, None],
            "notional": [1000.0, 247.5, 100_000.0, None],
            "reason": ["", "", "order notional 100,000 > 50,000", "daily loss limit"],
            "details": [{}, {}, {"limit": 50_000}, {}],
        }
    )
    audit = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "ts": _minutes(0, 0, 1, 3, 3),
            "kind": ["control", "order", "fill", "signal", "state_change"],
            "payload": [
                {"event": "created", "state": "ACTIVE"},
                {"client_order_id": "q-aaa", "status": "new"},
                {"fill_id": "e-1"},
                {"signal": "halt", "reason": "operator"},
                {"from": "ACTIVE", "to": "HALTED", "reason": "operator", "version": 2},
            ],
        }
    )
    positions = pd.DataFrame(
        {
            "ts": _minutes(3, 3),
            "symbol": ["AAA", "BBB"],
            "qty": [10.0, -5.0],
            "avg_entry_price": [100.0, 49.5],
            "price": [101.0, 50.0],
            "market_value": [1010.0, -250.0],
        }
    )
    return {
        "orders": orders,
        "fills": fills,
        "pnl": pnl,
        "risk": risk,
        "audit": audit,
        "positions": positions,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Rendered once: WeasyPrint is slow."""
    out = tmp_path_factory.mktemp("session_report")
    html_path, pdf_path = render_session_report(_records(), META, out)
    return {"html_path": html_path, "pdf_path": pdf_path, "html": html.unescape(html_path.read_text())}


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section[^>]*id="{section_id}".*?</section>', page, re.S)
    assert match, f"section {section_id} missing"
    return match.group(0)


def _card(page: str, label: str) -> str:
    match = re.search(rf'card-label">{re.escape(label)}</div>\s*<div class="card-value[^"]*">([^<]*)<', page)
    assert match, f"card {label} missing"
    return match.group(1)


def test_files_are_written(report):
    assert report["html_path"].name == "session-report.html"
    assert report["pdf_path"].name == "session-report.pdf"


def test_header_names_the_session(report):
    page = report["html"]
    for text in ("demo · 2024-03-04", "paper", "lgbm-1234abcd", "trading-demo-2024-03-04", "6h 30m"):
        assert text in page
    assert re.search(r'id="final-state">HALTED<', page)
    assert "Trading was halted at 14:33:00: operator." in page


def test_summary_cards_carry_the_numbers(report):
    page = report["html"]
    assert _card(page, "Start equity") == "100,000.00"
    assert _card(page, "End equity") == "99,750.25"
    assert _card(page, "P&L") == "-249.75"
    assert _card(page, "Max drawdown") == "-0.65%"
    assert _card(page, "Gross exposure peak") == "1.25%"
    assert _card(page, "Orders / fills") == "3 / 2"
    assert _card(page, "Rejections") == "1"
    assert "1 refused by risk" in page
    assert _card(page, "Commission") == "1.50"


def test_sections_show_the_records(report):
    page = report["html"]
    assert "data:image/png;base64," in _section(page, "equity")
    fills = _section(page, "fills")
    assert "49.50" in fills and "247.50" in fills and "1,247.50" in fills  # price, notional, total
    orders = _section(page, "orders")
    assert "2 filled · 1 rejected" in orders
    assert '<span class="badge bad">rejected</span>' in orders
    assert "q-ccc" in orders
    risk = _section(page, "risk")
    assert re.search(r'Approved</div><div class="card-value">2<', risk)
    assert "order notional 100,000 > 50,000" in risk and "daily loss limit" in risk
    assert risk.count("<tr>") == 3  # header + the refusal + the halt; approvals are only counted
    events = _section(page, "events")
    assert "ACTIVE → HALTED: operator" in events
    assert "signal=halt; reason=operator" in events
    assert "event=created; state=ACTIVE" in events
    assert "q-aaa" not in events  # order and fill rows have their own tables
    positions = _section(page, "positions")
    assert "as of 14:33:00" in positions
    assert "760.00" in positions  # market value total
    assert "7.50" in positions  # unrealized: (101 - 100) * 10 + (50 - 49.5) * -5


def test_pdf_is_a_readable_document(report):
    data = report["pdf_path"].read_bytes()
    assert data.startswith(b"%PDF-")
    reader = PdfReader(report["pdf_path"])
    assert len(reader.pages) >= 1
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert "HALTED" in text and "99,750.25" in text


def test_an_empty_session_still_renders():
    page = html.unescape(
        render_session_html({}, {"account": "demo", "date": "2024-03-04", "state": "ACTIVE"})
    )
    for text in ("No P&L snapshots were recorded.", "No fills.", "No orders.", "Flat: no open position."):
        assert text in page
    assert _card(page, "Start equity") == "—"
    assert "Trading was halted" not in page


def test_long_tables_are_cut_with_a_note():
    records = _records()
    records["fills"] = pd.concat([records["fills"]] * (TABLE_ROWS // 2 + 1), ignore_index=True)
    page = html.unescape(render_session_html(records, META))
    fills = _section(page, "fills")
    assert fills.count("<tr>") == 1 + TABLE_ROWS + 1  # header, the rows shown, the total
    assert f"The first {TABLE_ROWS} of {len(records['fills']):,} fills; all are in PostgreSQL." in fills
