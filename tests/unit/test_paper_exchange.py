"""The local paper exchange through the real adapter: alpaca-py's TradingClient and TradingStream
(wrapped by AlpacaBroker) against the exchange served from a thread of the test process.

Every test trades its own account (a fresh API key), so tests share the server and nothing else.
Expected prices and costs come from quanto.backtest.fills / costs, the functions the backtest uses.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import numpy as np
import pandas as pd
import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from quanto.backtest.costs import borrow_fee, commission
from quanto.backtest.fills import fill_price, half_spread
from quanto.backtest.portfolio import simulate
from quanto.config.models import BacktestConfig
from quanto.config.trading import BrokerConfig
from quanto.execution.alpaca import LOCAL_KEY, AlpacaBroker
from quanto.execution.broker import BrokerError, OrderRequest, client_order_id
from quanto.execution.paper_exchange import run_in_thread
from quanto.execution.replay_market import LocalReplayMarket

T0 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)  # 09:30 New York, a regular session
MINUTE = dt.timedelta(minutes=1)
COSTS = {
    "commission_bps": 1.0,
    "commission_per_share": 0.005,
    "commission_per_order": 0.35,
    "commission_min": 1.0,
    "slippage_bps": 5.0,
}


@pytest.fixture(scope="module")
def exchange():
    running = run_in_thread()
    yield running.url
    running.stop()


class Desk:
    """One test's account: the replay side (bars) and the broker side (orders)."""

    def __init__(self, url: str, cash: float = 100_000.0, costs: dict | None = None, fractional: bool = True):
        self.key = f"test-{uuid.uuid4().hex[:12]}"
        self.url = url
        self.market = LocalReplayMarket(url, self.key)
        self.market.create_account(cash, costs or {}, fractional)
        self.broker = AlpacaBroker(url, self.key, "secret", paper=True)
        self.n = 0

    def bar(self, symbol: str, i: int, o: float, h: float, lo: float, c: float, **quote) -> dict:
        return {"symbol": symbol, "ts": T0 + i * MINUTE, "timeframe": "1min", "open": o, "high": h, "low": lo,
                "close": c, "volume": 1000.0, **quote}  # fmt: skip

    def deliver(self, *bars: dict) -> int:
        return self.market.deliver(list(bars))

    def order(self, symbol: str, side: str, qty: float, **kw) -> OrderRequest:
        self.n += 1
        return OrderRequest(client_order_id=f"{self.key}-{self.n}", symbol=symbol, side=side, qty=qty, **kw)

    def submit(self, symbol: str, side: str, qty: float, **kw):
        return self.broker.submit(self.order(symbol, side, qty, **kw))


@pytest.fixture()
def desk(exchange) -> Desk:
    return Desk(exchange, costs=COSTS)


def commission_of(qty: float, price: float, costs: dict = COSTS) -> float:
    return commission(
        qty, price, costs.get("commission_per_share", 0.0), costs.get("commission_per_order", 0.0),
        costs.get("commission_bps", 0.0), costs.get("commission_min", 0.0),
    )  # fmt: skip


def expected_fill(ref: float, side: float, qty: float, spread: float = 0.0, costs: dict = COSTS):
    """(price, commission) of a fill at reference `ref`, by the backtest's own functions."""
    price = fill_price(ref, side, costs.get("slippage_bps", 0.0), spread)
    return price, commission_of(qty, price, costs)


# --------------------------------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------------------------------


def test_account_create_reset_and_unknown_key(exchange):
    d = Desk(exchange, cash=50_000.0)
    a = d.broker.account()
    assert (a.cash, a.equity, a.last_equity, a.status) == (50_000.0, 50_000.0, 50_000.0, "ACTIVE")
    assert a.buying_power == 100_000.0  # 2x equity, nothing held
    d.deliver(d.bar("AAA", 0, 10, 10, 10, 10))
    d.submit("AAA", "buy", 5)
    d.deliver(d.bar("AAA", 1, 10, 10, 10, 10))
    assert d.broker.positions()[0].qty == 5
    d.market.create_account(70_000.0)  # a reset: a new empty account under the same key
    assert d.broker.account().cash == 70_000.0
    assert d.broker.positions() == [] and d.broker.orders() == [] and d.broker.fills() == []

    stranger = AlpacaBroker(exchange, "nobody-" + uuid.uuid4().hex, "x")
    with pytest.raises(BrokerError) as err:
        stranger.account()
    assert err.value.status == 401 and not err.value.retryable


