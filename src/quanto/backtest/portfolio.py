"""The portfolio engine: decisions per (symbol, ts) → orders → fills → cash, positions, equity, trades.

One shared account (cash + positions in every traded symbol), simulated bar by bar in a numba loop
over the grid of timestamps (the union of the traded symbols' bars inside the decision window).
Rules, in the order they happen on each timestamp t (tests/unit/test_portfolio.py checks them
against a plain Python loop):

1. ``next_open``: orders decided at each symbol's previous bar fill at the OPEN of its bar at t
   (`fills`: slippage and half the spread against the order; `costs`: commission).
2. Stops (`stops`) of every held position whose symbol has a bar at t, from its open, high and low.
3. Marks: each symbol with a bar at t is marked at its close; one without keeps its last close.
4. Borrow fees of the shorts held at this close (`costs`).
5. ``next_close``: orders decided at the previous bar fill at the CLOSE of the bar at t;
   ``this_close``: decisions of t are made (5a) and fill at the same close.
6. ``close_at_end``: a position whose symbol has its last window bar at t is closed at that close.
7. The equity row of t: cash, long and short market value, equity = cash + long + short.
8. ``next_*``: decisions of t become orders for each symbol's next bar.

Decisions (5a / 8), for each symbol with a bar at t: sized into a target quantity at the close of t
with the equity of that moment (`sizing`); an order is placed when `sizing.needs_order` says so.
A bar of the window without a decision row: a signal run holds signal 0 there (flat, as a missing
prediction means no signal); a target run places no order (holds). Decisions for a symbol with no
bar at t do not exist (every decision must match a bar).

Limits:
- **Leverage.** Orders filling together (one timestamp, one phase) are checked against
  ``max_leverage``: gross exposure (Σ |qty| · price at the fill's reference prices, marks elsewhere)
  ≤ max_leverage · equity at those prices. When the orders would exceed it, the parts that ADD
  exposure (entries, additions, the new side of a reversal) are scaled by one common factor so gross
  exposure equals the cap (reductions are never scaled); each scaled order is recorded in
  `PortfolioResult.scaled_orders` and its fill carries the ``requested_qty``. Costs of that fill are
  not part of the check. Between fills exposure floats with prices (no forced deleveraging).
- **Liquidation.** When equity at a decision point is ≤ 0, every position is closed at its symbol's
  next fill opportunity (reason ``liquidation``) and no new decisions are taken.
- **After a stop** a symbol is not re-entered on the same side until its decision goes flat or
  reverses (otherwise a standing signal would buy back the next bar).

Accounting: a buy of q units at price p costs q·p + commission from cash; a sell adds q·p −
commission; borrow fees come out of cash. Units are fractional unless ``fractional_units`` is false.
Equity = cash + Σ qty · last close at every row, exactly (no implicit rebalancing: a position's
quantity only changes at fills). Cash may go negative (a leveraged long) — no interest is charged on
it, nor paid on positive cash.

Outputs (`PortfolioResult`): equity (one row per grid ts), trades (round trips: flat → flat, or up to
a reversal; a reversal is one fill whose commission and slippage are split by quantity between the
closing and the opening trade), positions (one row per symbol and bar), fills, scaled orders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from quanto.backtest.costs import borrow_fee, commission
from quanto.backtest.fills import (
    CLOSE_AT_END,
    FILL_REASONS,
    LIQUIDATION,
    NEXT_OPEN,
    REBALANCE,
    SIGNAL,
    THIS_CLOSE,
    fill_price,
    half_spread,
    timing_code,
)
from quanto.backtest.metrics import performance_metrics
from quanto.backtest.sizing import (
    SIGNAL_QTY,
    TARGET_QTY,
    TARGET_WEIGHT,
    needs_order,
    signal_targets,
    target_quantity,
)
from quanto.backtest.stops import NO_EXIT, stop_exit, update_extreme
from quanto.config.models import BacktestConfig

EQUITY_COLUMNS = (
    "ts",
    "cash",
    "long_value",
    "short_value",
    "equity",
    "returns",
    "gross_exposure",
    "net_exposure",
    "benchmark",
    "drawdown",
    "benchmark_drawdown",
    "benchmark_returns",
)
TRADE_COLUMNS = (
    "symbol",
    "side",
    "entry_ts",
    "entry_price",
    "exit_ts",
    "exit_price",
    "qty",
    "pnl",
    "costs",
    "return",
    "bars_held",
    "exit_reason",
    "open",
)
POSITION_COLUMNS = ("ts", "symbol", "qty", "price", "value", "weight")
FILL_COLUMNS = ("ts", "symbol", "side", "qty", "price", "commission", "slippage", "reason", "requested_qty")
SCALED_COLUMNS = ("ts", "symbol", "requested_qty", "qty")
DECISION_KINDS = ("signal", "target_weight", "target_qty")

# Columns of the kernel's fill records (one float row per fill).
_F_ROW, _F_SYM, _F_QTY, _F_PRICE, _F_COMM, _F_SLIP, _F_REASON, _F_REQ, _F_POSITION = range(9)
# Columns of the kernel's trade records.
(
    _T_SYM,
    _T_SIDE,
    _T_ENTRY_ROW,
    _T_EXIT_ROW,
    _T_ENTRY_BAR,
    _T_EXIT_BAR,
    _T_ENTRY_QTY,
    _T_ENTRY_NOTIONAL,
    _T_EXIT_QTY,
    _T_EXIT_NOTIONAL,
    _T_COSTS,
    _T_FLOW,
    _T_REASON,
) = range(13)
# Rows of the kernel's per-symbol state: position, last close, pending order (target units, NaN = none)
# and its reason, the side blocked after a stop, bar counter, open trade (-1 = none), best price since
# entry, first row whose bar the stops check.
_S_QTY, _S_LAST, _S_PENDING, _S_REASON, _S_BLOCKED, _S_BAR, _S_TRADE, _S_EXTREME, _S_STOPS_FROM = range(9)
# Slots of the kernel's cost parameters.
_C_SLIP, _C_SHARE, _C_ORDER, _C_BPS, _C_MIN = range(5)


# --------------------------------------------------------------------------------------------------
# The compiled loop
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def _execute(
    i, t, target, ref, spread, reason, requested, close_phase, st, book, fills, trades, counts, cost
):
    """Fill symbol i toward `target` units at reference price `ref`; update cash, position and trades.

    st: per-symbol state rows (see `_kernel`); book[0] is cash.
    """
    old = st[_S_QTY, i]
    delta = target - old
    if delta == 0.0:
        return
    side = 1.0 if delta > 0.0 else -1.0
    qty = abs(delta)
    price = fill_price(ref, side, cost[_C_SLIP], spread)
    comm = commission(qty, price, cost[_C_SHARE], cost[_C_ORDER], cost[_C_BPS], cost[_C_MIN])
    slip = qty * abs(price - ref)
    flow = -delta * price - comm
    book[0] += flow
    k = counts[0]
    counts[0] = k + 1
    fills[k, _F_ROW] = t
    fills[k, _F_SYM] = i
    fills[k, _F_QTY] = delta
    fills[k, _F_PRICE] = price
    fills[k, _F_COMM] = comm
    fills[k, _F_SLIP] = slip
    fills[k, _F_REASON] = reason
    fills[k, _F_REQ] = abs(requested)
    fills[k, _F_POSITION] = target

    reverses = old != 0.0 and target != 0.0 and (target > 0.0) != (old > 0.0)
    closed = 0.0
    opened = 0.0
    if old == 0.0 or (not reverses and abs(target) > abs(old)):
        opened = qty
    elif reverses:
        closed = abs(old)
        opened = abs(target)
    else:
        closed = qty
    if closed > 0.0:
        share = closed / qty
        j = int(st[_S_TRADE, i])
        trades[j, _T_EXIT_QTY] += closed
        trades[j, _T_EXIT_NOTIONAL] += closed * price
        trades[j, _T_COSTS] += share * (comm + slip)
        trades[j, _T_FLOW] += share * flow
        if target == 0.0 or reverses:
            trades[j, _T_EXIT_ROW] = t
            trades[j, _T_EXIT_BAR] = st[_S_BAR, i]
            trades[j, _T_REASON] = reason
            st[_S_TRADE, i] = -1.0
    if opened > 0.0:
        share = opened / qty
        j = int(st[_S_TRADE, i])
        if j < 0:
            j = counts[1]
            counts[1] = j + 1
            st[_S_TRADE, i] = j
            trades[j, :] = 0.0  # the buffer is uninitialized
            trades[j, _T_SYM] = i
            trades[j, _T_SIDE] = 1.0 if target > 0.0 else -1.0
            trades[j, _T_ENTRY_ROW] = t
            trades[j, _T_ENTRY_BAR] = st[_S_BAR, i]
            trades[j, _T_REASON] = -1.0
            st[_S_EXTREME, i] = price
            # A position entered at a close has lived through none of that bar's range.
            st[_S_STOPS_FROM, i] = t + 1 if close_phase else t
        trades[j, _T_ENTRY_QTY] += opened
        trades[j, _T_ENTRY_NOTIONAL] += opened * price
        trades[j, _T_COSTS] += share * (comm + slip)
        trades[j, _T_FLOW] += share * flow
    st[_S_QTY, i] = target


@njit(cache=True)
def _spread(bid, ask, t, j):
    """Half the quoted spread of symbol j's bar at t; 0 without quotes (empty bid/ask grids)."""
    return half_spread(bid[t, j], ask[t, j]) if bid.shape[0] else 0.0


