"""Fill rules shared by the backtest and the trading loop: when a decision fills, and at what price.

A *decision* is made at the close of a symbol's bar k (that is when its data is complete). Its fill
timing says where it fills:

- ``next_open`` (default): at the open of the symbol's next bar k+1;
- ``next_close``: at the close of the symbol's next bar k+1;
- ``this_close``: at the close of bar k itself (the decision and its fill see the same close: only
  honest for a signal computed before the close, e.g. from the previous bar, and never the default).

A fill happens only on a bar the symbol has: "next bar" is the symbol's own next bar (a holiday, a
halt or a missing minute is skipped, never filled at a price that did not trade), and a decision at
the symbol's last bar under a ``next_*`` timing never fills. The bars are the calendar: the validate
stage keeps only session bars of the exchange calendar, so market hours and holidays need no second
rule here.

Fill price, for a buy (side +1) or a sell (side −1) at the reference price (the open or close above,
or a stop's trigger price): ``reference · (1 + side · slippage_bps / 1e4) + side · half_spread``:
slippage always works against the order, and when the bar carries a quote (``bid`` and ``ask``) the
order also crosses half the spread.

The functions are numba-compiled so the portfolio engine's loop calls them; they are plain callables
from Python too (the trading loop), with float arguments.
"""

from __future__ import annotations

import math
from typing import Literal

from numba import njit

FillTiming = Literal["next_open", "next_close", "this_close"]

# Codes of the timings inside compiled code (numba has no string enums).
NEXT_OPEN, NEXT_CLOSE, THIS_CLOSE = 0, 1, 2
TIMING_CODES: dict[str, int] = {"next_open": NEXT_OPEN, "next_close": NEXT_CLOSE, "this_close": THIS_CLOSE}


# Why a fill happened; the engine stores the index, the frames show the name.
FILL_REASONS = (
    "signal",  # a signal decision entered, exited or reversed a position
    "rebalance",  # a target weight or quantity decision
    "stop_loss",
    "take_profit",
    "trailing_stop",
    "close_at_end",  # the run's close_at_end option, at the symbol's last bar
    "liquidation",  # equity reached 0: every position is closed and trading stops
)
SIGNAL, REBALANCE, STOP_LOSS, TAKE_PROFIT, TRAILING_STOP, CLOSE_AT_END, LIQUIDATION = range(len(FILL_REASONS))


def timing_code(timing: str) -> int:
    """The compiled-code code of a fill timing; ValueError naming the value when it is unknown."""
    try:
        return TIMING_CODES[timing]
    except KeyError:
        raise ValueError(f"fill timing must be one of {sorted(TIMING_CODES)}, got {timing!r}") from None


@njit(cache=True)
def fill_bar(decision_bar: int, n_bars: int, timing: int) -> int:
    """Index (in the symbol's own bars 0..n_bars-1) of the bar where a decision made at the close of
    `decision_bar` fills, or -1 when it never fills (a ``next_*`` decision at the last bar)."""
    target = decision_bar if timing == THIS_CLOSE else decision_bar + 1
    return target if target < n_bars else -1


@njit(cache=True)
def fill_reference(bar_open: float, bar_close: float, timing: int) -> float:
    """The reference price of a decision fill on its fill bar: its open for ``next_open``, else its close."""
    return bar_open if timing == NEXT_OPEN else bar_close


@njit(cache=True)
def half_spread(bid: float, ask: float) -> float:
    """Half the quoted spread, (ask − bid) / 2, or 0 when there is no usable quote (a NaN side, or a
    crossed or locked book)."""
    if math.isnan(bid) or math.isnan(ask) or ask <= bid:
        return 0.0
    return 0.5 * (ask - bid)


@njit(cache=True)
def fill_price(reference: float, side: float, slippage_bps: float, half_spread: float) -> float:
    """Price paid (side +1, a buy) or received (side −1, a sell): the reference moved against the order
    by `slippage_bps` and by half the spread."""
    return reference * (1.0 + side * slippage_bps * 1e-4) + side * half_spread
