"""The local paper exchange: the subset of Alpaca's Trading API v2 that `AlpacaBroker` uses, served on
127.0.0.1 and filled from replayed bars with the backtest's fill rules.

The same adapter code (alpaca-py's TradingClient and TradingStream) therefore trades here, in tests,
and at Alpaca. Run it with `python -m quanto.execution.paper_exchange --port P` (the starter's
`ensure_exchange(port)` does that detached), `serve(port)`, or `run_in_thread(port)` inside a process.

Alpaca's paths (JSON as alpaca-py reads it; numbers as strings, like Alpaca's):
``GET /v2/account``, ``GET|POST|DELETE /v2/orders``, ``GET|DELETE /v2/orders/{id}``,
``GET /v2/orders:by_client_order_id?client_order_id=``, ``GET|DELETE /v2/positions``,
``GET|DELETE /v2/positions/{symbol}``, ``GET /v2/clock``, ``GET /v2/calendar``,
``GET /v2/account/activities/FILL`` and the trade-update websocket ``/stream`` (authenticate, then
listen to ``trade_updates``; JSON text frames, which alpaca-py's TradingStream decodes).
Admin paths (not Alpaca's): ``POST /_quanto/accounts`` (create or reset an account),
``POST /_quanto/bars`` (deliver the replay's next bars), ``GET /_quanto/health``.

Accounts are keyed by the API key id header (``APCA-API-KEY-ID``); the secret is not checked. An
unknown key gets 401 until ``POST /_quanto/accounts`` creates it, so tests and sessions never share
state.

Replay clock: an account's "now" is the close of its last delivered bar (ts + timeframe; a daily bar
closes at its session's close), wall time before any bar. A bar whose ts is not after the last
delivered ts of its symbol is ignored, so a resumed replay may re-deliver safely. Deliver all symbols
of one timestamp together (one request, or several timestamps in order in one request): borrow fees
and the session roll are taken once per delivered timestamp.

Matching, per delivered timestamp (the order of `quanto.backtest.portfolio`'s steps, with its
`fills` and `costs` functions — so market orders fill exactly as the backtest's ``next_open``):

1. Session roll: when the bar opens a new session of the account's calendar, ``last_equity`` becomes
   the equity before it and day limit/stop orders of earlier sessions expire.
2. Market orders (tif day, gtc, ioc) waiting for the symbol fill at the OPEN of its bar: price =
   ``fill_price(open, side, slippage_bps, half_spread(bid, ask))`` (no quote: no spread), commission
   = ``commission(qty, price, ...)``; the whole quantity at once (no partial fills).
3. Resting orders of the symbol, in submission order (bracket legs activated in step 2 included: a
   position entered at the open lives through the bar's range, as in `quanto.backtest.stops`):
   a limit buy fills when the open or the low reaches the limit, at the open when it gapped through,
   else at the limit; a stop buy triggers when the open or the high reaches the stop, at the open when
   it gapped through, else at the stop (mirrored for sells). The reference then gets slippage and half
   the spread like any fill, and a limit never fills worse than its limit. A stop-limit triggers like a
   stop and then rests as a limit (fillable in the triggering bar only when the limit is marketable at
   the trigger price). A bracket's exit legs are one-cancels-other and follow the stops rule when both
   are touched in one bar: the stop gapped through at the open first, then the take-profit gapped
   through, then the stop inside the bar, then the take-profit (the loss is never hidden).
4. The symbol's mark becomes the bar's close; then each short pays one bar of borrow
   (``costs.borrow_fee`` at its last close, ``periods_per_year`` from the account's costs).
5. An ioc limit/stop order that did not fill on its one bar is cancelled.

A market order with tif ``cls`` fills on submission at the CLOSE of the symbol's last delivered bar
(the session-close flatten; the backtest's close_at_end).

Cash: a buy of q at p costs q·p + commission, a sell adds q·p − commission (the backtest's own
expression). equity = cash + Σ qty · last close; ``last_equity`` is the equity at the previous
session's close (the initial cash until a session rolls); ``buying_power`` is a simple
max(0, 2 · equity − gross exposure) — informational: the exchange enforces no margin (the risk
engine does). Positions carry signed qty, the weighted average entry price (reset when a fill flips
the side) and the last close.

Every order event (new, fill, canceled, expired, rejected) goes to the account's trade-update
subscribers. State lives in one asyncio loop and handlers never await between reading and writing it,
so requests cannot race.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import orjson
from aiohttp import WSMsgType, web
from pydantic import Field, ValidationError, model_validator

from quanto.backtest.costs import borrow_fee, commission
from quanto.backtest.fills import fill_price, half_spread
from quanto.config.models import Strict

KEY_HEADER = "APCA-API-KEY-ID"
STREAM_PATH = "/stream"
# Alpaca's error codes for the answers the adapter tells apart.
CODE_UNAUTHORIZED = 40110000
CODE_NOT_FOUND = 40410000
CODE_INVALID = 40010001
CODE_UNPROCESSABLE = 42210000
DUPLICATE_CLIENT_ORDER_ID = "client_order_id must be unique"
MAX_CLIENT_ORDER_ID = 128  # Alpaca's limit
MAX_ORDERS_PAGE = 500  # GET /v2/orders: Alpaca's default limit is 50, its maximum 500
MAX_ACTIVITIES_PAGE = 100  # GET /v2/account/activities: Alpaca's page size
MARGIN_MULTIPLIER = 2.0  # buying power = 2x equity minus gross exposure (module docstring)
SHUTDOWN_GRACE_S = 1.0  # how long a stopping server lets open connections finish
CALENDAR_FIRST_YEAR = 1990  # calendars are built from here (or their own first year) to their end

ORDER_TYPES = frozenset({"market", "limit", "stop", "stop_limit"})
TIMES_IN_FORCE = frozenset({"day", "gtc", "ioc", "cls"})
SIDES = frozenset({"buy", "sell"})
ORDER_CLASSES = frozenset({"simple", "bracket"})
OPEN = frozenset({"new", "accepted", "held", "pending_new"})
_TIMEFRAME = re.compile(r"^(\d+)(min|h|d)$")
_UNIT = {"min": dt.timedelta(minutes=1), "h": dt.timedelta(hours=1), "d": dt.timedelta(days=1)}
_ACCOUNT_NS = uuid.UUID("6f1c0a52-6a43-4c2e-9a55-0d6c3b1f7e21")  # account and asset ids: uuid5 in it


class ExchangeError(Exception):
    """A request the exchange refuses: HTTP `status` and Alpaca's {code, message} body."""

    def __init__(self, status: int, message: str, code: int = CODE_UNPROCESSABLE) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _invalid(message: str) -> ExchangeError:
    return ExchangeError(422, message, CODE_INVALID)


