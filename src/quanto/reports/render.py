"""Render a research report to HTML and PDF from one Jinja2 template.

All numbers are formatted here, in Python, so the template stays declarative and HTML and PDF show
exactly the same strings. Nothing here reads the clock or the network: the same `ReportData` always
gives the same HTML.
"""

from __future__ import annotations

import functools
import math
import os
import re
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from quanto.backtest.metrics import monthly_returns
from quanto.reports import charts, returns

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "report.html.j2"
FORMATS = ("html", "pdf")
OUTPUT_NAMES = {"html": "report.html", "pdf": "report.pdf"}
EQUITY_COLUMNS = ("ts", "equity", "benchmark", "drawdown", "benchmark_drawdown")
TOP_FEATURES = 20
TOP_TRIALS = 10  # leaderboard rows of the last searched fold
MISSING = "—"
EXAMPLE_MAX_CHARS = 90
PARAMS_MAX_CHARS = 90
SIGNIFICANT = 0.95  # a PSR or DSR at or above it is shown as significant
CLASS_LABELS = ("Down (0)", "Up (1)")  # a classifier's label 0 and 1: the direction of the return

# Strategy metrics, in display order: key -> (label, kind). The kind picks the formatter.
# (`quanto.backtest.metrics.performance_metrics` defines each; docs/backtest.md lists the formulas.)
METRICS: dict[str, tuple[str, str]] = {
    "total_return": ("Total return", "pct"),
    "annual_return": ("Annual return", "pct"),
    "annual_mean_return": ("Annual mean return", "pct"),
    "annual_volatility": ("Annual volatility", "pct"),
    "sharpe": ("Sharpe ratio", "ratio"),
    "sortino": ("Sortino ratio", "ratio"),
    "calmar": ("Calmar ratio", "ratio"),
    "max_drawdown": ("Max drawdown", "pct"),
    "max_drawdown_duration": ("Max drawdown duration (bars)", "int"),
    "max_drawdown_decline_bars": ("Deepest drawdown: decline (bars)", "int"),
    "max_drawdown_recovery_bars": ("Deepest drawdown: recovery (bars)", "int"),
    "var_95": ("VaR 95% (historical)", "pct"),
    "cvar_95": ("CVaR 95% (historical)", "pct"),
    "var_95_parametric": ("VaR 95% (normal)", "pct"),
    "cvar_95_parametric": ("CVaR 95% (normal)", "pct"),
    "var_99": ("VaR 99% (historical)", "pct"),
    "cvar_99": ("CVaR 99% (historical)", "pct"),
    "var_99_parametric": ("VaR 99% (normal)", "pct"),
    "cvar_99_parametric": ("CVaR 99% (normal)", "pct"),
    "alpha": ("Alpha (annual)", "pct"),
    "beta": ("Beta", "ratio"),
    "correlation": ("Correlation", "ratio"),
    "win_rate": ("Win rate", "pct"),
    "profit_factor": ("Profit factor", "ratio"),
    "expectancy": ("Expectancy (PnL per trade)", "ratio"),
    "expectancy_r": ("Expectancy (R per trade)", "ratio"),
    "average_win": ("Average win", "ratio"),
    "average_loss": ("Average loss", "ratio"),
    "sqn": ("SQN", "ratio"),
    "trades": ("Trades", "int"),
    "closed_trades": ("Closed trades", "int"),
    "average_bars_held": ("Average bars held", "ratio"),
    "exposure": ("Exposure", "pct"),
    "turnover": ("Turnover (per year)", "ratio"),
    "periods": ("Periods", "int"),
}
# Metrics the table leaves out: `cagr` is annual_return under a second name.
HIDDEN_METRICS = frozenset({"cagr"})
# The headline cards under the title: (metric key, short label).
CARDS: tuple[tuple[str, str], ...] = (
    ("total_return", "Total return"),
    ("annual_return", "Annual return"),
    ("sharpe", "Sharpe"),
    ("max_drawdown", "Max drawdown"),
    ("annual_volatility", "Volatility"),
    ("sortino", "Sortino"),
    ("win_rate", "Win rate"),
    ("trades", "Trades"),
)
# Cards whose value is coloured by sign (a positive Sharpe is good news; a drawdown is always ≤ 0).
SIGNED_CARDS = frozenset({"total_return", "annual_return", "sharpe", "sortino"})
# The walk-forward's out-of-sample metrics (quanto.evaluation.metrics.METRIC_KEYS) in display order,
# with the direction that is better: +1 higher, -1 lower, 0 neither (a row count).
OOS_METRICS: dict[str, int] = {"n": 0, "mse": -1, "accuracy": 1, "auc": 1, "ic": 1, "rank_ic": 1, "sharpe": 1}

# Keys that may appear in fold rows (or anywhere else) beyond the strategy metrics.
_EXTRA_KINDS: dict[str, str] = {
    "fold": "int",
    "accuracy": "pct",
    "balanced_accuracy": "pct",
    "hit_rate": "pct",
    "precision": "pct",
    "recall": "pct",
    "specificity": "pct",
    "calmar": "ratio",
    "ic_ir": "ratio",
    # Squared errors of returns are tiny (0.000412): significant digits, not fixed decimals.
    "mse": "sig",
    "mae": "sig",
    "rmse": "sig",
    "z_ic": "ratio",
    "z_accuracy": "ratio",
}
_LABELS: dict[str, str] = {
    "fold": "Fold",
    "index": "Fold",
    "path": "Path",
    "n": "Scored rows",
    "n_valid": "Valid rows",
    "n_trials": "Trials",
    "train_start": "Train start",
    "train_end": "Train end",
    "test_start": "Test start",
    "test_end": "Test end",
    "n_train": "Train rows",
    "n_test": "Test rows",
    "ic": "IC",
    "rank_ic": "Rank IC",
    "ic_ir": "IC IR",
    "auc": "AUC",
    "mse": "MSE",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "f1": "F1",
    "rows_in": "Rows in",
    "accepted": "Accepted",
    "quarantined": "Quarantined",
    "duplicates_dropped": "Duplicates dropped",
    "buy_and_hold": "Buy and hold",
    "majority": "Majority",
    "prev_return_sign": "Previous-return sign",
    "bars": "Test bars",
    "z_ic": "z (rank IC)",
    "z_accuracy": "z (accuracy)",
    "sharpe_per_period": "Sharpe (per period)",
    **{key: label for key, (label, _) in METRICS.items()},
}
_DATE_KEY = re.compile(r"(^|_)(start|end|date|ts|time)$")


