"""The broker protocol: what the trading loop needs from a broker, and the records it exchanges.

One adapter implements it (`quanto.execution.alpaca.AlpacaBroker`, over alpaca-py), and it talks to
Alpaca's paper or live Trading API or to the local paper exchange (`quanto.execution.paper_exchange`),
which serves the same subset of the API — so the code that trades locally and in tests is the code that
trades at Alpaca.

Quantities are signed only on positions (long > 0, short < 0); orders carry a side and a positive qty.
Idempotency: every order has a deterministic `client_order_id` (`client_order_id()`), and `submit`
returns the existing order when the broker already has one with that id — a retried submission never
doubles an order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Literal, Protocol

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
TimeInForce = Literal["day", "gtc", "ioc", "cls"]
# Alpaca's order statuses that can still fill or be cancelled.
OPEN_STATUSES = frozenset(
    {"new", "accepted", "pending_new", "partially_filled", "pending_cancel", "pending_replace", "held"}
)
# An intent names why an order exists; it is part of the client_order_id.
Intent = Literal["rebalance", "entry", "exit", "flatten", "close"]


def client_order_id(workflow_id: str, bar_ts: dt.datetime, symbol: str, intent: str) -> str:
    """The deterministic id of the order a workflow places for (`bar_ts`, `symbol`, `intent`):
    `q-` + 30 hex digits of SHA-256 (Alpaca allows 48 characters). A retry of the same decision gets
    the same id, so the broker's uniqueness check and the lookup by id prevent duplicates."""
    key = f"{workflow_id}|{bar_ts.astimezone(dt.UTC).isoformat()}|{symbol}|{intent}"
    return "q-" + hashlib.sha256(key.encode()).hexdigest()[:30]


@dataclass(frozen=True)
class OrderRequest:
    """An order to submit. `qty` > 0. Bracket orders (`order_class="bracket"`) carry a take-profit
    limit price and a stop-loss stop price for their exit legs."""

    client_order_id: str
    symbol: str
    side: Side
    qty: float
    type: OrderType = "market"
    time_in_force: TimeInForce = "day"
    limit_price: float | None = None
    stop_price: float | None = None
    order_class: Literal["simple", "bracket"] = "simple"
    take_profit_limit: float | None = None
    stop_loss_stop: float | None = None


@dataclass(frozen=True)
class Order:
    """An order as the broker reports it (Alpaca's fields, the ones Quanto uses)."""

    id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: float
    type: str
    time_in_force: str
    status: str
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    submitted_at: dt.datetime | None = None
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    legs: tuple[Order, ...] = ()

    @property
    def is_open(self) -> bool:
        """Whether the order can still fill or be cancelled."""
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class Fill:
    """One execution of an order (a trade update of event fill or partial_fill)."""

    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: float  # this execution's units (> 0)
    price: float
    ts: dt.datetime
    commission: float = 0.0
    fill_id: str = ""  # unique per execution (the broker's execution id, or order id + sequence)


@dataclass(frozen=True)
class Position:
    """A position: signed `qty`, average entry price, and its last mark."""

    symbol: str
    qty: float
    avg_entry_price: float
    current_price: float
    market_value: float


@dataclass(frozen=True)
class Account:
    """Cash and equity. `last_equity` is the equity at the previous session's close (Alpaca's
    meaning), the base of the daily loss limit."""

    account_id: str
    cash: float
    equity: float
    last_equity: float
    buying_power: float
    status: str = "ACTIVE"
    currency: str = "USD"


@dataclass(frozen=True)
class Clock:
    """The broker's market clock (the replay's clock on the local exchange)."""

    timestamp: dt.datetime
    is_open: bool
    next_open: dt.datetime
    next_close: dt.datetime


@dataclass(frozen=True)
class Session:
    """One trading day of the broker's calendar (times in UTC)."""

    date: dt.date
    open: dt.datetime
    close: dt.datetime


@dataclass
class TradeUpdate:
    """An event of the trade-update stream: `event` is Alpaca's (new, fill, partial_fill, canceled,
    rejected, expired, ...), with the order as it is after the event and the execution for fills."""

    event: str
    order: Order
    fill: Fill | None = None
    ts: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class BrokerError(Exception):
    """The broker refused a request or could not be reached; `retryable` says whether trying again
    can help (a network error) or not (a rejected order, bad credentials)."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class Broker(Protocol):
    """What the trading loop needs from a broker. Every method is blocking (the loop runs in an
    activity thread) and raises BrokerError on failure."""

    def account(self) -> Account:
        """Cash, equity and the previous close's equity."""
        ...

    def positions(self) -> list[Position]:
        """Every open position."""
        ...

    def submit(self, request: OrderRequest) -> Order:
        """Submit an order; when the broker already has `request.client_order_id`, return that order
        instead (idempotent). A rejection raises BrokerError(retryable=False)."""
        ...

    def order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order with this client_order_id, or None when the broker has none."""
        ...

    def orders(
        self, status: Literal["open", "closed", "all"] = "all", after: dt.datetime | None = None
    ) -> list[Order]:
        """Orders by status, submitted after `after` when given, oldest first."""
        ...

    def cancel(self, order_id: str) -> None:
        """Request cancellation of one order (no error when it is already done)."""
        ...

    def cancel_all(self) -> list[str]:
        """Cancel every open order; the ids asked to cancel."""
        ...

    def fills(self, after: dt.datetime | None = None) -> list[Fill]:
        """Executions after `after` (all of the account's when None), oldest first."""
        ...

    def clock(self) -> Clock:
        """The market clock."""
        ...

    def calendar(self, start: dt.date, end: dt.date) -> list[Session]:
        """Trading sessions between `start` and `end` inclusive."""
        ...
