"""The research report: one template, HTML and PDF, self-contained and reproducible."""

from __future__ import annotations

import html as htmllib
import math
import re
import statistics
from dataclasses import replace
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from quanto.backtest.bootstrap import block_bootstrap
from quanto.backtest.metrics import performance_metrics
from quanto.backtest.overfitting import pbo_cscv
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.reports import ReportData, charts, render_report, returns
from quanto.reports.render import (
    MONTHS,
    TOP_TRIALS,
    format_duration,
    format_int,
    format_params,
    format_percent,
    format_ratio,
    format_significant,
    format_timestamp,
    heat_color,
    render_html,
    show_time_of_day,
)
from quanto.reports.stage import backtest_fields, classification_summary, evaluation_fields, run_report

TITLE = "Momentum LightGBM — US large caps"


def _equity(n: int = 504, seed: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2022-01-03", periods=n, freq="B", tz="UTC")
    strat = 100_000 * np.cumprod(1 + rng.normal(0.0008, 0.011, n))
    bench = 100_000 * np.cumprod(1 + rng.normal(0.0003, 0.012, n))
    frame = pd.DataFrame({"ts": ts, "equity": strat, "benchmark": bench})
    frame["drawdown"] = frame["equity"] / frame["equity"].cummax() - 1
    frame["benchmark_drawdown"] = frame["benchmark"] / frame["benchmark"].cummax() - 1
    return frame


def _folds() -> list[dict]:
    starts = pd.date_range("2022-01-03", periods=4, freq="QS", tz="UTC")
    return [
        {
            "fold": i,
            "train_start": pd.Timestamp("2020-01-02", tz="UTC"),
            "train_end": start - pd.Timedelta(days=5),
            "test_start": start,
            "test_end": start + pd.Timedelta(days=88),
            "n_train": 25_000 + 1_000 * i,
            "n_test": 3_150,
            "ic": ic,
            "accuracy": acc,
        }
        for i, (start, ic, acc) in enumerate(
            zip(starts, [0.0412, 0.0187, -0.0051, 0.0333], [0.5312, 0.5101, 0.4987, 0.5244], strict=True)
        )
    ]


def _data(**overrides) -> ReportData:
    base = {
        "title": TITLE,
        "subtitle": "pipeline.yaml · workflow pipeline-momentum-3f2a9c1b",
        "generated_at": "2025-01-15 09:30 UTC",
        "config_summary": {
            "universe": "AAPL, MSFT, NVDA, AMZN, GOOGL (5 symbols)",
            "dates": "2020-01-02 → 2023-12-29, 1d bars",
            "model": "lightgbm (num_leaves=31, learning_rate=0.05)",
            "label": "forward return 5d, direction",
            "walk-forward": "4 folds, purge 5, embargo 2",
            "costs": "2.0 bp commission + 1.0 bp slippage",
        },
        "equity": _equity(),
        "metrics": {
            "total_return": 0.4567,
            "annual_return": 0.2081,
            "annual_volatility": 0.1742,
            "sharpe": 1.2345,
            "sortino": 1.8765,
            "max_drawdown": -0.1834,
            "max_drawdown_duration": 143,
            "win_rate": 0.531,
            "profit_factor": None,
            "trades": 1234,
            "exposure": 0.87,
        },
        "benchmark_metrics": {
            "total_return": 0.1502,
            "annual_return": 0.0723,
            "annual_volatility": 0.1911,
            "sharpe": 0.4102,
            "sortino": 0.5521,
            "max_drawdown": -0.2547,
            "max_drawdown_duration": 301,
        },
        "folds": _folds(),
        "feature_importance": [(f"feat_{i:02d}", float(1000 - 37 * i)) for i in range(26)],
        "quality": {
            "totals": {"rows_in": 12_500, "accepted": 12_430, "quarantined": 58, "duplicates_dropped": 12},
            "by_rule": [
                {
                    "rule": "ohlc_consistency",
                    "symbol": "NVDA",
                    "count": 41,
                    "example": "2022-03-07 high < close",
                },
                {"rule": "nonpositive_price", "symbol": "AMZN", "count": 17, "example": "close=0.0"},
            ],
        },
        "stages": [
            {"name": "ingest", "status": "completed", "seconds": 12.4, "skipped": True},
            {"name": "validate", "status": "completed", "seconds": 3.1, "skipped": False},
            {"name": "train", "status": "completed", "seconds": 187.0, "skipped": False},
        ],
    }
    base.update(overrides)
    return ReportData(**base)


# --- the honest evaluation: walk-forward and train stage summaries as the stages write them ---------


def _oos(mse, accuracy, ic, rank_ic, sharpe, n=1950) -> dict:
    """A `prediction_metrics` dict of a regression (no AUC)."""
    return {
        "n": n,
        "mse": mse,
        "accuracy": accuracy,
        "auc": None,
        "ic": ic,
        "rank_ic": rank_ic,
        "sharpe": sharpe,
    }


CANARY_FOLDS = [
    {"index": i, "bars": 63, "shifts": 57, "rank_ic": ric, "z_ic": z, "accuracy": acc, "z_accuracy": za}
    for i, (ric, z, acc, za) in enumerate(
        [
            (0.0123, 0.45, 0.512, -0.31),
            (-0.0301, -1.12, 0.498, 0.77),
            (0.0213, 0.81, 0.505, 0.12),
            (0.0051, 0.2, 0.49, -1.3),
        ]
    )
]
CANARIES = {
    "clean": {
        "leaking": False,
        "alpha": 0.001,
        "folds": 4,
        "ic": {"chi2": 3.0912, "df": 4, "p_value": 0.54261},
        "accuracy": {"chi2": 2.0401, "df": 4, "p_value": 0.72832},
        "max_abs_rank_ic": 0.0301,
        "message": "clean: shuffled-label skill within chance at alpha 0.001; max |rank IC| 0.030",
        "per_fold": CANARY_FOLDS,
    },
    "leaking": {
        "leaking": True,
        "alpha": 0.001,
        "folds": 4,
        "ic": {"chi2": 135.78568, "df": 4, "p_value": 2.2526205e-28},
        "accuracy": {"chi2": 9.734, "df": 4, "p_value": 0.045153},
        "max_abs_rank_ic": 0.95357,
        "message": "leaking: ...",
        "per_fold": [{**f, "rank_ic": 0.9, "z_ic": 5.8} for f in CANARY_FOLDS],
    },
    "undetermined": {
        "leaking": None,
        "alpha": 0.001,
        "folds": 2,
        "ic": {"chi2": 0.0, "df": 0, "p_value": None},
        "accuracy": {"chi2": 0.0, "df": 0, "p_value": None},
        "max_abs_rank_ic": 0.02,
        "message": "canary undetermined: no fold had the 8 time shifts a test needs",
        "per_fold": [{**f, "shifts": 3, "z_ic": None, "z_accuracy": None} for f in CANARY_FOLDS[:2]],
    },
    "off": None,
}


def _leaderboard(family: str, n: int, pruned: int = 0) -> list[dict]:
    """A search's leaderboard as `tuning.search` writes it: complete trials best first, then pruned."""
    rows = [
        {
            "trial": i,
            "family": family,
            "params": {"num_leaves": 63 - i, "learning_rate": 0.0512345 / (i + 1), "feature_fraction": 0.8},
            "metric": "ic",
            "score": 0.0612 - 0.001 * i,
            "sharpe": 0.0934 - 0.002 * i,
            "state": "complete",
            "fit_s": 1.234 if i == 0 else 0.0456,
        }
        for i in range(n - pruned)
    ]
    rows += [
        {
            "trial": i,
            "family": family,
            "params": {"num_leaves": 200 + i, "learning_rate": 0.3, "feature_fraction": 0.5},
            "metric": "ic",
            "score": None,
            "sharpe": None,
            "state": "pruned",
            "fit_s": 0.31,
        }
        for i in range(n - pruned, n)
    ]
    return rows


SEARCH_FOLDS = [{"index": i, "n_trials": n, "ic": 0.01 * i} for i, n in enumerate([10, 10, 12, 12])]
TRAIN_SUMMARY = {
    "model_id": "momentum-3f2a9c1b7d10",
    "family": "lightgbm",
    "train_start": "2020-01-02 14:30:00+00:00",
    "train_end": "2023-12-29 14:30:00+00:00",
    "n_train": 25_000,
    "n_trials": 12,
    "note": None,
    "feature_importance": [["feat_00", 10.0]],
}


def _walk_forward_summary(canary: str = "clean", search: bool = True, cpcv: bool = False) -> dict:
    """A walk-forward stage summary (`quanto.evaluation.stage.summarize`) with hand-picked numbers."""
    summary = {
        "objective": "regression",
        "scheme": "cpcv" if cpcv else "rolling",
        "stitched": "cpcv path 0 of 3"
        if cpcv
        else "folds in order; the latest fold wins where test windows overlap",
        "folds": SEARCH_FOLDS,
        "metrics": _oos(0.00041234, 0.5531, 0.0412, 0.0387, 1.4321),
        "baselines": {
            "buy_and_hold": _oos(0.00045678, 0.5412, None, None, 0.8123),
            "majority": _oos(0.00043, 0.5412, None, None, 0.8123),
            "prev_return_sign": _oos(0.00039, 0.4987, -0.0101, 0.0455, -0.2231),
        },
        "fold_baselines": [],
        "prev_return_source": "feature logret_1",
        "canary": CANARIES[canary],
        "statistics": {
            "n": 480,
            "sharpe": 1.4321,
            "sharpe_per_period": 0.0902,
            "skew": -0.31,
            "kurtosis": 4.2,
            "psr": 0.99731,
            "n_trials": 44,
            "trial_sharpe_var": 0.0012,
            "trial_sharpe_var_source": "trials",
            "sharpe_threshold": 0.07612,
            "dsr": 0.62141,
        },
        "leaderboards": (
            [
                {"index": 2, "rows": _leaderboard("xgboost", 10)},
                {"index": 3, "rows": _leaderboard("lightgbm", 12, 4)},
            ]
            if search
            else []
        ),
    }
    if cpcv:
        summary["paths"] = [
            {"path": j, **_oos(mse, acc, 0.0412, 0.0387, sharpe)}
            for j, (mse, acc, sharpe) in enumerate(
                [(0.00041234, 0.5531, 1.4321), (0.0004, 0.541, 1.1012), (0.00042, 0.5302, 0.9034)]
            )
        ]
    return summary


def _evaluated(
    canary: str = "clean", search: bool = True, cpcv: bool = False, charts: bool = False, **overrides
) -> ReportData:
    """`_data()` with the honest evaluation filled in as the report stage fills it; without the data
    for charts unless asked (drawing them is most of a render's time, and these sections have none)."""
    fields = evaluation_fields(_walk_forward_summary(canary, search, cpcv), TRAIN_SUMMARY)
    no_charts = {} if charts else {"equity": _equity().iloc[0:0], "feature_importance": []}
    return _data(**{"folds": SEARCH_FOLDS, **no_charts, **fields, **overrides})


def _with_exposure(equity: pd.DataFrame) -> pd.DataFrame:
    """`equity` with the portfolio engine's columns: returns and gross/net exposure (fractions of equity)."""
    out = equity.copy()
    out["returns"] = out["equity"].pct_change().fillna(0.0)
    out["benchmark_returns"] = out["benchmark"].pct_change().fillna(0.0)
    phase = np.arange(len(out))
    out["gross_exposure"] = 1.0 + 0.3 * np.sin(phase / 20)
    out["net_exposure"] = 0.5 * np.sin(phase / 35)
    return out


def _trades(n: int = 300, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ret = rng.normal(0.004, 0.03, n)
    return pd.DataFrame({"return": ret, "pnl": 10_000 * ret, "open": [False] * (n - 1) + [True]})


def _classifier(n: int = 2000, seed: int = 4) -> dict:
    """`classification_summary` of a classifier with some skill (P(up) leans toward the label)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.15 * (label - 0.5) + rng.normal(0, 0.15, n), 0, 1)
    return classification_summary(pd.DataFrame({"prediction": p, "label": label}))


def _full_data() -> ReportData:
    """A report with every section: the honest evaluation (leaking canary, search, cpcv paths), the
    backtest's full metrics, trades, exposure, a classifier, PBO of a sweep and the block bootstrap."""
    equity = _with_exposure(_equity())
    trades = _trades()
    r, bench = equity["returns"].iloc[1:], equity["benchmark_returns"].iloc[1:]
    sweep = np.random.default_rng(11).normal(0.0003, 0.01, (500, 12))
    return _evaluated(
        "leaking",
        cpcv=True,
        charts=True,
        folds=_folds(),
        equity=equity,
        metrics=performance_metrics(r, trades, 252.0, benchmark_returns=bench),
        benchmark_metrics=performance_metrics(bench, None, 252.0),
        periods_per_year=252.0,
        trades=trades,
        classification=_classifier(),
        pbo=pbo_cscv(sweep, 8),
        bootstrap=block_bootstrap(r, 10, 200, 7).summary(),
    )


def _section(html: str, title: str) -> str:
    """The HTML of the section whose heading starts with `title`; "" when the report has none."""
    start = html.find(f"<h2>{title}")
    return "" if start < 0 else html[start : html.index("</section>", start)]


def _rows(fragment: str) -> list[list[str]]:
    """Every table row of `fragment` as its cells' text."""
    return [
        [
            htmllib.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", fragment, re.DOTALL)
    ]


def _text(fragment: str) -> str:
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_formatting_helpers():
    assert format_percent(0.4567) == "45.67%"
    assert format_percent(-0.00001) == "0.00%"
    assert format_percent(None) == "—"
    assert format_percent(float("nan")) == "—"
    assert format_ratio(1.2345) == "1.23"
    assert format_ratio(float("inf")) == "∞"
    assert format_int(12345) == "12,345"
    assert format_timestamp(pd.Timestamp("2022-04-01", tz="UTC")) == "2022-04-01"
    assert format_timestamp(pd.Timestamp("2022-04-01 14:30", tz="America/New_York")) == "2022-04-01 18:30"
    assert format_duration(4.21) == "4.2 s"
    assert format_duration(125) == "2m 05s"
    assert format_duration(0.0456) == "46 ms"
    assert format_significant(0.00041234) == "0.0004123"
    assert format_significant(2.2526205e-28, 2) == "2.3e-28"
    assert format_significant(None) == "—"
    assert (
        format_params({"hidden": [64, 32], "lr": 0.000123456, "loss": "huber"})
        == "hidden=[64, 32], lr=0.0001235, loss=huber"
    )
    assert format_params({"name": "x" * 200}).endswith("…") and len(format_params({"name": "x" * 200})) == 90
    assert format_params({}) == "—"


def test_render_html_and_pdf(tmp_path: Path):
    figures_before = plt.get_fignums()
    # Every section, the honest evaluation's included (a leaking canary, a search, cpcv paths).
    paths = render_report(
        _evaluated("leaking", cpcv=True, charts=True, folds=_folds()), tmp_path, ["html", "pdf"]
    )

    assert paths == {"html": tmp_path / "report.html", "pdf": tmp_path / "report.pdf"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.pdf"]  # no temp files left
    assert plt.get_fignums() == figures_before  # charts leak no figures

    html = paths["html"].read_text(encoding="utf-8")
    # Metric values, formatted: percentages, 2-decimal ratios, counts, "—" for None.
    for text in ["45.67%", "20.81%", "17.42%", "1.23", "1.88", "-18.34%", "53.10%", "1,234", "87.00%", "143"]:
        assert text in html, text
    assert "0.41" in html and "-25.47%" in html  # benchmark column
    assert re.search(r"Profit factor</td><td[^>]*>—</td>", html)
    # Fold table: one row per fold with dates, counts and metric columns.
    assert html.count('<td class="num">3,150</td>') == 4
    for text in ["2022-04-01", "0.0412", "-0.0051", "53.12%", "49.87%", "IC"]:
        assert text in html, text
    assert "Mean" in html and "Std" in html
    # Data quality counts and rules.
    for text in [
        "12,500",
        "12,430",
        "58",
        "ohlc_consistency",
        "nonpositive_price",
        "12,430 accepted + 58 quarantined + 12 duplicates",
    ]:
        assert text in html, text
    # Feature importance: chart + table of the top 20 only.
    assert "feat_00" in html and "feat_19" in html and "feat_20" not in html
    assert "Top 20 of 26 features" in html
    # Charts embedded, nothing loaded from the web.
    assert html.count("data:image/png;base64,") >= 3
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html

    reader = PdfReader(paths["pdf"])
    assert len(reader.pages) >= 2
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert TITLE in text
    assert "1.23" in text and "45.67%" in text
    assert "Page 1 of" in text
    for words in [
        "Out-of-sample evaluation",
        "Previous-return sign",
        "Is it real?",
        "62.1%",
        "LEAKING",
        "Model search",
    ]:
        assert words.upper() in text.upper(), words  # headings are uppercased by the stylesheet


def test_html_is_deterministic(tmp_path: Path):
    data = _data()
    first = render_report(data, tmp_path / "a", ["html"])["html"].read_bytes()
    second = render_report(data, tmp_path / "b", ["html"])["html"].read_bytes()
    assert first == second
    assert render_html(data) == first.decode("utf-8")


def test_empty_trades_and_folds_render(tmp_path: Path):
    metrics = dict.fromkeys(_data().metrics)  # every metric None
    metrics["trades"] = 0
    data = _data(
        metrics=metrics,
        benchmark_metrics={},
        folds=[],
        feature_importance=[],
        quality={},
        stages=[],
        equity=_equity().iloc[0:0],
    )
    paths = render_report(data, tmp_path, ["html", "pdf"])
    html = paths["html"].read_text(encoding="utf-8")
    assert "No walk-forward folds" in html
    assert "No equity curve" in html and "data:image/png" not in html
    assert "No feature importance" in html
    assert "—" in html
    assert len(PdfReader(paths["pdf"]).pages) >= 1


def test_single_format_and_bad_input(tmp_path: Path):
    assert set(render_report(_data(), tmp_path, ["html"])) == {"html"}
    assert not (tmp_path / "report.pdf").exists()
    with pytest.raises(ValueError, match="unknown report format"):
        render_report(_data(), tmp_path, ["docx"])
    with pytest.raises(ValueError, match="benchmark_drawdown"):
        render_report(_data(equity=_equity().drop(columns="benchmark_drawdown")), tmp_path, ["html"])


def test_charts_over_time_share_the_time_axis():
    # Equity in the millions and drawdowns in percent give tick labels of very different widths.
    equity = _with_exposure(_equity())
    equity[["equity", "benchmark"]] *= 25
    ts = equity["ts"]
    r = returns.period_returns(equity)
    rolling = returns.rolling_frame(equity, r, 63, 252.0)
    exposure, _ = returns.exposure_frame(equity, None)
    named = charts._time_series_figures(equity, rolling=rolling, exposure=exposure)
    assert list(named) == ["equity", "drawdown", "rolling_sharpe", "rolling_volatility", "exposure"]
    figures = list(named.values())
    try:
        with matplotlib.rc_context(charts._STYLE):
            for fig in figures:
                fig.canvas.draw()  # run the layout as savefig would, so positions are final
        axes = [fig.axes[0] for fig in figures]
        lo, hi = mdates.date2num(ts.iloc[0].tz_localize(None)), mdates.date2num(ts.iloc[-1].tz_localize(None))
        for ax in axes:
            # Exactly the equity frame's range (plus the 1% pad), in every chart.
            assert ax.get_xlim() == pytest.approx((lo - 0.01 * (hi - lo), hi + 0.01 * (hi - lo)))
            # The data lines (not the zero lines, whose x spans the axes) run over the equity's bars.
            xs = np.concatenate([x for line in ax.get_lines() if len(x := line.get_xdata()) == len(ts)])
            assert mdates.date2num(xs.min()) == pytest.approx(lo) and mdates.date2num(
                xs.max()
            ) == pytest.approx(hi)
        # Same plot-area edges on the page: a date sits at the same x in every chart.
        widths = [fig.get_figwidth() for fig in figures]
        assert len(set(widths)) == 1
        edges = [tuple(ax.get_position().intervalx) for ax in axes]
        for other in edges[1:]:
            assert other == pytest.approx(edges[0])
    finally:
        for fig in figures:
            fig.clear()


def _folds_on(ts: pd.Series) -> list[dict]:
    """Folds whose boundaries are bars of `ts`, as ISO strings (as the walk-forward stage stores them)."""
    return [
        {
            "index": i,
            "train_start": ts.iloc[0].isoformat(),
            "train_end": ts.iloc[100 * i + 99].isoformat(),
            "test_start": ts.iloc[100 * i + 100].isoformat(),
            "test_end": ts.iloc[100 * i + 199].isoformat(),
            "note": None,
            "ic": 0.01 * i,
            "auc": None,
        }
        for i in range(3)
    ]


def test_daily_bars_show_dates_only(tmp_path: Path):
    # Daily bars at the New York open: 14:30 UTC in winter, 13:30 UTC in summer.
    equity = _equity()
    days = pd.DatetimeIndex(equity["ts"].dt.tz_localize(None))
    equity["ts"] = (
        (days + pd.Timedelta(hours=9, minutes=30)).tz_localize("America/New_York").tz_convert("UTC")
    )
    assert equity["ts"].dt.hour.nunique() == 2
    folds = _folds_on(equity["ts"])
    assert show_time_of_day(equity["ts"], [f["test_start"] for f in folds]) is False

    html = render_html(_data(equity=equity, folds=folds))
    assert "<li><span>Period</span> 2022-01-03 → 2023-12-07</li>" in html
    fold_table = html[html.index("Walk-forward folds") : html.index("Feature importance")]
    assert "<td>2022-05-20</td><td>2022-05-23</td>" in fold_table  # fold 0: train end, test start
    assert not re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", fold_table)
    # Columns empty in every fold (no AUC, no note) are left out.
    assert "<th>Note</th>" not in fold_table and ">AUC<" not in fold_table


def test_intraday_bars_show_times(tmp_path: Path):
    equity = _equity()
    equity["ts"] = pd.date_range("2022-03-01 20:00", periods=len(equity), freq="h", tz="UTC")
    folds = _folds_on(equity["ts"])
    assert show_time_of_day(equity["ts"], [f["test_start"] for f in folds]) is True

    html = render_html(_data(equity=equity, folds=folds))
    assert "<li><span>Period</span> 2022-03-01 20:00 → 2022-03-22 19:00</li>" in html
    fold_table = html[html.index("Walk-forward folds") : html.index("Feature importance")]
    # Fold 0: train end, then a test start at midnight that keeps its time (one format for the run).
    assert "<td>2022-03-05 23:00</td><td>2022-03-06 00:00</td>" in fold_table
    assert not re.search(r">\d{4}-\d{2}-\d{2}<", fold_table)


def test_show_time_of_day_rule():
    assert show_time_of_day([]) is False
    assert show_time_of_day(pd.date_range("2022-01-03", periods=5, freq="D", tz="UTC")) is False
    # One time of day everywhere: dates only, even when bars and fold boundaries share a day.
    assert show_time_of_day(["2022-01-03T14:30:00+00:00"], ["2022-01-03 14:30"]) is False
    assert show_time_of_day(pd.date_range("2022-01-03 14:30", periods=5, freq="h", tz="UTC")) is True
    # No bars to tell the frequency: differing times of day are shown.
    assert show_time_of_day([], ["2022-01-03 14:30", "2022-01-04 15:30"]) is True


# --- the honest evaluation -----------------------------------------------------------------------


def test_out_of_sample_evaluation_sets_the_model_beside_each_baseline():
    html = render_html(_evaluated())
    section = _section(html, "Out-of-sample evaluation")
    assert "stitched: folds in order; the latest fold wins" in section
    rows = _rows(section)
    assert rows[0] == ["Metric", "Model", "Buy and hold", "Majority", "Previous-return sign", "Beats all"]
    # Metrics in METRIC_KEYS order; MSE in significant digits; AUC (None for every column) left out;
    # "Beats all" only where a direction exists and some baseline has a value.
    assert rows[1:] == [
        ["Scored rows", "1,950", "1,950", "1,950", "1,950", ""],
        ["MSE", "0.0004123", "0.0004568", "0.00043", "0.00039", "no"],  # lower is better: prev sign wins
        ["Accuracy", "55.31%", "54.12%", "54.12%", "49.87%", "yes"],
        ["IC", "0.0412", "—", "—", "-0.0101", "yes"],
        ["Rank IC", "0.0387", "—", "—", "0.0455", "no"],
        ["Sharpe ratio", "1.43", "0.81", "0.81", "-0.22", "yes"],
    ]
    assert ">AUC<" not in section
    assert '<span class="badge ok">yes</span>' in section and '<span class="badge bad">no</span>' in section
    assert "The model beats every baseline on 3 of 5 metrics: Accuracy, IC, Sharpe ratio." in section
    assert "Previous-return sign from feature logret_1." in section
    assert "CPCV paths" not in html  # a rolling run has no paths

    # A model that loses everywhere says so.
    fields = {"oos_metrics": _oos(0.0005, 0.49, -0.02, -0.01, -0.3), "leaderboards": []}
    section = _section(render_html(_evaluated(**fields)), "Out-of-sample evaluation")
    assert "The model beats every baseline on 0 of 5 metrics." in section
    assert '<span class="badge ok">' not in section


def test_cpcv_paths_get_their_own_table():
    data = _evaluated(cpcv=True)
    section = _section(render_html(data), "Out-of-sample evaluation")
    assert "stitched: cpcv path 0 of 3" in section
    paths = section[section.index("CPCV paths") :]
    rows = _rows(paths)
    assert rows[0] == ["Path", "Scored rows", "MSE", "Accuracy", "IC", "Rank IC", "Sharpe ratio"]
    assert rows[1] == ["0", "1,950", "0.0004123", "55.31%", "0.0412", "0.0387", "1.43"]
    assert rows[3] == ["2", "1,950", "0.00042", "53.02%", "0.0412", "0.0387", "0.90"]
    sharpes = [p["sharpe"] for p in data.paths]
    assert rows[4][0] == "Mean" and rows[4][-1] == format_ratio(statistics.fmean(sharpes)) == "1.15"
    assert rows[5][0] == "Std" and rows[5][-1] == format_ratio(statistics.stdev(sharpes))


@pytest.mark.parametrize("canary", ["clean", "leaking", "undetermined", "off"])
def test_is_it_real_shows_psr_dsr_and_the_canary_verdict(canary: str):
    html = render_html(_evaluated(canary))
    section = _section(html, "Is it real?")
    rows = _rows(section)
    assert rows[:3] == [
        ["Test", "Value", "What it means"],
        [
            "Probabilistic Sharpe ratio (PSR)",
            "99.7%",
            "Probability that the true Sharpe ratio is above 0, given the observed 1.43 (annualized) over"
            " 480 periods and their skew and kurtosis.",
        ],
        [
            "Deflated Sharpe ratio (DSR)",
            "62.1%",
            "The same probability against the Sharpe ratio the best of 44 trials would reach by luck alone"
            " (0.0761 per period, from the trials' Sharpe spread); 95% or more survives the search.",
        ],
    ]
    assert '<td class="num strong pos">99.7%</td>' in section  # significant
    assert '<td class="num strong neg">62.1%</td>' in section  # not after 44 trials
    verdict = _text(section[section.index('<p class="alert') :].split("</p>")[0])
    assert f'<p class="alert {canary}">' in section
    banner = "The leakage canary failed"
    if canary == "clean":
        assert verdict == (
            "✓ Clean A model trained on shuffled labels shows no skill beyond chance: rank IC χ² 3.1 on 4 folds,"
            " p = 0.54; accuracy χ² 2.0 on 4 folds, p = 0.73; a leak when p < α = 0.001; max |rank IC| 0.030."
        )
        assert banner not in html
    elif canary == "leaking":
        assert verdict.startswith(
            "⚠ LEAKING A model trained on shuffled labels kept out-of-sample skill: rank IC"
        )
        assert "rank IC χ² 135.8 on 4 folds, p = 2.3e-28; accuracy χ² 9.7 on 4 folds, p = 0.045" in verdict
        # A leak is also the first thing under the title, before the headline numbers.
        assert '<p class="alert bad banner">' in html
        assert html.index(banner) < html.index('aria-label="Key metrics"')
    elif canary == "undetermined":
        assert verdict == "Undetermined canary undetermined: no fold had the 8 time shifts a test needs"
        assert banner not in html
    else:
        assert verdict == (
            "Not run. The canary is off (evaluation.canary: false): no model was retrained on shuffled labels,"
            " so this run was not checked for leakage."
        )
        assert banner not in html and "Shifts" not in section
    if canary != "off":
        # Per fold: the canary's skill and its z against the time-shifted null (no z where a fold had too
        # few shifts to test: a column of nothing but "—" is left out).
        folds = _rows(section[section.index("</p>", section.index('<p class="alert')) :])
        header = ["Fold", "Test bars", "Shifts", "Rank IC", "z (rank IC)", "Accuracy", "z (accuracy)"]
        expected = {
            "clean": (header, ["0", "63", "57", "0.0123", "0.45", "51.20%", "-0.31"]),
            "leaking": (header, ["0", "63", "57", "0.9000", "5.80", "51.20%", "-0.31"]),
            "undetermined": (header[:4] + header[5:6], ["0", "63", "3", "0.0123", "51.20%"]),
        }
        assert (folds[0], folds[1]) == expected[canary]


def test_model_search_shows_the_last_searched_folds_leaderboard():
    html = render_html(_evaluated())
    section = _section(html, "Model search")
    text = _text(section)
    assert "Fold 3, the last of 2 folds that searched (12 trials): its best 10 candidates." in text
    assert "44 trials in all folds; the deflated Sharpe ratio counts every one of them." in text
    assert "Final model momentum-3f2a9c1b7d10: lightgbm, 12 trials on the full training window." in text
    rows = _rows(section)
    assert rows[0] == ["#", "Family", "Params", "Validation IC", "Sharpe (per period)", "Fit time", "State"]
    assert len(rows) == 1 + TOP_TRIALS
    assert rows[1] == [
        "1",
        "lightgbm",
        "num_leaves=63, learning_rate=0.05123, feature_fraction=0.8",
        "0.0612",
        "0.0934",
        "1.2 s",
        "complete",
    ]
    assert rows[2][3:] == ["0.0602", "0.0914", "46 ms", "complete"]
    assert rows[9] == [
        "9",
        "lightgbm",
        "num_leaves=208, learning_rate=0.3, feature_fraction=0.5",
        "—",
        "—",
        "310 ms",
        "pruned",
    ]
    assert "num_leaves=210" not in section and "num_leaves=211" not in section  # beyond the top 10
    assert "xgboost" not in section  # an earlier fold's search

    # An ensemble's leaderboard: members with weights, scored by per-period Sharpe, no fit times.
    members = [
        {
            "member": i,
            "family": f,
            "params": {"alpha": a},
            "metric": "sharpe",
            "score": s,
            "sharpe": s,
            "weight": w,
            "n_trials": 1,
        }
        for i, (f, a, s, w) in enumerate([("linear", 1.0, 0.0812, 0.6), ("forest", 0.5, 0.0701, 0.4)])
    ]
    ensemble = _evaluated(
        leaderboards=[{"index": 3, "rows": members}], model={"family": "ensemble", "n_trials": 2}
    )
    rows = _rows(_section(render_html(ensemble), "Model search"))
    assert rows[0] == [
        "#",
        "Family",
        "Params",
        "Validation Sharpe (per period)",
        "Sharpe (per period)",
        "Weight",
    ]
    assert rows[1] == ["1", "linear", "alpha=1", "0.0812", "0.0812", "60.0%"]

    # No fold searched: no section.
    assert "Model search" not in render_html(_evaluated(search=False))


def test_older_summaries_render_without_the_evaluation_sections():
    # Summaries written before the honest evaluation carry none of its keys: the defaults, and none
    # of its sections (the canary does not claim it was off: nothing is known either way).
    fields = evaluation_fields({"folds": _folds()}, {"model_id": "m", "feature_importance": []})
    assert fields["oos_metrics"] == {} and fields["canary"] is None and fields["model"] == {"model_id": "m"}
    html = render_html(_data(**fields))
    assert html == render_html(_data())
    for title in ["Out-of-sample evaluation", "Is it real?", "Model search", "CPCV paths", "Leakage canary"]:
        assert title not in html, title
    # Every field comes from its summary key.
    summary = _walk_forward_summary("leaking", cpcv=True)
    fields = evaluation_fields(summary, TRAIN_SUMMARY)
    assert fields["oos_metrics"] is summary["metrics"] and fields["baselines"] is summary["baselines"]
    assert fields["canary"] is summary["canary"] and fields["statistics"] is summary["statistics"]
    assert fields["leaderboards"] is summary["leaderboards"] and fields["paths"] is summary["paths"]
    assert fields["stitched"] == "cpcv path 0 of 3" and fields["prev_return_source"] == "feature logret_1"
    assert fields["model"] == {
        "model_id": "momentum-3f2a9c1b7d10",
        "family": "lightgbm",
        "n_trials": 12,
        "note": None,
    }


STAGE_CONFIG = {
    "name": "rep",
    "universe": {"symbols": ["AAA"], "start": "2022-01-01", "end": "2024-01-01"},
    "label": {"kind": "forward_return", "horizon": 3},
    "model": {"kind": "linear", "objective": "regression"},
    "walk_forward": {"train_bars": 40, "test_bars": 15},
    "report": {"formats": ["html"]},
}
MODEL_REFS = [
    FileRef(path=f"models/m/{r}", sha256=c * 64, role=r) for r, c in (("model", "a"), ("model_card", "b"))
]


def _stage_request(
    wf_key: str,
    wf_summary: dict,
    backtest_outputs: list[FileRef],
    backtest_summary: dict | None = None,
    wf_outputs: list[FileRef] | None = None,
) -> StageRequest:
    """The report stage's request, with the upstream stages' results as the pipeline passes them."""
    inputs = {
        "validate": StageResult(stage="validate", key="v", summary=_data().quality),
        "train": StageResult(stage="train", key="t", outputs=MODEL_REFS, summary=TRAIN_SUMMARY),
        "walk_forward": StageResult(
            stage="walk_forward", key=wf_key, outputs=wf_outputs or [], summary=wf_summary
        ),
        "backtest": StageResult(
            stage="backtest",
            key="b",
            outputs=backtest_outputs,
            summary=backtest_summary or {"metrics": _data().metrics, "benchmark_metrics": {}},
        ),
    }
    return StageRequest(stage="report", config=STAGE_CONFIG, inputs=inputs)


def _stage_html(lake: Lake, result: StageResult) -> str:
    return lake.abspath(result.files("report_html")[0].path).read_text(encoding="utf-8")


def test_report_stage_shows_the_evaluation_and_keys_on_the_walk_forward(tmp_path: Path):
    lake = Lake(tmp_path)
    ctx = StageContext(lake=lake, record=False)
    equity = [lake.write_frame("gold/equity/rep", _equity(60), role="equity")]

    first = run_report(_stage_request("w1", _walk_forward_summary("leaking"), equity), ctx)
    html = _stage_html(lake, first)
    assert "⚠ LEAKING" in html and "62.1%" in html and "0.0004123" in html and "Fold 3, the last of 2" in html
    again = run_report(_stage_request("w1", _walk_forward_summary("leaking"), equity), ctx)
    assert again.skipped and again.key == first.key
    # Another walk-forward result (its key addresses its summary) is another report.
    second = run_report(_stage_request("w2", _walk_forward_summary("clean"), equity), ctx)
    assert not second.skipped and second.key != first.key
    assert "✓ Clean" in _stage_html(lake, second) and "LEAKING" not in _stage_html(lake, second)


# --- the return analysis, the classifier and the honest statistics --------------------------------

# The alt text of each new chart's <img>: what the tests look for.
CHART_ALTS = {
    "returns": "Histogram of period returns with the normal fit and VaR lines",
    "trades": "Histogram of closed trades, wins and losses",
    "rolling_sharpe": "Rolling Sharpe ratio",
    "rolling_volatility": "Rolling annualized volatility",
    "exposure": "Gross and net exposure over time",
    "confusion": "Confusion matrix",
    "roc": "ROC curve",
    "pbo": "Distribution of the in-sample winner's out-of-sample rank logits, and its out-of-sample"
    " against in-sample score",
}


def _embedded(html: str) -> set[str]:
    """The alt texts of the charts embedded as PNG data URIs."""
    alts = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"', html)
    return {htmllib.unescape(a) for a in alts}


def _from_returns(ts: list[str], r: list[float]) -> pd.DataFrame:
    """An equity frame (start 100) whose row k has simple return r[k] (r[0] is the start, 0)."""
    equity = 100 * np.cumprod(1 + np.asarray(r))
    frame = pd.DataFrame({"ts": pd.to_datetime(ts, utc=True), "equity": equity, "benchmark": 100.0})
    frame["returns"] = r
    frame["drawdown"] = frame["equity"] / frame["equity"].cummax() - 1
    frame["benchmark_drawdown"] = 0.0
    return frame


def test_monthly_returns_heatmap_matches_hand_computed_returns():
    equity = _from_returns(
        ["2023-01-02", "2023-01-03", "2023-01-31", "2023-02-15", "2023-04-03", "2024-01-02", "2024-12-31"],
        [0.0, 0.10, -0.05, 0.02, -0.01, -0.20, 0.25],
    )
    section = _section(render_html(_data(equity=equity, feature_importance=[])), "Monthly returns")
    rows = _rows(section)
    assert rows[0] == ["Year", *MONTHS, "Total"]
    # By hand: Jan 2023 = 1.10 · 0.95 − 1 = 4.5%; Feb +2%; no March bar (blank, not "—"); Apr −1%;
    # 2023 = 1.10 · 0.95 · 1.02 · 0.99 − 1 = 5.52%. 2024: Jan −20%, Dec +25%, the year 0.8 · 1.25 − 1 = 0.
    # The first row is the starting point, not a period: its return never counts.
    assert rows[1] == ["2023", "4.5%", "2.0%", "", "-1.0%", *[""] * 8, "5.5%"]
    assert rows[2] == ["2024", "-20.0%", *[""] * 10, "25.0%", "0.0%"]
    # Colours: the months scale by the largest monthly move (25%): Dec 2024 gets the full tint
    # (white blended 60% toward green 30,125,79 → 120,177,149), Jan 2024 (−20%) 0.08 + 0.52 · 0.8 =
    # 49.6% toward red 178,58,46 → 217,157,151; a flat year stays uncoloured.
    tinted = re.findall(r'style="background-color: (#[0-9a-f]{6})">([^<]*)<', section)
    assert ("#78b195", "25.0%") in tinted and ("#d99d97", "-20.0%") in tinted
    assert not any(text == "0.0%" for _, text in tinted)
    assert heat_color(0.25, 0.25) == "#78b195" and heat_color(-0.20, 0.25) == "#d99d97"
    assert heat_color(None, 0.25) == heat_color(0.0, 0.25) == heat_color(0.1, 0.0) == ""


def test_every_chart_appears_with_the_data_that_warrants_it():
    html = render_html(_full_data())
    assert set(CHART_ALTS.values()) <= _embedded(html)
    for title in ["Monthly returns", "Return and trade distributions", "Rolling Sharpe ratio", "Exposure",
                  "Classification", "Is it real?"]:  # fmt: skip
        assert f"<h2>{title}" in html or f'<h2 class="spaced">{title}' in html, title
    assert "window 63 bars, annualized with 252 periods per year" in html
    assert "gross = (long + |short|) / equity" in html
    assert "299 closed trades by return; 1 open trade left out." in html
    assert (
        "Red lines: historical VaR at 95% and 99%, the losses a period exceeds with probability 5% and 1%."
        in html
    )
    classification = _rows(_section(html, "Classification"))
    assert [label for label, _ in classification] == [
        "Scored rows",
        "Accuracy",
        "Precision (up)",
        "Recall (up)",
        "Specificity (down)",
        "AUC",
    ]


def test_charts_are_absent_without_their_data():
    # Each case toggles one field on a report that draws little else (drawing is most of a render).
    bare = _data(equity=_equity().iloc[0:0], feature_importance=[])
    html = render_html(bare)
    assert "data:image/png" not in html
    for title in ["Monthly returns", "Return and trade distributions", "Rolling Sharpe ratio", "Exposure",
                  "Classification"]:  # fmt: skip
        assert f"<h2>{title}" not in html and f'<h2 class="spaced">{title}' not in html, title
    # A classifier gets its confusion matrix and ROC curve; a regressor (classification None) has none.
    assert _embedded(render_html(replace(bare, classification=_classifier()))) == {
        CHART_ALTS["confusion"],
        CHART_ALTS["roc"],
    }
    # Trades alone: their distribution (no equity: no return distribution beside it).
    assert _embedded(render_html(replace(bare, trades=_trades()))) == {CHART_ALTS["trades"]}
    # Only open trades: nothing closed to show.
    assert not _embedded(render_html(replace(bare, trades=_trades().assign(open=True))))
    # 30 bars cannot fill two 20-bar windows: no rolling charts; exposure from the equity's columns.
    short = _with_exposure(_equity(30))
    embedded = _embedded(render_html(replace(bare, equity=short)))
    assert embedded == {
        "Strategy equity against the benchmark",
        "Strategy and benchmark drawdown",
        CHART_ALTS["returns"],
        CHART_ALTS["exposure"],
    }
    # Without exposure columns and positions: no exposure chart.
    bare_equity = short.drop(columns=["gross_exposure", "net_exposure"])
    assert CHART_ALTS["exposure"] not in _embedded(render_html(replace(bare, equity=bare_equity)))
    # Constant returns (never traded): no distribution to draw, no Sharpe ratio to roll, though 60 bars
    # would fill two 20-bar windows.
    flat = _with_exposure(_equity(60)).assign(returns=0.0)
    embedded = _embedded(render_html(replace(bare, equity=flat)))
    assert CHART_ALTS["returns"] not in embedded and CHART_ALTS["rolling_sharpe"] not in embedded


def test_classification_summary_by_hand():
    # p > 0.5 predicts up: predicted [1, 1, 0, 1, 0, 0], actual [1, 0, 1, 1, 0, 0] → tp 2 (rows 0, 3),
    # fp 1 (row 1), fn 1 (row 2), tn 2 (rows 4, 5); the NaN row is left out.
    frame = pd.DataFrame(
        {"prediction": [0.9, 0.8, 0.3, 0.6, 0.2, 0.4, np.nan], "label": [1, 0, 1, 1, 0, 0, 1]}
    )
    c = classification_summary(frame)
    assert c["n"] == 6 and c["threshold"] == 0.5
    assert c["confusion"] == [[2, 1], [1, 2]]
    assert c["accuracy"] == pytest.approx(4 / 6)
    assert c["precision"] == c["recall"] == c["specificity"] == pytest.approx(2 / 3)
    # AUC by counting: of the 9 (up, down) pairs the up row scores higher in 6 (0.9 beats all three;
    # 0.6 beats 0.2 and 0.4; 0.3 beats 0.2).
    assert c["auc"] == pytest.approx(6 / 9)
    fpr, tpr = c["roc"]["fpr"], c["roc"]["tpr"]
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    # One class only: the matrix, no ROC curve.
    one = classification_summary(frame[frame["label"] == 1])
    assert one["confusion"] == [[0, 0], [1, 2]] and "roc" not in one and "auc" not in one
    assert classification_summary(frame.iloc[6:]) is None
    with pytest.raises(ValueError, match=r"label must be 0 or 1, got \[2.0\]"):
        classification_summary(frame.assign(label=[1, 0, 2, 1, 0, 0, 1]))
    with pytest.raises(ValueError, match=r"lack column\(s\) \['label'\]"):
        classification_summary(frame.drop(columns="label"))


def test_roc_is_thinned_but_keeps_its_ends():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 20_000)
    c = classification_summary(pd.DataFrame({"prediction": rng.random(20_000), "label": label}))
    fpr, tpr = c["roc"]["fpr"], c["roc"]["tpr"]
    assert len(fpr) <= 400 and (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


def test_rolling_window_and_alignment():
    assert returns.rolling_window(504, 252.0) == 63  # a quarter-year of daily bars
    assert returns.rolling_window(60, 252.0) == 20  # a quarter of 60 is 15: raised to the minimum 20
    assert returns.rolling_window(39, 252.0) is None  # two 20-bar windows need 40 returns
    assert returns.rolling_window(1638, 252.0 * 78) == 409  # a month of 5-minute bars: a quarter of it
    assert returns.rolling_window(504, None) is None and returns.rolling_window(504, None, 10) == 10
    with pytest.raises(ValueError, match="rolling_window must be >= 2 bars, got 1"):
        returns.rolling_window(504, 252.0, 1)

    equity = _with_exposure(_equity(120))
    r = returns.period_returns(equity)
    assert len(r) == 119 and r.index[0] == equity["ts"].iloc[1]
    frame = returns.rolling_frame(equity, r, 20, 252.0)
    assert len(frame) == len(equity)
    # Row 0 is the start; rows 1..19 hold fewer than 20 returns; row 20 is the first full window.
    assert frame.iloc[:20].isna().all().all()
    window = r.to_numpy()[:20]
    assert frame["sharpe"].iloc[20] == pytest.approx(window.mean() / window.std(ddof=1) * math.sqrt(252))
    assert frame["volatility"].iloc[20] == pytest.approx(window.std(ddof=1) * math.sqrt(252))
    # Fills at the decision bar's close: the first row's return (over initial capital) is a period.
    equity.loc[0, "returns"] = -0.001
    first = returns.period_returns(equity, first_row_is_period=True)
    assert len(first) == 120 and first.iloc[0] == -0.001
    # Without a returns column the first row has no return to take: the start is never a period.
    assert len(returns.period_returns(equity.drop(columns="returns"), first_row_is_period=True)) == 119
    assert backtest_fields({"periods_per_year": 252.0}, "this_close")["first_row_is_period"] is True
    assert backtest_fields({}, "next_open") == {
        "periods_per_year": None,
        "first_row_is_period": False,
        "pbo": None,
        "bootstrap": None,
    }


def test_exposure_from_positions_by_hand():
    ts = pd.date_range("2024-01-02", periods=3, freq="D", tz="UTC")
    equity = pd.DataFrame({"ts": ts, "equity": 1.0})
    weights = pd.DataFrame(
        {"ts": [ts[1], ts[1], ts[2]], "symbol": ["A", "B", "A"], "weight": [0.5, -0.25, 0.6]}
    )
    frame, source = returns.exposure_frame(equity, weights)
    # ts[0] has no position rows: flat. ts[1]: |0.5| + |−0.25| and 0.5 − 0.25.
    assert source == "position weights"
    assert frame["gross"].tolist() == pytest.approx([0.0, 0.75, 0.6])
    assert frame["net"].tolist() == pytest.approx([0.0, 0.25, 0.6])
    # The sleeve engine's positions (fractions of each symbol's equal sleeve): sums over 2 symbols.
    sleeves = weights.drop(columns="weight").assign(position=[1.0, -1.0, 1.0])
    frame, source = returns.exposure_frame(equity, sleeves)
    assert source == "sleeve positions"
    assert frame["gross"].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert frame["net"].tolist() == pytest.approx([0.0, 0.0, 0.5])
    assert returns.exposure_frame(equity, None) is None
    with pytest.raises(ValueError, match="weight or position column"):
        returns.exposure_frame(equity, weights.drop(columns="weight"))


def test_var_lines_are_the_backtest_metrics_quantiles():
    # r = −0.49, −0.48, ..., 0.50: numpy's linear 5% quantile sits at index 0.05 · 99 = 4.95, i.e.
    # −0.45 + 0.95 · 0.01 = −0.4405; the 1% one at 0.99: −0.49 + 0.99 · 0.01 = −0.4801.
    r = pd.Series(np.arange(1, 101) / 100 - 0.5)
    lines = returns.var_lines(r)
    assert [level for level, _ in lines] == [0.95, 0.99]
    assert [q for _, q in lines] == pytest.approx([-0.4405, -0.4801])


BOOTSTRAP = {
    "method": "stationary",
    "block": 5.0,
    "n_paths": 1000,
    "seed": 7,
    "confidence": 0.9,
    "periods_per_year": 252.0,
    "n": 480,
    "statistics": {
        "total_return": {"estimate": 0.25, "mean": 0.24, "std": 0.1, "lower": -0.05, "upper": 0.6},
        "sharpe": {"estimate": 1.2345, "mean": 1.1, "std": 0.5, "lower": 0.1, "upper": 2.2},
    },
    "stress": {"total_return": {"q01": -0.2, "q05": -0.1}, "sharpe": {"q01": -0.5, "q05": -0.2}},
}
PBO = {
    "pbo": 0.3,
    "logits": [-1.2, -0.4, 0.3, 0.8, 1.5, None],
    "is_performance": [0.1, 0.2, 0.15, 0.12, 0.3, 0.2],
    "oos_performance": [0.02, -0.01, 0.05, 0.0, -0.02, 0.01],
    "prob_oos_loss": 0.25,
    "degradation_slope": -0.4212,
    "n_rows": 500,
    "n_trials": 12,
    "n_splits": 8,
    "n_combinations": 70,
    "metric": "sharpe",
}


def test_is_it_real_shows_pbo_and_the_bootstrap_when_the_backtest_has_them():
    html = render_html(_evaluated("off", pbo=PBO, bootstrap=BOOTSTRAP))
    section = _section(html, "Is it real?")
    rows = _rows(section[: section.index("Parameter sweep")])
    assert rows[3:] == [
        [
            "Probability of backtest overfitting (PBO)",
            "30.0%",
            "Share of the 70 splits of 500 periods in 8 blocks (CSCV) in which the best of the sweep's"
            " 12 trials in sample, by Sharpe ratio, ranks at or below the median out of sample; noise"
            " gives about 50%, 5% or less says the selection holds up.",
        ],
        [
            "Probability of out-of-sample loss",
            "25.0%",
            "Share of those splits whose in-sample winner has a Sharpe ratio below 0 out of sample.",
        ],
        [
            "Performance degradation",
            "-0.42",
            "Slope of the winner's out-of-sample Sharpe ratio on its in-sample one over the splits;"
            " below 0: the better a trial looked in sample, the worse it did after.",
        ],
    ]
    assert '<td class="num strong neg">30.0%</td>' in section  # above 5%: the selection is suspect
    assert CHART_ALTS["pbo"] in _embedded(html)
    boot = _rows(section[section.index("Block bootstrap") : section.index("Leakage canary")])
    assert boot == [
        ["Statistic", "Observed", "90% low", "90% high", "Worst 5%", "Worst 1%"],
        ["Total return", "25.00%", "-5.00%", "60.00%", "-10.00%", "-20.00%"],
        ["Sharpe ratio", "1.23", "0.10", "2.20", "-0.20", "-0.50"],
    ]
    assert (
        "1,000 paths of 480 periods resampled in stationary blocks of mean length 5.0 periods, seed 7:"
        in section
    )

    # Only the backtest's statistics (no walk-forward evaluation): no canary verdict is claimed.
    alone = render_html(_data(pbo={k: v for k, v in PBO.items() if k != "logits"}, bootstrap=BOOTSTRAP))
    section = _section(alone, "Is it real?")
    assert "Probability of backtest overfitting" in section and "Block bootstrap" in section
    assert "Leakage canary" not in section and "Probabilistic Sharpe" not in section
    assert CHART_ALTS["pbo"] not in _embedded(alone)  # a summary without the logits: no chart
    # Neither: as before.
    html = render_html(_evaluated("off"))
    assert "Block bootstrap" not in html and "overfitting" not in html and "Parameter sweep" not in html


def test_report_stage_feeds_trades_exposure_and_the_classifier(tmp_path: Path):
    lake = Lake(tmp_path)
    ctx = StageContext(lake=lake, record=False)
    equity = _equity(120)
    ts = equity["ts"]
    outputs = [
        lake.write_frame("gold/equity/rep", equity, role="equity"),
        lake.write_frame("gold/trades/rep", _trades(40), role="trades"),
        lake.write_frame(
            "gold/positions/rep",
            pd.DataFrame({"symbol": "AAA", "ts": ts, "position": np.sign(np.sin(np.arange(120) / 9))}),
            role="positions",
        ),
    ]
    rng = np.random.default_rng(2)
    label = rng.integers(0, 2, 120)
    predictions = pd.DataFrame(
        {"symbol": "AAA", "ts": ts, "prediction": np.clip(0.5 + 0.3 * (label - 0.5), 0, 1), "label": label}
    )
    wf_outputs = [lake.write_frame("gold/predictions/rep", predictions, role="predictions")]
    summary = {"metrics": _data().metrics, "benchmark_metrics": {}, "periods_per_year": 252.0,
               "pbo": PBO, "bootstrap": BOOTSTRAP}  # fmt: skip

    classifier = {**_walk_forward_summary(), "objective": "classification"}
    html = _stage_html(lake, run_report(_stage_request("w1", classifier, outputs, summary, wf_outputs), ctx))
    embedded = _embedded(html)
    assert {CHART_ALTS[k] for k in ("confusion", "roc", "trades", "exposure", "rolling_sharpe")} <= embedded
    assert "from sleeve positions" in html  # the equity frame has no exposure columns
    # A quarter of 119 returns, rounded down (less than a quarter-year); ppy from the backtest summary.
    assert "window 29 bars, annualized with 252 periods per year" in html
    assert "Probability of backtest overfitting" in html and "Block bootstrap" in html
    # The same run from a regressor: the predictions are not read, and no classifier charts.
    regressor = _walk_forward_summary()
    html = _stage_html(lake, run_report(_stage_request("w2", regressor, outputs, summary, wf_outputs), ctx))
    assert "Classification" not in html and CHART_ALTS["roc"] not in _embedded(html)
