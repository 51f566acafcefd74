"""The research report: one template, HTML and PDF, self-contained and reproducible."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from quanto.reports import ReportData, charts, render_report
from quanto.reports.render import (
    format_duration,
    format_int,
    format_percent,
    format_ratio,
    format_timestamp,
    render_html,
    show_time_of_day,
)

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


def test_render_html_and_pdf(tmp_path: Path):
    figures_before = plt.get_fignums()
    paths = render_report(_data(), tmp_path, ["html", "pdf"])

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
