"""The daily trading session report: what one account did in one session, as HTML and PDF.

It reads the frames of `quanto.store.trading.session_records` (orders, fills, pnl, risk, audit,
positions) and formats them with the research report's helpers, stylesheet and chart style
(`quanto.reports.render`, `quanto.reports.charts`), so both reports read alike. As there, every number
is formatted here and the template only lays it out; HTML and PDF come from one template and show the
same strings. Times are UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from quanto.reports import charts
from quanto.reports.render import (
    MISSING,
    TEMPLATE_DIR,
    _atomic_write,
    _column,
    _environment,
    _is_missing,
    _plural,
    _tone,
    _truncate,
    format_duration,
    format_int,
    format_percent,
    format_ratio,
    format_timestamp,
    html_to_pdf,
)

TEMPLATE_NAME = "session.html.j2"
STYLESHEETS = ("report.css", "session.css")  # the research report's, then this report's few additions
OUTPUT_NAMES = ("session-report.html", "session-report.pdf")
TABLE_ROWS = (
    300  # rows per table at most: the PDF's layout time grows with rows; a longer day says what it left out
)
SUMMARY_CHARS = 160  # an audit row's summary in the events table
RECORD_NAMES = ("orders", "fills", "pnl", "risk", "audit", "positions")
RISK_ACTIONS = {
    "approve": "Approved",
    "refuse": "Refused",
    "halt": "Halts",
    "disable": "Disables",
    "alert": "Alerts",
}
EVENT_KINDS = ("signal", "state_change", "control", "session")  # the audit rows listed as events
# Colours of the state a change moves to, on the equity chart and in badges.
STATE_COLORS = {"ACTIVE": charts.WIN_COLOR, "REDUCING": charts.NET_COLOR, "HALTED": charts.LOSS_COLOR}
STATE_TONES = {"ACTIVE": "ok", "REDUCING": "warn", "HALTED": "bad"}
ORDER_TONES = {"filled": "ok", "rejected": "bad", "canceled": "warn", "expired": "warn"}
RISK_TONES = {"refuse": "warn", "halt": "bad", "disable": "bad", "alert": ""}


# --- formatting ---------------------------------------------------------------------------------


def _money(value: object) -> str:
    """Currency with cents and separators: 100050.5 -> "100,050.50"."""
    return format_ratio(value, 2)


def _qty(value: object) -> str:
    """Share quantities: whole numbers plain ("1,200"), fractional shares to 4 decimals ("0.125")."""
    if _is_missing(value):
        return MISSING
    v = float(value)
    return format_int(v) if v.is_integer() else f"{v:,.4f}".rstrip("0")


def _clock(value: object, day: dt.date | None) -> str:
    """A timestamp as "HH:MM:SS" UTC on the session's day, with the date on any other day."""
    if _is_missing(value):
        return MISSING
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC") if ts.tzinfo is not None else ts
    return ts.strftime("%H:%M:%S" if ts.date() == day else "%Y-%m-%d %H:%M:%S")


def _text(value: object) -> str:
    return MISSING if _is_missing(value) or value == "" else str(value)


def _summary(kind: str, payload: Mapping[str, Any]) -> str:
    """One line for an audit row: "ACTIVE → HALTED: operator" for a state change, else key=value pairs."""
    if kind == "state_change" and {"from", "to"} <= payload.keys():
        reason = payload.get("reason")
        return f"{payload['from']} → {payload['to']}" + (f": {reason}" if reason else "")
    pairs = "; ".join(f"{k}={v}" for k, v in payload.items() if v is not None and v != "")
    return _truncate(pairs, SUMMARY_CHARS) or MISSING


# --- the sections -------------------------------------------------------------------------------