def test_account_spec_errors_name_the_field(exchange):
    market = LocalReplayMarket(exchange, "bad-" + uuid.uuid4().hex)
    with pytest.raises(BrokerError, match="cash") as err:
        market.create_account(-5.0)
    assert err.value.status == 422
    with pytest.raises(BrokerError, match="periods_per_year"):
        market.create_account(1000.0, {"borrow_rate": 0.05})
    with pytest.raises(BrokerError, match="unknown exchange calendar 'NOPE'"):
        market.create_account(1000.0, calendar="NOPE")


def test_from_env_defaults_to_the_local_key(monkeypatch):
    monkeypatch.delenv("ALPACA_API_KEY_ID", raising=False)
    monkeypatch.delenv("ALPACA_API_SECRET_KEY", raising=False)
    broker = AlpacaBroker.from_env(BrokerConfig(kind="local", port=9999), "paper")
    assert broker.key_id == LOCAL_KEY and broker.base_url == "http://127.0.0.1:9999"
    with pytest.raises(ValueError, match="ALPACA_API_KEY_ID"):
        AlpacaBroker.from_env(BrokerConfig(kind="alpaca"), "live")
    monkeypatch.setenv("ALPACA_API_KEY_ID", "AKID")
    monkeypatch.setenv("ALPACA_API_SECRET_KEY", "very-secret")
    live = AlpacaBroker.from_env(BrokerConfig(kind="alpaca"), "live")
    assert live.base_url == "https://api.alpaca.markets" and not live.paper
    assert "very-secret" not in repr(live) and "AKID" not in repr(live)


# --------------------------------------------------------------------------------------------------
# Market orders
# --------------------------------------------------------------------------------------------------


def test_market_order_fills_at_the_next_open_with_slippage_spread_and_commission(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 101, 99, 100.5))
    order = desk.submit("AAA", "buy", 10)
    assert order.status == "new" and order.filled_qty == 0 and order.is_open
    desk.deliver(desk.bar("AAA", 1, 101, 102, 100, 101.5, bid=100.96, ask=101.04))
    price, comm = expected_fill(101.0, 1.0, 10, half_spread(100.96, 101.04))
    filled = desk.broker.order_by_client_id(order.client_order_id)
    assert filled.status == "filled" and filled.filled_qty == 10
    assert filled.filled_avg_price == price
    assert filled.filled_at == T0 + MINUTE
    (fill,) = desk.broker.fills()
    assert (fill.price, fill.qty, fill.commission, fill.side) == (price, 10, comm, "buy")
    assert fill.client_order_id == order.client_order_id and fill.ts == T0 + MINUTE
    account = desk.broker.account()
    assert account.cash == 100_000.0 + (-10 * price - comm)
    assert account.equity == account.cash + 10 * 101.5


def test_cls_market_order_fills_at_the_last_close(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 101, 99, 100.0))
    desk.submit("AAA", "buy", 4)
    desk.deliver(desk.bar("AAA", 1, 100, 103, 99, 102.0))
    flat = desk.submit("AAA", "sell", 4, time_in_force="cls")
    price, comm = expected_fill(102.0, -1.0, 4)
    assert flat.status == "filled" and flat.filled_avg_price == price
    assert flat.filled_at == T0 + 2 * MINUTE  # the close of the last bar
    assert desk.broker.positions() == []
    assert desk.broker.fills()[-1].commission == comm


# --------------------------------------------------------------------------------------------------
# Limit, stop and stop-limit orders
# --------------------------------------------------------------------------------------------------

