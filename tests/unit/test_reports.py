"""The research report: one template, HTML and PDF, self-contained and reproducible."""

from __future__ import annotations

import html as htmllib
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake
from quanto.reports import ReportData, charts, render_report
from quanto.reports.render import (
    TOP_TRIALS,
    format_duration,
    format_int,
    format_params,
    format_percent,
    format_ratio,
    format_significant,
    format_timestamp,
    render_html,
    show_time_of_day,
)
from quanto.reports.stage import evaluation_fields, run_report

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


def _page_not_blank(pdf: Path, out_prefix: Path) -> None:
    """Rasterise page 1 with pdftoppm and check it carries ink (a blank page is one flat colour)."""
    subprocess.run(
        ["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(out_prefix)],
        check=True,
        capture_output=True,
    )
    image = plt.imread(str(out_prefix.with_suffix(".png")))
    assert image.std() > 0.02
    assert (image[..., :3] < 0.5).any()  # some dark text


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

    if shutil.which("pdftoppm"):
        _page_not_blank(paths["pdf"], tmp_path / "page1")


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


def test_equity_and_drawdown_charts_share_the_time_axis():
    # Equity in the millions and drawdowns in percent give tick labels of very different widths.
    equity = _equity()
    equity[["equity", "benchmark"]] *= 25
    ts = equity["ts"]
    figures = charts._time_series_figures(equity)
    try:
        with matplotlib.rc_context(charts._STYLE):
            for fig in figures:
                fig.canvas.draw()  # run the layout as savefig would, so positions are final
        axes = [fig.axes[0] for fig in figures]
        lo, hi = mdates.date2num(ts.iloc[0].tz_localize(None)), mdates.date2num(ts.iloc[-1].tz_localize(None))
        for ax in axes:
            # Exactly the equity frame's range (plus the 1% pad), in both charts.
            assert ax.get_xlim() == pytest.approx((lo - 0.01 * (hi - lo), hi + 0.01 * (hi - lo)))
            xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
            assert mdates.date2num(xs.min()) == pytest.approx(lo) and mdates.date2num(
                xs.max()
            ) == pytest.approx(hi)
        # Same plot-area edges on the page: a date sits at the same x in both charts.
        widths = [fig.get_figwidth() for fig in figures]
        assert widths[0] == widths[1]
        (e0, e1), (d0, d1) = (ax.get_position().intervalx for ax in axes)
        assert (e0, e1) == pytest.approx((d0, d1))
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


def test_report_stage_shows_the_evaluation_and_keys_on_the_walk_forward(tmp_path: Path):
    lake = Lake(tmp_path)
    ctx = StageContext(lake=lake, record=False)
    config = {
        "name": "rep",
        "universe": {"symbols": ["AAA"], "start": "2022-01-01", "end": "2024-01-01"},
        "label": {"kind": "forward_return", "horizon": 3},
        "model": {"kind": "linear", "objective": "regression"},
        "walk_forward": {"train_bars": 40, "test_bars": 15},
        "report": {"formats": ["html"]},
    }
    equity = lake.write_frame("gold/equity/rep", _equity(60), role="equity")
    model = [
        FileRef(path=f"models/m/{r}", sha256=c * 64, role=r) for r, c in (("model", "a"), ("model_card", "b"))
    ]

    def request(wf_key: str, canary: str) -> StageRequest:
        inputs = {
            "validate": StageResult(stage="validate", key="v", summary=_data().quality),
            "train": StageResult(stage="train", key="t", outputs=model, summary=TRAIN_SUMMARY),
            "walk_forward": StageResult(
                stage="walk_forward", key=wf_key, summary=_walk_forward_summary(canary)
            ),
            "backtest": StageResult(
                stage="backtest",
                key="b",
                outputs=[equity],
                summary={"metrics": _data().metrics, "benchmark_metrics": {}},
            ),
        }
        return StageRequest(stage="report", config=config, inputs=inputs)

    def report(result: StageResult) -> str:
        return lake.abspath(result.files("report_html")[0].path).read_text(encoding="utf-8")

    first = run_report(request("w1", "leaking"), ctx)
    html = report(first)
    assert "⚠ LEAKING" in html and "62.1%" in html and "0.0004123" in html and "Fold 3, the last of 2" in html
    again = run_report(request("w1", "leaking"), ctx)
    assert again.skipped and again.key == first.key
    # Another walk-forward result (its key addresses its summary) is another report.
    second = run_report(request("w2", "clean"), ctx)
    assert not second.skipped and second.key != first.key
    assert "✓ Clean" in report(second) and "LEAKING" not in report(second)