def _records(records: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The six frames, a missing one as an empty frame (a session that never traded has no fills)."""
    return {name: records.get(name, pd.DataFrame()) for name in RECORD_NAMES}


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column as floats, or an empty series when the frame lacks it."""
    return pd.to_numeric(frame[name], errors="coerce") if name in frame else pd.Series(dtype=float)


def _limited(rows: list[list[Any]], what: str) -> tuple[list[list[Any]], str]:
    if len(rows) <= TABLE_ROWS:
        return rows, ""
    return rows[
        :TABLE_ROWS
    ], f"The first {format_int(TABLE_ROWS)} of {_plural(len(rows), what)}; all are in PostgreSQL."


def _cards(r: dict[str, pd.DataFrame]) -> list[dict[str, str]]:
    pnl, orders, fills, risk = r["pnl"], r["orders"], r["fills"], r["risk"]
    equity = _col(pnl, "equity").dropna()
    start = equity.iloc[0] if len(equity) else None
    end = equity.iloc[-1] if len(equity) else None
    recorded_pnl = _col(pnl, "pnl").dropna()
    session_pnl = recorded_pnl.iloc[-1] if len(recorded_pnl) else (None if start is None else end - start)
    drawdown = _col(pnl, "drawdown").dropna()
    if len(drawdown):
        max_dd = -drawdown.abs().max()  # recorded as a positive fraction from the peak, or as ≤ 0
    else:
        max_dd = (equity / equity.cummax() - 1.0).min() if len(equity) else None
    gross = _col(pnl, "gross_exposure").dropna()
    statuses = orders["status"] if "status" in orders else pd.Series(dtype=str)
    refused = int((risk["action"] == "refuse").sum()) if "action" in risk else 0
    notional = (_col(fills, "qty") * _col(fills, "price")).sum()
    pnl_note = format_percent(session_pnl / start) + " of start" if start and session_pnl is not None else ""
    return [
        {"label": "Start equity", "value": _money(start), "note": "", "tone": ""},
        {"label": "End equity", "value": _money(end), "note": "", "tone": ""},
        {"label": "P&L", "value": _money(session_pnl), "note": pnl_note, "tone": _tone(session_pnl)},
        {"label": "Max drawdown", "value": format_percent(max_dd), "note": "", "tone": ""},
        {
            "label": "Gross exposure peak",
            "value": format_percent(gross.max() if len(gross) else None),
            "note": "of equity",
            "tone": "",
        },
        {
            "label": "Orders / fills",
            "value": f"{format_int(len(orders))} / {format_int(len(fills))}",
            "note": f"{_money(notional)} traded",
            "tone": "",
        },
        {
            "label": "Rejections",
            "value": format_int(int((statuses == "rejected").sum())),
            "note": f"by the broker; {format_int(refused)} refused by risk",
            "tone": "",
        },
        {"label": "Commission", "value": _money(_col(fills, "commission").sum()), "note": "", "tone": ""},
    ]


def _orders(orders: pd.DataFrame, day: dt.date | None) -> dict[str, Any]:
    columns = [
        _column("Submitted"),
        _column("Symbol"),
        _column("Side"),
        _column("Qty", numeric=True),
        _column("Type"),
        _column("Limit / stop", numeric=True),
        _column("Intent"),
        _column("Status"),
        _column("Filled", numeric=True),
        _column("Avg price", numeric=True),
        _column("Client order id", cls="mono"),
    ]
    rows = []
    for o in orders.to_dict("records"):
        prices = [_money(o.get(k)) for k in ("limit_price", "stop_price") if not _is_missing(o.get(k))]
        status = _text(o.get("status"))
        rows.append(
            [
                _clock(o.get("submitted_at"), day),
                _text(o.get("symbol")),
                _text(o.get("side")),
                _qty(o.get("qty")),
                _text(o.get("type")),
                " / ".join(prices) or MISSING,
                _text(o.get("intent"))
                + (" (leg)" if not _is_missing(o.get("parent_client_order_id")) else ""),
                {"text": status, "tone": ORDER_TONES.get(status, "")},
                _qty(o.get("filled_qty")),
                _money(o.get("filled_avg_price")),
                _text(o.get("client_order_id")),
            ]
        )
    rows, note = _limited(rows, "order")
    counts = orders["status"].value_counts() if "status" in orders else pd.Series(dtype=int)
    caption = " · ".join(f"{format_int(n)} {status}" for status, n in counts.items())
    return {"columns": columns, "rows": rows, "summary": [], "note": note, "caption": caption}


def _fills(fills: pd.DataFrame, day: dt.date | None) -> dict[str, Any]:
    columns = [
        _column("Time"),
        _column("Symbol"),
        _column("Side"),
        _column("Qty", numeric=True),
        _column("Price", numeric=True),
        _column("Notional", numeric=True),
        _column("Commission", numeric=True),
        _column("Client order id", cls="mono"),
    ]
    notional = _col(fills, "qty") * _col(fills, "price")
    rows = [
        [
            _clock(f.get("ts"), day),
            _text(f.get("symbol")),
            _text(f.get("side")),
            _qty(f.get("qty")),
            _money(f.get("price")),
            _money(n),
            _money(f.get("commission")),
            _text(f.get("client_order_id")),
        ]
        for f, n in zip(fills.to_dict("records"), notional, strict=False)
    ]
    rows, note = _limited(rows, "fill")
    summary = []
    if len(fills):
        total = ["Total", "", "", "", "", _money(notional.sum()), _money(_col(fills, "commission").sum()), ""]
        summary = [{"cells": total}]
    return {"columns": columns, "rows": rows, "summary": summary, "note": note}


def _risk(risk: pd.DataFrame, day: dt.date | None) -> dict[str, Any]:
    actions = risk["action"] if "action" in risk else pd.Series(dtype=str)
    counts = [
        {"label": label, "value": format_int(int((actions == a).sum()))} for a, label in RISK_ACTIONS.items()
    ]
    columns = [
        _column("Time"),
        _column("Rule", cls="mono"),
        _column("Action"),
        _column("Symbol"),
        _column("Side"),
        _column("Qty", numeric=True),
        _column("Notional", numeric=True),
        _column("Reason"),
    ]
    rows = [
        [
            _clock(e.get("ts"), day),
            _text(e.get("rule")),
            {"text": e["action"], "tone": RISK_TONES.get(e["action"], "")},
            _text(e.get("symbol")),
            _text(e.get("side")),
            _qty(e.get("qty")),
            _money(e.get("notional")),
            _text(e.get("reason")),
        ]
        for e in risk.to_dict("records")
        if e.get("action") != "approve"
    ]
    rows, note = _limited(rows, "decision")
    return {"counts": counts, "table": {"columns": columns, "rows": rows, "summary": [], "note": note}}


def _payload(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _events(audit: pd.DataFrame, day: dt.date | None) -> dict[str, Any]:
    columns = [_column("Time"), _column("Kind"), _column("What")]
    if "kind" not in audit:
        audit = pd.DataFrame(columns=["ts", "kind", "payload"])
    kinds = audit["kind"]
    rows = []
    for a in audit[kinds.isin(EVENT_KINDS)].to_dict("records"):
        payload = _payload(a.get("payload"))
        tone = STATE_TONES.get(payload.get("to"), "") if a["kind"] == "state_change" else ""
        rows.append(
            [
                _clock(a.get("ts"), day),
                {"text": a["kind"].replace("_", " "), "tone": tone},
                _summary(a["kind"], payload),
            ]
        )
    rows, note = _limited(rows, "event")
    others = kinds[~kinds.isin(EVENT_KINDS)].value_counts()
    if len(others):
        rest = ", ".join(f"{format_int(n)} {kind}" for kind, n in others.items())
        note = " ".join(filter(None, [note, f"The audit log also holds {rest} rows (see the tables above)."]))
    return {"columns": columns, "rows": rows, "summary": [], "note": note}


def _positions(positions: pd.DataFrame, day: dt.date | None) -> dict[str, Any]:
    columns = [
        _column("Symbol"),
        _column("Qty", numeric=True),
        _column("Avg entry", numeric=True),
        _column("Price", numeric=True),
        _column("Market value", numeric=True),
        _column("Unrealized P&L", numeric=True),
    ]
    unrealized = (_col(positions, "price") - _col(positions, "avg_entry_price")) * _col(positions, "qty")
    rows = [
        [
            _text(p.get("symbol")),
            _qty(p.get("qty")),
            _money(p.get("avg_entry_price")),
            _money(p.get("price")),
            _money(p.get("market_value")),
            _money(u),
        ]
        for p, u in zip(positions.to_dict("records"), unrealized, strict=False)
    ]
    summary = []
    if rows:
        summary = [
            {
                "cells": [
                    "Total",
                    "",
                    "",
                    "",
                    _money(_col(positions, "market_value").sum()),
                    _money(unrealized.sum()),
                ]
            }
        ]
    as_of = _clock(positions["ts"].iloc[0], day) if len(positions) and "ts" in positions else ""
    return {"columns": columns, "rows": rows, "summary": summary, "note": "", "as_of": as_of}


# --- the chart ----------------------------------------------------------------------------------


def _state_changes(audit: pd.DataFrame) -> list[tuple[pd.Timestamp, str]]:
    """(ts, new state) of every audited state change, in order."""
    if not len(audit) or "kind" not in audit:
        return []
    rows = audit[audit["kind"] == "state_change"]
    return [
        (pd.Timestamp(ts), _payload(p).get("to", ""))
        for ts, p in zip(rows["ts"], rows["payload"], strict=True)
    ]


def _equity_figures(pnl: pd.DataFrame, changes: Sequence[tuple[pd.Timestamp, str]]) -> list[Figure]:
    """The equity curve, with a vertical line at each state change, over its drawdown from the
    session's running peak; the two plot areas aligned like the research report's."""
    x = charts._naive_utc(pnl["ts"])
    equity = pnl["equity"].to_numpy(dtype=float)
    eq_fig = charts._new_figure(charts.TIME_SERIES_WIDTH, 3.4)
    ax = eq_fig.add_subplot()
    handles = ax.plot(x, equity, color=charts.STRATEGY_COLOR, lw=1.6)
    labels = ["Equity"]
    lo, hi = x[0], x[-1]
    for state in STATE_COLORS:
        stamps = [ts.tz_convert("UTC").tz_localize(None) for ts, to in changes if to == state]
        stamps = [s for s in stamps if lo <= s.to_datetime64() <= hi]
        for s in stamps:
            ax.axvline(s, color=STATE_COLORS[state], lw=1.0, ls="--")
        if stamps:
            handles.append(Line2D([], [], color=STATE_COLORS[state], lw=1.0, ls="--"))
            labels.append(f"→ {state}")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.yaxis.set_major_formatter(FuncFormatter(charts._money_tick))
    ax.set_ylabel("Equity")
    charts._time_axis(ax, x)
    charts._legend_above(ax, handles, labels)

    dd_fig = charts._new_figure(charts.TIME_SERIES_WIDTH, 2.2)
    ax = dd_fig.add_subplot()
    drawdown = equity / np.maximum.accumulate(equity) - 1.0
    ax.fill_between(x, drawdown, 0.0, color=charts.DRAWDOWN_COLOR, alpha=0.16, lw=0)
    ax.plot(x, drawdown, color=charts.DRAWDOWN_COLOR, lw=1.1)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=2))
    ax.set_ylabel("Drawdown")
    charts._time_axis(ax, x)
    figs = [eq_fig, dd_fig]
    charts._align_plot_areas(figs)
    return figs