# --------------------------------------------------------------------------------------------------
# Admin requests
# --------------------------------------------------------------------------------------------------


class CostSpec(Strict):
    """Costs of an account, with the meaning of the backtest's (`quanto.backtest.costs`, `fills`)."""

    commission_bps: float = Field(0.0, ge=0)
    commission_per_share: float = Field(0.0, ge=0)
    commission_per_order: float = Field(0.0, ge=0)
    commission_min: float = Field(0.0, ge=0)
    slippage_bps: float = Field(0.0, ge=0)
    borrow_rate: float = Field(0.0, ge=0, description="yearly rate on the value of shorts, accrued per bar")
    periods_per_year: float | None = Field(None, gt=0, description="bars per year (needed for borrow)")

    @model_validator(mode="after")
    def _borrow_needs_periods(self) -> CostSpec:
        if self.borrow_rate > 0 and self.periods_per_year is None:
            raise ValueError("borrow_rate needs periods_per_year (a yearly rate accrued per bar)")
        return self


class AccountSpec(Strict):
    """POST /_quanto/accounts: create (or reset) the account of API key `key`."""

    key: str = Field(min_length=1, max_length=200)
    cash: float = Field(100_000.0, gt=0)
    costs: CostSpec = CostSpec()
    fractional: bool = True
    calendar: str = "XNYS"


# --------------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    """An exchange_calendars schedule as arrays: session dates, opens and closes (UTC ns)."""

    name: str
    tz: ZoneInfo
    dates: list[dt.date]
    days: np.ndarray  # the dates as datetime64[D], for searching
    opens: np.ndarray
    closes: np.ndarray

    def session_date(self, ts: dt.datetime) -> dt.date:
        """The session a bar opening at `ts` belongs to: its date in the exchange's time zone."""
        return ts.astimezone(self.tz).date()

    def session_close(self, day: dt.date) -> dt.datetime | None:
        """The close of session `day`, None when `day` is not a session."""
        i = int(np.searchsorted(self.days, np.datetime64(day)))
        if i < len(self.dates) and self.dates[i] == day:
            return _from_ns(int(self.closes[i]))
        return None

    def clock(self, now: dt.datetime) -> dict:
        """Alpaca's clock at `now`: open or not, next open, next close."""
        ns = _to_ns(now)
        i = int(np.searchsorted(self.closes, ns, side="right"))  # first session closing after now
        if i >= len(self.dates):
            raise ExchangeError(422, f"calendar {self.name} has no session after {now.isoformat()}")
        is_open = bool(self.opens[i] <= ns)
        next_open = self.opens[i + 1] if is_open and i + 1 < len(self.dates) else self.opens[i]
        return {
            "timestamp": now.isoformat(),
            "is_open": is_open,
            "next_open": _from_ns(int(next_open)).isoformat(),
            "next_close": _from_ns(int(self.closes[i])).isoformat(),
        }

    def sessions(self, start: dt.date, end: dt.date) -> list[dict]:
        """Alpaca's calendar rows between `start` and `end` inclusive: the date and the open and close
        as HH:MM local times of the exchange (Alpaca's convention, in US Eastern time for its US
        market), plus ``tz`` (not Alpaca's) naming that time zone."""
        lo = int(np.searchsorted(self.days, np.datetime64(start)))
        hi = int(np.searchsorted(self.days, np.datetime64(end), side="right"))
        rows = []
        for i in range(lo, hi):
            o = _from_ns(int(self.opens[i])).astimezone(self.tz)
            c = _from_ns(int(self.closes[i])).astimezone(self.tz)
            rows.append(
                {
                    "date": self.dates[i].isoformat(),
                    "open": o.strftime("%H:%M"),
                    "close": c.strftime("%H:%M"),
                    "session_open": o.strftime("%H%M"),
                    "session_close": c.strftime("%H%M"),
                    "tz": str(self.tz),
                }
            )
        return rows