@njit(cache=True)
def _exposure_parts(qty, target):
    """(kept, added) absolute units when a position of `qty` is traded to `target`."""
    if qty != 0.0 and target != 0.0 and (target > 0.0) != (qty > 0.0):
        return 0.0, abs(target)
    if abs(target) <= abs(qty):
        return abs(target), 0.0
    return abs(qty), abs(target) - abs(qty)


@njit(cache=True)
def _any_pending(t, has, st):
    """Whether a symbol with a bar at t has a pending order (most bars have none: skip the fill step)."""
    for j in range(st.shape[1]):  # noqa: SIM110 - a plain loop compiles; any(generator) does not
        if has[t, j] and not math.isnan(st[_S_PENDING, j]):
            return True
    return False


@njit(cache=True)
def _fill_pending(
    t,
    at_open,
    has,
    open_,
    close,
    bid,
    ask,
    st,
    book,
    fills,
    trades,
    scaled,
    counts,
    cost,
    max_leverage,
    fractional,
):
    """Fill every pending order of the symbols with a bar at t, at its open or close, under the
    leverage cap (module docstring)."""
    n = st.shape[1]
    equity = book[0]
    kept = 0.0
    added = 0.0
    any_order = False
    for j in range(n):
        mark = (open_[t, j] if at_open else close[t, j]) if has[t, j] else st[_S_LAST, j]
        q = st[_S_QTY, j]
        if q != 0.0:
            equity += q * mark
        target = st[_S_PENDING, j]
        if has[t, j] and not math.isnan(target):
            any_order = True
            k, a = _exposure_parts(q, target)
            kept += k * mark
            added += a * mark
        elif q != 0.0:
            kept += abs(q) * mark
    if not any_order:
        return
    scale = 1.0
    limit = max_leverage * equity
    if added > 0.0 and kept + added > limit:
        scale = (limit - kept) / added
        scale = min(max(scale, 0.0), 1.0)
    for j in range(n):
        target = st[_S_PENDING, j]
        if not has[t, j] or math.isnan(target):
            continue
        st[_S_PENDING, j] = math.nan
        q = st[_S_QTY, j]
        requested = target - q
        if scale < 1.0:
            k, a = _exposure_parts(q, target)
            if a > 0.0:
                granted = np.sign(target) * (k + scale * a)
                if not fractional:
                    granted = float(math.trunc(granted))
                m = counts[2]
                counts[2] = m + 1
                scaled[m, 0] = t
                scaled[m, 1] = j
                scaled[m, 2] = requested
                scaled[m, 3] = granted - q
                target = granted
        ref = open_[t, j] if at_open else close[t, j]
        _execute(
            j, t, target, ref, _spread(bid, ask, t, j), st[_S_REASON, j], requested, not at_open,
            st, book, fills, trades, counts, cost,
        )  # fmt: skip


@njit(cache=True, inline="always")
def _market_values(st):
    """(long, short) market value of the positions at their last closes; short ≤ 0."""
    long_value = 0.0
    short_value = 0.0
    for j in range(st.shape[1]):
        q = st[_S_QTY, j]
        if q > 0.0:
            long_value += q * st[_S_LAST, j]
        elif q < 0.0:
            short_value += q * st[_S_LAST, j]
    return long_value, short_value


@njit(cache=True, inline="always")
def order_target(kind, goal, qty, blocked, price, equity, fractional, drift):
    """(the target units of the order that the decision `goal` places for a position of `qty` units,
    NaN for none; the side still blocked after a stop): the rules of the module docstring for one
    symbol with a bar at this close, whose `price` and portfolio `equity` size it. Scalars only:
    array arguments of an inlined function cost reference counting on every bar."""
    if math.isnan(goal):
        return math.nan, blocked
    side = np.sign(goal)
    if blocked != 0.0:
        if side == blocked:
            return math.nan, blocked
        blocked = 0.0
    if kind <= SIGNAL_QTY and side == np.sign(qty):
        return math.nan, blocked  # a standing signal holds its position (`needs_order`), no need to size it
    wanted = target_quantity(kind, goal, equity, price, fractional)
    if needs_order(kind, goal, qty, wanted, price, equity, drift):
        return wanted, blocked
    return math.nan, blocked