def equity_charts(pnl: pd.DataFrame, audit: pd.DataFrame) -> dict[str, str]:
    """The session's equity and drawdown charts as PNG data URIs ({} when no P&L was recorded)."""
    if not len(pnl) or "equity" not in pnl:
        return {}
    pnl = pnl.dropna(subset=["equity"]).sort_values("ts")
    if pnl.empty:
        return {}
    with matplotlib.rc_context(charts._STYLE):
        figs = _equity_figures(pnl, _state_changes(audit))
        return {
            name: charts._to_data_uri(fig) for name, fig in zip(("equity", "drawdown"), figs, strict=True)
        }


# --- rendering ----------------------------------------------------------------------------------


def _day(meta: Mapping[str, Any]) -> dt.date | None:
    value = meta.get("date")
    return None if _is_missing(value) else pd.Timestamp(value).date()


def _header(meta: Mapping[str, Any], audit: pd.DataFrame) -> dict[str, Any]:
    started, finished = meta.get("started_at"), meta.get("finished_at")
    duration = None
    if not _is_missing(started) and not _is_missing(finished):
        duration = (pd.Timestamp(finished) - pd.Timestamp(started)).total_seconds()
    state = _text(meta.get("state"))
    changes = [
        (ts, _payload(p))
        for ts, k, p in zip(audit.get("ts", []), audit.get("kind", []), audit.get("payload", []), strict=True)
        if k == "state_change"
    ]
    reason = changes[-1][1].get("reason") if changes and state != "ACTIVE" else None
    halts = [ts for ts, p in changes if p.get("to") == "HALTED"]
    day = _day(meta)
    return {
        "account": _text(meta.get("account")),
        "date": day.isoformat() if day else MISSING,
        "meta": [
            ("Mode", _text(meta.get("mode"))),
            ("Model", _text(meta.get("model_id"))),
            ("Workflow", _text(meta.get("workflow_id"))),
            ("Started", format_timestamp(started, with_time=True)),
            ("Finished", format_timestamp(finished, with_time=True)),
            ("Duration", format_duration(duration)),
        ],
        "state": state,
        "state_tone": STATE_TONES.get(state, ""),
        "state_reason": reason or "",
        "halted_at": _clock(halts[-1], day) if halts else "",
    }


