"""The risk engine: one example per rule (just under approves, just over refuses, the reason names the
numbers) and hypothesis properties over random trading sessions.

The property driver plays a session: price moves, signals turned into orders toward random target
positions, fills of pending orders, predictions scored for drift, and the control signals (halt,
flatten -> REDUCING then HALTED, disable, resume). For every order it asks `check_order` and checks
the verdict against an oracle written here again (`_oracle`, sharing no code with the engine): no
approved order breaches a limit, and no order is refused for a rule it does not breach.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quanto.config.trading import DriftLimit, RiskLimits
from quanto.execution.risk import (
    AccountCheck,
    ProposedOrder,
    RiskView,
    check_account,
    check_order,
    project_positions,
    reduces,
)

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
LIMITS = RiskLimits(
    max_order_notional=10_000.0,
    max_position_fraction=0.05,
    max_sector_fraction=0.25,
    max_gross_leverage=1.0,
    max_trades_per_minute=3,
    price_collar_bps=500.0,
)


def view(**kw) -> RiskView:
    base = {
        "ts": T0,
        "state": "ACTIVE",
        "equity": 100_000.0,
        "opening_equity": 100_000.0,
        "peak_equity": 100_000.0,
        "positions": {},
        "prices": {},
        "sectors": {},
        "submitted": (),
    }
    return RiskView(**{**base, **kw})


def buy(qty: float, symbol: str = "AAPL", price: float = 100.0, **kw) -> ProposedOrder:
    return ProposedOrder(symbol=symbol, side="buy", qty=qty, price=price, **kw)


def sell(qty: float, symbol: str = "AAPL", price: float = 100.0, **kw) -> ProposedOrder:
    return ProposedOrder(symbol=symbol, side="sell", qty=qty, price=price, **kw)


def limits(**kw) -> RiskLimits:
    return LIMITS.model_copy(update=kw)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "side", "qty", "expected"),
    [
        (10, "sell", 4, True),
        (10, "sell", 10, True),  # to flat
        (10, "sell", 11, False),  # flips through zero
        (10, "buy", 1, False),
        (-10, "buy", 10, True),
        (-10, "sell", 1, False),
        (0, "sell", 1, False),
        (0, "buy", 1, False),
        (10, "sell", 0, False),
        (10, "sell", math.nan, False),
    ],
)
def test_reduces(position, side, qty, expected):
    assert reduces(position, side, qty) is expected


def test_project_positions_adds_pending_qty():
    assert project_positions({"A": 10.0, "B": -5.0}, {"B": 5.0, "C": -2.0}) == {
        "A": 10.0,
        "B": 0.0,
        "C": -2.0,
    }


# --------------------------------------------------------------------------------------------------
# check_order: one example per rule
# --------------------------------------------------------------------------------------------------


def test_halted_refuses_everything_reductions_included():
    v = view(state="HALTED", positions={"AAPL": 10.0}, prices={"AAPL": 100.0})
    d = check_order(sell(10), v, LIMITS)
    assert (d.approved, d.rule, d.reduces) == (False, "halted", True)
    assert "HALTED" in d.reason and "AAPL" in d.reason


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (buy(0), "qty"),
        (buy(-1), "qty"),
        (buy(math.nan), "qty"),
        (buy(1, price=0.0), "reference price"),
        (buy(1, price=math.inf), "reference price"),
        (buy(1, type="limit"), "limit_price"),
        (buy(1, type="stop_limit", limit_price=100.0), "stop_price"),
        (buy(1, type="stop", stop_price=-1.0), "stop_price"),
        (buy(1, symbol=""), "symbol"),
    ],
)
def test_invalid_orders_are_refused(order, words):
    d = check_order(order, view(), LIMITS)
    assert (d.approved, d.rule) == (False, "invalid_order")
    assert words in d.reason


def test_reducing_accepts_only_reductions():
    v = view(state="REDUCING", positions={"AAPL": 10.0}, prices={"AAPL": 100.0})
    assert check_order(sell(10), v, LIMITS).approved
    for order in (sell(10.5), buy(1)):
        d = check_order(order, v, LIMITS)
        assert (d.approved, d.rule, d.reduces) == (False, "reducing_only", False)
        assert "REDUCING" in d.reason
    assert "to -0.5" in check_order(sell(10.5), v, LIMITS).reason


def test_no_equity_allows_only_reductions():
    v = view(equity=-1.0, positions={"AAPL": 10.0}, prices={"AAPL": 100.0})
    d = check_order(buy(1), v, LIMITS)
    assert (d.approved, d.rule) == (False, "no_equity")
    assert "-1.0" in d.reason
    assert check_order(sell(5), v, LIMITS).approved


@pytest.mark.parametrize("field", ["limit_price", "stop_price"])
def test_price_collar(field):
    kind = "limit" if field == "limit_price" else "stop"
    assert check_order(buy(1, type=kind, **{field: 104.99}), view(), LIMITS).approved
    assert check_order(buy(1, type=kind, **{field: 95.01}), view(), LIMITS).approved
    d = check_order(buy(1, type=kind, **{field: 105.01}), view(), LIMITS)
    assert (d.approved, d.rule) == (False, "price_collar")
    assert "105.01" in d.reason and "100.00" in d.reason and "500.0 bps" in d.reason and "AAPL" in d.reason
    # The collar holds back reductions too: a far-off price is a mistake whatever the order's purpose.
    v = view(positions={"AAPL": 10.0}, prices={"AAPL": 100.0})
    assert check_order(sell(1, type=kind, **{field: 80.0}), v, LIMITS).rule == "price_collar"


def test_max_trades_per_minute_counts_the_last_60_seconds_and_spares_reductions():
    # 2 submitted within the minute (+ this one) = 3 = limit; the one exactly 60 s ago is out.
    two = (T0 - timedelta(seconds=60), T0 - timedelta(seconds=59), T0)
    assert check_order(buy(1), view(submitted=two), LIMITS).approved
    three = (*two, T0 - timedelta(seconds=1))
    d = check_order(buy(1), view(submitted=three), LIMITS)
    assert (d.approved, d.rule) == (False, "max_trades_per_minute")
    assert "4 orders" in d.reason and "limit 3" in d.reason
    # A flatten is never blocked by a busy minute.
    v = view(submitted=three, positions={"AAPL": 10.0}, prices={"AAPL": 100.0})
    assert check_order(sell(10), v, LIMITS).approved


def test_max_order_notional_uses_the_worst_price():
    big = limits(max_position_fraction=1.0, max_sector_fraction=1.0)
    assert check_order(buy(100), view(), big).approved  # 10,000.00 = limit
    d = check_order(buy(100.01), view(), big)
    assert (d.approved, d.rule) == (False, "max_order_notional")
    assert "10,001.00" in d.reason and "10,000.00" in d.reason
    # A buy limit above the last price may fill at the limit: 99 x 102 = 10,098 > 10,000.
    d = check_order(buy(99, type="limit", limit_price=102.0), view(), big)
    assert (d.rule, d.notional) == ("max_order_notional", pytest.approx(10_098.0))


def test_max_position_counts_the_existing_and_pending_position():
    v = view(positions={"AAPL": 20.0}, prices={"AAPL": 90.0})  # valued at the order's 100 now
    assert check_order(buy(29.9), v, LIMITS).approved  # 49.9 x 100 = 4.99 % of 100,000
    d = check_order(buy(30.1), v, LIMITS)
    assert (d.approved, d.rule) == (False, "max_position")
    assert "5.01%" in d.reason and "5.00%" in d.reason and "AAPL" in d.reason and "100,000.00" in d.reason
    # Shorts count by |value|; a flip through zero is not a reduction.
    assert check_order(sell(69.9), v, LIMITS).approved
    assert check_order(sell(70.1), v, LIMITS).rule == "max_position"


def test_max_sector_sums_the_sector_and_a_symbol_without_one_is_its_own():
    sectors = {"AAPL": "tech", "MSFT": "tech", "XOM": "energy"}
    positions = {"MSFT": 200.0, "XOM": 200.0, "tech": 200.0}  # "tech" is a symbol without a sector
    prices = {"MSFT": 100.0, "XOM": 100.0, "tech": 100.0}
    v = view(positions=positions, prices=prices, sectors=sectors)
    lim = limits(max_position_fraction=1.0, max_order_notional=1e9, max_sector_fraction=0.25)
    assert check_order(buy(49.9), v, lim).approved  # 20,000 + 4,990 = 24.99 %
    d = check_order(buy(50.1), v, lim)
    assert (d.approved, d.rule) == (False, "max_sector")
    assert "sector tech" in d.reason and "25.01%" in d.reason and "25.00%" in d.reason
    # A symbol without a sector is judged alone: 250 x 100 = 25 %.
    assert check_order(buy(50, symbol="tech"), v, lim).approved
    assert check_order(buy(50.1, symbol="tech"), v, lim).rule == "max_sector"


def test_max_gross_leverage_sums_every_projected_position():
    positions = {"A": 400.0, "B": -400.0}
    v = view(positions=positions, prices={"A": 100.0, "B": 100.0})
    lim = limits(max_position_fraction=1.0, max_sector_fraction=1.0, max_order_notional=1e9)
    assert check_order(buy(199.9, symbol="C"), v, lim).approved  # 99,990 = 0.9999x
    d = check_order(buy(200.1, symbol="C"), v, lim)
    assert (d.approved, d.rule) == (False, "max_gross_leverage")
    assert "100,010.00" in d.reason and "1.000x" in d.reason


def test_reductions_pass_exposure_limits_that_are_already_breached():
    v = view(positions={"A": 1_000.0}, prices={"A": 100.0}, equity=50_000.0)  # 200 % of equity
    d = check_order(sell(200, symbol="A"), v, LIMITS)  # notional 20,000 > 10,000 too
    assert (d.approved, d.rule, d.reduces) == (True, "ok", True)
    assert "1,000 -> 800" in d.reason
    assert check_order(buy(1, symbol="A"), v, LIMITS).rule == "max_position"


def test_missing_price_of_a_held_symbol_refuses_adding_exposure():
    v = view(positions={"A": 10.0, "B": 5.0}, prices={"A": 100.0})
    d = check_order(buy(1, symbol="A"), v, LIMITS)
    assert (d.approved, d.rule) == (False, "missing_price")
    assert "B" in d.reason


def test_an_approved_order_says_what_it_does():
    d = check_order(buy(10), view(sectors={"AAPL": "tech"}), LIMITS)
    assert (d.approved, d.rule, d.symbol, d.side, d.qty, d.notional) == (
        True,
        "ok",
        "AAPL",
        "buy",
        10,
        1_000.0,
    )
    assert "0 -> 10" in d.reason and "1.00%" in d.reason and "sector tech" in d.reason


# --------------------------------------------------------------------------------------------------
# check_account: one example per rule
# --------------------------------------------------------------------------------------------------


def test_daily_loss_halts_at_the_limit():
    assert check_account(view(equity=98_001.0), LIMITS, [], []) == AccountCheck("ACTIVE", ())
    out = check_account(view(equity=98_000.0), LIMITS, [], [])
    assert out.state == "HALTED"
    (event,) = out.events
    assert (event.rule, event.action, event.value, event.limit) == ("max_daily_loss", "halt", 0.02, 0.02)
    assert "2.00%" in event.reason and "98,000.00" in event.reason


def test_drawdown_disables_the_strategy():
    lim = limits(max_drawdown=0.05, max_daily_loss=0.5)
    assert check_account(view(peak_equity=110_000.0, equity=104_600.0), lim, [], []).state == "ACTIVE"
    out = check_account(view(peak_equity=110_000.0, equity=104_500.0), lim, [], [])
    assert out.state == "REDUCING"
    assert [(e.rule, e.action) for e in out.events] == [("max_drawdown", "disable")]
    assert "110,000.00" in out.events[0].reason and "5.00%" in out.events[0].reason


def test_underperformance_over_the_window_disables_the_strategy():
    lim = limits(underperformance_bars=3, min_window_return=-0.01, max_daily_loss=0.5, max_drawdown=0.5)
    v = view(equity=99_000.0)
    assert check_account(v, lim, [50.0, 100_000.0, 99_500.0, 99_001.0], []).state == "ACTIVE"
    out = check_account(v, lim, [50.0, 100_000.0, 99_500.0, 98_999.0], [])
    assert out.state == "REDUCING"
    assert [(e.rule, e.action) for e in out.events] == [("underperformance", "disable")]
    assert "3 bars" in out.events[0].reason
    assert check_account(v, lim, [100_000.0, 50.0], []).events == ()  # fewer than 3 bars: not judged


@pytest.mark.parametrize("halt", [False, True])
def test_drift_alerts_or_halts(halt):
    lim = limits(drift=DriftLimit(window=10, min_accuracy=0.5, halt=halt))
    five = [False] * 20 + [True] * 5 + [False] * 5  # the last 10: 50 %
    assert check_account(view(), lim, [], five).events == ()
    four = deque([True] * 20 + [True] * 4 + [False] * 6)  # any sequence: a deque too
    out = check_account(view(), lim, [], four)
    assert [(e.rule, e.action, e.value) for e in out.events] == [("drift", "halt" if halt else "alert", 0.4)]
    assert out.state == ("HALTED" if halt else "ACTIVE")
    assert "40.00%" in out.events[0].reason and "10 predictions" in out.events[0].reason
    assert check_account(view(), lim, [], [False] * 9).events == ()  # fewer than window: not judged


def test_states_never_relax_here():
    lim = limits(max_drawdown=0.05)
    disable = {"peak_equity": 110_000.0, "equity": 104_000.0, "opening_equity": 104_000.0}
    assert check_account(view(state="HALTED", **disable), lim, [], []).state == "HALTED"
    assert check_account(view(state="HALTED"), lim, [], []).state == "HALTED"
    assert check_account(view(state="REDUCING"), lim, [], []).state == "REDUCING"
    assert check_account(view(state="REDUCING", equity=90_000.0), lim, [], []).state == "HALTED"


# --------------------------------------------------------------------------------------------------
# Properties: random sessions
# --------------------------------------------------------------------------------------------------

SYMBOLS = ("A", "B", "C", "D")
SECTORS = {"A": "tech", "B": "tech", "C": "energy"}  # D has none: its own sector
EPS = 1e-9
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

limit_sets = st.builds(
    RiskLimits,
    max_order_notional=st.floats(1_000.0, 1e6),
    max_position_fraction=st.floats(0.01, 3.0),
    max_sector_fraction=st.floats(0.02, 4.0),
    max_gross_leverage=st.floats(0.05, 3.0),
    max_trades_per_minute=st.integers(1, 6),
    price_collar_bps=st.floats(1.0, 1_000.0),
    max_daily_loss=st.floats(0.005, 0.99),
    max_drawdown=st.floats(0.005, 0.5),
    underperformance_bars=st.integers(2, 12),
    min_window_return=st.floats(-0.3, -0.001),
    drift=st.builds(
        DriftLimit, window=st.integers(10, 15), min_accuracy=st.floats(0.0, 1.0), halt=st.booleans()
    ),
)
signals = st.tuples(
    st.just("signal"),
    st.sampled_from(SYMBOLS),
    st.one_of(st.floats(-0.2, 0.2), st.floats(-3.0, 3.0)),  # target position, fraction of equity
    st.sampled_from(("market", "market", "limit", "stop", "stop_limit")),
    st.floats(-0.1, 0.1),  # limit/stop offset from the last price
    st.integers(0, 45),  # seconds since the previous step
)
# Steps by weight: mostly signals (the orders under test), controls now and then.
_WEIGHTED_STEPS = (
    (8, signals),
    (2, st.tuples(st.just("move"), st.sampled_from(SYMBOLS), st.floats(0.5, 2.0))),
    (2, st.tuples(st.just("fill"))),
    (1, st.tuples(st.just("predict"), st.booleans())),
    (1, st.tuples(st.just("control"), st.sampled_from(("halt", "flatten", "disable", "resume")))),
)
steps = st.sampled_from([s for weight, s in _WEIGHTED_STEPS for _ in range(weight)]).flatmap(lambda s: s)


def _oracle(order: ProposedOrder, v: RiskView, lim: RiskLimits) -> dict[str, tuple[float, float]]:
    """Each rule that applies to this order -> (value, limit); breached when value > limit.
    Yes/no rules are (1, 0.5) when breached, (0, 0.5) when not."""
    held = v.positions.get(order.symbol, 0.0)
    signed = order.qty if order.side == "buy" else -order.qty
    is_reduction = held != 0 and (signed < 0) == (held > 0) and abs(signed) <= abs(held)
    flag = lambda breached: (float(breached), 0.5)  # noqa: E731
    out = {"halted": flag(v.state == "HALTED")}
    out["reducing_only"] = flag(v.state == "REDUCING" and not is_reduction)
    out["no_equity"] = flag(v.equity <= 0 and not is_reduction)
    for p in (order.limit_price, order.stop_price):
        if p is not None:
            off = abs(p / order.price - 1.0)
            out["price_collar"] = max(out.get("price_collar", (0.0, 0.0)), (off, lim.price_collar_bps / 1e4))
    if is_reduction or v.equity <= 0:
        return out
    window_start = v.ts - timedelta(seconds=60)
    out["max_trades_per_minute"] = (
        1 + len([t for t in v.submitted if t > window_start]),
        lim.max_trades_per_minute,
    )
    worst = max(p for p in (order.price, order.limit_price, order.stop_price) if p is not None)
    out["max_order_notional"] = (order.qty * worst, lim.max_order_notional)
    after = dict(v.positions)
    after[order.symbol] = held + signed
    marks = {**v.prices, order.symbol: order.price}
    value = {s: abs(q) * marks[s] for s, q in after.items()}
    sector = lambda s: SECTORS.get(s, "own " + s)  # noqa: E731
    out["max_position"] = (value[order.symbol] / v.equity, lim.max_position_fraction)
    same = [value[s] for s in after if sector(s) == sector(order.symbol)]
    out["max_sector"] = (math.fsum(same) / v.equity, lim.max_sector_fraction)
    out["max_gross_leverage"] = (math.fsum(value.values()) / v.equity, lim.max_gross_leverage)
    return out


class Session:
    """One account's session as the trading loop would run it, with every order judged twice."""

    def __init__(self, lim: RiskLimits) -> None:
        self.lim = lim
        self.ts = T0
        self.state = "ACTIVE"
        self.cash = 100_000.0
        self.prices = {s: 100.0 for s in SYMBOLS}
        self.filled: dict[str, float] = {}
        self.pending: dict[str, float] = {}
        self.opening = self.peak = self.cash
        self.history = [self.cash]
        self.hits: list[bool] = []
        self.submitted: list[datetime] = []
        self.approved: list[tuple[datetime, bool]] = []  # (ts, reduces)

    @property
    def equity(self) -> float:
        return self.cash + sum(q * self.prices[s] for s, q in self.filled.items())

    def view(self) -> RiskView:
        return RiskView(
            ts=self.ts,
            state=self.state,
            equity=self.equity,
            opening_equity=self.opening,
            peak_equity=self.peak,
            positions=project_positions(self.filled, self.pending),
            prices=dict(self.prices),
            sectors=SECTORS,
            submitted=tuple(self.submitted),
        )

    def propose(self, order: ProposedOrder) -> bool:
        v = self.view()
        d = check_order(order, v, self.lim)
        rules = _oracle(order, v, self.lim)
        event(f"{v.state} {d.rule}")  # --hypothesis-show-statistics: which rules the sessions reach
        held = v.positions.get(order.symbol, 0.0)
        assert d.reduces == reduces(held, order.side, order.qty)
        if d.approved:
            assert v.state != "HALTED"
            assert v.state != "REDUCING" or d.reduces
            breached = {r: vl for r, vl in rules.items() if vl[0] > vl[1] * (1 + EPS)}
            assert not breached, (d, breached)
            self.approved.append((v.ts, d.reduces))
            self.submitted.append(v.ts)
            self.pending[order.symbol] = self.pending.get(order.symbol, 0.0) + (
                order.qty if order.side == "buy" else -order.qty
            )
        else:
            # Refused only for a rule it breaches (within float noise), and always for a reason.
            assert d.rule in rules, (d, rules)
            value, limit = rules[d.rule]
            assert value >= limit * (1 - EPS), (d, rules)
            assert order.symbol in d.reason
        # Nothing that clearly passes every rule is refused.
        if all(value < limit * (1 - EPS) for value, limit in rules.values()):
            assert d.approved, (d, rules)
        return d.approved

    def fill(self) -> None:
        for s, q in self.pending.items():
            self.filled[s] = self.filled.get(s, 0.0) + q
            self.cash -= q * self.prices[s]
        self.pending.clear()

    def account(self) -> None:
        v = self.view()
        out = check_account(v, self.lim, self.history, self.hits)
        loss = (v.opening_equity - v.equity) / v.opening_equity
        if v.state == "HALTED" or loss >= self.lim.max_daily_loss:
            assert out.state == "HALTED"
        if v.state == "REDUCING":
            assert out.state in ("REDUCING", "HALTED")
        if not out.events:
            assert out.state == v.state
        self.state = out.state

    def step(self, kind: str, *args) -> None:
        if kind == "move":
            symbol, factor = args
            self.prices[symbol] *= factor
            self.ts += timedelta(seconds=60)
            self.history.append(self.equity)
            self.peak = max(self.peak, self.equity)
            self.account()
        elif kind == "signal":
            symbol, target, type_, offset, seconds = args
            self.ts += timedelta(seconds=seconds)
            price = self.prices[symbol]
            held = project_positions(self.filled, self.pending).get(symbol, 0.0)
            delta = target * abs(self.equity) / price - held  # equity <= 0: exercises no_equity
            if delta == 0:
                return
            at = price * (1 + offset)
            self.propose(
                ProposedOrder(
                    symbol=symbol,
                    side="buy" if delta > 0 else "sell",
                    qty=abs(delta),
                    price=price,
                    type=type_,
                    limit_price=at if type_ in ("limit", "stop_limit") else None,
                    stop_price=at if type_ in ("stop", "stop_limit") else None,
                )
            )
        elif kind == "fill":
            self.fill()
            self.account()
        elif kind == "predict":
            self.hits.append(args[0])
            self.account()
        elif args[0] == "halt":
            self.state = "HALTED"
        elif args[0] == "disable":
            self.state = "HALTED" if self.state == "HALTED" else "REDUCING"
        elif args[0] == "resume":
            self.state = "ACTIVE"
        else:  # flatten: REDUCING, close every position at market, then HALTED
            if self.state != "HALTED":
                self.state = "REDUCING"
                for s, q in project_positions(self.filled, self.pending).items():
                    if q != 0:
                        side = "sell" if q > 0 else "buy"
                        assert self.propose(ProposedOrder(s, side, abs(q), self.prices[s]))
                flat = project_positions(self.filled, self.pending).values()
                assert all(abs(q) < 1e-6 for q in flat)  # float residue of filled + pending only
            self.state = "HALTED"