@njit(cache=True, inline="always")
def _decide_bar(t, has, target, close, st, equity, liquidating, kind, fractional, drift, reason):
    """The decisions of bar t's close (step 5a or 8 of the module docstring): liquidate once equity
    is gone, else turn each symbol's decision into its pending order. Returns `liquidating`."""
    if not liquidating and equity <= 0.0:
        liquidating = True
        _liquidate(st)
    if liquidating:
        return liquidating
    for j in range(st.shape[1]):
        if has[t, j]:
            order, st[_S_BLOCKED, j] = order_target(
                kind, target[t, j], st[_S_QTY, j], st[_S_BLOCKED, j], close[t, j], equity, fractional, drift
            )
            st[_S_PENDING, j] = order
            if not math.isnan(order):
                st[_S_REASON, j] = reason
    return liquidating


@njit(cache=True)
def _liquidate(st):
    """Equity ≤ 0 at a decision point: every position is closed at its symbol's next fill; entries
    still pending are dropped."""
    for j in range(st.shape[1]):
        st[_S_PENDING, j] = 0.0 if st[_S_QTY, j] != 0.0 else math.nan
        st[_S_REASON, j] = LIQUIDATION


@njit(cache=True)
def _check_stops(t, has, open_, high, low, bid, ask, st, book, fills, trades, counts, cost, exits):
    """Stop-loss / take-profit / trailing-stop exits of the held positions with a bar at t."""
    for j in range(st.shape[1]):
        q = st[_S_QTY, j]
        if q == 0.0 or not has[t, j] or t < st[_S_STOPS_FROM, j]:
            continue
        tr = int(st[_S_TRADE, j])
        entry = trades[tr, _T_ENTRY_NOTIONAL] / trades[tr, _T_ENTRY_QTY]
        side = 1.0 if q > 0.0 else -1.0
        reason, ref = stop_exit(
            side, entry, st[_S_EXTREME, j], exits[0], exits[1], exits[2], open_[t, j], high[t, j], low[t, j]
        )
        if reason == NO_EXIT:
            st[_S_EXTREME, j] = update_extreme(side, st[_S_EXTREME, j], high[t, j], low[t, j])
            continue
        _execute(
            j,
            t,
            0.0,
            ref,
            _spread(bid, ask, t, j),
            float(reason),
            q,
            False,
            st,
            book,
            fills,
            trades,
            counts,
            cost,
        )
        st[_S_BLOCKED, j] = side
        pending = st[_S_PENDING, j]
        if not math.isnan(pending):
            if np.sign(pending) == side:
                st[_S_PENDING, j] = math.nan  # the stopped side is not re-entered at this close
            else:
                st[_S_BLOCKED, j] = 0.0  # the pending decision already left that side


@njit(cache=True)
def _grown(records, used, more):
    """A copy of the first `used` rows of `records` in an uninitialized buffer at least twice as long,
    with room for `more` rows after them."""
    grown = np.empty((max(2 * records.shape[0], used + more), records.shape[1]))
    grown[:used] = records[:used]
    return grown