# (type, side, limit, stop, bar open/high/low/close, reference price or None)
TRIGGERS = [
    ("limit", "buy", 100.0, None, (100.5, 101, 99.5, 100.2), 100.0),  # the low reached the limit
    ("limit", "buy", 100.0, None, (99.0, 99.5, 98.5, 99.2), 99.0),  # gapped through: the open
    ("limit", "buy", 100.0, None, (100.5, 101, 100.1, 100.2), None),
    ("limit", "sell", 102.0, None, (101.0, 102.5, 100.5, 101.0), 102.0),
    ("limit", "sell", 102.0, None, (103.0, 103.5, 102.5, 103.0), 103.0),
    ("stop", "buy", None, 102.0, (101.0, 102.5, 100.5, 101.0), 102.0),  # the high reached the stop
    ("stop", "buy", None, 102.0, (103.0, 104, 102.5, 103.0), 103.0),  # gapped through: the open
    ("stop", "buy", None, 102.0, (101.0, 101.9, 100.5, 101.0), None),
    ("stop", "sell", None, 99.0, (100.0, 100.5, 98.5, 99.5), 99.0),
    ("stop", "sell", None, 99.0, (97.0, 98.0, 96.5, 97.5), 97.0),
    ("stop_limit", "buy", 102.5, 102.0, (101.0, 102.8, 100.5, 102.0), 102.0),  # triggered, marketable
    ("stop_limit", "buy", 102.5, 102.0, (103.0, 104, 102.8, 103.0), None),  # gapped above the limit
    ("stop_limit", "sell", 98.5, 99.0, (100.0, 100.5, 98.0, 98.6), 99.0),
    ("stop_limit", "sell", 98.5, 99.0, (98.0, 98.4, 97.0, 97.5), None),
]


@pytest.mark.parametrize(("kind", "side", "limit", "stop", "ohlc", "reference"), TRIGGERS)
def test_resting_orders_trigger_like_an_exchange(desk, kind, side, limit, stop, ohlc, reference):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    order = desk.submit("AAA", side, 3, type=kind, limit_price=limit, stop_price=stop, time_in_force="gtc")
    desk.deliver(desk.bar("AAA", 1, *ohlc))
    after = desk.broker.order_by_client_id(order.client_order_id)
    if reference is None:
        assert after.status == "new" and desk.broker.fills() == []
        return
    sign = 1.0 if side == "buy" else -1.0
    price = expected_fill(reference, sign, 3)[0]
    if kind != "stop":  # a limit never fills worse than its limit
        price = min(price, limit) if sign > 0 else max(price, limit)
    assert after.status == "filled" and after.filled_avg_price == price
    assert desk.broker.fills()[0].commission == commission_of(3, price)


