"""Report charts: matplotlib figures rendered with Agg and returned as base64 PNG data URIs.

Figures are built with the object API (`Figure` + `FigureCanvasAgg`), never with pyplot: pyplot keeps
a global registry of open figures, which leaks memory in long-lived workers and is not safe across
threads. A `Figure` that nothing references is simply garbage-collected; we still clear it after use.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator, PercentFormatter

DPI = 110
TIME_SERIES_WIDTH = 9.0  # inches; equity and drawdown charts share it so their plot areas line up
STRATEGY_COLOR = "#1f4e79"
BENCHMARK_COLOR = "#8c96a3"
DRAWDOWN_COLOR = "#c0392b"
BAR_COLOR = "#2e6da4"
_TEXT_COLOR = "#2b2f36"
_GRID_COLOR = "#e3e6ea"

# One style for every chart; applied with rc_context so the caller's global rcParams stay untouched.
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.edgecolor": "#b8bec6",
    "axes.labelcolor": _TEXT_COLOR,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,  # grid lines behind bars and fills, not across them
    "grid.color": _GRID_COLOR,
    "grid.linewidth": 0.7,
    "xtick.color": "#59606b",
    "ytick.color": "#59606b",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no dependence on the global backend
    return fig


def _to_data_uri(fig: Figure) -> str:
    """Encode a figure as a PNG data URI, then clear it."""
    buf = io.BytesIO()
    try:
        # Software metadata dropped so the bytes depend only on the data (reproducible reports).
        fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    finally:
        fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _naive_utc(ts: pd.Series) -> np.ndarray:
    """UTC timestamps without tz, which matplotlib's date axis handles without warnings."""
    out = pd.to_datetime(ts, utc=True).dt.tz_localize(None)
    return out.to_numpy()


def _time_axis(ax, x: np.ndarray) -> None:
    """Date ticks over exactly the equity frame's time range (plus a 1% pad), set explicitly.

    Limits are set from the timestamps, never left to autoscaling, so every time-series chart of one
    report spans the same range whatever artists (fills, lines with gaps) it draws.
    """
    lo, hi = mdates.date2num(x[0]), mdates.date2num(x[-1])
    pad = (hi - lo) * 0.01 if hi > lo else 0.5  # half a day either side of a single bar
    ax.set_xlim(lo - pad, hi + pad)
    locator = AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _legend_above(ax, handles, labels) -> None:
    """Legend above the plot area, left-aligned: it never hides a line or the drawdown trough."""
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, borderaxespad=0.2)


def _money_tick(value: float, _pos: int) -> str:
    """Equity ticks in plain digits with separators (never "1.1e+05"): 125,000 / 1.25."""
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value else "0"


def _empty(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#8c96a3", transform=ax.transAxes)


def _equity_figure(equity: pd.DataFrame, log_scale: bool) -> Figure:
    fig = _new_figure(TIME_SERIES_WIDTH, 3.9)
    ax = fig.add_subplot()
    if equity.empty:
        _empty(ax, "No equity data")
        return fig
    x = _naive_utc(equity["ts"])
    # Benchmark drawn first so the strategy line sits on top; the legend still lists it first.
    bench = ax.plot(x, equity["benchmark"], color=BENCHMARK_COLOR, lw=1.2, label="Benchmark")
    strat = ax.plot(x, equity["equity"], color=STRATEGY_COLOR, lw=1.6, label="Strategy")
    if log_scale:
        ax.set_yscale("log")
        values = equity[["equity", "benchmark"]].to_numpy(dtype=float)
        values = values[np.isfinite(values) & (values > 0)]
        if values.size and values.max() / values.min() < 10:
            # Within one decade a log axis has a single labelled tick; use round linear steps instead.
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
            ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_money_tick))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
    ax.set_ylabel("Equity" + (" (log scale)" if log_scale else ""))
    _time_axis(ax, x)
    _legend_above(ax, strat + bench, ["Strategy", "Benchmark"])
    return fig


def _drawdown_figure(equity: pd.DataFrame) -> Figure:
    fig = _new_figure(TIME_SERIES_WIDTH, 2.7)
    ax = fig.add_subplot()
    if equity.empty:
        _empty(ax, "No drawdown data")
        return fig
    x = _naive_utc(equity["ts"])
    dd = equity["drawdown"].to_numpy(dtype=float)
    ax.fill_between(x, dd, 0.0, color=DRAWDOWN_COLOR, alpha=0.16, lw=0)
    bench = ax.plot(x, equity["benchmark_drawdown"], color=BENCHMARK_COLOR, lw=1.0, label="Benchmark")
    strat = ax.plot(x, dd, color=DRAWDOWN_COLOR, lw=1.1, label="Strategy")
    # Round steps (5%, 10%, ...) so whole-number percent labels are exact.
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel("Drawdown")
    _time_axis(ax, x)
    _legend_above(ax, strat + bench, ["Strategy", "Benchmark"])
    return fig


def _align_plot_areas(figs: Sequence[Figure]) -> None:
    """Give the figures' single axes the same left and right edges (in inches), then freeze the layout.

    Constrained layout sizes each figure's margins from its own tick labels ("2,500,000" is wider
    than "-40%"), which shifts one chart's plot area against the other's: the same date would sit at
    different places on the page. Lay each out once, keep the widest margins, and fix the positions.
    """
    boxes = []
    for fig in figs:
        fig.get_layout_engine().execute(fig)
        boxes.append(fig.axes[0].get_position())
    widths = [fig.get_figwidth() for fig in figs]
    left = max(box.x0 * w for box, w in zip(boxes, widths, strict=True))
    right = min(box.x1 * w for box, w in zip(boxes, widths, strict=True))
    for fig, box, w in zip(figs, boxes, widths, strict=True):
        fig.set_layout_engine("none")
        fig.axes[0].set_position([left / w, box.y0, (right - left) / w, box.height])


def _time_series_figures(equity: pd.DataFrame, log_scale: bool = False) -> tuple[Figure, Figure]:
    """The equity and drawdown figures, over the same time range with aligned plot areas."""
    with matplotlib.rc_context(_STYLE):
        figs = (_equity_figure(equity, log_scale), _drawdown_figure(equity))
        if not equity.empty:
            _align_plot_areas(figs)
    return figs


def time_series_charts(equity: pd.DataFrame, log_scale: bool = False) -> tuple[str, str]:
    """(equity vs benchmark, drawdown) as PNG data URIs, drawn together so their time axes line up."""
    with matplotlib.rc_context(_STYLE):
        equity_fig, drawdown_fig = _time_series_figures(equity, log_scale)
        return _to_data_uri(equity_fig), _to_data_uri(drawdown_fig)


def feature_importance_chart(items: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars for the given (name, importance) pairs, largest at the top."""
    with matplotlib.rc_context(_STYLE):
        # Height grows with the number of bars so labels never overlap.
        fig = _new_figure(9.0, max(1.6, 0.5 + 0.24 * len(items)))
        ax = fig.add_subplot()
        if not items:
            _empty(ax, "No feature importance")
            return _to_data_uri(fig)
        names = [name for name, _ in items][::-1]
        values = [float(value) for _, value in items][::-1]
        ax.barh(names, values, color=BAR_COLOR, height=0.68)
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0, labelsize=8.5)
        ax.set_xlabel("Importance")
        ax.margins(y=0.01)
        return _to_data_uri(fig)