@dataclass
class ReportData:
    """Everything one research report shows; computed elsewhere, only formatted and drawn here.

    `equity` has columns ts (UTC), equity, benchmark, drawdown, benchmark_drawdown (drawdowns as
    fractions ≤ 0). Metric dicts use the keys of `METRICS`; missing or None values show as "—".
    Folds are rendered with whatever keys they carry (dates, row counts, metric columns such as ic).

    The honest evaluation comes from the walk-forward stage's summary (`quanto.evaluation.stage.
    summarize`): `oos_metrics` (the stitched out-of-sample metrics) and `baselines` ({name: metrics}
    on the same rows), `stitched` (what that series is), `prev_return_source`, `statistics` (PSR/DSR,
    `sharpe_statistics`), `canary` (the verdict, None when evaluation.canary was off), `leaderboards`
    ([{index, rows}] of the folds that searched) and cpcv's `paths` ([{path, **metrics}]); `model` is
    the train stage's summary (model_id, family, n_trials, note). Each section is left out when its
    data is (older summaries have none of it), except the canary, which says when it was off.

    The return analysis is drawn from `equity` (its `returns` column, else the equity's own changes;
    the first row is the starting point unless `first_row_is_period`, as with fills at the decision
    bar's close) with `periods_per_year` (None: estimated from the timestamps) and `rolling_window`
    (None: a quarter-year of bars, see `returns.rolling_window`): the monthly table, the return
    distribution and rolling Sharpe and volatility. Exposure comes from equity's gross_exposure and net_exposure
    columns, else from `positions` (ts, symbol and weight, or the sleeve engine's position); the
    trade distribution from `trades` (return or pnl, and open). `classification` is
    `stage.classification_summary` of a classifier's stitched predictions (None for a regressor);
    `pbo` and `bootstrap` are the backtest summary's probability of backtest overfitting and
    block-bootstrap intervals. Each of these is left out when its data is.
    """

    title: str
    subtitle: str
    generated_at: str
    config_summary: dict[str, str]
    equity: pd.DataFrame
    metrics: dict[str, float | int | None]
    benchmark_metrics: dict[str, float | int | None]
    folds: list[dict[str, Any]] = field(default_factory=list)
    feature_importance: list[tuple[str, float]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    log_scale: bool = False
    oos_metrics: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    stitched: str = ""
    prev_return_source: str | None = None
    statistics: dict[str, Any] = field(default_factory=dict)
    canary: dict[str, Any] | None = None
    leaderboards: list[dict[str, Any]] = field(default_factory=list)
    paths: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    periods_per_year: float | None = None
    first_row_is_period: bool = False
    rolling_window: int | None = None
    trades: pd.DataFrame | None = None
    positions: pd.DataFrame | None = None
    classification: dict[str, Any] | None = None
    pbo: dict[str, Any] | None = None
    bootstrap: dict[str, Any] | None = None


# --- formatting ---------------------------------------------------------------------------------


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, Real) and not isinstance(value, Integral) and math.isnan(float(value))


def _clean_negative_zero(text: str) -> str:
    # "-0.00%" reads as a loss that isn't there; a value that rounds to zero shows unsigned.
    if text.startswith("-") and not any(ch in "123456789" for ch in text):
        return text[1:]
    return text


def _infinite(value: float) -> str | None:
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return None


def format_percent(value: float | None, decimals: int = 2) -> str:
    """A fraction as a percentage: 0.1234 -> "12.34%"; None/NaN -> "—"."""
    if _is_missing(value):
        return MISSING
    v = float(value)
    return _infinite(v) or _clean_negative_zero(f"{v * 100:,.{decimals}f}%")


def format_ratio(value: float | None, decimals: int = 2) -> str:
    """A ratio with fixed decimals: 1.2345 -> "1.23"; None/NaN -> "—"."""
    if _is_missing(value):
        return MISSING
    v = float(value)
    return _infinite(v) or _clean_negative_zero(f"{v:,.{decimals}f}")


def format_int(value: float | None) -> str:
    """A count with thousands separators: 12345 -> "12,345"; None/NaN -> "—"."""
    if _is_missing(value):
        return MISSING
    v = float(value)
    return _infinite(v) or f"{round(v):,}"


def format_float(value: float | None, decimals: int = 4) -> str:
    """A generic statistic (IC, loss, ...) with fixed decimals; None/NaN -> "—"."""
    return format_ratio(value, decimals)


def format_significant(value: float | None, digits: int = 4) -> str:
    """A value whose scale varies (squared errors of returns, p-values) to `digits` significant
    digits: 0.00041234 -> "0.0004123", 2.25e-28 -> "2.3e-28" (digits=2); None/NaN -> "—"."""
    if _is_missing(value):
        return MISSING
    v = float(value)
    return _infinite(v) or _clean_negative_zero(f"{v:.{digits}g}")


def _utc(value: object) -> pd.Timestamp | None:
    """A date, timestamp or ISO string as a naive UTC timestamp; None when missing or not a date."""
    if _is_missing(value):
        return None
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def format_timestamp(value: object, with_time: bool | None = None) -> str:
    """A date or timestamp in UTC as "YYYY-MM-DD" or "YYYY-MM-DD HH:MM".

    `with_time` True or False forces one form (a report picks it once for all its dates, see
    `show_time_of_day`); None shows "HH:MM" only when the time is not midnight.
    """
    if _is_missing(value):
        return MISSING
    ts = _utc(value)
    if ts is None:
        return str(value)
    if with_time is None:
        with_time = (ts.hour, ts.minute, ts.second) != (0, 0, 0)
    return ts.strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")


def show_time_of_day(bar_ts: Iterable[object], other_ts: Iterable[object] = ()) -> bool:
    """Whether a run's dates need "HH:MM": False for daily (or coarser) bars, True for intraday ones.

    Dates only when every timestamp of the run (`bar_ts`, the equity bars, and `other_ts`, such as
    fold boundaries) has the same time of day, or when the bars never put two on one UTC calendar
    day: daily bars stamped at the open sit at 13:30 or 14:30 UTC depending on daylight saving time,
    and "14:30" in a table of daily folds is noise. Otherwise (intraday) the time is shown everywhere.
    """
    bars = [ts for ts in map(_utc, bar_ts) if ts is not None]
    stamps = bars + [ts for ts in map(_utc, other_ts) if ts is not None]
    if len({ts - ts.normalize() for ts in stamps}) <= 1:
        return False
    days = [ts.normalize() for ts in bars]
    return not (len(days) >= 2 and len(set(days)) == len(days))