def test_stop_limit_gapped_past_its_limit_rests_as_a_limit(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    order = desk.submit(
        "AAA", "buy", 2, type="stop_limit", stop_price=102.0, limit_price=102.5, time_in_force="gtc"
    )
    desk.deliver(desk.bar("AAA", 1, 103, 104, 102.8, 103))  # triggered at the open, above the limit
    assert desk.broker.order_by_client_id(order.client_order_id).status == "new"
    desk.deliver(desk.bar("AAA", 2, 103, 103.2, 102.0, 102.4))  # back down through the limit
    filled = desk.broker.order_by_client_id(order.client_order_id)
    assert filled.status == "filled" and filled.filled_avg_price == 102.5  # capped at the limit


def test_ioc_limit_is_cancelled_after_its_bar_and_day_orders_expire(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    ioc = desk.submit("AAA", "buy", 1, type="limit", limit_price=90.0, time_in_force="ioc")
    day = desk.submit("AAA", "buy", 1, type="limit", limit_price=90.0, time_in_force="day")
    gtc = desk.submit("AAA", "buy", 1, type="limit", limit_price=90.0, time_in_force="gtc")
    desk.deliver(desk.bar("AAA", 1, 100, 100, 99, 100))
    assert desk.broker.order_by_client_id(ioc.client_order_id).status == "canceled"
    next_day = {
        "symbol": "AAA",
        "ts": T0 + dt.timedelta(days=1),
        "open": 100,
        "high": 100,
        "low": 99,
        "close": 100,
    }
    desk.deliver(next_day)
    assert desk.broker.order_by_client_id(day.client_order_id).status == "expired"
    assert desk.broker.order_by_client_id(gtc.client_order_id).status == "new"


# --------------------------------------------------------------------------------------------------
# Brackets
# --------------------------------------------------------------------------------------------------


def _bracket(desk: Desk, side: str = "buy"):
    take, stop = (110.0, 95.0) if side == "buy" else (90.0, 105.0)
    return desk.submit("AAA", side, 5, order_class="bracket", take_profit_limit=take, stop_loss_stop=stop)


def test_bracket_entry_then_take_profit_cancels_the_stop(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    entry = _bracket(desk)
    assert [leg.status for leg in entry.legs] == ["held", "held"]
    desk.deliver(desk.bar("AAA", 1, 100, 104, 99, 103))  # entry at the open, legs now live
    take, stop = desk.broker.order_by_client_id(entry.client_order_id).legs
    assert (take.status, stop.status, take.type, stop.type) == ("new", "new", "limit", "stop")
    desk.deliver(desk.bar("AAA", 2, 104, 111, 103, 109))
    take, stop = desk.broker.order_by_client_id(entry.client_order_id).legs
    assert take.status == "filled" and stop.status == "canceled"
    assert take.filled_avg_price == 110.0  # slippage capped by the limit
    assert desk.broker.positions() == []
    assert [o.status for o in desk.broker.orders("open")] == []


def test_bracket_stop_wins_when_a_bar_touches_both_legs_and_gaps_fill_at_the_open(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    entry = _bracket(desk)
    desk.deliver(desk.bar("AAA", 1, 100, 112, 94, 100))  # both exits inside the entry's own bar
    take, stop = desk.broker.order_by_client_id(entry.client_order_id).legs
    assert stop.status == "filled" and take.status == "canceled"
    assert stop.filled_avg_price == expected_fill(95.0, -1.0, 5)[0]

    entry = _bracket(desk, "sell")
    desk.deliver(desk.bar("AAA", 2, 100, 100, 100, 100))
    desk.deliver(desk.bar("AAA", 3, 88, 89, 87, 88))  # gapped through the short's take-profit
    take, stop = desk.broker.order_by_client_id(entry.client_order_id).legs
    assert take.status == "filled" and stop.status == "canceled"
    assert take.filled_avg_price == min(expected_fill(88.0, 1.0, 5)[0], 90.0)


def test_cancelling_a_bracket_entry_cancels_its_legs(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    entry = _bracket(desk)
    desk.broker.cancel(entry.id)
    after = desk.broker.order_by_client_id(entry.client_order_id)
    assert after.status == "canceled" and {leg.status for leg in after.legs} == {"canceled"}


# --------------------------------------------------------------------------------------------------
# Idempotency, lookup, cancel
# --------------------------------------------------------------------------------------------------


def test_duplicate_client_order_id_returns_the_existing_order(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    request = desk.order("AAA", "buy", 7)
    first = desk.broker.submit(request)
    again = desk.broker.submit(request)
    assert again.id == first.id
    assert len(desk.broker.orders("all")) == 1
    raw = TradingClient(desk.key, "secret", url_override=desk.url)
    with pytest.raises(Exception, match="client_order_id must be unique") as err:
        raw.submit_order(
            MarketOrderRequest(symbol="AAA", qty=7, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                               client_order_id=request.client_order_id)
        )  # fmt: skip
    assert err.value.status_code == 422


def test_a_lost_answer_is_recovered_by_client_order_id(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    client = desk.broker._client
    real = client.submit_order

    def placed_then_lost(order_data):
        real(order_data)  # the exchange has it...
        raise requests.ConnectionError("connection reset by peer")  # ...but the answer never came

    client.submit_order = placed_then_lost
    order = desk.submit("AAA", "buy", 3)
    assert order.status == "new" and order.qty == 3
    assert len(desk.broker.orders("all")) == 1

    def nothing_arrived(order_data):
        raise requests.ConnectionError("connection refused")

    client.submit_order = nothing_arrived
    with pytest.raises(BrokerError, match="not confirmed") as err:
        desk.submit("AAA", "buy", 3)
    assert err.value.retryable


def test_lookup_by_client_id(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    cid = client_order_id("trading-acct-2024-01-02", T0, "AAA", "rebalance")
    order = desk.broker.submit(OrderRequest(cid, "AAA", "sell", 2.5))
    assert desk.broker.order_by_client_id(cid).id == order.id
    assert desk.broker.order_by_client_id("q-unknown") is None


def test_cancel_and_cancel_all(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100), desk.bar("BBB", 0, 50, 50, 50, 50))
    rest = [
        desk.submit(s, "buy", 1, type="limit", limit_price=10.0, time_in_force="gtc")
        for s in ("AAA", "BBB", "AAA")
    ]
    market = desk.submit("BBB", "buy", 1)
    desk.broker.cancel(rest[0].id)
    desk.broker.cancel(rest[0].id)  # already cancelled: no error
    assert desk.broker.order_by_client_id(rest[0].client_order_id).status == "canceled"
    desk.deliver(desk.bar("BBB", 1, 50, 50, 50, 50))
    desk.broker.cancel(market.id)  # already filled: no error
    assert desk.broker.order_by_client_id(market.client_order_id).status == "filled"
    with pytest.raises(BrokerError) as err:
        desk.broker.cancel(str(uuid.uuid4()))
    assert err.value.status == 404
    cancelled = desk.broker.cancel_all()
    assert sorted(cancelled) == sorted([rest[1].id, rest[2].id])
    assert desk.broker.orders("open") == []
    assert {o.status for o in desk.broker.orders("closed")} == {"canceled", "filled"}


def test_orders_filters_and_order(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    first = desk.submit("AAA", "buy", 1)
    desk.deliver(desk.bar("AAA", 1, 100, 100, 100, 100))
    second = desk.submit("AAA", "buy", 1, type="limit", limit_price=50.0, time_in_force="gtc")
    assert [o.id for o in desk.broker.orders("all")] == [first.id, second.id]
    assert [o.id for o in desk.broker.orders("open")] == [second.id]
    assert [o.id for o in desk.broker.orders("closed")] == [first.id]
    assert [o.id for o in desk.broker.orders("all", after=T0 + MINUTE)] == [second.id]


# --------------------------------------------------------------------------------------------------
# Positions and the account's accounting
# --------------------------------------------------------------------------------------------------


def test_positions_after_buys_sells_and_a_flip(exchange):
    d = Desk(exchange)  # no costs: prices are the opens
    d.deliver(d.bar("AAA", 0, 100, 100, 100, 100))
    d.submit("AAA", "buy", 10)
    d.deliver(d.bar("AAA", 1, 100, 100, 100, 100))
    d.submit("AAA", "buy", 30)
    d.deliver(d.bar("AAA", 2, 104, 104, 104, 104))
    (p,) = d.broker.positions()
    assert p.qty == 40 and p.avg_entry_price == (10 * 100 + 30 * 104) / 40
    d.submit("AAA", "sell", 20)
    d.deliver(d.bar("AAA", 3, 106, 106, 106, 106))
    (p,) = d.broker.positions()
    assert p.qty == 20 and p.avg_entry_price == (10 * 100 + 30 * 104) / 40  # a reduction keeps it
    d.submit("AAA", "sell", 30)
    d.deliver(d.bar("AAA", 4, 108, 109, 107, 107))
    (p,) = d.broker.positions()
    assert (p.qty, p.avg_entry_price, p.current_price, p.market_value) == (-10, 108.0, 107.0, -1070.0)
    raw = TradingClient(d.key, "secret", url_override=d.url)
    closing = raw.close_position("AAA")
    assert closing.side == OrderSide.BUY and float(closing.qty) == 10
    d.deliver(d.bar("AAA", 5, 105, 105, 105, 105))
    assert d.broker.positions() == []
    a = d.broker.account()
    pnl = (
        20 * (106 - 103) + 20 * (108 - 103) + 10 * (108 - 105)
    )  # the long (avg 103) sold twice, the short covered
    assert a.equity == pytest.approx(100_000 + pnl, abs=1e-9) and a.cash == a.equity


def test_equity_identity_and_borrow_on_shorts(exchange):
    costs = {**COSTS, "borrow_rate": 0.08, "periods_per_year": 98_280.0}
    d = Desk(exchange, costs=costs)
    rng = np.random.default_rng(7)
    closes = {"AAA": 100.0, "BBB": 40.0}
    for i in range(12):
        bars = []
        for s in closes:
            o = closes[s] * (1 + rng.normal(0, 0.003))
            c = o * (1 + rng.normal(0, 0.003))
            bars.append(d.bar(s, i, o, max(o, c) + 0.05, min(o, c) - 0.05, c))
            closes[s] = c
        cash_before = d.broker.account().cash
        d.deliver(*bars)
        fills_now = [f for f in d.broker.fills() if f.ts == T0 + i * MINUTE]
        flow = sum((-1 if f.side == "buy" else 1) * f.qty * f.price - f.commission for f in fills_now)
        positions = {p.symbol: p for p in d.broker.positions()}
        fee = sum(borrow_fee(p.qty, p.current_price, 0.08, 98_280.0) for p in positions.values())
        a = d.broker.account()
        assert a.cash == pytest.approx(cash_before + flow - fee, rel=1e-12)
        assert a.equity == pytest.approx(
            a.cash + sum(p.qty * p.current_price for p in positions.values()), rel=1e-12
        )
        assert all(positions[s].current_price == closes[s] for s in positions)
        for s in closes:
            want = float(rng.integers(-20, 21))
            have = positions[s].qty if s in positions else 0.0
            if want != have:
                d.submit(s, "buy" if want > have else "sell", abs(want - have))


def test_last_equity_is_the_previous_sessions_close(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    desk.submit("AAA", "buy", 10)
    desk.deliver(desk.bar("AAA", 1, 100, 102, 99, 101))
    assert desk.broker.account().last_equity == 100_000.0
    closing_equity = desk.broker.account().equity
    next_day = {
        "symbol": "AAA",
        "ts": T0 + dt.timedelta(days=1),
        "open": 103,
        "high": 104,
        "low": 102,
        "close": 103,
    }
    desk.deliver(next_day)
    a = desk.broker.account()
    assert a.last_equity == closing_equity and a.equity != closing_equity


def test_redelivered_bars_are_ignored(desk):
    bars = [desk.bar("AAA", 0, 100, 100, 100, 100), desk.bar("AAA", 1, 101, 101, 101, 101)]
    assert desk.deliver(*bars) == 2
    desk.submit("AAA", "buy", 1)
    assert desk.deliver(*bars) == 0  # a resumed replay sends them again
    assert desk.broker.fills() == [] and desk.broker.orders("open")
    assert desk.deliver(*bars, desk.bar("AAA", 2, 102, 102, 102, 102)) == 1
    assert desk.broker.fills()[0].price == expected_fill(102.0, 1.0, 1)[0]


# --------------------------------------------------------------------------------------------------
# Clock and calendar
# --------------------------------------------------------------------------------------------------


def test_clock_follows_the_replay_and_the_calendar_skips_holidays(desk):
    before = desk.broker.clock()
    assert abs(before.timestamp - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)  # wall time
    last = dt.datetime(2024, 7, 3, 16, 59, tzinfo=dt.UTC)  # 12:59 ET: the last minute of an early close
    desk.deliver({"symbol": "AAA", "ts": last - MINUTE, "open": 1, "high": 1, "low": 1, "close": 1})
    clock = desk.broker.clock()
    assert clock.timestamp == last and clock.is_open
    assert clock.next_close == dt.datetime(2024, 7, 3, 17, 0, tzinfo=dt.UTC)
    desk.deliver({"symbol": "AAA", "ts": last, "open": 1, "high": 1, "low": 1, "close": 1})
    clock = desk.broker.clock()
    assert not clock.is_open and clock.next_open == dt.datetime(2024, 7, 5, 13, 30, tzinfo=dt.UTC)
    sessions = desk.broker.calendar(dt.date(2024, 7, 1), dt.date(2024, 7, 8))
    assert [s.date for s in sessions] == [
        dt.date(2024, 7, d) for d in (1, 2, 3, 5, 8)
    ]  # July 4th is a holiday
    assert sessions[2].close == dt.datetime(2024, 7, 3, 17, 0, tzinfo=dt.UTC)
    assert sessions[0].open == dt.datetime(2024, 7, 1, 13, 30, tzinfo=dt.UTC)


def test_a_daily_bar_closes_with_its_session(desk):
    early_close_day = dt.datetime(2024, 7, 3, 13, 30, tzinfo=dt.UTC)  # stamped at the session open
    desk.deliver(
        {
            "symbol": "AAA",
            "ts": early_close_day,
            "timeframe": "1d",
            "open": 1,
            "high": 1,
            "low": 1,
            "close": 1,
        }
    )
    assert desk.broker.clock().timestamp == dt.datetime(2024, 7, 3, 17, 0, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------------
# Trade updates
# --------------------------------------------------------------------------------------------------


def test_trade_update_stream_delivers_new_fill_and_canceled(desk):
    events = []
    got = threading.Condition()

    def on_update(update):
        with got:
            events.append(update)
            got.notify_all()

    with desk.broker.stream_updates(on_update) as stream:
        assert stream.wait_listening(10)
        desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
        market = desk.submit("AAA", "buy", 2)
        limit = desk.submit("AAA", "buy", 2, type="limit", limit_price=50.0, time_in_force="gtc")
        desk.deliver(desk.bar("AAA", 1, 101, 101, 101, 101))
        desk.broker.cancel(limit.id)
        with got:
            assert got.wait_for(lambda: len(events) >= 4, timeout=10)
    seen = [(u.event, u.order.client_order_id) for u in events]
    assert seen == [
        ("new", market.client_order_id),
        ("new", limit.client_order_id),
        ("fill", market.client_order_id),
        ("canceled", limit.client_order_id),
    ]
    fill = events[2].fill
    price, comm = expected_fill(101.0, 1.0, 2)
    assert (fill.price, fill.qty, fill.commission, fill.ts) == (price, 2, comm, T0 + MINUTE)
    assert events[2].order.status == "filled" and events[3].order.status == "canceled"


# --------------------------------------------------------------------------------------------------
# Bad orders
# --------------------------------------------------------------------------------------------------


def test_invalid_orders_get_a_clear_422(desk):
    desk.deliver(desk.bar("AAA", 0, 100, 100, 100, 100))
    with pytest.raises(BrokerError, match=r"qty must be > 0, got 0") as err:
        desk.submit("AAA", "buy", 0)
    assert err.value.status == 422 and not err.value.retryable
    assert desk.n and desk.key in str(err.value)  # the message names the order
    with pytest.raises(BrokerError, match='asset "ZZZ" not found'):
        desk.submit("ZZZ", "buy", 1)
    raw = requests.post(
        f"{desk.url}/v2/orders",
        json={"symbol": "AAA", "qty": "1", "side": "buy", "type": "limit", "time_in_force": "day"},
        headers={"APCA-API-KEY-ID": desk.key},
        timeout=10,
    )
    assert raw.status_code == 422 and "limit_price is required" in raw.json()["message"]
    raw = requests.post(
        f"{desk.url}/v2/orders",
        json={"symbol": "AAA", "qty": "1", "side": "hold", "type": "market", "time_in_force": "day"},
        headers={"APCA-API-KEY-ID": desk.key},
        timeout=10,
    )
    assert (
        raw.status_code == 422 and raw.json()["message"] == "side must be one of ['buy', 'sell'], got 'hold'"
    )
    whole = Desk(desk.url, fractional=False)
    whole.deliver(whole.bar("AAA", 0, 100, 100, 100, 100))
    with pytest.raises(BrokerError, match="whole number"):
        whole.submit("AAA", "buy", 1.5)
    assert desk.broker.orders("all") == []


# --------------------------------------------------------------------------------------------------
# Parity with the backtest
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [3, 11])
def test_parity_with_the_backtest(exchange, seed):
    """Random bars and target quantities through the exchange (deliver a timestamp's bars, then
    submit the orders its decisions ask for) and through quanto.backtest.portfolio.simulate: the
    same fills and final equity."""
    rng = np.random.default_rng(seed)
    symbols, n = ["AAA", "BBB", "CCC"], 40
    costs = {**COSTS, "borrow_rate": 0.05, "periods_per_year": 98_280.0}
    rows, decisions = [], []
    for s, start in zip(symbols, (100.0, 35.0, 250.0), strict=True):
        price = start
        for i in range(n):
            o = price * (1 + rng.normal(0, 0.004))
            c = o * (1 + rng.normal(0, 0.004))
            row = {"symbol": s, "ts": pd.Timestamp(T0 + i * MINUTE), "open": o, "high": max(o, c) * 1.001,
                   "low": min(o, c) * 0.999, "close": c, "volume": 1e4, "bid": np.nan, "ask": np.nan}  # fmt: skip
            if rng.random() < 0.5:
                row["bid"], row["ask"] = o - 0.01, o + 0.01
            rows.append(row)
            target = float(rng.integers(-30, 31)) if rng.random() < 0.6 else np.nan
            decisions.append({"symbol": s, "ts": row["ts"], "target_qty": target})
            price = c
    bars = pd.DataFrame(rows)
    cfg = BacktestConfig(mode="long_short", fill="next_open", initial_capital=1e6, max_leverage=1e6, **costs)
    result = simulate(bars, pd.DataFrame(decisions), cfg)

    d = Desk(exchange, cash=1e6, costs=costs)
    targets = {(r["symbol"], r["ts"]): r["target_qty"] for r in decisions}
    for ts, group in bars.groupby("ts", sort=True):
        d.market.deliver(group.to_dict("records"))
        held = {p.symbol: p.qty for p in d.broker.positions()}
        for s in symbols:
            want = targets[(s, ts)]
            have = held.get(s, 0.0)
            if np.isnan(want) or want == have:
                continue
            side = "buy" if want > have else "sell"
            cid = client_order_id("parity", ts.to_pydatetime(), s, "rebalance")
            d.broker.submit(OrderRequest(cid, s, side, abs(want - have)))

    ours = pd.DataFrame(
        [{"ts": f.ts, "symbol": f.symbol, "side": f.side, "qty": f.qty, "price": f.price, "commission": f.commission}
         for f in d.broker.fills()]
    ).sort_values(["ts", "symbol"], ignore_index=True)  # fmt: skip
    theirs = result.fills[["ts", "symbol", "side", "qty", "price", "commission"]].sort_values(
        ["ts", "symbol"], ignore_index=True
    )
    assert len(ours) == len(theirs) > 20
    assert list(ours["ts"]) == [t.to_pydatetime() for t in theirs["ts"]]
    assert list(ours["symbol"]) == list(theirs["symbol"]) and list(ours["side"]) == list(theirs["side"])
    np.testing.assert_allclose(ours["qty"], theirs["qty"], rtol=1e-12)
    np.testing.assert_allclose(ours["price"], theirs["price"], rtol=1e-12)
    np.testing.assert_allclose(ours["commission"], theirs["commission"], rtol=1e-9)
    equity = d.broker.account().equity
    assert equity == pytest.approx(result.equity["equity"].iloc[-1], rel=1e-9)
    assert round(equity, 2) == round(float(result.equity["equity"].iloc[-1]), 2)