@PROPERTY
@given(limit_sets, st.lists(steps, min_size=10, max_size=80))
def test_no_session_produces_an_order_that_breaches_a_limit(lim, plan):
    session = Session(lim)
    for kind, *args in plan:
        session.step(kind, *args)
    # The rate limit holds over every 60 s window for orders that add exposure.
    adding = [ts for ts, was_reduction in session.approved if not was_reduction]
    event(f"orders adding exposure approved: {min(len(adding), 5)}+")
    for end in adding:
        assert sum(1 for t in adding if end - timedelta(seconds=60) < t <= end) <= lim.max_trades_per_minute


@PROPERTY
@given(
    limit_sets,
    st.sampled_from(("ACTIVE", "REDUCING", "HALTED")),
    st.floats(1.0, 1e7),
    st.one_of(
        st.tuples(st.just("any"), st.floats(-1.0, 1.2)),  # the day's loss, a fraction of the open
        st.tuples(st.just("near"), st.floats(0.97, 1.03)),  # ... a multiple of max_daily_loss
    ),
    st.floats(0.0, 2.0),
    st.lists(st.floats(-1e6, 2e7), max_size=20),
    st.lists(st.booleans(), max_size=30),
)
def test_account_checks_never_relax_and_a_daily_loss_always_halts(
    lim, state, opening, day_loss, peak_up, hist, hits
):
    kind, x = day_loss
    equity = opening * (1 - (x * lim.max_daily_loss if kind == "near" else x))
    v = view(
        state=state, opening_equity=opening, equity=equity, peak_equity=max(opening, equity) * (1 + peak_up)
    )
    out = check_account(v, lim, hist, hits)
    breached = (opening - equity) / opening >= lim.max_daily_loss
    assert breached == any(e.rule == "max_daily_loss" for e in out.events)
    if state == "HALTED" or breached:
        assert out.state == "HALTED"
    if state == "REDUCING":
        assert out.state != "ACTIVE"
    assert (out.state == "HALTED") == (state == "HALTED" or any(e.action == "halt" for e in out.events))
    if state == "ACTIVE" and not out.events:
        assert out.state == "ACTIVE"
    for e in out.events:
        assert e.rule in ("max_daily_loss", "max_drawdown", "underperformance", "drift")
        assert e.action == {"max_daily_loss": "halt", "drift": e.action}.get(e.rule, "disable")
        assert e.rule != "drift" or e.action == ("halt" if lim.drift.halt else "alert")
