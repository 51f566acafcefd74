"""Trading costs: commission per fill and borrow fees on shorts (slippage and spread live in `fills`,
because they move the fill price rather than being paid on the side).

- **Commission** of one fill of `qty` units at `price`:
  ``max(commission_min, commission_per_order + commission_per_share · qty + commission_bps / 1e4 · qty · price)``.
  Every fill is one order, so a reversal (long → short in one order) pays one commission.
- **Borrow** of a short position: ``borrow_rate`` is a yearly rate on the short's market value,
  accrued once per bar as ``|qty| · close · borrow_rate / periods_per_year``; a bar "holds" the short
  when the position is short at its close before any fill made at that close (a short entered at
  a bar's open pays for that bar, one closed at a close does not pay again).

The functions are numba-compiled for the portfolio engine's loop and callable from Python (the
trading loop) with float arguments.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def commission(
    qty: float, price: float, per_share: float, per_order: float, bps: float, minimum: float
) -> float:
    """Commission of one fill: per order + per share · qty + bps of the notional, at least `minimum`;
    0 for an empty fill (qty 0 is no order)."""
    if qty == 0.0:
        return 0.0
    fee = per_order + per_share * abs(qty) + bps * 1e-4 * abs(qty) * price
    return fee if fee > minimum else minimum


@njit(cache=True)
def borrow_fee(qty: float, price: float, annual_rate: float, periods_per_year: float) -> float:
    """One bar's borrow fee of a position of `qty` units marked at `price`: ``|qty| · price ·
    annual_rate / periods_per_year`` when short, 0 when long or flat."""
    if qty >= 0.0 or annual_rate == 0.0:
        return 0.0
    return -qty * price * annual_rate / periods_per_year