@lru_cache(maxsize=8)
def exchange_calendar(name: str) -> _Calendar:
    """The exchange calendar `name` (exchange_calendars), built once per process; ValueError naming
    it when unknown."""
    import exchange_calendars as xcals
    import pandas as pd

    with warnings.catch_warnings():
        # exchange_calendars trips pandas' own deprecation warnings on construction; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            cls = type(xcals.get_calendar(name))
        except xcals.errors.InvalidCalendarName as exc:
            raise ValueError(f"unknown exchange calendar {name!r}") from exc
        start = pd.Timestamp(f"{CALENDAR_FIRST_YEAR}-01-01")
        lo = cls.bound_min()
        cal = xcals.get_calendar(name, start=max(start, lo) if lo is not None else start)
    sched = cal.schedule
    dates = [d.date() for d in sched.index]
    return _Calendar(
        name=name,
        tz=ZoneInfo(str(cal.tz)),
        dates=dates,
        days=np.array(dates, dtype="datetime64[D]"),
        opens=pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8.copy(),
        closes=pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8.copy(),
    )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _to_ns(ts: dt.datetime) -> int:
    return (ts - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _from_ns(ns: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def _timestamp(value: object, name: str) -> dt.datetime:
    """An ISO-8601 timestamp as an aware UTC datetime (a naive one is read as UTC)."""
    if isinstance(value, dt.datetime):
        ts = value
    else:
        try:
            ts = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise _invalid(f"{name} must be an ISO-8601 timestamp, got {value!r}") from None
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


def _date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise _invalid(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Bar:
    symbol: str
    ts: dt.datetime
    close_time: dt.datetime
    open: float
    high: float
    low: float
    close: float
    spread: float  # half the quoted spread (0 without a usable quote)


@dataclass(slots=True, eq=False)
class _Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    type: str
    time_in_force: str
    order_class: str
    limit_price: float | None
    stop_price: float | None
    submitted_at: dt.datetime
    status: str = "new"
    updated_at: dt.datetime | None = None
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    expired_at: dt.datetime | None = None
    legs: list[_Order] = field(default_factory=list)
    parent: _Order | None = None
    triggered: bool = False  # a stop-limit whose stop was reached (now a limit)
    session: dt.date | None = None  # day orders: the session they live in (None: the next one)
    live_from: dt.datetime = _EPOCH  # bracket legs: the first bar open they are matched on

    @property
    def sign(self) -> float:
        return 1.0 if self.side == "buy" else -1.0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


@dataclass(slots=True)
class _Position:
    qty: float = 0.0
    avg_entry_price: float = 0.0


@dataclass(slots=True)
class _Fill:
    id: str
    order: _Order
    qty: float
    price: float
    commission: float
    ts: dt.datetime
    position_qty: float


def _num(x: float | None) -> str | None:
    """A float as Alpaca's decimal string; repr round-trips exactly, so parity survives JSON."""
    return None if x is None else repr(float(x))


def _iso(ts: dt.datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


# --------------------------------------------------------------------------------------------------
# One account: the matching engine
# --------------------------------------------------------------------------------------------------


class Account:
    """One API key's account: cash, positions, orders, fills and its replay clock. Pure state: the
    HTTP layer calls it; `publish(event, order, fill)` receives every order event."""

    def __init__(self, spec: AccountSpec, publish: Callable[[str, _Order, _Fill | None], None]) -> None:
        self.spec = spec
        self.id = str(uuid.uuid5(_ACCOUNT_NS, spec.key))
        self.costs = spec.costs
        self.calendar = exchange_calendar(spec.calendar)
        self.publish = publish
        self.cash = spec.cash
        self.last_equity = spec.cash
        self.created_at = dt.datetime.now(dt.UTC)
        self.now: dt.datetime | None = None  # the replay clock; None until a bar arrives
        self.session: dt.date | None = None
        self.session_close: dt.datetime | None = None
        self.bars: dict[str, _Bar] = {}  # each symbol's last delivered bar
        self.positions: dict[str, _Position] = {}
        self.orders: list[_Order] = []  # in submission order
        self.by_id: dict[str, _Order] = {}
        self.by_client_id: dict[str, _Order] = {}
        self.waiting: dict[str, list[_Order]] = {}  # open orders (legs included) per symbol
        self.fills: list[_Fill] = []

    # -- clock and valuation ----------------------------------------------------------------------

    def clock_now(self) -> dt.datetime:
        """The replay clock, or wall time before the first bar."""
        return self.now or dt.datetime.now(dt.UTC)

    def mark(self, symbol: str) -> float:
        bar = self.bars.get(symbol)
        return bar.close if bar is not None else math.nan

    def market_values(self) -> tuple[float, float]:
        """(long, short) market value at the last closes; short ≤ 0."""
        long_value = short_value = 0.0
        for symbol, p in self.positions.items():
            v = p.qty * self.mark(symbol)
            if p.qty > 0:
                long_value += v
            else:
                short_value += v
        return long_value, short_value

    def equity(self) -> float:
        """cash + Σ qty · last close."""
        long_value, short_value = self.market_values()
        return self.cash + long_value + short_value

    # -- orders -----------------------------------------------------------------------------------

    def submit(self, body: dict) -> _Order:
        """Validate and accept an order (Alpaca's POST /v2/orders body); ExchangeError when refused."""
        order = self._parse_order(body)
        self._accept(order)
        if order.time_in_force == "cls":
            bar = self.bars[order.symbol]
            self._fill(order, bar.close, bar, bar.close_time)
        return order

    def _parse_order(self, body: dict) -> _Order:
        if not isinstance(body, dict):
            raise _invalid("the order must be a JSON object")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if not isinstance(cid, str) or len(cid) > MAX_CLIENT_ORDER_ID:
            raise _invalid(f"client_order_id must be a string of at most {MAX_CLIENT_ORDER_ID} characters")
        if cid in self.by_client_id:
            raise ExchangeError(422, DUPLICATE_CLIENT_ORDER_ID, CODE_INVALID)
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise _invalid(f"symbol is required, got {symbol!r}")
        if symbol not in self.bars:
            raise ExchangeError(
                422, f'asset "{symbol}" not found (no bars were delivered for it)', CODE_UNPROCESSABLE
            )
        side = _choice(body, "side", SIDES, None)
        kind = _choice(body, "type", ORDER_TYPES, "market")
        tif = _choice(body, "time_in_force", TIMES_IN_FORCE, None)
        order_class = _choice(body, "order_class", ORDER_CLASSES, "simple") or "simple"
        if body.get("notional") is not None:
            raise _invalid("notional orders are not supported by the local exchange; send qty")
        for unsupported in ("trail_price", "trail_percent", "legs"):
            if body.get(unsupported) is not None:
                raise _invalid(f"{unsupported} is not supported by the local exchange")
        qty = self._quantity(body.get("qty"))
        limit = _price(body, "limit_price", required=kind in ("limit", "stop_limit"))
        stop = _price(body, "stop_price", required=kind in ("stop", "stop_limit"))
        if kind in ("market", "stop") and limit is not None:
            raise _invalid(f"limit_price is not allowed for {kind} orders, got {body['limit_price']!r}")
        if kind in ("market", "limit") and stop is not None:
            raise _invalid(f"stop_price is not allowed for {kind} orders, got {body['stop_price']!r}")
        if tif == "cls" and (kind != "market" or order_class != "simple"):
            raise _invalid("time_in_force cls is supported for simple market orders only")
        now = self.clock_now()
        order = _Order(
            id=str(uuid.uuid4()), client_order_id=cid, symbol=symbol, side=side, qty=qty, type=kind,
            time_in_force=tif, order_class=order_class, limit_price=limit, stop_price=stop,
            submitted_at=now, updated_at=now, session=self._order_session(),
        )  # fmt: skip
        if order_class == "bracket":
            order.legs = self._bracket_legs(order, body)
        return order

    def _quantity(self, raw: object) -> float:
        try:
            qty = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _invalid(f"qty must be a number > 0, got {raw!r}") from None
        if not (qty > 0 and math.isfinite(qty)):
            raise _invalid(f"qty must be > 0, got {raw!r}")
        if not self.spec.fractional and qty != math.floor(qty):
            raise _invalid(
                f"qty must be a whole number (fractional trading is off for this account), got {raw!r}"
            )
        return qty

    def _bracket_legs(self, entry: _Order, body: dict) -> list[_Order]:
        if entry.type not in ("market", "limit"):
            raise _invalid(f"bracket orders need a market or limit entry, got type {entry.type!r}")
        if entry.time_in_force not in ("day", "gtc"):
            raise _invalid(f"bracket orders need time_in_force day or gtc, got {entry.time_in_force!r}")
        take, loss = body.get("take_profit"), body.get("stop_loss")
        if not isinstance(take, dict) or not isinstance(loss, dict):
            raise _invalid("bracket orders require take_profit.limit_price and stop_loss.stop_price")
        if loss.get("limit_price") is not None:
            raise _invalid("stop_loss.limit_price (a stop-limit exit) is not supported by the local exchange")
        tp = _price(take, "limit_price", required=True, prefix="take_profit.")
        sl = _price(loss, "stop_price", required=True, prefix="stop_loss.")
        if (tp <= sl) if entry.side == "buy" else (tp >= sl):
            raise _invalid(
                f"take_profit.limit_price {tp!r} must be {'above' if entry.side == 'buy' else 'below'} "
                f"stop_loss.stop_price {sl!r} for a {entry.side} bracket"
            )
        exit_side = "sell" if entry.side == "buy" else "buy"
        legs = []
        for kind, limit, stop in (("limit", tp, None), ("stop", None, sl)):
            legs.append(
                _Order(
                    id=str(uuid.uuid4()), client_order_id=str(uuid.uuid4()), symbol=entry.symbol,
                    side=exit_side, qty=entry.qty, type=kind, time_in_force=entry.time_in_force,
                    order_class="bracket", limit_price=limit, stop_price=stop, status="held",
                    submitted_at=entry.submitted_at, updated_at=entry.submitted_at, parent=entry,
                    session=entry.session,
                )
            )  # fmt: skip
        return legs

    def _order_session(self) -> dt.date | None:
        """The session a day order submitted now lives in: the current one before its close, else the
        next one (None until it arrives)."""
        if self.session is None or self.now is None or self.session_close is None:
            return None
        return self.session if self.now < self.session_close else None

    def _accept(self, order: _Order) -> None:
        for o in (order, *order.legs):
            self.orders.append(o)
            self.by_id[o.id] = o
            self.by_client_id[o.client_order_id] = o
        self.waiting.setdefault(order.symbol, []).extend((order, *order.legs))
        self.publish("new", order, None)

    def cancel(self, order_id: str) -> _Order:
        """Cancel an open order and the rest of its bracket (a leg takes its entry and the other leg
        along); 404 unknown, 422 when already done."""
        order = self.by_id.get(order_id)
        if order is None:
            raise ExchangeError(404, f"order {order_id} not found", CODE_NOT_FOUND)
        if not order.is_open:
            raise ExchangeError(422, f'order is already in "{order.status}" state', CODE_UNPROCESSABLE)
        root = order.parent or order
        for o in (root, *root.legs):
            if o.is_open:
                self._close(o, "canceled")
        return order

    def cancel_all(self) -> list[_Order]:
        """Cancel every open order; the orders cancelled, oldest first."""
        done = [o for o in self.orders if o.is_open]
        for o in done:
            if o.is_open:  # a parent's cancel already took its legs
                self._close(o, "canceled")
        return done

    def close_position(self, symbol: str, qty: float | None = None) -> _Order:
        """A market order that closes (part of) the position in `symbol`; 404 when there is none."""
        pos = self.positions.get(symbol)
        if pos is None or pos.qty == 0:
            raise ExchangeError(404, "position does not exist", CODE_NOT_FOUND)
        size = abs(pos.qty) if qty is None else min(qty, abs(pos.qty))
        return self.submit(
            {"symbol": symbol, "qty": size, "side": "sell" if pos.qty > 0 else "buy", "type": "market",
             "time_in_force": "day"}
        )  # fmt: skip

    def _close(self, order: _Order, status: str) -> None:
        """Take an open order off the book as canceled or expired, and tell the subscribers."""
        now = self.clock_now()
        order.status = status
        order.updated_at = now
        if status == "canceled":
            order.canceled_at = now
        else:
            order.expired_at = now
        book = self.waiting.get(order.symbol)
        if book is not None and order in book:
            book.remove(order)
        self.publish(status, order, None)

    # -- bars -------------------------------------------------------------------------------------

    def deliver(self, raw_bars: Iterable[dict]) -> list[_Bar]:
        """Apply the replay's next bars in ts order (module docstring); the bars applied. Bars not
        after their symbol's last delivered ts are ignored."""
        parsed = sorted(
            (self._parse_bar(i, b) for i, b in enumerate(raw_bars)), key=lambda b: (b.ts, b.symbol)
        )
        applied: list[_Bar] = []
        i = 0
        while i < len(parsed):
            j = i
            group: list[_Bar] = []
            seen: set[str] = set()
            while j < len(parsed) and parsed[j].ts == parsed[i].ts:
                bar = parsed[j]
                last = self.bars.get(bar.symbol)
                if (last is None or bar.ts > last.ts) and bar.symbol not in seen:
                    group.append(bar)
                    seen.add(bar.symbol)
                j += 1
            if group:
                self._step(group)
                applied.extend(group)
            i = j
        return applied

    def _parse_bar(self, i: int, raw: dict) -> _Bar:
        if not isinstance(raw, dict):
            raise _invalid(f"bars[{i}] must be an object")
        symbol = raw.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise _invalid(f"bars[{i}].symbol is required, got {symbol!r}")
        ts = _timestamp(raw.get("ts"), f"bars[{i}].ts")
        tf = str(raw.get("timeframe", "1min"))
        m = _TIMEFRAME.match(tf)
        if not m or int(m.group(1)) <= 0:
            raise _invalid(f"bars[{i}].timeframe must be like 1min, 5min, 1h or 1d, got {tf!r}")
        prices = {}
        for name in ("open", "high", "low", "close"):
            v = raw.get(name)
            try:
                prices[name] = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise _invalid(f"bars[{i}].{name} must be a number, got {v!r}") from None
            if not (prices[name] > 0 and math.isfinite(prices[name])):
                raise _invalid(f"bars[{i}].{name} must be a finite price > 0, got {v!r}")
        bid, ask = raw.get("bid"), raw.get("ask")
        spread = half_spread(float(bid), float(ask)) if bid is not None and ask is not None else 0.0
        close_time = ts + int(m.group(1)) * _UNIT[m.group(2)]
        if m.group(2) == "d":  # a daily bar (stamped at its session) closes with its session
            close_time = self.calendar.session_close(self.calendar.session_date(ts)) or close_time
        return _Bar(
            symbol, ts, close_time, prices["open"], prices["high"], prices["low"], prices["close"], spread
        )

    def _step(self, group: list[_Bar]) -> None:
        """One delivered timestamp: session roll, open fills, resting orders, marks, borrow, ioc."""
        ts = group[0].ts
        day = self.calendar.session_date(ts)
        if day != self.session:
            if self.session is not None:
                self.last_equity = self.equity()
            self.session = day
            self.session_close = self.calendar.session_close(day)
            self._expire_day_orders(day)
        for bar in group:  # 1: market orders at the open (the backtest's next_open)
            for order in [
                o for o in self.waiting.get(bar.symbol, ()) if o.type == "market" and o.status == "new"
            ]:
                self._fill(order, bar.open, bar, bar.ts)
        for bar in group:  # 2: resting orders inside the bar
            self._match_resting(bar)
        for bar in group:  # 3: marks
            self.bars[bar.symbol] = bar
        if self.costs.borrow_rate > 0:  # 4: borrow on the shorts held at this close
            for symbol, p in self.positions.items():
                fee = borrow_fee(
                    p.qty, self.mark(symbol), self.costs.borrow_rate, self.costs.periods_per_year
                )
                if fee > 0.0:
                    self.cash -= fee
        close = max(b.close_time for b in group)
        self.now = close if self.now is None or close > self.now else self.now
        for bar in group:  # 5: ioc orders had their bar
            for order in [o for o in self.waiting.get(bar.symbol, ()) if o.time_in_force == "ioc"]:
                if order.status == "new" and order.submitted_at <= bar.ts:
                    self._close(order, "canceled")

    def _expire_day_orders(self, day: dt.date) -> None:
        for book in self.waiting.values():
            for order in list(book):
                if order.time_in_force != "day" or order.type == "market" or order.status == "held":
                    continue  # market orders wait for their bar; held legs live and die with their entry
                if order.session is None:
                    order.session = day
                elif order.session < day and order.is_open:
                    self._close(order, "expired")
                    for leg in order.legs:
                        if leg.is_open:
                            self._close(leg, "expired")

    def _match_resting(self, bar: _Bar) -> None:
        book = self.waiting.get(bar.symbol)
        if not book:
            return
        for order in list(book):
            if order.status != "new" or order.type == "market" or bar.ts < order.live_from:
                continue
            if order.parent is not None:
                if order.type == "limit":  # a bracket: both legs are judged together, once
                    self._match_bracket(order, order.parent.legs[1], bar)
                continue
            ref = _reference(order, bar)
            if ref is not None:
                self._fill(order, ref, bar, bar.ts)

    def _match_bracket(self, take: _Order, stop: _Order, bar: _Bar) -> None:
        """The exit legs of a bracket in one bar (the stops rule of the module docstring)."""
        if take.status != "new" or stop.status != "new":
            return
        stop_at_open = _crossed(stop, bar.open)
        take_at_open = _crossed(take, bar.open)
        if stop_at_open:
            self._fill(stop, bar.open, bar, bar.ts)
        elif take_at_open:
            self._fill(take, bar.open, bar, bar.ts)
        elif _crossed(stop, bar.low if stop.side == "sell" else bar.high):
            self._fill(stop, stop.stop_price, bar, bar.ts)
        elif _crossed(take, bar.high if take.side == "sell" else bar.low):
            self._fill(take, take.limit_price, bar, bar.ts)

    def _fill(self, order: _Order, reference: float, bar: _Bar, ts: dt.datetime) -> None:
        """Execute the whole order at `reference` moved by slippage and half the spread (a limit never
        worse than its limit); cash, position, order, fill record and events."""
        sign = order.sign
        price = fill_price(reference, sign, self.costs.slippage_bps, bar.spread)
        if order.limit_price is not None and (order.type == "limit" or order.triggered):
            price = min(price, order.limit_price) if sign > 0 else max(price, order.limit_price)
        qty = order.qty - order.filled_qty
        c = self.costs
        comm = commission(
            qty, price, c.commission_per_share, c.commission_per_order, c.commission_bps, c.commission_min
        )
        delta = sign * qty
        self.cash += -delta * price - comm  # the backtest's cash flow, term for term
        pos = self.positions.get(order.symbol)
        if pos is None:
            pos = self.positions[order.symbol] = _Position()
        old = pos.qty
        new = old + delta
        if old == 0 or (old > 0) == (delta > 0):
            pos.avg_entry_price = (abs(old) * pos.avg_entry_price + qty * price) / abs(new)
        elif new != 0 and (new > 0) != (old > 0):
            pos.avg_entry_price = price  # flipped: the remainder was entered at this fill
        pos.qty = new
        if new == 0:
            del self.positions[order.symbol]
        order.status = "filled"
        order.filled_qty = order.qty
        order.filled_avg_price = price
        order.filled_at = ts
        order.updated_at = ts
        self.waiting[order.symbol].remove(order)
        fill = _Fill(str(uuid.uuid4()), order, qty, price, comm, ts, new)
        self.fills.append(fill)
        self.publish("fill", order, fill)
        for leg in order.legs:  # a bracket's entry filled: its exits go live
            leg.status = "new"
            leg.updated_at = ts
            leg.session = self.session
            # From this bar when the entry filled at its open (the rest of the bar comes after the
            # entry), else from the next bar (which of the bar's prices came first is unknown).
            leg.live_from = bar.ts if reference == bar.open else bar.close_time
            self.publish("new", leg, None)
        if order.parent is not None:  # one exit filled: the other is cancelled (OCO)
            for sibling in order.parent.legs:
                if sibling is not order and sibling.is_open:
                    self._close(sibling, "canceled")


def _choice(body: dict, name: str, allowed: frozenset[str], default: str | None) -> str:
    value = body.get(name, default)
    if value not in allowed:
        raise _invalid(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]


def _price(body: dict, name: str, *, required: bool, prefix: str = "") -> float | None:
    raw = body.get(name)
    if raw is None:
        if required:
            raise _invalid(f"{prefix}{name} is required for this order")
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _invalid(f"{prefix}{name} must be a number, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise _invalid(f"{prefix}{name} must be a finite price > 0, got {raw!r}")
    return value


def _crossed(order: _Order, price: float) -> bool:
    """Whether `price` reaches the order's trigger: its stop (stops, untriggered stop-limits) or its
    limit (limits, triggered stop-limits)."""
    if order.type == "stop" or (order.type == "stop_limit" and not order.triggered):
        return price >= order.stop_price if order.side == "buy" else price <= order.stop_price
    return price <= order.limit_price if order.side == "buy" else price >= order.limit_price


def _reference(order: _Order, bar: _Bar) -> float | None:
    """The reference price at which a resting order fills in `bar` (module docstring), or None."""
    buy = order.side == "buy"
    if order.type == "stop_limit" and not order.triggered:
        if _crossed(order, bar.open):
            trigger = bar.open
        elif _crossed(order, bar.high if buy else bar.low):
            trigger = order.stop_price
        else:
            return None
        order.triggered = True
        # Triggered: a limit from here on, marketable in this bar only at the trigger price (after
        # the trigger the order of the bar's high and low is unknown).
        return trigger if _crossed(order, trigger) else None
    if _crossed(order, bar.open):
        return bar.open
    if _crossed(order, bar.high if (buy == (order.type == "stop")) else bar.low):
        return order.stop_price if order.type == "stop" else order.limit_price
    return None


# --------------------------------------------------------------------------------------------------
# JSON (Alpaca's shapes)
# --------------------------------------------------------------------------------------------------


def order_json(o: _Order, legs: bool = True) -> dict:
    """An order as Alpaca's API shows it."""
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "created_at": o.submitted_at.isoformat(),
        "updated_at": _iso(o.updated_at),
        "submitted_at": o.submitted_at.isoformat(),
        "filled_at": _iso(o.filled_at),
        "expired_at": _iso(o.expired_at),
        "canceled_at": _iso(o.canceled_at),
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": _asset_id(o.symbol),
        "symbol": o.symbol,
        "asset_class": "us_equity",
        "notional": None,
        "qty": _num(o.qty),
        "filled_qty": _num(o.filled_qty),
        "filled_avg_price": _num(o.filled_avg_price),
        "order_class": o.order_class,
        "order_type": o.type,
        "type": o.type,
        "side": o.side,
        "time_in_force": o.time_in_force,
        "limit_price": _num(o.limit_price),
        "stop_price": _num(o.stop_price),
        "status": o.status,
        "extended_hours": False,
        "legs": [order_json(leg, False) for leg in o.legs] if legs and o.legs else None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
    }


@lru_cache(maxsize=4096)
def _asset_id(symbol: str) -> str:
    return str(uuid.uuid5(_ACCOUNT_NS, "asset:" + symbol))


def account_json(a: Account) -> dict:
    """The account as Alpaca's GET /v2/account shows it."""
    long_value, short_value = a.market_values()
    equity = a.cash + long_value + short_value
    buying_power = max(0.0, MARGIN_MULTIPLIER * equity - (long_value - short_value))
    return {
        "id": a.id,
        "account_number": "PA" + a.id.replace("-", "")[:10].upper(),
        "status": "ACTIVE",
        "crypto_status": None,
        "currency": "USD",
        "buying_power": _num(buying_power),
        "regt_buying_power": _num(buying_power),
        "non_marginable_buying_power": _num(max(a.cash, 0.0)),
        "cash": _num(a.cash),
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "portfolio_value": _num(equity),
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": a.created_at.isoformat(),
        "trade_suspended_by_user": False,
        "multiplier": _num(MARGIN_MULTIPLIER),
        "shorting_enabled": True,
        "equity": _num(equity),
        "last_equity": _num(a.last_equity),
        "long_market_value": _num(long_value),
        "short_market_value": _num(short_value),
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "daytrade_count": 0,
    }


def position_json(a: Account, symbol: str, p: _Position) -> dict:
    """A position as Alpaca's GET /v2/positions shows it (signed qty)."""
    price = a.mark(symbol)
    value = p.qty * price
    basis = p.qty * p.avg_entry_price
    return {
        "asset_id": _asset_id(symbol),
        "symbol": symbol,
        "exchange": "",
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": _num(p.avg_entry_price),
        "qty": _num(p.qty),
        "qty_available": _num(p.qty),
        "side": "long" if p.qty > 0 else "short",
        "market_value": _num(value),
        "cost_basis": _num(basis),
        "unrealized_pl": _num(value - basis),
        "unrealized_plpc": _num((value - basis) / abs(basis) if basis else 0.0),
        "current_price": _num(price),
        "lastday_price": _num(price),
        "change_today": "0",
    }


def fill_json(a: Account, f: _Fill) -> dict:
    """A fill as Alpaca's FILL account activity, plus ``client_order_id`` and ``commission`` (not
    Alpaca's; the adapter reads them when present)."""
    o = f.order
    return {
        "id": f"{f.ts.strftime('%Y%m%d%H%M%S%f')}::{f.id}",
        "account_id": a.id,
        "activity_type": "FILL",
        "transaction_time": f.ts.isoformat(),
        "type": "fill",
        "price": _num(f.price),
        "qty": _num(f.qty),
        "side": o.side,
        "symbol": o.symbol,
        "leaves_qty": "0",
        "order_id": o.id,
        "cum_qty": _num(o.filled_qty),
        "order_status": o.status,
        "client_order_id": o.client_order_id,
        "commission": _num(f.commission),
    }


def trade_update_json(event: str, order: _Order, fill: _Fill | None, ts: dt.datetime) -> dict:
    """A trade_updates stream message."""
    data: dict = {"event": event, "order": order_json(order), "timestamp": ts.isoformat()}
    if fill is not None:
        data.update(
            execution_id=fill.id,
            price=_num(fill.price),
            qty=_num(fill.qty),
            position_qty=_num(fill.position_qty),
            commission=_num(fill.commission),
        )
    return {"stream": "trade_updates", "data": data}


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


class Exchange:
    """Every account of this server and the trade-update subscribers (by API key, so a reset
    account keeps its streams)."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.subscribers: dict[str, set[asyncio.Queue]] = {}

    def create(self, spec: AccountSpec) -> Account:
        """Create or reset the account of `spec.key`."""

        def publish(event: str, order: _Order, fill: _Fill | None) -> None:
            queues = self.subscribers.get(spec.key)
            if queues:
                ts = fill.ts if fill is not None else account.clock_now()
                message = orjson.dumps(trade_update_json(event, order, fill, ts)).decode()
                for q in queues:
                    q.put_nowait(message)

        account = Account(spec, publish)
        self.accounts[spec.key] = account
        return account


_EXCHANGE = web.AppKey("exchange", Exchange)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, code: int) -> web.Response:
    return _json({"code": code, "message": message}, status)


async def _body(request: web.Request) -> dict:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise _invalid("the request body must be JSON") from None


def _account(request: web.Request) -> Account:
    key = request.headers.get(KEY_HEADER)
    account = request.app[_EXCHANGE].accounts.get(key) if key else None
    if account is None:
        raise ExchangeError(401, "request is not authorized", CODE_UNAUTHORIZED)
    return account


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ExchangeError as exc:
        return _error(exc.status, str(exc), exc.code)


async def get_account(request: web.Request) -> web.Response:
    return _json(account_json(_account(request)))


async def post_order(request: web.Request) -> web.Response:
    account = _account(request)
    return _json(order_json(account.submit(await _body(request))))


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


async def get_orders(request: web.Request) -> web.Response:
    account = _account(request)
    q = request.query
    status = q.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise _invalid(f"status must be open, closed or all, got {status!r}")
    try:
        limit = min(int(q.get("limit", 50)), MAX_ORDERS_PAGE)
    except ValueError:
        raise _invalid(f"limit must be an integer, got {q.get('limit')!r}") from None
    after = _timestamp(q["after"], "after") if "after" in q else None
    until = _timestamp(q["until"], "until") if "until" in q else None
    nested = _flag(q.get("nested"))
    symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
    side = q.get("side")
    chosen = []
    for o in account.orders:
        if nested and o.parent is not None:
            continue
        if status != "all" and o.is_open != (status == "open"):
            continue
        if (after is not None and o.submitted_at <= after) or (until is not None and o.submitted_at > until):
            continue
        if (symbols is not None and o.symbol not in symbols) or (side and o.side != side):
            continue
        chosen.append(o)
    if q.get("direction", "desc") == "desc":
        chosen.reverse()
    return _json([order_json(o, nested) for o in chosen[:limit]])


async def delete_orders(request: web.Request) -> web.Response:
    account = _account(request)
    done = account.cancel_all()
    return _json([{"id": o.id, "status": 200, "body": order_json(o, False)} for o in done], 207)


def _order_of(request: web.Request) -> _Order:
    account = _account(request)
    order = account.by_id.get(request.match_info["order_id"])
    if order is None:
        raise ExchangeError(404, f"order {request.match_info['order_id']} not found", CODE_NOT_FOUND)
    return order


async def get_order(request: web.Request) -> web.Response:
    return _json(order_json(_order_of(request)))


async def delete_order(request: web.Request) -> web.Response:
    _account(request).cancel(request.match_info["order_id"])
    return web.Response(status=204)


async def get_order_by_client_id(request: web.Request) -> web.Response:
    account = _account(request)
    cid = request.query.get("client_order_id", "")
    order = account.by_client_id.get(cid)
    if order is None:
        raise ExchangeError(404, f"order with client_order_id {cid!r} not found", CODE_NOT_FOUND)
    return _json(order_json(order))


async def get_positions(request: web.Request) -> web.Response:
    a = _account(request)
    return _json([position_json(a, s, p) for s, p in sorted(a.positions.items())])


async def get_position(request: web.Request) -> web.Response:
    a = _account(request)
    symbol = request.match_info["symbol"]
    p = a.positions.get(symbol)
    if p is None:
        raise ExchangeError(404, "position does not exist", CODE_NOT_FOUND)
    return _json(position_json(a, symbol, p))


async def delete_position(request: web.Request) -> web.Response:
    a = _account(request)
    q = request.query
    symbol = request.match_info["symbol"]
    qty = None
    if "qty" in q:
        qty = a._quantity(q["qty"])
    elif "percentage" in q:
        p = a.positions.get(symbol)
        qty = abs(p.qty) * float(q["percentage"]) / 100.0 if p is not None else None
    return _json(order_json(a.close_position(symbol, qty)))


async def delete_positions(request: web.Request) -> web.Response:
    a = _account(request)
    if _flag(request.query.get("cancel_orders")):
        a.cancel_all()
    out = []
    for symbol in sorted(a.positions):
        order = a.close_position(symbol)
        out.append({"symbol": symbol, "status": 200, "order_id": order.id, "body": order_json(order)})
    return _json(out, 207)


async def get_clock(request: web.Request) -> web.Response:
    a = _account(request)
    return _json(a.calendar.clock(a.clock_now()))


async def get_calendar(request: web.Request) -> web.Response:
    a = _account(request)
    q = request.query
    cal = a.calendar
    start = _date(q["start"], "start") if q.get("start") else cal.dates[0]
    end = _date(q["end"], "end") if q.get("end") else cal.dates[-1]
    return _json(cal.sessions(start, end))


async def get_fill_activities(request: web.Request) -> web.Response:
    a = _account(request)
    q = request.query
    after = _timestamp(q["after"], "after") if "after" in q else None
    until = _timestamp(q["until"], "until") if "until" in q else None
    try:
        size = min(int(q.get("page_size", MAX_ACTIVITIES_PAGE)), MAX_ACTIVITIES_PAGE)
    except ValueError:
        raise _invalid(f"page_size must be an integer, got {q.get('page_size')!r}") from None
    rows = [
        fill_json(a, f)
        for f in a.fills
        if (after is None or f.ts > after) and (until is None or f.ts <= until)
    ]
    if q.get("direction", "desc") == "desc":
        rows.reverse()
    token = q.get("page_token")
    if token:
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(token) + 1 :] if token in ids else []
    return _json(rows[:size])


async def get_activities(request: web.Request) -> web.Response:
    types = request.query.get("activity_types", "FILL")
    if types != "FILL":
        raise _invalid(f"the local exchange records FILL activities only, got activity_types={types!r}")
    return await get_fill_activities(request)


async def post_account(request: web.Request) -> web.Response:
    try:
        spec = AccountSpec.model_validate(await _body(request))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "account"
        raise _invalid(f"{where}: {err['msg']} (got {err.get('input')!r})") from None
    try:
        account = request.app[_EXCHANGE].create(spec)
    except ValueError as exc:
        raise _invalid(f"calendar: {exc}") from None
    return _json(account_json(account))


async def post_bars(request: web.Request) -> web.Response:
    a = _account(request)
    body = await _body(request)
    bars = body.get("bars") if isinstance(body, dict) else None
    if not isinstance(bars, list):
        raise _invalid("the body must be {bars: [...]}")
    applied = a.deliver(bars)
    return _json({"applied": len(applied), "now": _iso(a.now)})


async def get_health(request: web.Request) -> web.Response:
    return _json({"ok": True, "pid": os.getpid(), "accounts": len(request.app[_EXCHANGE].accounts)})


async def stream(request: web.Request) -> web.WebSocketResponse:
    """The trade-update stream: authenticate, then listen to trade_updates (Alpaca's protocol)."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    exchange = request.app[_EXCHANGE]
    key: str | None = None
    queue: asyncio.Queue | None = None
    sender: asyncio.Task | None = None

    async def forward(q: asyncio.Queue) -> None:
        while True:
            await ws.send_str(await q.get())

    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                await ws.send_str(
                    orjson.dumps({"stream": "error", "data": {"error": "invalid JSON"}}).decode()
                )
                continue
            action = data.get("action")
            if action in ("authenticate", "auth"):
                payload = data.get("data") or {}
                key = payload.get("key_id") or data.get("key")
                ok = key in exchange.accounts
                status = "authorized" if ok else "unauthorized"
                reply = {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
                await ws.send_str(orjson.dumps(reply).decode())
                if not ok:
                    break
            elif action == "listen":
                streams = [s for s in (data.get("data") or {}).get("streams", []) if s == "trade_updates"]
                if key is None:
                    await ws.send_str(
                        orjson.dumps({"stream": "error", "data": {"error": "not authorized"}}).decode()
                    )
                    continue
                if streams and queue is None:
                    queue = asyncio.Queue()
                    exchange.subscribers.setdefault(key, set()).add(queue)
                    sender = asyncio.create_task(forward(queue))
                reply = {"stream": "listening", "data": {"streams": streams}}
                await ws.send_str(orjson.dumps(reply).decode())
    finally:
        if queue is not None and key is not None:
            exchange.subscribers.get(key, set()).discard(queue)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return ws


def build_app() -> web.Application:
    """The exchange's aiohttp application (empty: accounts are created through the admin path)."""
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024 * 1024)
    app[_EXCHANGE] = Exchange()
    r = app.router
    r.add_get("/v2/account", get_account)
    r.add_get("/v2/account/activities/FILL", get_fill_activities)
    r.add_get("/v2/account/activities", get_activities)
    r.add_get("/v2/orders", get_orders)
    r.add_post("/v2/orders", post_order)
    r.add_delete("/v2/orders", delete_orders)
    r.add_get("/v2/orders:by_client_order_id", get_order_by_client_id)
    r.add_get("/v2/orders/{order_id}", get_order)
    r.add_delete("/v2/orders/{order_id}", delete_order)
    r.add_get("/v2/positions", get_positions)
    r.add_delete("/v2/positions", delete_positions)
    r.add_get("/v2/positions/{symbol}", get_position)
    r.add_delete("/v2/positions/{symbol}", delete_position)
    r.add_get("/v2/clock", get_clock)
    r.add_get("/v2/calendar", get_calendar)
    r.add_get(STREAM_PATH, stream)
    r.add_post("/_quanto/accounts", post_account)
    r.add_post("/_quanto/bars", post_bars)
    r.add_get("/_quanto/health", get_health)
    return app


def warm_up() -> None:
    """Load the compiled fill and cost functions now, so the first fill does not pay for it."""
    fill_price(1.0, 1.0, 0.0, half_spread(1.0, 1.0))
    commission(1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    borrow_fee(-1.0, 1.0, 0.0, 1.0)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve the exchange on host:port until interrupted (blocking)."""
    warm_up()
    # On SIGTERM, open connections (keep-alive clients, trade-update streams) get a short grace
    # instead of aiohttp's 60 s.
    web.run_app(
        build_app(), host=host, port=port, access_log=None, print=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )


@dataclass
class RunningExchange:
    """An exchange served from a background thread of this process (tests, benchmarks, notebooks)."""

    url: str
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        """Shut the server down and join its thread."""
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def run_in_thread(port: int = 0, host: str = "127.0.0.1") -> RunningExchange:
    """Start the exchange in a daemon thread of this process on `port` (0: a free one); its base URL
    is `.url`."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(), access_log=None)
    ready: dict = {}

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, host, port)
            loop.run_until_complete(site.start())
            ready["port"] = site._server.sockets[0].getsockname()[1]  # the bound port when 0 was asked
        except BaseException as exc:  # handed to the caller below
            ready["error"] = exc
            return
        finally:
            ready.setdefault("done", True)
            started.set()
        loop.run_forever()

    started = threading.Event()
    thread = threading.Thread(target=main, name=f"paper-exchange-{port}", daemon=True)
    thread.start()
    started.wait(timeout=30)
    if "error" in ready:
        raise ready["error"]
    return RunningExchange(f"http://{host}:{ready['port']}", loop, runner, thread)


def main(argv: list[str] | None = None) -> None:
    """`python -m quanto.execution.paper_exchange --port P [--host H]`."""
    parser = argparse.ArgumentParser(
        description="Quanto's local paper exchange (Alpaca Trading API v2 subset)"
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    serve(args.port, args.host)


if __name__ == "__main__":
    main()
