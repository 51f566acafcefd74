"""Extra targets of the gold labels table: the label library's outputs as prefixed columns.

Each target of `label.extra` becomes the columns its config model documents (`columns()`), computed
by its kind's library function on the same bars, in the bars' rows, order and index.

Leakage rule for regimes. volatility_regime and hmm_regime fit their tertiles / HMMs only on the rows
of the fit window, the panel's first `fit_bars` unique timestamps (default walk_forward.train_bars,
the first training window; the same window PCA fits on), and label each row from what is known at
its close. So every regime label after the fit window is out of sample: changing bars after ts
changes nothing at ts. Labels inside the fit window are in sample: the fit saw rows after them. With
fit_bars <= train_bars (enforced) no walk-forward fold tests on them; later folds may train on them.

spread_explosion is the one target read from quotes besides bars: `spread_explosion_by_bar` turns the
library's per-quote label into one per bar (the rule and why are in its docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd

from quanto.config.models import (
    DirectionLabel,
    ExtraLabelSpec,
    ForwardReturnsLabel,
    HmmRegimeLabel,
    MetaLabel,
    NextBarRangeLabel,
    RlRewardLabel,
    SpreadExplosionLabel,
    TripleBarrierLabel,
    VolatilityRegimeLabel,
)
from quanto.errors import InputError
from quanto.features.pca import fit_end_for
from quanto.labels.barriers import meta_labels, triple_barrier
from quanto.labels.forward import compute_labels
from quanto.labels.paths import SymbolPaths, forward_returns, next_bar_range
from quanto.labels.regimes import hmm_regimes, volatility_regimes
from quanto.labels.rewards import rl_reward, spread_explosion

Columns = dict[str, pd.api.extensions.ExtensionArray | np.ndarray]
# Validated quotes (QUOTE_SCHEMA; symbol, ts, bid_px and ask_px are read): one frame of every
# symbol's, or a function returning one symbol's (so a large table is read a symbol at a time).
Quotes: TypeAlias = pd.DataFrame | Callable[[str], pd.DataFrame]


def extra_labels(
    bars: pd.DataFrame,
    extras: Sequence[ExtraLabelSpec],
    train_bars: int,
    *,
    quotes: Quotes | None = None,
    timeframe: str | None = None,
) -> pd.DataFrame:
    """`symbol, ts` then every extra target's documented columns, in the bars' rows, order and index.

    `train_bars` is walk_forward.train_bars: the fit window of a regime without its own `fit_bars`,
    and the longest one allowed. `quotes` and the bars' intraday `timeframe` (default: the bars'
    `timeframe` column) are read by spread_explosion only. Raises InputError when a regime's fit_bars
    exceeds train_bars, the panel has no timestamp after the fit window, or spread_explosion has no
    quotes.
    """
    out: Columns = {"symbol": bars["symbol"].array, "ts": bars["ts"].array}
    for i, spec in enumerate(extras):
        where = f"label.extra[{i}] ({spec.kind})"
        if isinstance(spec, VolatilityRegimeLabel | HmmRegimeLabel):
            columns = _COMPUTE[spec.kind](bars, spec, _train_end(bars, spec.fit_bars, train_bars, where))
        elif isinstance(spec, SpreadExplosionLabel):
            if quotes is None:
                raise InputError(
                    f"{where}: needs the validated quotes (features.microstructure with source quotes)"
                )
            columns = _spread_explosion(bars, spec, quotes, timeframe or _timeframe_of(bars, where))
        else:
            columns = _COMPUTE[spec.kind](bars, spec)
        out.update({name: columns[name] for name in spec.columns()})
    return pd.DataFrame(out, index=bars.index)


def spread_explosion_by_bar(
    bars: pd.DataFrame, quotes: Quotes, *, timeframe: str, window: int = 100, k: float = 2.0
) -> pd.DataFrame:
    """Spread explosion as a bar-level target: will the spread blow out during the next bar?

    Per quote, `quanto.labels.rewards.spread_explosion` says whether the quote after it has a spread
    above mean + k·std of the `window` spreads up to it (its t1 is that later quote's ts, the moment
    of the explosion). A bar [ts, ts + timeframe) looks at the symbol's next bar (its next row, as
    next_bar_range does), the interval [start, start + timeframe) with start = the next bar's ts (never
    before this bar's close): the quotes judged are the ones stamped inside it, i.e. the per-quote
    labels whose t1 falls there, undefined ones skipped. label = 1.0 if any of them exploded, 0.0 if
    none did; t1 = the ts of the last quote judged, which is at or after the bar's close and before
    the next bar's end. NaN / NaT when none is judged: the symbol's last bar, a next bar without quotes
    or with only undefined ones (each symbol's first `window` quotes, one-sided quotes).

    Why this rule rather than the label of the bar's last quote: a model predicts at the bar's close
    and acts during the next bar, so the useful question is whether liquidity breaks down over that
    horizon, one bar, like every other target of the table. The last quote's label asks about the
    single quote after the close, which may come a millisecond later or at the next session's open: a
    horizon set by quote traffic rather than by the bar, and one quote's worth of a rare event. No
    lookahead: nothing after the close is a feature; what the label reads after it is the future it
    describes, and t1 (>= the close) tells purging where that future ends.

    Returns `symbol, ts, label, t1` in the bars' rows, order and index.
    """
    from quanto.data.aggregate import timeframe_ns

    length = np.int64(timeframe_ns(timeframe))
    paths = SymbolPaths.of(bars)
    bar_ns = pd.DatetimeIndex(bars["ts"]).as_unit("ns").asi8[paths.order]
    label = np.full(len(paths), np.nan)
    t1 = np.full(len(paths), np.iinfo(np.int64).min)  # NaT
    nxt = paths.ahead(1)
    starts = np.flatnonzero(paths.step == 0)
    for first, end in zip(starts, [*starts[1:], len(paths)], strict=True):
        symbol = paths.symbol[paths.order[first]]
        book = _quotes_of(quotes, symbol)
        if book.empty:
            continue
        per_quote = spread_explosion(book, window=window, k=k)
        judged = per_quote["label"].notna().to_numpy()
        at = pd.DatetimeIndex(per_quote["t1"]).as_unit("ns").asi8[judged]
        order = np.argsort(at, kind="stable")
        at = at[order]
        exploded = np.r_[0, np.cumsum(per_quote["label"].to_numpy()[judged][order])]
        rows = np.arange(first, end)
        rows = rows[nxt[rows] >= 0]
        begin = np.maximum(bar_ns[nxt[rows]], bar_ns[rows] + length)
        lo = np.searchsorted(at, begin, side="left")
        hi = np.searchsorted(at, begin + length, side="left")
        has = hi > lo
        label[rows[has]] = (exploded[hi[has]] - exploded[lo[has]] > 0).astype(np.float64)
        t1[rows[has]] = at[hi[has] - 1]
    ends = pd.DatetimeIndex(t1.view("datetime64[ns]")).tz_localize("UTC")
    return paths.frame({"label": label, "t1": ends})


def _quotes_of(quotes: Quotes, symbol: str) -> pd.DataFrame:
    """One symbol's quotes from a frame of several or a per-symbol reader."""
    frame = quotes(symbol) if callable(quotes) else quotes
    return frame.loc[frame["symbol"] == symbol]


def _timeframe_of(bars: pd.DataFrame, where: str) -> str:
    """The bars' one timeframe (their `timeframe` column)."""
    found = bars["timeframe"].unique() if "timeframe" in bars.columns else []
    if len(found) != 1:
        raise InputError(f"{where}: needs bars of one intraday timeframe, got {list(found)}")
    return str(found[0])


def momentum_side(bars: pd.DataFrame, window: int) -> pd.Series:
    """The meta-label's primary rule: sign of close[t] − close[t−window] per symbol (+1, −1, 0 flat).

    Known at t's close. NaN (no bet) on a symbol's first `window` bars and where a close is missing.
    Aligned on the bars' index.
    """
    paths = SymbolPaths.of(bars, ["close"])
    close = paths.values(bars, "close")
    back = paths.behind(window)
    side = np.full(len(paths), np.nan)
    has = back >= 0
    side[has] = np.sign(close[has] - close[back[has]])
    return paths.frame({"side": side})["side"]


def _train_end(bars: pd.DataFrame, fit_bars: int | None, train_bars: int, where: str) -> pd.Timestamp:
    """Last ts of the fit window (the regime functions fit on ts <= train_end, inclusive)."""
    bars_in_window = fit_bars or train_bars
    if bars_in_window > train_bars:
        raise InputError(
            f"{where}: fit_bars ({fit_bars}) must not exceed walk_forward.train_bars ({train_bars}): "
            "the first fold would test on rows the regime was fitted on"
        )
    try:
        fit_end = fit_end_for(bars, bars_in_window)  # exclusive end: the first bar after the window
    except InputError as err:
        raise InputError(
            f"{where}: the fit window of {bars_in_window} bars (fit_bars, default walk_forward.train_bars) "
            f"needs a longer panel, which has {bars['ts'].nunique()} unique timestamps"
        ) from err
    ts = pd.DatetimeIndex(bars["ts"])
    return ts[ts < fit_end].max()


def _forward_returns(bars: pd.DataFrame, spec: ForwardReturnsLabel) -> Columns:
    fr = forward_returns(bars, spec.horizons)
    out: Columns = {}
    for h in spec.horizons:
        out[f"{spec.prefix}_{h}"] = fr[f"fwd_return_{h}"].to_numpy()
        out[f"{spec.prefix}_{h}_t1"] = fr[f"t1_{h}"].array
    return out


def _next_bar_range(bars: pd.DataFrame, spec: NextBarRangeLabel) -> Columns:
    return _renamed(next_bar_range(bars), spec.prefix, label="label")


def _direction(bars: pd.DataFrame, spec: DirectionLabel) -> Columns:
    out = compute_labels(bars, "direction", spec.horizon, spec.threshold)
    return _renamed(out, spec.prefix, label="label", ret="fwd_return")


def _triple_barrier(bars: pd.DataFrame, spec: TripleBarrierLabel) -> Columns:
    out = triple_barrier(
        bars, vol_window=spec.vol_window, pt_mult=spec.pt_mult, sl_mult=spec.sl_mult, max_bars=spec.horizon
    )
    return _renamed(out, spec.prefix, label="label", ret="ret")


def _meta(bars: pd.DataFrame, spec: MetaLabel) -> Columns:
    side = momentum_side(bars, spec.side_window)
    out = meta_labels(
        bars,
        side,
        vol_window=spec.vol_window,
        pt_mult=spec.pt_mult,
        sl_mult=spec.sl_mult,
        max_bars=spec.horizon,
    )
    columns = _renamed(out, spec.prefix, label="label", ret="ret")
    columns[f"{spec.prefix}_side"] = side.to_numpy()
    return columns


def _volatility_regime(bars: pd.DataFrame, spec: VolatilityRegimeLabel, train_end: pd.Timestamp) -> Columns:
    out, _ = volatility_regimes(bars, window=spec.window, train_end=train_end)
    return _renamed(out, spec.prefix, label="label", vol="vol")


def _hmm_regime(bars: pd.DataFrame, spec: HmmRegimeLabel, train_end: pd.Timestamp) -> Columns:
    out, _ = hmm_regimes(
        bars,
        n_states=spec.n_states,
        train_end=train_end,
        seed=spec.seed,
        use_volatility=spec.use_volatility,
        vol_window=spec.vol_window,
        n_iter=spec.n_iter,
        min_train_rows=spec.min_train_rows,
    )
    probs = {f"prob_{k}": f"prob_{k}" for k in range(spec.n_states)}
    return _renamed(out, spec.prefix, label="label", **probs)


def _rl_reward(bars: pd.DataFrame, spec: RlRewardLabel) -> Columns:
    out: Columns = {}
    for side in spec.sides:
        position = 1.0 if side == "long" else -1.0
        # A constant position pays its entry cost once, on the symbol's first bar; an agent flat at t
        # pays it at every t, so the reward is the next-bar PnL minus one entry.
        held = rl_reward(bars, pd.Series(position, index=bars.index), cost_bps=spec.cost_bps)
        entry = abs(position) * spec.cost_bps / 10_000
        out[f"{spec.prefix}_{side}"] = held["pnl"].to_numpy() - entry
        out[f"{spec.prefix}_{side}_t1"] = held["t1"].array
    return out


def _spread_explosion(
    bars: pd.DataFrame, spec: SpreadExplosionLabel, quotes: Quotes, timeframe: str
) -> Columns:
    out = spread_explosion_by_bar(bars, quotes, timeframe=timeframe, window=spec.window, k=spec.k)
    return _renamed(out, spec.prefix, label="label")


def _renamed(frame: pd.DataFrame, prefix: str, **names: str) -> Columns:
    """`frame`'s columns as `<prefix>_<new>` (names: new → library column) plus `t1` as `<prefix>_t1`."""
    out: Columns = {f"{prefix}_{new}": frame[old].to_numpy() for new, old in names.items()}
    out[f"{prefix}_t1"] = frame["t1"].array
    return out


_COMPUTE: dict[str, Callable[..., Columns]] = {
    "forward_returns": _forward_returns,
    "next_bar_range": _next_bar_range,
    "direction": _direction,
    "triple_barrier": _triple_barrier,
    "meta": _meta,
    "volatility_regime": _volatility_regime,
    "hmm_regime": _hmm_regime,
    "rl_reward": _rl_reward,
}
