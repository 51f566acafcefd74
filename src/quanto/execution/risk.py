"""The risk engine: pure checks of every proposed order and of the account, each with its reason.

No I/O, no clock, no temporalio: the trading loop passes the account as a `RiskView` (its decision
time included) and records every `RiskDecision` / `RiskEvent` it gets back (risk_events).

`check_order` applies its rules in this order and stops at the first one breached (`rule` names it):

1. ``halted``: the state is HALTED; nothing is accepted, reductions included (a flatten runs in
   REDUCING before the loop halts).
2. ``invalid_order``: qty and the reference price must be finite and > 0; limit/stop prices must be
   present for their order type and finite and > 0; the symbol must be named.
3. ``reducing_only``: the state is REDUCING and the order does not reduce |position| (`reduces`).
4. ``no_equity``: equity is not positive, so no fraction of it can be measured: only reductions pass.
5. ``price_collar``: a limit or stop price further than `price_collar_bps` from the reference price.
6. ``max_trades_per_minute``: orders submitted in the 60 s up to the decision, this one included.
   Reductions are exempt from this check (a flatten must never be blocked by a busy minute: it is the
   way out, and it is bounded by the positions it closes), but the loop still lists them in
   `submitted`, so they use up the minute of the orders that add exposure after them.
7. Exposure limits, only for orders that do not reduce |position| (a reduction makes every one of
   them better, so it passes even when a limit is already breached): ``max_order_notional``,
   ``max_position`` (|projected position value| / equity of the order's symbol), ``max_sector``
   (Σ |value| of the projected positions of the order's sector / equity) and ``max_gross_leverage``
   (Σ |value| of all projected positions / equity).

Positions are valued at the view's last prices, the order's symbol at the order's reference price.
An order's notional is its qty times the highest of its reference, limit and stop prices: the worst
price it may fill at within the collar. A symbol missing from `sectors` is a sector of its own.

`check_account` turns the account's state into halts (daily loss), strategy disables (drawdown,
underperformance: the state becomes REDUCING) and drift alerts or halts. It never relaxes a state:
HALTED stays HALTED and REDUCING never becomes ACTIVE (only the `resume` signal does that, outside).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from quanto.config.trading import RiskLimits, TradingStateName
from quanto.execution.broker import OrderType, Side

RATE_WINDOW = timedelta(seconds=60)  # the "minute" of max_trades_per_minute
_PRICED_TYPES: dict[str, tuple[str, ...]] = {
    "market": (),
    "limit": ("limit_price",),
    "stop": ("stop_price",),
    "stop_limit": ("limit_price", "stop_price"),
}


@dataclass(frozen=True)
class ProposedOrder:
    """An order the loop wants to submit; `price` is the reference price (the symbol's last close)."""

    symbol: str
    side: Side
    qty: float
    price: float
    type: OrderType = "market"
    limit_price: float | None = None
    stop_price: float | None = None


@dataclass(frozen=True)
class RiskView:
    """The account when the order is decided. `positions` include the open orders' pending qty (so
    two orders in one bar cannot each pass a limit that both together breach); `prices` hold a last
    price for every symbol in `positions`; `submitted` are the times of orders already submitted."""

    ts: datetime
    state: TradingStateName
    equity: float
    opening_equity: float
    peak_equity: float
    positions: Mapping[str, float]
    prices: Mapping[str, float]
    sectors: Mapping[str, str]
    submitted: Sequence[datetime]


@dataclass(frozen=True)
class RiskDecision:
    """The verdict on one order: `rule` is "ok" when approved, else the first rule breached; `reason`
    is a sentence with the numbers (value, limit, symbol)."""

    approved: bool
    rule: str
    reason: str
    symbol: str
    side: str
    qty: float
    notional: float
    reduces: bool


@dataclass(frozen=True)
class RiskEvent:
    """One account-level breach: rule max_daily_loss | max_drawdown | underperformance | drift;
    action halt | disable (the state becomes REDUCING) | alert."""

    rule: str
    action: str
    value: float
    limit: float
    reason: str


@dataclass(frozen=True)
class AccountCheck:
    """The state after an account check and every breach found now (see `check_account`)."""

    state: TradingStateName
    events: tuple[RiskEvent, ...]


def _signed(side: str, qty: float) -> float:
    return qty if side == "buy" else -qty


def reduces(position_qty: float, side: str, qty: float) -> bool:
    """Whether an order of `qty` on `side` only reduces |position_qty|: it trades against the
    position and closes at most all of it (never flips through zero). Nothing reduces a flat
    position; an invalid qty (not > 0) reduces nothing."""
    if not (qty > 0) or position_qty == 0:
        return False
    against = (side == "sell") if position_qty > 0 else (side == "buy")
    return against and qty <= abs(position_qty)


def project_positions(positions: Mapping[str, float], pending: Mapping[str, float]) -> dict[str, float]:
    """Signed positions plus the signed pending qty of open orders, symbol by symbol (the `positions`
    a `RiskView` wants). Symbols that come out flat are kept (at 0.0)."""
    out = {s: float(q) for s, q in positions.items()}
    for s, q in pending.items():
        out[s] = out.get(s, 0.0) + float(q)
    return out


def _finite_positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def _num(x: float) -> str:
    return f"{x:,.2f}"


def _qty(x: float) -> str:
    return f"{x:,.6g}"


def _invalid(order: ProposedOrder) -> str | None:
    """Why the order is malformed, or None."""
    if not order.symbol:
        return "the order names no symbol"
    if order.side not in ("buy", "sell"):
        return f"side must be buy or sell, got {order.side!r} ({order.symbol})"
    if not _finite_positive(order.qty):
        return f"qty must be a finite number > 0, got {order.qty!r} ({order.symbol} {order.side})"
    if not _finite_positive(order.price):
        return f"the reference price must be a finite number > 0, got {order.price!r} ({order.symbol})"
    if order.type not in _PRICED_TYPES:
        return f"order type must be one of {sorted(_PRICED_TYPES)}, got {order.type!r} ({order.symbol})"
    for name in ("limit_price", "stop_price"):
        value = getattr(order, name)
        if name in _PRICED_TYPES[order.type] and value is None:
            return f"a {order.type} order needs {name} ({order.symbol} {order.side})"
        if value is not None and not _finite_positive(value):
            return f"{name} must be a finite number > 0, got {value!r} ({order.symbol} {order.side})"
    return None


def _collar(order: ProposedOrder, limits: RiskLimits) -> str | None:
    """Why a limit/stop price is outside the collar, or None."""
    collar = limits.price_collar_bps / 1e4
    for name in ("limit_price", "stop_price"):
        value = getattr(order, name)
        if value is None:
            continue
        off = abs(value - order.price) / order.price
        if off > collar:
            return (
                f"{name.replace('_', ' ')} {_num(value)} is {off * 1e4:,.1f} bps from the last price "
                f"{_num(order.price)} of {order.symbol} > collar {limits.price_collar_bps:,.1f} bps"
            )
    return None


def _sector_key(symbol: str, sectors: Mapping[str, str]) -> tuple[str, str]:
    # A tuple, so a symbol without a sector never shares one with a sector that has its name.
    return ("sector", sectors[symbol]) if symbol in sectors else ("symbol", symbol)


def check_order(order: ProposedOrder, view: RiskView, limits: RiskLimits) -> RiskDecision:
    """Approve or refuse `order` against `view` under `limits` (rules and their order: module docstring)."""
    position = float(view.positions.get(order.symbol, 0.0))
    reducing = reduces(position, order.side, order.qty)
    prices = [order.price, order.limit_price or 0.0, order.stop_price or 0.0]
    notional = order.qty * max(prices) if all(math.isfinite(p) for p in prices) else math.nan
    desc = f"{order.side} {_qty(order.qty)} {order.symbol}"

    def decide(rule: str, reason: str) -> RiskDecision:
        return RiskDecision(
            approved=rule == "ok",
            rule=rule,
            reason=reason,
            symbol=order.symbol,
            side=order.side,
            qty=order.qty,
            notional=notional,
            reduces=reducing,
        )

    if view.state == "HALTED":
        return decide("halted", f"trading is HALTED: {desc} is refused until a resume")
    invalid = _invalid(order)
    if invalid is not None:
        return decide("invalid_order", invalid)
    after = position + _signed(order.side, order.qty)
    if view.state == "REDUCING" and not reducing:
        return decide(
            "reducing_only",
            f"trading is REDUCING (only orders that reduce exposure): {desc} takes the position "
            f"from {_qty(position)} to {_qty(after)}",
        )
    if not reducing and not (math.isfinite(view.equity) and view.equity > 0):
        return decide(
            "no_equity",
            f"equity {view.equity!r} is not positive: only orders that reduce exposure pass ({desc})",
        )
    collar = _collar(order, limits)
    if collar is not None:
        return decide("price_collar", collar)
    if reducing:
        return decide(
            "ok",
            f"approved: {desc} reduces |position| {_qty(abs(position))} -> {_qty(abs(after))} "
            f"(notional {_num(notional)}; exposure and rate limits do not hold back reductions)",
        )

    # Conservative: an order dated later than ts (a clock skew) still counts in the minute.
    recent = sum(1 for t in view.submitted if t > view.ts - RATE_WINDOW) + 1
    if recent > limits.max_trades_per_minute:
        return decide(
            "max_trades_per_minute",
            f"{recent} orders in the 60 s up to {view.ts.isoformat()} (this one included) > limit "
            f"{limits.max_trades_per_minute} per minute ({desc})",
        )
    if notional > limits.max_order_notional:
        return decide(
            "max_order_notional",
            f"{desc} at up to {_num(max(prices))} is {_num(notional)} notional > limit "
            f"{_num(limits.max_order_notional)}",
        )

    projected = {s: float(q) for s, q in view.positions.items()}
    projected[order.symbol] = after
    values: dict[str, float] = {}
    for s, q in projected.items():
        if q == 0:
            continue
        p = order.price if s == order.symbol else view.prices.get(s)
        if not _finite_positive(p):
            return decide(
                "missing_price",
                f"no finite last price for {s} (position {_qty(q)}): exposure cannot be measured ({desc})",
            )
        values[s] = abs(q) * p
    equity = view.equity

    pos_frac = values.get(order.symbol, 0.0) / equity
    if pos_frac > limits.max_position_fraction:
        return decide(
            "max_position",
            f"{desc} takes the {order.symbol} position to {_qty(after)} worth "
            f"{_num(values[order.symbol])} = {pos_frac:.2%} of equity {_num(equity)} > limit "
            f"{limits.max_position_fraction:.2%}",
        )
    key = _sector_key(order.symbol, view.sectors)
    sector_value = sum(v for s, v in values.items() if _sector_key(s, view.sectors) == key)
    sector_frac = sector_value / equity
    if sector_frac > limits.max_sector_fraction:
        return decide(
            "max_sector",
            f"{desc} takes {key[0]} {key[1]} to a gross value of {_num(sector_value)} = "
            f"{sector_frac:.2%} of equity {_num(equity)} > limit {limits.max_sector_fraction:.2%}",
        )
    gross = sum(values.values())
    leverage = gross / equity
    if leverage > limits.max_gross_leverage:
        return decide(
            "max_gross_leverage",
            f"{desc} takes gross exposure to {_num(gross)} = {leverage:.3f}x equity {_num(equity)} > "
            f"limit {limits.max_gross_leverage:.3f}x",
        )
    return decide(
        "ok",
        f"approved: {desc} (notional {_num(notional)}): {order.symbol} {_qty(position)} -> {_qty(after)} "
        f"= {pos_frac:.2%} of equity, {key[0]} {key[1]} {sector_frac:.2%}, gross {leverage:.3f}x; "
        f"{recent} orders in the last 60 s",
    )


def _loss_fraction(base: float, equity: float) -> float:
    """(base - equity) / base; +inf when base or equity is not a finite number or base is not
    positive, so an account that cannot be measured counts as breached."""
    if not (math.isfinite(base) and math.isfinite(equity)) or base <= 0:
        return math.inf
    return (base - equity) / base


def check_account(
    view: RiskView, limits: RiskLimits, equity_history: Sequence[float], hits: Sequence[bool]
) -> AccountCheck:
    """The account-level checks, each a `RiskEvent` when breached now:

    - daily loss (opening_equity - equity) / opening_equity >= max_daily_loss: halt;
    - drawdown (peak - equity) / peak >= max_drawdown, peak = max(peak_equity, equity): disable;
    - underperformance: the last `underperformance_bars` values of `equity_history` (one equity per
      bar, oldest first; checked once that many exist) return last / first - 1 < min_window_return:
      disable;
    - drift: the directional accuracy of the last `drift.window` `hits` (True when the predicted
      direction matched the realized one; checked once that many exist) < drift.min_accuracy: alert,
      or halt when drift.halt. The hits already are direction matches (the loop scores a prediction
      when its label is known, e.g. with quanto.evaluation.metrics.directions), so the accuracy is
      their mean; quanto.evaluation.drift's monitor reports the calibration beside it.

    halt -> HALTED; disable -> REDUCING unless HALTED. The state never relaxes. Events list every
    breach found now, including ones an earlier check already acted on (this function keeps no
    memory): the loop records the ones that are new to it."""
    events: list[RiskEvent] = []
    loss = _loss_fraction(view.opening_equity, view.equity)
    if loss >= limits.max_daily_loss:
        events.append(
            RiskEvent(
                "max_daily_loss",
                "halt",
                loss,
                limits.max_daily_loss,
                f"daily loss {loss:.2%} (equity {_num(view.equity)} against {_num(view.opening_equity)} "
                f"at the open) >= limit {limits.max_daily_loss:.2%}: trading halts",
            )
        )
    peak = max(view.peak_equity, view.equity)
    drawdown = _loss_fraction(peak, view.equity)
    if drawdown >= limits.max_drawdown:
        events.append(
            RiskEvent(
                "max_drawdown",
                "disable",
                drawdown,
                limits.max_drawdown,
                f"drawdown {drawdown:.2%} from the session peak {_num(peak)} (equity {_num(view.equity)}) "
                f">= limit {limits.max_drawdown:.2%}: the strategy is disabled (REDUCING)",
            )
        )
    n = limits.underperformance_bars
    if len(equity_history) >= n:
        first, last = float(equity_history[-n]), float(equity_history[-1])
        ret = -_loss_fraction(first, last)
        if ret < limits.min_window_return:
            events.append(
                RiskEvent(
                    "underperformance",
                    "disable",
                    ret,
                    limits.min_window_return,
                    f"return {ret:.2%} over the last {n} bars ({_num(first)} -> {_num(last)}) < "
                    f"limit {limits.min_window_return:.2%}: the strategy is disabled (REDUCING)",
                )
            )
    drift = limits.drift
    if len(hits) >= drift.window:
        recent_hits = islice(hits, len(hits) - drift.window, None)  # any sequence, a deque included
        accuracy = sum(1 for h in recent_hits if h) / drift.window
        if accuracy < drift.min_accuracy:
            action = "halt" if drift.halt else "alert"
            events.append(
                RiskEvent(
                    "drift",
                    action,
                    accuracy,
                    drift.min_accuracy,
                    f"directional accuracy {accuracy:.2%} over the last {drift.window} predictions < "
                    f"limit {drift.min_accuracy:.2%}"
                    + (": trading halts" if drift.halt else " (alert only: drift.halt is false)"),
                )
            )

    state: TradingStateName = view.state
    for event in events:
        if event.action == "halt":
            state = "HALTED"
        elif event.action == "disable" and state == "ACTIVE":
            state = "REDUCING"
    return AccountCheck(state=state, events=tuple(events))
