"""Per-position exits: stop-loss, take-profit and trailing stop, checked inside a bar from its open,
high and low (the backtest and the trading loop share this rule).

Levels, for a position on `side` (+1 long, −1 short) with average entry fill price `entry` and
`extreme` the best price since entry (the highest high of a long, the lowest low of a short,
starting at the entry fill price); each fraction is > 0, or NaN when that exit is off:

- stop-loss: ``entry · (1 − side · stop_loss)``;
- trailing stop: ``extreme · (1 − side · trailing_stop)``; the tighter of the two is the stop
  (and names the exit: ``trailing_stop`` only when it is strictly tighter);
- take-profit: ``entry · (1 + side · take_profit)``.

Inside a bar the order of the high and the low is unknown, so the rule is conservative:

1. the open gapped through the stop → exit at the OPEN (worse than the stop: a stop order becomes a
   market order); the open gapped through the take-profit → exit at the OPEN (a limit fills at the
   better price);
2. else the bar's low (long; high for a short) reached the stop → exit at the stop price;
3. else the bar's high (long; low for a short) reached the take-profit → exit at the take-profit price.
   When a bar reaches both, the stop is assumed first (the loss is never hidden).

Then the fill rules of `fills` apply to that reference price (slippage and half the spread against
the exit). The extreme is updated with the bar's high (low) only after the bar passed without an
exit, so a trailing stop never trails a high that may have come after the low. A position entered at
a bar's open is checked on that same bar (its range comes after the open); one entered at a close is
checked from its next bar.
"""

from __future__ import annotations

import math

from numba import njit

from quanto.backtest.fills import STOP_LOSS, TAKE_PROFIT, TRAILING_STOP

NO_EXIT = -1


@njit(cache=True)
def stop_exit(
    side: float,
    entry: float,
    extreme: float,
    stop_loss: float,
    take_profit: float,
    trailing_stop: float,
    bar_open: float,
    bar_high: float,
    bar_low: float,
) -> tuple[int, float]:
    """(reason, reference price) of the exit this bar triggers, or (NO_EXIT, NaN).

    reason is one of fills.STOP_LOSS, TAKE_PROFIT, TRAILING_STOP; the rules are in the module docstring.
    """
    if side > 0:
        stop = -math.inf
        reason = STOP_LOSS
        if not math.isnan(stop_loss):
            stop = entry * (1.0 - stop_loss)
        if not math.isnan(trailing_stop):
            trail = extreme * (1.0 - trailing_stop)
            if trail > stop:
                stop = trail
                reason = TRAILING_STOP
        take = math.inf if math.isnan(take_profit) else entry * (1.0 + take_profit)
        if bar_open <= stop:
            return reason, bar_open
        if bar_open >= take:
            return TAKE_PROFIT, bar_open
        if bar_low <= stop:
            return reason, stop
        if bar_high >= take:
            return TAKE_PROFIT, take
        return NO_EXIT, math.nan
    stop = math.inf
    reason = STOP_LOSS
    if not math.isnan(stop_loss):
        stop = entry * (1.0 + stop_loss)
    if not math.isnan(trailing_stop):
        trail = extreme * (1.0 + trailing_stop)
        if trail < stop:
            stop = trail
            reason = TRAILING_STOP
    take = -math.inf if math.isnan(take_profit) else entry * (1.0 - take_profit)
    if bar_open >= stop:
        return reason, bar_open
    if bar_open <= take:
        return TAKE_PROFIT, bar_open
    if bar_high >= stop:
        return reason, stop
    if bar_low <= take:
        return TAKE_PROFIT, take
    return NO_EXIT, math.nan


@njit(cache=True)
def update_extreme(side: float, extreme: float, bar_high: float, bar_low: float) -> float:
    """The best price since entry after a bar passed without an exit: max with the high for a long,
    min with the low for a short."""
    if side > 0:
        return bar_high if bar_high > extreme else extreme
    return bar_low if bar_low < extreme else extreme