@njit(cache=True)
def _kernel(
    open_, high, low, close, bid, ask, has, target, kind, timing, last_row,
    initial_capital, cost, exits, use_stops, borrow_rate, periods_per_year,
    max_leverage, fractional, drift, close_at_end,
):  # fmt: skip
    """The bar loop (module docstring). Inputs are (grid rows × symbols) arrays, NaN where a symbol has
    no bar; returns cash, long and short value per row, the fill, trade and scaled-order records, and
    each symbol's final position and last close."""
    n_rows, n = close.shape
    # Record buffers, uninitialized, grown (doubled) between runs of rows that surely fit: a row adds at
    # most 4 fills (and as many trades) and 2 scaled orders per symbol. Worst-case buffers (two fills
    # per bar) would be fresh memory, paged in on every run.
    fills = np.empty((4096 + 4 * n, 9))
    trades = np.empty((4096 + 4 * n, 13))
    scaled = np.empty((1024 + 2 * n, 4))
    counts = np.zeros(3, dtype=np.int64)
    book = np.array([initial_capital])
    liquidating = False
    reason = SIGNAL if kind <= SIGNAL_QTY else REBALANCE
    st = np.zeros((9, n))
    st[_S_LAST, :] = math.nan
    st[_S_PENDING, :] = math.nan
    st[_S_BAR, :] = -1.0
    st[_S_TRADE, :] = -1.0
    cash = np.empty(n_rows)
    long_value = np.empty(n_rows)
    short_value = np.empty(n_rows)

    row = 0
    while row < n_rows:
        if fills.shape[0] - counts[0] < 4 * n:
            fills = _grown(fills, counts[0], 4 * n)
        if trades.shape[0] - counts[1] < 4 * n:
            trades = _grown(trades, counts[1], 4 * n)
        if scaled.shape[0] - counts[2] < 2 * n:
            scaled = _grown(scaled, counts[2], 2 * n)
        room = min((fills.shape[0] - counts[0]) // 4, (trades.shape[0] - counts[1]) // 4)
        end = min(n_rows, row + min(room, (scaled.shape[0] - counts[2]) // 2) // n)
        for t in range(row, end):
            for j in range(n):
                if has[t, j]:
                    st[_S_BAR, j] += 1.0
            if timing == NEXT_OPEN and _any_pending(t, has, st):
                _fill_pending(
                    t, True, has, open_, close, bid, ask, st, book, fills, trades, scaled, counts, cost,
                    max_leverage, fractional,
                )  # fmt: skip
            if use_stops:
                _check_stops(t, has, open_, high, low, bid, ask, st, book, fills, trades, counts, cost, exits)
            for j in range(n):
                if has[t, j]:
                    st[_S_LAST, j] = close[t, j]
            if borrow_rate > 0.0:
                for j in range(n):
                    fee = borrow_fee(st[_S_QTY, j], st[_S_LAST, j], borrow_rate, periods_per_year)
                    if fee > 0.0:
                        book[0] -= fee
                        tr = int(st[_S_TRADE, j])
                        trades[tr, _T_COSTS] += fee
                        trades[tr, _T_FLOW] -= fee
            if timing == THIS_CLOSE:  # 5a: decisions of this close (as at step 8 below)
                lv, sv = _market_values(st)
                liquidating = _decide_bar(
                    t, has, target, close, st, book[0] + lv + sv, liquidating, kind, fractional, drift, reason
                )
            if timing != NEXT_OPEN and _any_pending(t, has, st):
                _fill_pending(
                    t, False, has, open_, close, bid, ask, st, book, fills, trades, scaled, counts, cost,
                    max_leverage, fractional,
                )  # fmt: skip
            if close_at_end:
                for j in range(n):
                    if last_row[j] == t and st[_S_QTY, j] != 0.0:
                        q = st[_S_QTY, j]
                        _execute(
                            j, t, 0.0, close[t, j], _spread(bid, ask, t, j), float(CLOSE_AT_END), q, True,
                            st, book, fills, trades, counts, cost,
                        )  # fmt: skip
                        st[_S_PENDING, j] = math.nan
            lv, sv = _market_values(st)
            cash[t] = book[0]
            long_value[t] = lv
            short_value[t] = sv
            if timing != THIS_CLOSE:  # 8: decisions of this close become orders for the next bars
                liquidating = _decide_bar(
                    t, has, target, close, st, book[0] + lv + sv, liquidating, kind, fractional, drift, reason
                )
        row = end

    return (
        cash,
        long_value,
        short_value,
        fills[: counts[0]].copy(),  # copies free the grown buffers
        trades[: counts[1]].copy(),
        scaled[: counts[2]].copy(),
        st[_S_QTY].copy(),
        st[_S_LAST].copy(),
    )


# --------------------------------------------------------------------------------------------------
# Frames in, frames out
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Bars of the traded symbols on the (timestamps × symbols) grid; NaN where a symbol has no bar."""

    ts: np.ndarray  # int64 ns, sorted unique
    symbols: list[str]
    has: np.ndarray
    # Price grids are read-only (one compiled kernel for every run); open, high, low, bid and ask may
    # be views of the bars' columns (they are read during the run only), close is the engine's own.
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    bid: np.ndarray  # each bar's quote (NaN on a bar without one; no rows when bars carry none):
    ask: np.ndarray  # fills pay half the spread

    @property
    def last_row(self) -> np.ndarray:
        """Row of each symbol's last bar."""
        return self.has.shape[0] - 1 - np.argmax(self.has[::-1], axis=0)


@dataclass(frozen=True)
class _Run:
    """The engine's raw output arrays."""

    grid: _Grid
    cash: np.ndarray
    long_value: np.ndarray
    short_value: np.ndarray
    fills: np.ndarray
    trades: np.ndarray
    scaled: np.ndarray
    final_qty: np.ndarray
    last_px: np.ndarray
    benchmark: np.ndarray


@njit(cache=True)
def _held(fills, n_rows, n_cols):
    """Position of every symbol at every grid row's close, from the fills (in time order) and the
    position each left."""
    held = np.empty((n_rows, n_cols))
    qty = np.zeros(n_cols)
    k = 0
    for t in range(n_rows):
        while k < fills.shape[0] and fills[k, _F_ROW] == t:
            qty[int(fills[k, _F_SYM])] = fills[k, _F_POSITION]
            k += 1
        held[t, :] = qty
    return held


@dataclass(frozen=True)
class PortfolioResult:
    """What a simulation produces (columns in the module's *_COLUMNS tuples). Each frame is built
    from the engine's arrays the first time it is read.

    equity: one row per grid ts, at its close: cash, long_value (≥ 0), short_value (≤ 0: the marked
        value of the shorts), equity = cash + long_value + short_value, returns (equity over the
        previous row's, the first row over initial capital; 0 after a row with equity ≤ 0),
        gross_exposure = (long_value − short_value) / equity, net_exposure = (long_value +
        short_value) / equity (NaN when equity ≤ 0), benchmark (buy-and-hold, no costs: the
        equal-weight traded symbols, or ``benchmark``, each bought at its first fill opportunity with
        its share of the initial capital), drawdown, benchmark_drawdown (≤ 0, from the running peak,
        initial capital included), benchmark_returns.
    trades: one row per round trip: symbol, side ("long"|"short"), entry_ts / entry_price (first
        fill, quantity-weighted average fill price of the entries), exit_ts / exit_price (the fill
        that closed it and the average price of the exits; an open trade: the symbol's last bar and
        its close), qty (units entered), pnl (cash in − cash out, net of commission, slippage and
        borrow, plus the open quantity at the last close), costs (commission + slippage and spread
        paid vs the reference prices + borrow), return (pnl / entry notional), bars_held (the symbol's
        bars from the entry fill's to the exit fill's), exit_reason (a fill reason, or "open"), open.
        Σ pnl = final equity − initial capital.
    positions: one row per (ts, symbol) bar of a traded symbol: qty at its close, price (the close),
        value = qty · price, weight = value / equity.
    fills: ts, symbol, side ("buy"|"sell"), qty (> 0), price (with slippage and spread), commission,
        slippage (money paid vs the reference price), reason (`fills.FILL_REASONS`), requested_qty
        (the order before a leverage scale-down; = qty otherwise).
    scaled_orders: orders cut by the leverage cap: ts, symbol, requested_qty and qty (signed orders).
    """

    initial_capital: float
    fill: str
    run: _Run = field(repr=False)

    @cached_property
    def equity(self) -> pd.DataFrame:
        """One row per grid ts (see the class docstring)."""
        r, capital = self.run, self.initial_capital
        equity, gross, net = _exposures(r.cash, r.long_value, r.short_value)
        returns, drawdown = _curve(equity, capital)
        bench_returns, bench_drawdown = _curve(r.benchmark, capital)
        columns = {
            "ts": _timestamps(r.grid.ts),
            "cash": r.cash,
            "long_value": r.long_value,
            "short_value": r.short_value,
            "equity": equity,
            "returns": returns,
            "gross_exposure": gross,
            "net_exposure": net,
            "benchmark": r.benchmark,
            "drawdown": drawdown,
            "benchmark_drawdown": bench_drawdown,
            "benchmark_returns": bench_returns,
        }
        return pd.DataFrame(columns, copy=False)

    @cached_property
    def positions(self) -> pd.DataFrame:
        """One row per (ts, symbol) bar of a traded symbol, by ts then symbol."""
        r = self.run
        rows, cols = np.nonzero(r.grid.has)
        qty = _held(r.fills, *r.grid.has.shape)[rows, cols]
        price = r.grid.close[rows, cols]
        equity = (r.cash + r.long_value + r.short_value)[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(equity > 0, qty * price / equity, np.nan)
        columns = {
            "ts": _timestamps(r.grid.ts[rows]),
            "symbol": _labels(r.grid.symbols, cols),
            "qty": qty,
            "price": price,
            "value": qty * price,
            "weight": weight,
        }
        return pd.DataFrame(columns, copy=False)

    @cached_property
    def fills(self) -> pd.DataFrame:
        """One row per fill, in the order they happened."""
        rec, grid = self.run.fills, self.run.grid
        columns = {
            "ts": _timestamps(grid.ts[rec[:, _F_ROW].astype(np.int64)]),
            "symbol": _labels(grid.symbols, rec[:, _F_SYM].astype(np.int64)),
            "side": _labels(("buy", "sell"), (rec[:, _F_QTY] < 0).astype(np.int64)),
            "qty": np.abs(rec[:, _F_QTY]),
            "price": rec[:, _F_PRICE],
            "commission": rec[:, _F_COMM],
            "slippage": rec[:, _F_SLIP],
            "reason": _labels(FILL_REASONS, rec[:, _F_REASON].astype(np.int64)),
            "requested_qty": rec[:, _F_REQ],
        }
        return pd.DataFrame(columns, copy=False)

    @cached_property
    def trades(self) -> pd.DataFrame:
        """One row per round trip, in the order they were entered."""
        r = self.run
        rec, grid = r.trades, r.grid
        sym = rec[:, _T_SYM].astype(np.int64)
        is_open = rec[:, _T_REASON] < 0
        exit_row = np.where(is_open, grid.last_row[sym], rec[:, _T_EXIT_ROW]).astype(np.int64)
        exit_bar = np.where(is_open, grid.has.sum(axis=0)[sym] - 1, rec[:, _T_EXIT_BAR])
        entry_notional = rec[:, _T_ENTRY_NOTIONAL]
        pnl = rec[:, _T_FLOW] + np.where(is_open, r.final_qty[sym] * r.last_px[sym], 0.0)
        # An open trade may have no exit quantity; its exit price is the last close instead.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            entry_price = entry_notional / rec[:, _T_ENTRY_QTY]
            trade_return = pnl / entry_notional
            exit_price = np.where(is_open, r.last_px[sym], rec[:, _T_EXIT_NOTIONAL] / rec[:, _T_EXIT_QTY])
        reason = np.where(is_open, len(FILL_REASONS), rec[:, _T_REASON]).astype(np.int64)
        columns = {
            "symbol": _labels(grid.symbols, sym),
            "side": _labels(("long", "short"), (rec[:, _T_SIDE] < 0).astype(np.int64)),
            "entry_ts": _timestamps(grid.ts[rec[:, _T_ENTRY_ROW].astype(np.int64)]),
            "entry_price": entry_price,
            "exit_ts": _timestamps(grid.ts[exit_row]),
            "exit_price": exit_price,
            "qty": rec[:, _T_ENTRY_QTY],
            "pnl": pnl,
            "costs": rec[:, _T_COSTS],
            "return": trade_return,
            "bars_held": (exit_bar - rec[:, _T_ENTRY_BAR]).astype(np.int64),
            "exit_reason": _labels((*FILL_REASONS, "open"), reason),
            "open": is_open,
        }
        return pd.DataFrame(columns, copy=False)

    @cached_property
    def scaled_orders(self) -> pd.DataFrame:
        """Orders the leverage cap cut: signed requested and granted quantities."""
        rec, grid = self.run.scaled, self.run.grid
        columns = {
            "ts": _timestamps(grid.ts[rec[:, 0].astype(np.int64)]),
            "symbol": _labels(grid.symbols, rec[:, 1].astype(np.int64)),
            "requested_qty": rec[:, 2],
            "qty": rec[:, 3],
        }
        return pd.DataFrame(columns, copy=False)

    def period_rows(self) -> np.ndarray:
        """Boolean mask of the `equity` rows that are periods of the strategy: under ``next_*``
        timings the first row is the starting point (nothing can fill there) and is left out; under
        ``this_close`` it is the first period."""
        rows = np.ones(self.run.grid.ts.size, dtype=bool)
        if self.fill != "this_close" and rows.size:
            rows[0] = False
        return rows

    def metrics(
        self, periods_per_year: float, risk_free: float = 0.0, benchmark: bool = False
    ) -> dict[str, float | int | None]:
        """`performance_metrics` over the period rows: of the strategy (with its trades, positions,
        fills, and the benchmark for alpha/beta), or of the benchmark alone when `benchmark` is true."""
        periods = self.equity.loc[self.period_rows()]
        if benchmark:
            return performance_metrics(
                periods["benchmark_returns"].to_numpy(), None, periods_per_year, risk_free
            )
        held = self.positions
        if len(periods):
            held = held[held["ts"] >= periods["ts"].iloc[0]]
        return performance_metrics(
            periods["returns"].to_numpy(),
            self.trades,
            periods_per_year,
            risk_free,
            positions=held,
            benchmark_returns=periods["benchmark_returns"].to_numpy(),
            fills=self.fills,
            equity=periods["equity"].to_numpy(),
        )


def _labels(names: Sequence[str], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A string column of `names[codes]` (an Arrow take: no Python string per row)."""
    return pd.Index(list(names), dtype="str").take(codes).array


_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


def _timestamps(ns: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """int64 nanoseconds since the epoch → UTC timestamps: a view of `ns`, which the engine never
    writes again. pandas' public constructors copy (and a fresh million-row column costs more in
    page faults than building it); where the private one is missing or changed, they are used."""
    values = ns.view("datetime64[ns]")
    try:
        return pd.arrays.DatetimeArray._simple_new(values, dtype=_UTC_NS)
    except (AttributeError, TypeError, AssertionError):
        return pd.DatetimeIndex(values, tz="UTC").array


def _utc_ns(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch, UTC (naive values are read as UTC), in an
    array of its own (never a view of the frame)."""
    values = ts.array
    if isinstance(values, pd.arrays.DatetimeArray):
        # datetime64 values (naive, or tz-aware: stored as UTC) are epoch offsets already; only the
        # unit may need converting (pandas defaults to microseconds), which as_unit checks for overflow.
        return values.asi8.copy() if values.unit == "ns" else values.as_unit("ns").asi8
    utc = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns")
    return utc.asi8


def _same_memory(a: pd.Series, b: pd.Series) -> bool:
    """Whether two datetime columns are views of the same memory (so hold the same values): decisions
    made from the bars' own (symbol, ts) columns share them."""
    x, y = a.array, b.array
    if not (isinstance(x, pd.arrays.DatetimeArray) and isinstance(y, pd.arrays.DatetimeArray)):
        return False
    u, v = x.asi8, y.asi8
    return (
        x.dtype == y.dtype
        and u.shape == v.shape
        and u.strides == v.strides
        and u.__array_interface__["data"][0] == v.__array_interface__["data"][0]
    )


def _require(df: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{name} are missing columns {missing}")


def _decision_kind(decisions: pd.DataFrame) -> str:
    present = [c for c in DECISION_KINDS if c in decisions.columns]
    if len(present) != 1:
        raise ValueError(f"decisions need exactly one of the columns {list(DECISION_KINDS)}, got {present}")
    return present[0]


@njit(cache=True)
def _evenly_spaced(offsets):
    """Whether consecutive `offsets` all differ by the same step (no early exit: it vectorizes)."""
    step = offsets[1] - offsets[0]
    even = True
    for i in range(1, offsets.size):
        even &= offsets[i] - offsets[i - 1] == step
    return even


def _one_name(names: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every row holds the first row's name (none null, at least one row)."""
    if not len(names) or names.null_count:
        return False
    if isinstance(names, pa.ChunkedArray) and names.num_chunks == 1:
        names = names.chunk(0)
    if isinstance(names, pa.Array) and (
        pa.types.is_string(names.type) or pa.types.is_large_string(names.type)
    ):
        # From the string buffers, without a Python object or a comparison per row (Arrow comparing a
        # million strings takes over 10x longer): every string as long as the first, and the bytes
        # repeating with that period.
        width = np.int32 if pa.types.is_string(names.type) else np.int64
        _, offsets, data = names.buffers()
        offsets = np.frombuffer(offsets, dtype=width)[names.offset : names.offset + len(names) + 1]
        if not _evenly_spaced(offsets.astype(np.int64, copy=False)):
            return False
        size, lo, hi = int(offsets[1] - offsets[0]), int(offsets[0]), int(offsets[-1])
        if size == 0:
            return True
        data = np.frombuffer(data, dtype=np.uint8)
        return bool(np.array_equal(data[lo + size : hi], data[lo : hi - size]))
    return bool(pc.all(pc.equal(names, names[0])).as_py())


def _symbol_codes(column: pd.Series, symbols: list[str] | None = None) -> tuple[np.ndarray | int, list[str]]:
    """(index of each row's symbol in `symbols`, −1 for others — one int when every row has the same
    name; `symbols`, by default the column's sorted distinct names)."""
    names = pa.array(column)
    if _one_name(names):
        only = names[0].as_py()  # one name (a single-asset run): no lookup per row
        symbols = [only] if symbols is None else symbols
        return (symbols.index(only) if only in symbols else -1), symbols
    if symbols is None:
        symbols = sorted(pc.unique(names).cast(pa.string()).to_pylist())
    # Arrow looks each row up in the small set of names: faster than hashing a million Python strings.
    found = pc.index_in(names, value_set=pa.array(symbols, type=names.type))
    return pc.fill_null(found, -1).to_numpy().astype(np.int64), symbols


def _code_array(codes: np.ndarray | int, n: int) -> np.ndarray:
    """`_symbol_codes`' codes as one int64 per row."""
    return np.full(n, codes, dtype=np.int64) if isinstance(codes, int) else codes


@njit(cache=True)
def _locate(grid, ts):
    """Row of each value of `ts` in the sorted unique `grid`, −1 when absent; linear over runs of
    ascending values (bars and decisions usually come sorted), a binary search where a run restarts."""
    rows = np.empty(ts.size, dtype=np.int64)
    r = 0
    for i in range(ts.size):
        x = ts[i]
        if i == 0 or x < ts[i - 1]:
            r = np.searchsorted(grid, x)
        else:
            while r < grid.size and grid[r] < x:
                r += 1
        rows[i] = r if r < grid.size and grid[r] == x else -1
    return rows


@njit(cache=True)
def _sorted_rows(ts):
    """(unique values, each value's row among them) of ascending `ts`, or two empty arrays when
    `ts` is not ascending."""
    rows = np.empty(ts.size, dtype=np.int64)
    r = -1
    for i in range(ts.size):
        if i > 0 and ts[i] < ts[i - 1]:
            return np.empty(0, dtype=ts.dtype), np.empty(0, dtype=np.int64)
        if i == 0 or ts[i] != ts[i - 1]:
            r += 1
        rows[i] = r
    grid = np.empty(r + 1, dtype=ts.dtype)
    for i in range(ts.size):
        grid[rows[i]] = ts[i]
    return grid, rows


def _grid_rows(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique timestamps, each value's row among them)."""
    grid, rows = _sorted_rows(ts)
    if rows.size != ts.size:  # not ascending: sort
        grid = np.unique(ts)
        rows = _locate(grid, ts)
    return grid, rows


@njit(cache=True)
def _occupancy(rows, codes, n_rows, n_cols):
    """(which grid cells hold a bar, how many bars repeat a cell)."""
    has = np.zeros((n_rows, n_cols), dtype=np.bool_)
    repeated = 0
    for i in range(rows.size):
        if has[rows[i], codes[i]]:
            repeated += 1
        has[rows[i], codes[i]] = True
    return has, repeated


@njit(cache=True)
def _scatter(rows, codes, keep, values, n_rows, n_cols):
    """(`values[keep]` placed on the grid, NaN elsewhere; index into `values` of the first one that is
    not a finite positive price, −1 when all are)."""
    out = np.full((n_rows, n_cols), np.nan)
    bad = -1
    k = 0
    for i in range(values.size):
        if keep[i]:
            v = values[i]
            out[rows[k], codes[k]] = v
            if bad < 0 and not (v > 0.0 and v < math.inf):
                bad = i
            k += 1
    return out, bad


@njit(cache=True)
def _strictly_ascending(ts):
    """Whether every value of `ts` is above the one before (no early exit: it vectorizes)."""
    ascending = True
    for i in range(1, ts.size):
        ascending &= ts[i] > ts[i - 1]
    return ascending


@njit(cache=True)
def _column(values, lo, hi):
    """A copy of `values[lo:hi]` as a one-column grid. Allocated by numba: numpy asks the kernel for
    transparent huge pages for arrays this large, which can stall on memory compaction."""
    out = np.empty((hi - lo, 1))
    for i in range(lo, hi):
        out[i - lo, 0] = values[i]
    return out


@njit(cache=True)
def _first_bad(values, lo, hi):
    """Index of the first of `values[lo:hi]` that is not a finite positive price, −1 when all are
    (one branch-free pass first, which vectorizes)."""
    valid = True
    for i in range(lo, hi):
        v = values[i]
        valid &= (v > 0.0) & (v < math.inf)
    if not valid:
        for i in range(lo, hi):
            v = values[i]
            if not (v > 0.0 and v < math.inf):
                return i
    return -1


def _bar_grid(
    bars: pd.DataFrame,
    symbols: list[str],
    start: int,
    end: int,
    need_range: bool,
    ts: np.ndarray | None = None,
) -> _Grid:
    """The traded symbols' bars inside [start, end] on the grid; `ts`: the bars' `_utc_ns` when known."""
    ts = _utc_ns(bars["ts"]) if ts is None else ts
    codes, _ = _symbol_codes(bars["symbol"], symbols)
    n_cols = len(symbols)
    if isinstance(codes, int) and codes == 0 and n_cols == 1 and _strictly_ascending(ts):
        # One symbol's bars in time order (a single-asset run): the window is a slice, every grid
        # row holds a bar and no (symbol, ts) repeats, so the grid is the bars themselves.
        lo, hi = int(np.searchsorted(ts, start, "left")), int(np.searchsorted(ts, end, "right"))
        grid = ts if lo == 0 and hi == ts.size else ts[lo:hi]
        has = np.ones((grid.size, 1), dtype=np.bool_)

        def cells(values: np.ndarray, copy: bool) -> tuple[np.ndarray, int]:
            part = _column(values, lo, hi) if copy else np.ascontiguousarray(values[lo:hi].reshape(-1, 1))
            return part, _first_bad(values, lo, hi)
    else:
        codes = _code_array(codes, ts.size)
        keep = (codes >= 0) & (ts >= start) & (ts <= end)
        if not keep.all():
            codes, ts = codes[keep], ts[keep]
        grid, rows = _grid_rows(ts)
        has, repeated = _occupancy(rows, codes, grid.size, n_cols)
        if repeated:
            raise ValueError(f"bars have {repeated} duplicate (symbol, ts) rows")

        def cells(values: np.ndarray, copy: bool) -> tuple[np.ndarray, int]:
            return _scatter(rows, codes, keep, values, grid.size, n_cols)

    def dense(column: str, check: bool, copy: bool = False) -> np.ndarray:
        """The column on the grid, read-only; a view of the bars where it can be unless `copy`."""
        values = bars[column].to_numpy(dtype=float)
        out, bad = cells(values, copy)
        if check and bad >= 0:
            raise ValueError(
                f"bars inside the backtest window need finite, positive {column} prices; "
                f"{bars['symbol'].iloc[bad]} at {bars['ts'].iloc[bad]} has {values[bad]}"
            )
        out.flags.writeable = False
        return out

    # Only the closes are read after the run (positions), so only they must not be a view of the bars.
    close = dense("close", True, copy=True)
    quoted = "bid" in bars.columns and "ask" in bars.columns
    no_quote = np.empty((0, n_cols))
    no_quote.flags.writeable = False
    return _Grid(
        ts=grid,
        symbols=symbols,
        has=has,
        open=dense("open", True),
        high=dense("high", True) if need_range else close,
        low=dense("low", True) if need_range else close,
        close=close,
        bid=dense("bid", False) if quoted else no_quote,
        ask=dense("ask", False) if quoted else no_quote,
    )


@njit(cache=True)
def _decision_cells(grid_ts, has, ts, codes, values, missing):
    """(the decisions on the grid: `missing` on a bar without one, NaN where no bar; how many match
    no bar; how many repeat a cell)."""
    out = np.full(has.shape, np.nan)
    seen = np.zeros(has.shape, dtype=np.bool_)
    rows = _locate(grid_ts, ts)
    unmatched = 0
    repeated = 0
    for i in range(ts.size):
        r, c = rows[i], codes[i]
        if r < 0 or not has[r, c]:
            unmatched += 1
        elif seen[r, c]:
            repeated += 1
        else:
            seen[r, c] = True
            out[r, c] = values[i]
    if not math.isnan(missing):
        for r in range(has.shape[0]):
            for c in range(has.shape[1]):
                if has[r, c] and not seen[r, c]:
                    out[r, c] = missing
    return out, unmatched, repeated


def _decision_grid(
    decisions: pd.DataFrame, kind: str, ts: np.ndarray, codes: np.ndarray | int, grid: _Grid
) -> np.ndarray:
    """The decisions on the grid (NaN where none; a bar without a signal row holds signal 0, flat,
    as a missing prediction means no signal); every decision must match a bar, once."""
    values = decisions[kind].to_numpy(dtype=float)
    if (
        isinstance(codes, int)
        and codes == 0
        and grid.has.shape[1] == 1
        and (ts is grid.ts or np.array_equal(ts, grid.ts))
        and grid.has.all()
    ):
        # One symbol with a decision on each of its bars, in their order (the grid's ts are unique):
        # each decision is its bar's cell. Signals are only read (sized into new target arrays); a
        # target grid goes to the kernel as it is, which takes a writable one (one compiled kernel).
        out = values.reshape(-1, 1)
        return out if kind == "signal" or out.flags.writeable else out.copy()
    missing = 0.0 if kind == "signal" else math.nan
    out, unmatched, repeated = _decision_cells(
        grid.ts, grid.has, ts, _code_array(codes, ts.size), values, missing
    )
    if unmatched:
        raise ValueError(f"{unmatched} decisions have no bar with the same (symbol, ts)")
    if repeated:
        raise ValueError(f"decisions have {repeated} duplicate (symbol, ts) rows")
    return out


@njit(cache=True)
def _decision_faults(values):
    """(how many values are not −1, 0 or 1 — NaN included: a signal row is a decision —, how many are
    ±inf, how many are negative); counted without branches, so it vectorizes."""
    not_signal = 0
    infinite = 0
    negative = 0
    for i in range(values.size):
        v = values[i]
        not_signal += not (v == -1.0 or v == 0.0 or v == 1.0)
        infinite += abs(v) == math.inf
        negative += v < 0.0
    return not_signal, infinite, negative


def _check_decisions(values: np.ndarray, kind: str, cfg: BacktestConfig) -> None:
    not_signal, infinite, negative = _decision_faults(values)
    if kind == "signal":
        if not_signal:
            bad = values[(values != -1.0) & (values != 0.0) & (values != 1.0)]  # NaN too
            raise ValueError(f"decisions.signal must be -1, 0 or 1, got {bad[:5].tolist()}")
    elif infinite:
        raise ValueError(f"decisions.{kind} must be finite (NaN means no decision), got inf")
    if cfg.mode == "long_flat" and negative:
        shorts = values[values < 0]
        raise ValueError(
            f"decisions.{kind} has short values (e.g. {shorts[0]}) but backtest.mode is long_flat"
        )


@njit(cache=True)
def _buy_and_hold(has, open_, close, capital, timing):
    """Value at every grid row of `capital` split equally over the grid's symbols, each share put into
    its symbol at its first fill opportunity (its 2nd bar's open or close under next_*, its 1st bar's
    close under this_close) and held without costs: cash before that, the last close on rows it lacks."""
    n_rows, n = has.shape
    first = 0 if timing == THIS_CLOSE else 1
    share = capital / n
    value = np.zeros(n_rows)
    for j in range(n):
        seen = 0
        shares = 0.0
        last = math.nan
        for t in range(n_rows):
            if has[t, j]:
                if seen == first:
                    shares = share / (open_[t, j] if timing == NEXT_OPEN else close[t, j])
                seen += 1
                last = close[t, j]
            value[t] += shares * last if seen > first else share
    return value


def _benchmark(bars: pd.DataFrame, grid: _Grid, cfg: BacktestConfig, timing: int, start: int, end: int):
    capital = float(cfg.initial_capital)
    if cfg.benchmark is None:
        return _buy_and_hold(grid.has, grid.open, grid.close, capital, timing)
    own = bars[bars["symbol"].astype(str) == cfg.benchmark]
    ts = _utc_ns(own["ts"])
    inside = (ts >= start) & (ts <= end)
    if not inside.any():
        raise ValueError(f"backtest.benchmark {cfg.benchmark!r} has no bars inside the backtest window")
    # Its bars and the traded grid's timestamps on one grid; the value is read at the traded rows.
    union = np.union1d(grid.ts, ts[inside])
    rows = np.searchsorted(union, ts[inside])
    has = np.zeros((union.size, 1), dtype=bool)
    has[rows, 0] = True
    open_, close = np.full((union.size, 1), np.nan), np.full((union.size, 1), np.nan)
    open_[rows, 0] = own["open"].to_numpy(dtype=float)[inside]
    close[rows, 0] = own["close"].to_numpy(dtype=float)[inside]
    value = _buy_and_hold(has, open_, close, capital, timing)
    return value[np.searchsorted(union, grid.ts)]


@njit(cache=True)
def _curve(values, start):
    """(simple returns, drawdown) of a value curve that starts from `start` before its first row:
    a return is 0 after a value ≤ 0; the drawdown is from the running peak, `start` included."""
    returns = np.empty(values.size)
    drawdown = np.empty(values.size)
    prev = start
    peak = start
    for i in range(values.size):
        v = values[i]
        returns[i] = v / prev - 1.0 if prev > 0.0 else 0.0
        peak = max(peak, v)
        drawdown[i] = v / peak - 1.0
        prev = v
    return returns, drawdown


@njit(cache=True)
def _exposures(cash, long_value, short_value):
    """(equity = cash + long + short, gross and net exposure as fractions of equity, NaN when ≤ 0)."""
    equity = np.empty(cash.size)
    gross = np.empty(cash.size)
    net = np.empty(cash.size)
    for i in range(cash.size):
        e = cash[i] + long_value[i] + short_value[i]
        equity[i] = e
        gross[i] = (long_value[i] - short_value[i]) / e if e > 0.0 else math.nan
        net[i] = (long_value[i] + short_value[i]) / e if e > 0.0 else math.nan
    return equity, gross, net


def simulate(
    bars: pd.DataFrame,
    decisions: pd.DataFrame,
    cfg: BacktestConfig,
    periods_per_year: float | None = None,
) -> PortfolioResult:
    """Simulate the portfolio that trades `decisions` on `bars` (rules in the module docstring).

    bars: canonical bars (symbol, ts, open, close; high and low when stops are on; optional bid and
        ask quote columns add half the spread to fills), unique per (symbol, ts), any order.
    decisions: symbol, ts and exactly one of ``signal`` (−1, 0, 1), ``target_weight`` (signed fraction
        of equity; NaN = no decision) or ``target_qty`` (signed units; NaN = no decision), unique per
        (symbol, ts), each on a bar. The window runs from the first to the last decision ts; the traded
        symbols are those with decisions.
    cfg: fill timing, costs, sizing, stops and limits (`BacktestConfig`).
    periods_per_year: for borrow fees and vol_target sizing; defaults to cfg.periods_per_year.

    Raises KeyError for missing columns and ValueError for bad values, naming them.
    """
    _require(bars, ("symbol", "ts", "open", "close"), "bars")
    _require(decisions, ("symbol", "ts"), "decisions")
    kind = _decision_kind(decisions)
    if decisions.empty:
        raise ValueError("no decisions to backtest")
    use_stops = any(x is not None for x in (cfg.stop_loss, cfg.take_profit, cfg.trailing_stop))
    if use_stops:
        _require(bars, ("high", "low"), "bars (stops need the bar range)")
    ppy = periods_per_year if periods_per_year is not None else cfg.periods_per_year
    if ppy is not None and not ppy > 0:
        raise ValueError(f"periods_per_year must be > 0, got {ppy}")
    if ppy is None and cfg.borrow_rate > 0:
        raise ValueError("borrow_rate needs periods_per_year (a yearly rate accrued per bar)")
    timing = timing_code(cfg.fill)
    _check_decisions(decisions[kind].to_numpy(dtype=float), kind, cfg)

    decision_ts = _utc_ns(decisions["ts"])
    start, end = int(decision_ts.min()), int(decision_ts.max())
    codes, symbols = _symbol_codes(decisions["symbol"])
    same_ts = _same_memory(bars["ts"], decisions["ts"])  # decisions made on the bars' own rows
    grid = _bar_grid(bars, symbols, start, end, use_stops, decision_ts if same_ts else None)
    raw = _decision_grid(decisions, kind, decision_ts, codes, grid)
    if kind == "signal":
        target, kind_code = signal_targets(raw, grid.close, grid.has, cfg, len(symbols), ppy)
    else:
        target, kind_code = raw, TARGET_WEIGHT if kind == "target_weight" else TARGET_QTY
    costs = (cfg.slippage_bps, cfg.commission_per_share, cfg.commission_per_order, cfg.commission_bps)
    exits = (cfg.stop_loss, cfg.take_profit, cfg.trailing_stop)
    out = _kernel(
        grid.open,
        grid.high,
        grid.low,
        grid.close,
        grid.bid,
        grid.ask,
        grid.has,
        np.ascontiguousarray(target, dtype=float),
        kind_code,
        timing,
        grid.last_row.astype(np.int64),
        float(cfg.initial_capital),
        np.array([*costs, cfg.commission_min], dtype=float),
        np.array([np.nan if x is None else float(x) for x in exits]),
        use_stops,
        float(cfg.borrow_rate),
        float(ppy or 1.0),
        float(cfg.max_leverage),
        bool(cfg.fractional_units),
        float(cfg.drift_threshold),
        bool(cfg.close_at_end),
    )
    run = _Run(grid, *out, benchmark=_benchmark(bars, grid, cfg, timing, start, end))
    return PortfolioResult(initial_capital=float(cfg.initial_capital), fill=cfg.fill, run=run)