def format_duration(seconds: float | None) -> str:
    """Elapsed time for humans: 0.0123 -> "12 ms", 4.2 -> "4.2 s", 125 -> "2m 05s", 3720 -> "1h 02m"."""
    if _is_missing(seconds):
        return MISSING
    s = float(seconds)
    if s < 0.9995:  # a quick fit (a linear model) in milliseconds, not "0.0 s"
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        minutes, rest = divmod(round(s), 60)
        return f"{minutes}m {rest:02d}s"
    hours, rest = divmod(round(s), 3600)
    return f"{hours}h {rest // 60:02d}m"


def value_kind(key: str, value: object = None) -> str:
    """How a keyed value is formatted: "pct", "ratio", "int", "float", "sig" (significant digits),
    "date", "bool" or "text"."""
    if key in METRICS:
        return METRICS[key][1]
    if key in _EXTRA_KINDS:
        return _EXTRA_KINDS[key]
    if key.startswith("n_"):
        return "int"
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, datetime | date | pd.Timestamp | np.datetime64):
        return "date"
    if isinstance(value, str) and _DATE_KEY.search(key):
        return "date"
    if isinstance(value, Integral):
        return "int"
    if isinstance(value, Real):
        return "float"
    return "text"


def format_value(key: str, value: object, with_time: bool | None = None) -> str:
    """Format any keyed value by its kind (see `value_kind`); None/NaN -> "—".

    `with_time` is passed to `format_timestamp` for dates."""
    if _is_missing(value):
        return MISSING
    kind = value_kind(key, value)
    if kind == "pct":
        return format_percent(value)
    if kind == "ratio":
        return format_ratio(value)
    if kind == "int":
        return format_int(value)
    if kind == "float":
        return format_float(value)
    if kind == "sig":
        return format_significant(value)
    if kind == "date":
        return format_timestamp(value, with_time)
    if kind == "bool":
        return "yes" if value else "no"
    return str(value)


def format_importance(value: float, scale: float) -> str:
    """Importance scores come as split counts, gains in the thousands or fractions: pick decimals by scale."""
    if scale >= 100:
        return format_ratio(value, 0)
    if scale >= 1:
        return format_ratio(value, 2)
    return format_ratio(value, 4)


def label_for(key: str) -> str:
    """Human label for a metric or column key: "annual_return" -> "Annual return"."""
    return _LABELS.get(key) or key.replace("_", " ").strip().capitalize()


# --- context ------------------------------------------------------------------------------------


def _numeric(kind: str) -> bool:
    return kind in {"pct", "ratio", "int", "float", "sig"}


def _truncate(text: str, limit: int) -> str:
    return text[: limit - 1] + "…" if len(text) > limit else text


def _plural(n: object, word: str) -> str:
    """A count and its noun: "1 trial", "12 trials", "— trials" (the count by `format_int`)."""
    return f"{format_int(n)} {word}{'' if n == 1 else 's'}"


def _tone(value: object) -> str:
    if _is_missing(value):
        return ""
    return "pos" if float(value) > 0 else "neg" if float(value) < 0 else ""


def _ordered_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def _cards(metrics: Mapping[str, Any], benchmark: Mapping[str, Any]) -> list[dict[str, str]]:
    cards = []
    for key, label in CARDS:
        value = metrics.get(key)
        note = f"Benchmark {format_value(key, benchmark[key])}" if key in benchmark else ""
        cards.append(
            {
                "label": label,
                "value": format_value(key, value),
                "note": note,
                "tone": _tone(value) if key in SIGNED_CARDS else "",
            }
        )
    return cards


