"""Report charts: matplotlib figures rendered with Agg and returned as base64 PNG data URIs.

Figures are built with the object API (`Figure` + `FigureCanvasAgg`), never with pyplot: pyplot keeps
a global registry of open figures, which leaks memory in long-lived workers and is not safe across
threads. A `Figure` that nothing references is simply garbage-collected; we still clear it after use.
"""

from __future__ import annotations

import base64
import io
import math
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
NET_COLOR = "#d68a1a"
VOLATILITY_COLOR = "#7a4fa3"
WIN_COLOR = "#1e7d4f"  # the stylesheet's good-news green and bad-news red
LOSS_COLOR = "#b23a2e"
HALF_WIDTH = 4.5  # inches; two of these sit side by side where one time series chart spans the page
HALF_HEIGHT = 3.0
SQUARE_WIDTH = 3.6
MIN_BINS, MAX_BINS = 10, 60
_BAR_EDGES = {"edgecolor": "white", "linewidth": 0.4}  # a hairline between histogram bars
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


def _rolling_figure(x: np.ndarray, values: np.ndarray, ylabel: str, color: str, percent: bool) -> Figure:
    """One rolling statistic over the equity frame's time range (NaN during its warm-up window)."""
    fig = _new_figure(TIME_SERIES_WIDTH, 2.3)
    ax = fig.add_subplot()
    if not percent:
        ax.axhline(0.0, color=BENCHMARK_COLOR, lw=0.8)  # where a rolling Sharpe turns from gain to loss
    ax.plot(x, values, color=color, lw=1.2)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel(ylabel)
    _time_axis(ax, x)
    return fig