def _context(records: Mapping[str, pd.DataFrame], meta: Mapping[str, Any]) -> dict[str, Any]:
    r = _records(records)
    day = _day(meta)
    header = _header(meta, r["audit"])
    css = "\n".join((TEMPLATE_DIR / name).read_text(encoding="utf-8") for name in STYLESHEETS)
    return {
        "css": Markup(css),  # our own files, inlined so the report is self-contained
        "title": f"Trading session · {header['account']} · {header['date']}",
        "header": header,
        "cards": _cards(r),
        "charts": equity_charts(r["pnl"], r["audit"]),
        "orders": _orders(r["orders"], day),
        "fills": _fills(r["fills"], day),
        "risk": _risk(r["risk"], day),
        "events": _events(r["audit"], day),
        "positions": _positions(r["positions"], day),
    }


def render_session_html(
    records: Mapping[str, pd.DataFrame], meta: Mapping[str, Any], print_mode: bool = False
) -> str:
    """The session report as an HTML string (`print_mode` lays it out for the PDF)."""
    return _environment().get_template(TEMPLATE_NAME).render({**_context(records, meta), "print": print_mode})


def render_session_report(records: dict[str, pd.DataFrame], meta: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write `session-report.html` and `session-report.pdf` into `out_dir` (atomically); returns both
    paths. `records` are `quanto.store.trading.session_records`' frames (a missing one counts as
    empty); `meta` has workflow_id, account, date, mode, model_id, state (the final control state),
    started_at and finished_at. Charts are drawn once and shared by both formats."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = _context(records, meta)
    template = _environment().get_template(TEMPLATE_NAME)
    html_path, pdf_path = (out_dir / name for name in OUTPUT_NAMES)
    _atomic_write(html_path, template.render({**context, "print": False}).encode("utf-8"))
    _atomic_write(pdf_path, html_to_pdf(template.render({**context, "print": True})))
    return html_path, pdf_path