def _metric_keys(known: Iterable[str], dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The `known` metrics present in any of `dicts` in their fixed order, then anything else supplied."""
    known = list(known)
    present = _ordered_keys(dicts)
    return [k for k in known if k in present] + [k for k in present if k not in known]


def _metric_rows(metrics: Mapping[str, Any], benchmark: Mapping[str, Any]) -> list[dict[str, str]]:
    keys = [k for k in _metric_keys(METRICS, [metrics, benchmark]) if k not in HIDDEN_METRICS]
    return [
        {
            "label": label_for(key),
            "strategy": format_value(key, metrics.get(key)),
            "benchmark": format_value(key, benchmark.get(key)),
        }
        for key in keys
    ]


def _fold_kinds(folds: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each fold column's kind, from its first present value; columns empty in every fold are left out."""
    kinds = {}
    for k in _ordered_keys(folds):
        kind = next((value_kind(k, r[k]) for r in folds if not _is_missing(r.get(k))), None)
        if kind is not None:  # a column of nothing but "—" (no AUC for a regression) only takes room
            kinds[k] = kind
    return kinds


def _fold_dates(folds: Sequence[Mapping[str, Any]]) -> list[object]:
    kinds = _fold_kinds(folds)
    return [r.get(k) for r in folds for k, kind in kinds.items() if kind == "date"]


def _column(label: str, numeric: bool = False, cls: str = "") -> dict[str, Any]:
    """A table column for the template's `data_table`: its header, and the class of its cells."""
    return {"label": label, "numeric": numeric, "cls": "num" if numeric else cls}


def _fold_table(folds: Sequence[Mapping[str, Any]], with_time: bool | None = None) -> dict[str, Any]:
    """Rows of keyed values (folds, canary folds, cpcv paths) as a table, with mean and std rows."""
    kinds = _fold_kinds(folds)
    keys = list(kinds)
    columns = [_column(label_for(k), _numeric(kinds[k])) for k in keys]
    rows = [[format_value(k, row.get(k), with_time) for k in keys] for row in folds]
    # Mean and standard deviation across folds for the metric columns: how stable is the signal?
    summary: list[dict[str, Any]] = []
    stat_keys = [k for k in keys if kinds[k] in {"pct", "ratio", "float", "sig"}]
    if len(folds) >= 2 and stat_keys:
        for name, fn in (("Mean", statistics.fmean), ("Std", statistics.stdev)):
            cells = []
            for k in keys:
                values = [float(r[k]) for r in folds if k in stat_keys and not _is_missing(r.get(k))]
                enough = len(values) >= (2 if fn is statistics.stdev else 1)
                cells.append(format_value(k, fn(values)) if enough else "")
            cells[0] = cells[0] or name  # the label goes in the first column (fold number) when it is free
            summary.append({"cells": cells})
    return {"columns": columns, "rows": rows, "summary": summary}


def _feature_table(items: Sequence[tuple[str, float]]) -> tuple[list[tuple[str, float]], list[dict], str]:
    # Sort by importance, name as tie-break, so equal scores always land in the same order.
    ranked = sorted(((str(n), float(v)) for n, v in items), key=lambda nv: (-nv[1], nv[0]))
    top = ranked[:TOP_FEATURES]
    values = [v for _, v in ranked]
    total = sum(values)
    share_ok = bool(values) and min(values) >= 0 and total > 0
    scale = max((abs(v) for v in values), default=0.0)
    rows = [
        {
            "rank": str(i),
            "name": name,
            "importance": format_importance(value, scale),
            "share": format_percent(value / total, 1) if share_ok else MISSING,
        }
        for i, (name, value) in enumerate(top, start=1)
    ]
    caption = f"Top {len(top)} of {len(ranked)} features" if ranked else ""
    return top, rows, caption


def _quality(quality: Mapping[str, Any]) -> dict[str, Any] | None:
    if not quality:
        return None
    totals = dict(quality.get("totals") or {})
    keys = ("rows_in", "accepted", "quarantined", "duplicates_dropped")
    # Repair and warnings (imputed bars, flagged rows) are shown when the validation stage reports them.
    shown = keys + tuple(k for k in ("imputed", "flagged") if k in totals)
    cards = [{"label": label_for(k), "value": format_int(totals.get(k))} for k in shown]
    check = None
    if all(isinstance(totals.get(k), Real) for k in keys):
        rows_in = totals["rows_in"]
        out = totals["accepted"] + totals["quarantined"] + totals["duplicates_dropped"]
        accepted_share = format_percent(totals["accepted"] / rows_in, 2) if rows_in else MISSING
        conserved = rows_in == out
        check = {
            "ok": conserved,
            "text": (
                f"Counts conserved: {format_int(rows_in)} rows in = {format_int(totals['accepted'])} accepted"
                f" + {format_int(totals['quarantined'])} quarantined"
                f" + {format_int(totals['duplicates_dropped'])} duplicates dropped; {accepted_share} accepted."
                + (
                    f" {format_int(totals['imputed'])} bars imputed to fill short gaps (each value audited)."
                    if totals.get("imputed")
                    else ""
                )
                if conserved
                else f"Counts NOT conserved: {format_int(rows_in)} rows in, {format_int(out)} accounted for."
            ),
        }
    by_rule = sorted(
        quality.get("by_rule") or [],
        key=lambda r: (-(r.get("count") or 0), str(r.get("rule", "")), str(r.get("symbol", ""))),
    )
    rules = []
    for r in by_rule:
        example = _truncate("" if r.get("example") is None else str(r["example"]), EXAMPLE_MAX_CHARS)
        rules.append(
            {
                "rule": str(r.get("rule", MISSING)),
                "policy": str(r.get("policy") or MISSING),
                "symbol": str(r.get("symbol") or MISSING),
                "count": format_int(r.get("count")),
                "example": example,
            }
        )
    return {"cards": cards, "check": check, "rules": rules}


def _stages(stages: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not stages:
        return None
    rows = []
    for s in stages:
        status = str(s.get("status") or MISSING)
        low = status.lower()
        tone = "ok" if low in {"ok", "completed", "success", "succeeded", "done"} else ""
        tone = "bad" if low in {"failed", "error", "cancelled", "timed_out"} else tone
        rows.append(
            {
                "name": str(s.get("name", MISSING)),
                "status": status,
                "tone": tone,
                "seconds": format_duration(s.get("seconds")),
                "skipped": "cached" if s.get("skipped") else "",
            }
        )
    secs = [float(s["seconds"]) for s in stages if not _is_missing(s.get("seconds"))]
    return {"rows": rows, "total": format_duration(sum(secs)) if secs else MISSING}


def _beats(key: str, model: object, baselines: Iterable[object]) -> bool | None:
    """Whether the model's value is strictly better than every baseline's under `key`'s direction;
    None when the metric has no direction or there is nothing to compare."""
    direction = OOS_METRICS.get(key, 0)
    others = [float(v) for v in baselines if not _is_missing(v)]
    if not direction or _is_missing(model) or not others:
        return None
    return all(direction * (float(model) - v) > 0 for v in others)


def _evaluation(data: ReportData) -> dict[str, Any] | None:
    """The stitched out-of-sample metrics next to each baseline's, and cpcv's per-path table."""
    if not data.oos_metrics and not data.paths:
        return None
    names = list(data.baselines)
    dicts = [data.oos_metrics, *data.baselines.values()]
    rows, wins, compared = [], [], 0
    for key in _metric_keys(OOS_METRICS, dicts):
        values = [d.get(key) for d in dicts]
        if all(_is_missing(v) for v in values):  # no AUC for a regression: a row of "—" only takes room
            continue
        beats = _beats(key, data.oos_metrics.get(key), values[1:])
        compared += beats is not None
        if beats:
            wins.append(label_for(key))
        rows.append(
            {
                "label": label_for(key),
                "model": format_value(key, values[0]),
                "baselines": [format_value(key, v) for v in values[1:]],
                "beats": "" if beats is None else "yes" if beats else "no",
                "tone": "" if beats is None else "ok" if beats else "bad",
            }
        )
    verdict = ""
    if compared:
        which = f": {', '.join(wins)}" if wins else ""
        verdict = f"The model beats every baseline on {len(wins)} of {compared} metrics{which}."
    notes = []
    if data.prev_return_source and "prev_return_sign" in data.baselines:
        notes.append(f"{label_for('prev_return_sign')} from {data.prev_return_source}.")
    return {
        "caption": f"stitched: {data.stitched}" if data.stitched else "",
        "baselines": [label_for(n) for n in names],
        "rows": rows,
        "verdict": verdict,
        "notes": notes,
        "paths": _fold_table(data.paths) if data.paths else None,
    }


def _sharpe_tests(statistics: Mapping[str, Any]) -> list[dict[str, str]]:
    """PSR and DSR, each with its value and what it means in one line."""
    trials = statistics.get("n_trials")
    threshold = statistics.get("sharpe_threshold")
    spread = (
        "the trials' Sharpe spread"
        if statistics.get("trial_sharpe_var_source") == "trials"
        else "the estimate's sampling error"
    )
    tests = (
        (
            "Probabilistic Sharpe ratio (PSR)",
            statistics.get("psr"),
            f"Probability that the true Sharpe ratio is above 0, given the observed"
            f" {format_ratio(statistics.get('sharpe'))} (annualized) over {_plural(statistics.get('n'), 'period')}"
            " and their skew and kurtosis.",
        ),
        (
            "Deflated Sharpe ratio (DSR)",
            statistics.get("dsr"),
            f"The same probability against the Sharpe ratio the best of {_plural(trials, 'trial')} would"
            f" reach by luck alone ({format_float(threshold)} per period, from {spread});"
            f" {format_percent(SIGNIFICANT, 0)} or more survives the search.",
        ),
    )
    return [
        {
            "label": label,
            "value": format_percent(value, 1),
            "tone": "" if _is_missing(value) else "pos" if value >= SIGNIFICANT else "neg",
            "meaning": meaning,
        }
        for label, value, meaning in tests
    ]


def _canary(canary: Mapping[str, Any] | None) -> dict[str, Any]:
    """The label-permutation canary's verdict: state (off, clean, leaking, undetermined), a title,
    one line with its statistics, and its per-fold numbers."""
    if canary is None:
        return {
            "state": "off",
            "title": "Not run.",
            "text": "The canary is off (evaluation.canary: false): no model was retrained on shuffled"
            " labels, so this run was not checked for leakage.",
            "folds": None,
        }
    parts = []
    for name, test in (("rank IC", canary.get("ic")), ("accuracy", canary.get("accuracy"))):
        if test and test.get("df"):
            parts.append(
                f"{name} χ² {format_ratio(test.get('chi2'), 1)} on {_plural(test['df'], 'fold')},"
                f" p = {format_significant(test.get('p_value'), 2)}"
            )
    alpha = canary.get("alpha")
    numbers = "; ".join(parts)
    if alpha is not None:
        numbers += f"; a leak when p < α = {format_significant(alpha, 2)}"
    if canary.get("max_abs_rank_ic") is not None:
        numbers += f"; max |rank IC| {format_ratio(canary['max_abs_rank_ic'], 3)}"
    leaking = canary.get("leaking")
    if leaking is True:
        state, title = "leaking", "LEAKING"
        text = (
            f"A model trained on shuffled labels kept out-of-sample skill: {numbers}. Look for a feature"
            " that nearly determines the label, or a model that sees the labels."
        )
    elif leaking is False:
        state, title = "clean", "Clean"
        text = f"A model trained on shuffled labels shows no skill beyond chance: {numbers}."
    else:
        state, title = "undetermined", "Undetermined"
        text = str(canary.get("message") or "no fold could be tested.")
    per_fold = canary.get("per_fold") or []
    return {
        "state": state,
        "title": title,
        "text": text,
        "folds": _fold_table(per_fold) if per_fold else None,
    }


def _pbo_tests(pbo: Mapping[str, Any]) -> list[dict[str, str]]:
    """The parameter sweep's probability of backtest overfitting (`overfitting.pbo_cscv`) and what
    its splits say about the winner, as rows of the tests table."""
    value = pbo.get("pbo")
    metric = {"sharpe": "Sharpe ratio", "mean": "mean return", "total_return": "total return"}.get(
        pbo.get("metric"), "score"
    )
    splits = (
        f"{_plural(pbo.get('n_combinations'), 'split')} of {_plural(pbo.get('n_rows'), 'period')} in"
        f" {format_int(pbo.get('n_splits'))} blocks"
    )
    rows = [
        {
            "label": "Probability of backtest overfitting (PBO)",
            "value": format_percent(value, 1),
            "tone": "" if _is_missing(value) else "pos" if value <= 1 - SIGNIFICANT else "neg",
            "meaning": f"Share of the {splits} (CSCV) in which the best of the sweep's"
            f" {_plural(pbo.get('n_trials'), 'trial')} in sample, by {metric}, ranks at or below the"
            f" median out of sample; noise gives about 50%, {format_percent(1 - SIGNIFICANT, 0)} or less"
            " says the selection holds up.",
        }
    ]
    if "prob_oos_loss" in pbo:
        rows.append(
            {
                "label": "Probability of out-of-sample loss",
                "value": format_percent(pbo["prob_oos_loss"], 1),
                "tone": "",
                "meaning": f"Share of those splits whose in-sample winner has a {metric} below 0 out of sample.",
            }
        )
    if pbo.get("degradation_slope") is not None:
        rows.append(
            {
                "label": "Performance degradation",
                "value": format_ratio(pbo["degradation_slope"]),
                "tone": "",
                "meaning": f"Slope of the winner's out-of-sample {metric} on its in-sample one over the"
                " splits; below 0: the better a trial looked in sample, the worse it did after.",
            }
        )
    return rows


def _reality(data: ReportData) -> dict[str, Any] | None:
    """The "Is it real?" section: PSR and DSR of the stitched signal, the sweep's probability of
    backtest overfitting, the block-bootstrap intervals, and the canary's verdict."""
    evaluated = bool(data.statistics) or data.canary is not None
    if not evaluated and not data.pbo and not data.bootstrap:
        return None  # a summary from before the honest evaluation: nothing to say either way
    tests = _sharpe_tests(data.statistics) if data.statistics else []
    tests += _pbo_tests(data.pbo) if data.pbo else []
    return {
        "tests": tests,
        "bootstrap": _bootstrap(data.bootstrap),
        # Without the walk-forward's evaluation the canary's state is unknown, not "off".
        "canary": _canary(data.canary) if evaluated else None,
    }


def _format_param(value: object) -> str:
    if isinstance(value, float):
        return format_significant(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format_param(v) for v in value) + "]"
    return str(value)


def format_params(params: Mapping[str, Any] | None) -> str:
    """A candidate's parameters on one line: {"num_leaves": 31, "learning_rate": 0.0512345} ->
    "num_leaves=31, learning_rate=0.05123" (cut at PARAMS_MAX_CHARS)."""
    text = ", ".join(f"{k}={_format_param(v)}" for k, v in (params or {}).items())
    return _truncate(text, PARAMS_MAX_CHARS) or MISSING


def _search(data: ReportData) -> dict[str, Any] | None:
    """The last searched fold's leaderboard (top rows) and the trial counts."""
    if not data.leaderboards:
        return None
    last = data.leaderboards[-1]
    board = list(last.get("rows") or [])
    top = board[:TOP_TRIALS]
    metric = next((r["metric"] for r in top if r.get("metric")), None)
    # A search scores Sharpe ratios per period (not annualized): they get a label and decimals of their own.
    score_key = "sharpe_per_period" if metric == "sharpe" else metric or "score"
    # Optional columns: a search's trial states when some were pruned or failed, an ensemble's weights.
    states = any(r.get("state") not in (None, "complete") for r in top)
    weights = any("weight" in r for r in top)
    timed = any("fit_s" in r for r in top)
    columns = [
        _column("#", numeric=True),
        _column("Family"),
        _column("Params", cls="mono"),
        _column(f"Validation {label_for(score_key)}", numeric=True),
        _column(label_for("sharpe_per_period"), numeric=True),
    ]
    columns += [_column("Weight", numeric=True)] if weights else []
    columns += [_column("Fit time", numeric=True)] if timed else []
    columns += [_column("State")] if states else []
    rows = []
    for i, r in enumerate(top, start=1):
        cells = [
            str(i),
            str(r.get("family") or MISSING),
            format_params(r.get("params")),
            format_value(score_key, r.get("score")),
            format_value("sharpe_per_period", r.get("sharpe")),
        ]
        cells += [format_percent(r.get("weight"), 1)] if weights else []
        cells += [format_duration(r.get("fit_s"))] if timed else []
        cells += [str(r.get("state") or MISSING)] if states else []
        rows.append(cells)
    index = last.get("index")
    fold_trials = next((f.get("n_trials") for f in data.folds if f.get("index") == index), None)
    total = data.statistics.get("n_trials")
    if total is None:
        total = sum(int(f.get("n_trials") or 1) for f in data.folds) or None
    searched_note = f" ({_plural(fold_trials, 'trial')})" if fold_trials is not None else ""
    lines = [
        f"Fold {format_int(index)}, the last of {_plural(len(data.leaderboards), 'fold')} that searched"
        f"{searched_note}: its best {_plural(len(top), 'candidate')}."
    ]
    if total is not None:
        lines.append(
            f"{_plural(total, 'trial')} in all folds; the deflated Sharpe ratio counts every one of them."
        )
    m = data.model
    if m.get("family"):
        name = f" {m['model_id']}" if m.get("model_id") else ""
        searched = isinstance(m.get("n_trials"), Integral) and m["n_trials"] > 1
        trials = f", {_plural(m['n_trials'], 'trial')} on the full training window" if searched else ""
        note = f" ({m['note']})" if m.get("note") else ""  # why its fit fell back, e.g. one class
        lines.append(f"Final model{name}: {m['family']}{trials}{note}.")
    return {"table": {"columns": columns, "rows": rows, "summary": []}, "lines": lines}


# --- the return analysis ------------------------------------------------------------------------

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Heatmap cells blend white toward the stylesheet's green (gain) or red (loss): a faint tint for the
# smallest move, at most HEAT_MAX for the largest, so dark text stays readable on every cell.
_GAIN_RGB, _LOSS_RGB = (30, 125, 79), (178, 58, 46)
HEAT_MIN, HEAT_MAX = 0.08, 0.6


def heat_color(value: float | None, scale: float) -> str:
    """A heatmap cell's background as "#rrggbb": green for a gain, red for a loss, stronger with
    |value| / scale; "" (no colour) for a missing or zero value or a zero scale."""
    if _is_missing(value) or not scale > 0 or value == 0:
        return ""
    base = _GAIN_RGB if value > 0 else _LOSS_RGB
    alpha = HEAT_MIN + (HEAT_MAX - HEAT_MIN) * min(1.0, abs(float(value)) / scale)
    return "#" + "".join(f"{round(255 + (c - 255) * alpha):02x}" for c in base)


def _heat_cells(values: Sequence[object], scale: float) -> list[dict[str, str]]:
    # A month without periods is blank, not "—": outside the backtest, nothing is missing there.
    return [
        {
            "text": "" if _is_missing(v) else format_percent(v, 1),
            "bg": heat_color(v, scale),
            "tone": _tone(v),
        }
        for v in values
    ]


def _scale(frame: pd.DataFrame) -> float:
    values = np.abs(frame.to_numpy(dtype=float))
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


def _monthly(r: pd.Series) -> dict[str, Any] | None:
    """The monthly returns table (years × months and the year's compounded return), with colours: the
    months scaled by the largest monthly move, the year column by the largest yearly one."""
    if r.empty:
        return None
    table = monthly_returns(r)
    months = table[list(range(1, 13))]
    month_scale, year_scale = _scale(months), _scale(table[["year"]])
    rows = [
        {
            "year": str(year),
            "cells": _heat_cells(months.loc[year].tolist(), month_scale),
            "total": _heat_cells([table.loc[year, "year"]], year_scale)[0],
        }
        for year in table.index
    ]
    return {"months": MONTHS, "rows": rows}


def _distributions(a: _Analysis, drawn: _Charts) -> dict[str, str] | None:
    """Captions of the return and trade distributions (None when neither chart was drawn)."""
    if not drawn.returns and not drawn.trades:
        return None
    returns_note = trades_note = ""
    if drawn.returns:
        r = a.returns.to_numpy(dtype=float)
        returns_note = (
            f"{_plural(r.size, 'period')}, mean {format_percent(r.mean(), 3)}, standard deviation"
            f" {format_percent(r.std(ddof=1), 3)}."
        )
        if a.var_lines:
            levels = " and ".join(format_percent(level, 0) for level, _ in a.var_lines)
            chances = " and ".join(format_percent(1 - level, 0) for level, _ in a.var_lines)
            returns_note += (
                f" Red lines: historical VaR at {levels}, the losses a period exceeds with probability"
                f" {chances}."
            )
    if drawn.trades:
        kept = a.trade_values.size if a.trade_values is not None else 0
        left_out = f"; {_plural(a.open_trades, 'open trade')} left out" if a.open_trades else ""
        measure = "return" if a.trade_percent else "PnL"
        trades_note = f"{_plural(kept, 'closed trade')} by {measure}{left_out}."
    return {"returns": returns_note, "trades": trades_note}


def _over_time(a: _Analysis) -> dict[str, str]:
    """Captions of the rolling and exposure charts."""
    rolling = ""
    if a.rolling is not None and a.window and a.periods_per_year:
        rolling = (
            f"window {_plural(a.window, 'bar')}, annualized with {format_ratio(a.periods_per_year, 0)}"
            " periods per year"
        )
    sources = {
        "equity": "gross = (long + |short|) / equity, net = (long − |short|) / equity",
        "position weights": "from position weights: gross = Σ|weight|, net = Σ weight",
        "sleeve positions": "from sleeve positions: mean over symbols of each equal-capital sleeve's position",
    }
    return {"rolling": rolling, "exposure": sources.get(a.exposure_source, "")}


def _classification(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The classifier's numbers beside its confusion matrix and ROC curve."""
    if not c:
        return None
    rows = [
        (label, format_value(key, c.get(key)))
        for key, label in (
            ("n", "Scored rows"),
            ("accuracy", "Accuracy"),
            ("precision", "Precision (up)"),
            ("recall", "Recall (up)"),
            ("specificity", "Specificity (down)"),
            ("auc", "AUC"),
        )
        if key in c
    ]
    threshold = c.get("threshold")
    caption = f"P(up) above {format_ratio(threshold)} predicts up" if threshold is not None else ""
    return {"rows": rows, "caption": caption}


def _bootstrap(b: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Block-bootstrap confidence intervals and stress quantiles (`BootstrapResult.summary`)."""
    if not b:
        return None
    stats = b.get("statistics") or {}
    stress = b.get("stress") or {}
    quantiles = sorted({q for s in stress.values() for q in s}, reverse=True)  # q05 before q01
    rows = []
    for key, label, kind in (
        ("total_return", "Total return", "pct"),
        ("cagr", "CAGR", "pct"),
        ("sharpe", "Sharpe ratio", "ratio"),
        ("max_drawdown", "Max drawdown", "pct"),
    ):
        if key not in stats:
            continue
        st = stats[key]
        cells = [st.get("estimate"), st.get("lower"), st.get("upper")]
        cells += [(stress.get(key) or {}).get(q) for q in quantiles]
        rows.append([label] + [format_percent(v) if kind == "pct" else format_ratio(v) for v in cells])
    confidence = b.get("confidence")
    level = format_percent(confidence, 0) if confidence is not None else ""
    header = ["Statistic", "Observed", f"{level} low".strip(), f"{level} high".strip()]
    header += [f"Worst {int(q[1:])}%" for q in quantiles]
    method, length = b.get("method"), format_ratio(b.get("block"), 1)
    # Stationary blocks have random lengths of that mean; circular ones a fixed length.
    blocks = (
        f"blocks of {length} periods" if method == "circular" else f"blocks of mean length {length} periods"
    )
    seed = f", seed {b['seed']}" if b.get("seed") is not None else ""
    note = (
        f"{_plural(b.get('n_paths'), 'path')} of {_plural(b.get('n'), 'period')} resampled in"
        f" {method or 'random'} {blocks}{seed}: percentile intervals of each statistic; the worst"
        " columns are its low tail over the paths, a stress distribution of what the same returns in"
        " another order could have done."
    )
    return {"header": header, "rows": rows, "note": note}


def _check_equity(equity: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in EQUITY_COLUMNS if c not in equity.columns]
    if missing:
        raise ValueError(f"ReportData.equity lacks column(s) {missing}; expected {list(EQUITY_COLUMNS)}")
    return equity.sort_values("ts", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class _Analysis:
    """What the report derives from the equity, positions and trades once, for charts and captions."""

    returns: pd.Series  # per period, indexed by ts; the first equity row (the start) is not a period
    periods_per_year: float | None
    window: int | None  # rolling window in bars; None when the series is too short for one
    rolling: pd.DataFrame | None  # sharpe, volatility per equity row
    exposure: pd.DataFrame | None  # gross, net per equity row
    exposure_source: str
    trade_values: np.ndarray | None  # closed trades' returns (or PnL); None without closed trades
    trade_percent: bool  # whether trade_values are returns (else PnL in currency)
    open_trades: int
    var_lines: list[tuple[float, float]]  # (level, return at the historical VaR); [] without a spread


def _trade_values(trades: pd.DataFrame | None) -> tuple[np.ndarray | None, bool, int]:
    """Closed trades' returns (or PnL when the log has no return column), and the open trades' count:
    an open trade's result is a mark, not an outcome, so it is left out of the distribution."""
    if trades is None or trades.empty:
        return None, True, 0
    is_open = (
        trades["open"].astype(bool).to_numpy() if "open" in trades.columns else np.zeros(len(trades), bool)
    )
    column = "return" if "return" in trades.columns else "pnl"
    if column not in trades.columns:
        raise ValueError(f"ReportData.trades needs a return or pnl column, got {list(trades.columns)}")
    values = trades.loc[~is_open, column].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return (values if values.size else None), column == "return", int(is_open.sum())


def _analyse(data: ReportData, equity: pd.DataFrame) -> _Analysis:
    r = returns.period_returns(equity, data.first_row_is_period)
    ppy = returns.periods_per_year(data.periods_per_year, equity["ts"])
    window = returns.rolling_window(len(r), ppy, data.rolling_window)
    # Constant returns (a model that never traded) have no Sharpe ratio to roll: no chart.
    rolling = returns.rolling_frame(equity, r, window, ppy) if window and ppy and _has_spread(r) else None
    exposure = returns.exposure_frame(equity, data.positions) if not equity.empty else None
    values, percent, n_open = _trade_values(data.trades)
    return _Analysis(
        var_lines=returns.var_lines(r) if _has_spread(r) else [],
        returns=r,
        periods_per_year=ppy,
        window=window,
        rolling=rolling,
        exposure=exposure[0] if exposure else None,
        exposure_source=exposure[1] if exposure else "",
        trade_values=values,
        trade_percent=percent,
        open_trades=n_open,
    )


def _floats(values: Sequence[float | None] | None) -> np.ndarray:
    """A JSON list of numbers (None for an undefined one) as floats with NaN."""
    return np.array([np.nan if v is None else v for v in values or []], dtype=float)


def _has_spread(values: pd.Series | np.ndarray) -> bool:
    """At least two values and not all equal: a histogram and a normal fit need a spread."""
    v = np.asarray(values, dtype=float)
    return v.size >= 2 and bool(np.ptp(v) > 0)


@dataclass(frozen=True)
class _Charts:
    """PNG data URIs, drawn once per report and shared by the HTML and the PDF; None when no data."""

    equity: str | None
    drawdown: str | None
    features: str | None
    rolling_sharpe: str | None = None
    rolling_volatility: str | None = None
    exposure: str | None = None
    returns: str | None = None
    trades: str | None = None
    confusion: str | None = None
    roc: str | None = None
    pbo: str | None = None


def _var_label(level: float, value: float) -> str:
    return f"VaR {format_percent(level, 0)}: {format_percent(value)}"


def _draw_charts(
    data: ReportData, equity: pd.DataFrame, top: list[tuple[str, float]], a: _Analysis
) -> _Charts:
    over_time: dict[str, str] = {}
    if not equity.empty:
        # Drawn together: same time range, plot areas aligned so a date sits at one place on the page.
        over_time = charts.time_series_charts(equity, data.log_scale, a.rolling, a.exposure)
    distribution = None
    if _has_spread(a.returns):
        lines = [(_var_label(level, q), q) for level, q in a.var_lines]
        distribution = charts.return_distribution_chart(a.returns.to_numpy(dtype=float), lines)
    trades = None
    if a.trade_values is not None:
        trades = charts.trade_distribution_chart(a.trade_values, a.trade_percent)
    c = data.classification or {}
    confusion = roc = None
    if c.get("confusion"):
        confusion = charts.confusion_matrix_chart(c["confusion"], CLASS_LABELS)
    if c.get("roc"):
        roc = charts.roc_chart(c["roc"]["fpr"], c["roc"]["tpr"], c.get("auc"))
    pbo = None
    logits = _floats((data.pbo or {}).get("logits"))
    if np.isfinite(logits).any():
        scores = [_floats((data.pbo or {}).get(k)) for k in ("is_performance", "oos_performance")]
        if scores[0].size != scores[1].size:  # a summary that kept only some splits' scores: no scatter
            scores = [np.empty(0), np.empty(0)]
        pbo = charts.pbo_chart(logits, *scores)
    return _Charts(
        pbo=pbo,
        equity=over_time.get("equity"),
        drawdown=over_time.get("drawdown"),
        features=charts.feature_importance_chart(top) if top else None,
        rolling_sharpe=over_time.get("rolling_sharpe"),
        rolling_volatility=over_time.get("rolling_volatility"),
        exposure=over_time.get("exposure"),
        returns=distribution,
        trades=trades,
        confusion=confusion,
        roc=roc,
    )


def _context(
    data: ReportData, equity: pd.DataFrame, a: _Analysis, drawn: _Charts, print_mode: bool
) -> dict[str, Any]:
    _, feature_rows, feature_caption = _feature_table(data.feature_importance)
    half = (len(feature_rows) + 1) // 2
    # One choice for the whole report: dates alone for daily bars, dates and times for intraday ones.
    with_time = show_time_of_day(equity["ts"], _fold_dates(data.folds))
    period = None
    if not equity.empty:
        period = {
            "start": format_timestamp(equity["ts"].iloc[0], with_time),
            "end": format_timestamp(equity["ts"].iloc[-1], with_time),
            "bars": format_int(len(equity)),
        }
    css = (TEMPLATE_DIR / "report.css").read_text(encoding="utf-8")
    return {
        "print": print_mode,
        "css": Markup(css),  # our own file, inlined so the report is self-contained
        "title": data.title,
        "subtitle": data.subtitle,
        "generated_at": data.generated_at,
        "period": period,
        "config": [(str(k)[:1].upper() + str(k)[1:], str(v)) for k, v in data.config_summary.items()],
        "cards": _cards(data.metrics, data.benchmark_metrics),
        "metric_rows": _metric_rows(data.metrics, data.benchmark_metrics),
        "charts": drawn,
        "log_scale": data.log_scale,
        "monthly": _monthly(a.returns),
        "distributions": _distributions(a, drawn),
        "over_time": _over_time(a),
        "classification": _classification(data.classification) if drawn.confusion or drawn.roc else None,
        "folds": _fold_table(data.folds, with_time),
        # Two side-by-side tables of ≤ 10 rows keep the chart and its numbers on one page.
        "features": {
            "rows": feature_rows,
            "halves": [h for h in (feature_rows[:half], feature_rows[half:]) if h],
            "caption": feature_caption,
        },
        "quality": _quality(data.quality),
        "stages": _stages(data.stages),
        "evaluation": _evaluation(data),
        "reality": _reality(data),
        "search": _search(data),
    }


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in the template fails loudly instead of rendering blank
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(data: ReportData, print_mode: bool = False) -> str:
    """Render the report template to an HTML string (`print_mode` adds page breaks for the PDF)."""
    equity = _check_equity(data.equity)
    top, _, _ = _feature_table(data.feature_importance)
    a = _analyse(data, equity)
    return _render(data, equity, a, _draw_charts(data, equity, top, a), print_mode)


def _render(data: ReportData, equity: pd.DataFrame, a: _Analysis, drawn: _Charts, print_mode: bool) -> str:
    return _environment().get_template(TEMPLATE_NAME).render(_context(data, equity, a, drawn, print_mode))


def _url_fetcher():
    """A WeasyPrint fetcher that serves data: URIs only; any other URL stops the render."""
    import weasyprint

    if hasattr(weasyprint, "URLFetcher"):  # WeasyPrint >= 68
        return weasyprint.URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)

    def fetch(url: str, *args: Any, **kwargs: Any) -> Any:  # older WeasyPrint: a plain function
        if not url.startswith("data:"):
            raise ValueError(f"reports load nothing from the network, refused {url!r}")
        return weasyprint.default_url_fetcher(url, *args, **kwargs)

    return fetch


def html_to_pdf(html: str) -> bytes:
    """Lay out rendered report HTML as an A4 PDF with WeasyPrint, fetching nothing but data: URIs."""
    import weasyprint  # imported here: it is slow to import and HTML-only callers do not need it

    return weasyprint.HTML(string=html, url_fetcher=_url_fetcher()).write_pdf()


def _atomic_write(path: Path, payload: bytes) -> None:
    # Temp file in the same folder + os.replace: readers see the old report or the new one, never half.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be opened by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_report(data: ReportData, out_dir: Path, formats: list[str]) -> dict[str, Path]:
    """Write `report.html` and/or `report.pdf` into `out_dir`; returns {format: path}.

    Charts are drawn once and shared: the PDF is WeasyPrint's rendering of the same template with the
    `print` flag set (page breaks only), so both formats show the same content.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; choose from {list(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    equity = _check_equity(data.equity)
    top, _, _ = _feature_table(data.feature_importance)
    a = _analyse(data, equity)
    drawn = _draw_charts(data, equity, top, a)
    written: dict[str, Path] = {}
    for fmt in FORMATS:
        if fmt not in formats:
            continue
        path = out_dir / OUTPUT_NAMES[fmt]
        if fmt == "html":
            payload = _render(data, equity, a, drawn, print_mode=False).encode("utf-8")
        else:
            payload = html_to_pdf(_render(data, equity, a, drawn, print_mode=True))
        _atomic_write(path, payload)
        written[fmt] = path
    return written