def _exposure_figure(x: np.ndarray, exposure: pd.DataFrame) -> Figure:
    fig = _new_figure(TIME_SERIES_WIDTH, 2.5)
    ax = fig.add_subplot()
    gross = exposure["gross"].to_numpy(dtype=float)
    net = exposure["net"].to_numpy(dtype=float)
    ax.fill_between(x, gross, 0.0, color=STRATEGY_COLOR, alpha=0.12, lw=0, step="post")
    g = ax.step(x, gross, where="post", color=STRATEGY_COLOR, lw=1.0, label="Gross")
    n = ax.step(x, net, where="post", color=NET_COLOR, lw=1.1, label="Net")
    ax.axhline(0.0, color=BENCHMARK_COLOR, lw=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel("Share of equity")
    _time_axis(ax, x)
    _legend_above(ax, g + n, ["Gross", "Net"])
    return fig


def _time_series_figures(
    equity: pd.DataFrame,
    log_scale: bool = False,
    rolling: pd.DataFrame | None = None,
    exposure: pd.DataFrame | None = None,
) -> dict[str, Figure]:
    """Every chart over time, by name, over the same time range with aligned plot areas.

    Always "equity" and "drawdown"; "rolling_sharpe" and "rolling_volatility" when `rolling` (columns
    sharpe, volatility) and "exposure" when `exposure` (columns gross, net) are given, one row per
    equity row.
    """
    with matplotlib.rc_context(_STYLE):
        figs = {"equity": _equity_figure(equity, log_scale), "drawdown": _drawdown_figure(equity)}
        if not equity.empty:
            x = _naive_utc(equity["ts"])
            if rolling is not None:
                figs["rolling_sharpe"] = _rolling_figure(
                    x, rolling["sharpe"].to_numpy(dtype=float), "Sharpe ratio", STRATEGY_COLOR, False
                )
                figs["rolling_volatility"] = _rolling_figure(
                    x, rolling["volatility"].to_numpy(dtype=float), "Volatility", VOLATILITY_COLOR, True
                )
            if exposure is not None:
                figs["exposure"] = _exposure_figure(x, exposure)
            _align_plot_areas(list(figs.values()))
    return figs


def time_series_charts(
    equity: pd.DataFrame,
    log_scale: bool = False,
    rolling: pd.DataFrame | None = None,
    exposure: pd.DataFrame | None = None,
) -> dict[str, str]:
    """The charts over time (see `_time_series_figures`) as PNG data URIs by name, drawn together so
    their time axes line up: a date sits at the same place on every chart of the page."""
    with matplotlib.rc_context(_STYLE):
        figs = _time_series_figures(equity, log_scale, rolling, exposure)
        return {name: _to_data_uri(fig) for name, fig in figs.items()}


def _bin_edges(values: np.ndarray) -> np.ndarray:
    """Histogram bins: about sqrt(n), between MIN_BINS and MAX_BINS (a million bars gives no 1000-bar comb)."""
    bins = int(np.clip(round(math.sqrt(values.size)), MIN_BINS, MAX_BINS))
    return np.histogram_bin_edges(values, bins=bins)


def return_distribution_chart(returns: np.ndarray, var_lines: Sequence[tuple[str, float]]) -> str:
    """Histogram of period returns (as a density) with the normal fit of the same mean and sample
    standard deviation, and a dashed line at each (label, return) of `var_lines` (the VaR quantiles)."""
    r = np.asarray(returns, dtype=float)
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure(HALF_WIDTH, HALF_HEIGHT)
        ax = fig.add_subplot()
        edges = _bin_edges(r)
        ax.hist(r, bins=edges, density=True, color=BAR_COLOR, alpha=0.72, **_BAR_EDGES)
        mean, std = float(r.mean()), float(r.std(ddof=1))
        grid = np.linspace(edges[0], edges[-1], 240)
        normal = np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        handles = ax.plot(grid, normal, color=_TEXT_COLOR, lw=1.2)
        labels = ["Normal fit"]
        for (label, value), style in zip(var_lines, ("--", ":", "-."), strict=False):
            handles.append(ax.axvline(value, color=DRAWDOWN_COLOR, lw=1.1, ls=style))
            labels.append(label)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
        ax.yaxis.set_major_locator(NullLocator())  # a density's scale says nothing to a reader
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("Return per period")
        _legend_above(ax, handles, labels)
        return _to_data_uri(fig)


def trade_distribution_chart(values: np.ndarray, percent: bool) -> str:
    """Histogram of closed trades' returns (`percent`) or PnL, wins in green and losses in red on
    shared bins, with a line at the mean trade (the expectancy)."""
    v = np.asarray(values, dtype=float)
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure(HALF_WIDTH, HALF_HEIGHT)
        ax = fig.add_subplot()
        edges = _bin_edges(v)
        groups = [
            (v[v > 0], WIN_COLOR, "Wins"),
            (v[v < 0], LOSS_COLOR, "Losses"),
            (v[v == 0], BENCHMARK_COLOR, "Flat"),
        ]
        groups = [(g, color, f"{label} ({g.size:,})") for g, color, label in groups if g.size]
        ax.hist(
            [g for g, _, _ in groups],
            bins=edges,
            stacked=True,
            color=[color for _, color, _ in groups],
            label=[label for _, _, label in groups],
            alpha=0.85,
            **_BAR_EDGES,
        )
        mean = float(v.mean())
        shown = f"{mean:+.2%}" if percent else f"{mean:+,.2f}"
        ax.axvline(mean, color=_TEXT_COLOR, lw=1.1, ls="--", label=f"Mean {shown}")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(
            PercentFormatter(xmax=1.0, decimals=1) if percent else FuncFormatter(_money_tick)
        )
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.set_xlabel("Return per trade" if percent else "PnL per trade")
        ax.set_ylabel("Trades")
        handles, labels = ax.get_legend_handles_labels()
        _legend_above(ax, handles, labels)
        return _to_data_uri(fig)


def confusion_matrix_chart(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """A confusion matrix (rows actual, columns predicted) as a heatmap; each cell shows its count and
    its share of the actual class (the row)."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    with matplotlib.rc_context({**_STYLE, "axes.grid": False}):
        fig = _new_figure(SQUARE_WIDTH, HALF_HEIGHT)
        ax = fig.add_subplot()
        ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        for (i, j), count in np.ndenumerate(counts):
            light = share[i, j] > 0.6  # white text on the dark cells
            ax.text(
                j,
                i,
                f"{count:,.0f}\n{share[i, j]:.1%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if light else _TEXT_COLOR,
            )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual")
        return _to_data_uri(fig)


def roc_chart(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> str:
    """The ROC curve (true against false positive rate) with the diagonal of a coin flip."""
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure(SQUARE_WIDTH, HALF_HEIGHT)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color=BENCHMARK_COLOR, lw=1.0, ls="--", label="Chance")
        label = "Model" if auc is None else f"Model (AUC {auc:.3f})"
        ax.plot(fpr, tpr, color=STRATEGY_COLOR, lw=1.6, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.0)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.legend(loc="lower right")
        return _to_data_uri(fig)


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


def pbo_chart(
    logits: Sequence[float], is_performance: Sequence[float], oos_performance: Sequence[float]
) -> str:
    """The CSCV picture of a parameter sweep: the histogram of the in-sample winner's out-of-sample
    rank logits (λ ≤ 0, red: the winner fell to or below the median; their share is the PBO), and
    the winner's out-of-sample score against its in-sample one with their least-squares line."""
    lam = np.asarray(logits, dtype=float)
    lam = lam[np.isfinite(lam)]
    x, y = np.asarray(is_performance, dtype=float), np.asarray(oos_performance, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure(TIME_SERIES_WIDTH, 2.8)
        left, right = fig.subplots(1, 2)
        edges = _bin_edges(lam)
        # A bin edge at 0 so no bar straddles the line; λ ≤ 0 (the PBO's count, 0 included) stacked in red.
        edges = np.unique(np.r_[edges, 0.0]) if edges[0] < 0 < edges[-1] else edges
        left.hist(
            [lam[lam <= 0], lam[lam > 0]],
            bins=edges,
            stacked=True,
            color=[LOSS_COLOR, BAR_COLOR],
            alpha=0.85,
            **_BAR_EDGES,
        )
        left.axvline(0.0, color=_TEXT_COLOR, lw=1.0, ls="--")
        left.set_xlabel("Logit of the winner's out-of-sample rank")
        left.set_ylabel("Splits")
        left.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        right.axhline(0.0, color=BENCHMARK_COLOR, lw=0.8)
        right.scatter(x, y, s=6, color=STRATEGY_COLOR, alpha=0.35, lw=0)
        if x.size >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            line = np.linspace(x.min(), x.max(), 2)
            right.plot(line, intercept + slope * line, color=DRAWDOWN_COLOR, lw=1.3)
        right.set_xlabel("In-sample score of the winner")
        right.set_ylabel("Out-of-sample score")
        return _to_data_uri(fig)
