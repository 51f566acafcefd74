"""The Alpaca broker adapter: the `Broker` protocol over alpaca-py's TradingClient and TradingStream.

One adapter for Alpaca's paper and live Trading API and for the local paper exchange
(`quanto.execution.paper_exchange`), which serves the same paths: `base_url` picks the endpoint
(alpaca-py's ``url_override``), `paper` only names the mode.

- **Idempotent submit.** A rejection "client_order_id must be unique" means the order is already
  there: it is looked up by its client_order_id and returned. A network error, timeout, 429 or 5xx
  may or may not have placed the order: it is looked up too, and returned when found; otherwise a
  retryable BrokerError. Other 4xx answers are non-retryable BrokerErrors naming the order
  (client_order_id, symbol, side, qty) and the broker's reason.
- **Trade updates.** `stream_updates(callback)` runs a TradingStream in a daemon thread and calls
  `callback(TradeUpdate)` from it for every event; the returned `UpdateStream` waits until the stream
  listens (`wait_listening`) and stops it (`stop`, or use it as a context manager). The stream
  reconnects by itself after a drop (alpaca-py's backoff); events sent while disconnected are not
  replayed, so a consumer reconciles through `orders()` / `fills()` after a gap.
- **Fills** come from the FILL account activities (paged by `after`, oldest first). The local
  exchange adds each fill's client_order_id and commission; from Alpaca, which has neither, the
  client_order_id comes from the order (looked up once per order) and the commission is 0
  (Alpaca charges none on equities).
- Secrets are held as `SecretStr`, never logged or shown in reprs.

The adapter uses two private corners of alpaca-py, both pinned by tests: a requests session with a
default timeout replaces `TradingClient._session` (alpaca-py sets none, and a hung connection must
become a retryable error), and `TradingStream._dispatch` is extended to notice the ``listening``
acknowledgement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order as AlpacaOrder
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream
from pydantic import SecretStr

from quanto.config.trading import BrokerConfig
from quanto.execution.broker import (
    Account,
    BrokerError,
    Clock,
    Fill,
    Order,
    OrderRequest,
    Position,
    Session,
    TradeUpdate,
)

KEY_ENV = "ALPACA_API_KEY_ID"
SECRET_ENV = "ALPACA_API_SECRET_KEY"
LOCAL_KEY = "quanto-local"  # the local exchange's account when ALPACA_API_KEY_ID is unset
LOCAL_SECRET = "quanto-local"  # the local exchange checks no secret
DUPLICATE_ID = "client_order_id must be unique"
REQUEST_TIMEOUT_S = 10.0
ORDERS_PAGE = 500  # Alpaca's maximum page of GET /v2/orders
ACTIVITIES_PAGE = 100  # Alpaca's maximum page of account activities
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CALENDAR_TZ = "America/New_York"  # Alpaca's calendar times; the local exchange names its own in `tz`
_SUBMIT = {
    "market": MarketOrderRequest,
    "limit": LimitOrderRequest,
    "stop": StopOrderRequest,
    "stop_limit": StopLimitOrderRequest,
}


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout (alpaca-py passes none)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


class AlpacaBroker:
    """The `Broker` protocol at `base_url` (Alpaca paper, live, or the local exchange)."""

    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret: str,
        paper: bool = True,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not key_id or not secret:
            raise ValueError(f"Alpaca credentials are empty: set {KEY_ENV} and {SECRET_ENV}")
        self.base_url = base_url.rstrip("/")
        self.paper = paper
        self._key_id = SecretStr(key_id)
        self._secret = SecretStr(secret)
        self._client = TradingClient(key_id, secret, paper=paper, url_override=self.base_url)
        session = _TimeoutSession(timeout_s)  # see the module docstring
        # The local exchange is on loopback: no proxy or .netrc applies, and looking them up in the
        # environment on every request costs about as much as the request itself.
        session.trust_env = urlsplit(self.base_url).hostname not in LOOPBACK
        self._client._session = session
        self._client_ids: dict[str, str] = {}  # order id -> client_order_id, for Alpaca's fills

    def __repr__(self) -> str:
        return f"AlpacaBroker({self.base_url!r}, paper={self.paper})"

    @classmethod
    def from_env(cls, config: BrokerConfig, mode: str) -> AlpacaBroker:
        """The broker of a job's `broker` section in `mode` (paper|live), keys from ALPACA_API_KEY_ID /
        ALPACA_API_SECRET_KEY; the local exchange accepts any key (default `quanto-local`)."""
        key = os.environ.get(KEY_ENV, "")
        secret = os.environ.get(SECRET_ENV, "")
        if config.kind == "local":
            key, secret = key or LOCAL_KEY, secret or LOCAL_SECRET
        elif not key or not secret:
            missing = [name for name, v in ((KEY_ENV, key), (SECRET_ENV, secret)) if not v]
            raise ValueError(f"broker kind alpaca needs the environment variables {missing} (mode {mode})")
        return cls(config.base_url(mode), key, secret, paper=mode != "live")

    @property
    def key_id(self) -> str:
        """The API key id (the local exchange's account key)."""
        return self._key_id.get_secret_value()

    # -- account ----------------------------------------------------------------------------------

    def account(self) -> Account:
        """Cash and equity. `last_equity` is the equity at the previous session's close."""
        a = self._call("read the account", self._client.get_account)
        return Account(
            account_id=str(a.id),
            cash=_float(a.cash),
            equity=_float(a.equity),
            last_equity=_float(a.last_equity),
            buying_power=_float(a.buying_power),
            status=_value(a.status),
            currency=a.currency or "USD",
        )

    def positions(self) -> list[Position]:
        """Every open position (signed qty)."""
        rows = self._call("list positions", self._client.get_all_positions)
        return [
            Position(
                symbol=p.symbol,
                qty=_float(p.qty),
                avg_entry_price=_float(p.avg_entry_price),
                current_price=_float(p.current_price),
                market_value=_float(p.market_value),
            )
            for p in rows
        ]

    # -- orders -----------------------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> Order:
        """Submit an order, idempotently (module docstring)."""
        what = f"order {request.client_order_id} ({request.side} {request.qty:g} {request.symbol})"
        try:
            alpaca_request = _alpaca_request(request)
        except ValueError as exc:
            raise BrokerError(f"{what} is invalid: {exc}") from exc
        try:
            return self._order(self._client.submit_order(alpaca_request))
        except APIError as exc:
            status, reason = exc.status_code, _reason(exc)
            if status == 422 and DUPLICATE_ID in reason:
                existing = self.order_by_client_id(request.client_order_id)
                if existing is not None:
                    return existing
            if status is None or status == 429 or status >= 500:
                return self._recover(request, what, f"{status} {reason}")
            raise BrokerError(f"{what} rejected by the broker ({status}): {reason}", status=status) from exc
        except requests.RequestException as exc:
            return self._recover(request, what, f"{type(exc).__name__}: {exc}")

    def _recover(self, request: OrderRequest, what: str, reason: str) -> Order:
        """After an answer that may hide a placed order: the order when the broker has it, else a
        retryable BrokerError."""
        try:
            existing = self.order_by_client_id(request.client_order_id)
        except BrokerError:
            existing = None
        if existing is not None:
            return existing
        raise BrokerError(f"{what} not confirmed ({reason}); retry it (same client_order_id)", retryable=True)

    def order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order with this client_order_id, or None."""
        try:
            return self._order(self._client.get_order_by_client_id(client_order_id))
        except APIError as exc:
            if exc.status_code == 404:
                return None
            raise _broker_error(f"look up order {client_order_id}", exc) from exc
        except requests.RequestException as exc:
            raise _broker_error(f"look up order {client_order_id}", exc) from exc

    def orders(
        self, status: Literal["open", "closed", "all"] = "all", after: dt.datetime | None = None
    ) -> list[Order]:
        """Orders by status submitted after `after`, oldest first; bracket legs are orders of their own
        (and also under their entry's `legs`). Pages by submission time; more than one page of orders
        submitted at the same instant cannot be told apart by Alpaca's API (the last page repeats)."""
        seen: dict[str, Order] = {}
        cursor = after
        while True:
            query = GetOrdersRequest(
                status=QueryOrderStatus(status),
                after=cursor,
                direction=Sort.ASC,
                limit=ORDERS_PAGE,
                nested=False,
            )
            page = self._call("list orders", self._client.get_orders, query)
            new = [o for o in map(self._order, page) if o.id not in seen]
            for o in new:
                seen[o.id] = o
            if len(page) < ORDERS_PAGE or not new:
                break
            # Step back one microsecond: orders sharing the page's last instant come again (deduplicated).
            cursor = page[-1].submitted_at - dt.timedelta(microseconds=1)
        return sorted(seen.values(), key=lambda o: o.submitted_at or dt.datetime.min.replace(tzinfo=dt.UTC))

    def cancel(self, order_id: str) -> None:
        """Request cancellation of one order; no error when it is already done."""
        try:
            self._client.cancel_order_by_id(order_id)
        except APIError as exc:
            if exc.status_code == 422:  # already filled, cancelled or expired
                return
            raise _broker_error(f"cancel order {order_id}", exc) from exc
        except requests.RequestException as exc:
            raise _broker_error(f"cancel order {order_id}", exc) from exc

    def cancel_all(self) -> list[str]:
        """Cancel every open order; the ids asked to cancel."""
        answers = self._call("cancel all orders", self._client.cancel_orders)
        return [str(a.id) for a in answers]

    def fills(self, after: dt.datetime | None = None) -> list[Fill]:
        """Executions after `after` (all when None), oldest first."""
        out: list[Fill] = []
        token = None
        while True:
            params: dict[str, Any] = {"direction": "asc", "page_size": ACTIVITIES_PAGE}
            if after is not None:
                params["after"] = after.astimezone(dt.UTC).isoformat()
            if token:
                params["page_token"] = token
            page = self._call("list fills", self._client.get, "/account/activities/FILL", params) or []
            out.extend(self._fill(row) for row in page)
            if len(page) < ACTIVITIES_PAGE:
                return out
            token = page[-1]["id"]

    # -- market clock -----------------------------------------------------------------------------

    def clock(self) -> Clock:
        """The market clock (the replay's clock on the local exchange)."""
        c = self._call("read the clock", self._client.get_clock)
        return Clock(_utc(c.timestamp), bool(c.is_open), _utc(c.next_open), _utc(c.next_close))

    def calendar(self, start: dt.date, end: dt.date) -> list[Session]:
        """Trading sessions between `start` and `end` inclusive, open and close in UTC."""
        # The raw rows: alpaca-py's Calendar model drops the local exchange's `tz`.
        params = {"start": start.isoformat(), "end": end.isoformat()}
        rows = self._call("read the calendar", self._client.get, "/calendar", params) or []
        sessions = []
        for row in rows:
            tz = ZoneInfo(row.get("tz") or CALENDAR_TZ)
            day = dt.date.fromisoformat(row["date"])
            sessions.append(Session(day, _local(day, row["open"], tz), _local(day, row["close"], tz)))
        return sessions

    # -- trade updates ----------------------------------------------------------------------------

    def stream_updates(self, callback: Callable[[TradeUpdate], None]) -> UpdateStream:
        """Start the trade-update stream in a daemon thread; `callback` gets every event (from that
        thread). Stop it with the returned handle."""
        url = self.base_url.replace("https://", "wss://").replace("http://", "ws://") + "/stream"
        stream = _ListeningStream(
            self._key_id.get_secret_value(),
            self._secret.get_secret_value(),
            paper=self.paper,
            raw_data=True,
            url_override=url,
        )

        async def handler(msg: dict) -> None:
            callback(self._trade_update(msg["data"]))

        stream.subscribe_trade_updates(handler)
        handle = UpdateStream(stream)
        handle.start()
        return handle

    # -- mapping ----------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except (APIError, requests.RequestException) as exc:
            raise _broker_error(what, exc) from exc

    def _order(self, o: AlpacaOrder) -> Order:
        order = _order(o)
        self._client_ids[order.id] = order.client_order_id
        for leg in order.legs:
            self._client_ids[leg.id] = leg.client_order_id
        return order

    def _fill(self, row: dict) -> Fill:
        order_id = str(row["order_id"])
        cid = row.get("client_order_id") or self._client_ids.get(order_id)
        if cid is None:  # Alpaca's activities carry no client_order_id
            o = self._call(f"read order {order_id}", self._client.get_order_by_id, order_id)
            cid = self._order(o).client_order_id
        return Fill(
            order_id=order_id,
            client_order_id=cid,
            symbol=row["symbol"],
            side=_value(row["side"]),
            qty=float(row["qty"]),
            price=float(row["price"]),
            ts=_utc(dt.datetime.fromisoformat(row["transaction_time"])),
            commission=float(row.get("commission") or 0.0),
            fill_id=str(row["id"]),
        )

    def _trade_update(self, data: dict) -> TradeUpdate:
        order = self._order(AlpacaOrder(**data["order"]))
        ts = _utc(dt.datetime.fromisoformat(data["timestamp"]))
        fill = None
        if data.get("event") in ("fill", "partial_fill") and data.get("price") is not None:
            fill = Fill(
                order_id=order.id,
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side=order.side,
                qty=float(data["qty"]),
                price=float(data["price"]),
                ts=ts,
                commission=float(data.get("commission") or 0.0),
                fill_id=str(data.get("execution_id") or f"{order.id}:{data.get('qty')}"),
            )
        return TradeUpdate(event=str(data["event"]), order=order, fill=fill, ts=ts)


class _ListeningStream(TradingStream):
    """TradingStream that notices the server's ``listening`` acknowledgement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listening = threading.Event()

    async def _dispatch(self, msg: dict) -> None:
        if msg.get("stream") == "listening" and "trade_updates" in (msg.get("data") or {}).get("streams", []):
            self.listening.set()
        await super()._dispatch(msg)

    async def close(self) -> None:
        self.listening.clear()
        await super().close()


class UpdateStream:
    """A running trade-update stream (`AlpacaBroker.stream_updates`)."""

    def __init__(self, stream: _ListeningStream) -> None:
        self._stream = stream
        self._thread = threading.Thread(target=stream.run, name="trade-updates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_listening(self, timeout_s: float = 10.0) -> bool:
        """Block until the stream listens to trade_updates (events before that are not delivered)."""
        return self._stream.listening.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the stream and join its thread."""
        loop = self._stream._loop
        if loop is not None and loop.is_running():
            # stop_ws marks the stream stopped; closing the socket wakes its pending receive at once.
            asyncio.run_coroutine_threadsafe(self._stream.stop_ws(), loop).result(timeout_s)
            asyncio.run_coroutine_threadsafe(self._stream.close(), loop).result(timeout_s)
        self._thread.join(timeout_s)

    def __enter__(self) -> UpdateStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alpaca_request(r: OrderRequest):
    """alpaca-py's request model of an OrderRequest (ValueError when alpaca-py refuses it)."""
    kwargs: dict[str, Any] = {
        "symbol": r.symbol,
        "qty": r.qty,
        "side": OrderSide(r.side),
        "time_in_force": TimeInForce(r.time_in_force),
        "client_order_id": r.client_order_id,
    }
    if r.type in ("limit", "stop_limit"):
        kwargs["limit_price"] = r.limit_price
    if r.type in ("stop", "stop_limit"):
        kwargs["stop_price"] = r.stop_price
    if r.order_class == "bracket":
        kwargs["order_class"] = OrderClass.BRACKET
        kwargs["take_profit"] = TakeProfitRequest(limit_price=r.take_profit_limit)
        kwargs["stop_loss"] = StopLossRequest(stop_price=r.stop_loss_stop)
    try:
        model = _SUBMIT[r.type]
    except KeyError:
        raise ValueError(f"order type must be one of {sorted(_SUBMIT)}, got {r.type!r}") from None
    return model(**kwargs)


def _order(o: AlpacaOrder) -> Order:
    return Order(
        id=str(o.id),
        client_order_id=o.client_order_id,
        symbol=o.symbol or "",
        side=_value(o.side),
        qty=_float(o.qty),
        type=_value(o.type or o.order_type),
        time_in_force=_value(o.time_in_force),
        status=_value(o.status),
        filled_qty=_float(o.filled_qty),
        filled_avg_price=_opt_float(o.filled_avg_price),
        limit_price=_opt_float(o.limit_price),
        stop_price=_opt_float(o.stop_price),
        submitted_at=_utc(o.submitted_at),
        filled_at=_utc(o.filled_at),
        canceled_at=_utc(o.canceled_at),
        legs=tuple(_order(leg) for leg in o.legs or ()),
    )


def _value(x: Any) -> str:
    """An enum's value, or the string itself."""
    return str(getattr(x, "value", x))


def _float(x: Any) -> float:
    return 0.0 if x is None or x == "" else float(x)


def _opt_float(x: Any) -> float | None:
    return None if x is None or x == "" else float(x)


def _utc(ts: dt.datetime | None) -> dt.datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


def _local(day: dt.date, hhmm: str, tz: ZoneInfo) -> dt.datetime:
    """`day` at the local time HH:MM of `tz`, in UTC."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).astimezone(dt.UTC)


def _reason(exc: APIError) -> str:
    """The broker's message of an API error (its JSON `message`, else the body)."""
    try:
        return str(exc.message)
    except (ValueError, KeyError, TypeError):
        return str(exc)


def _broker_error(what: str, exc: Exception) -> BrokerError:
    """A BrokerError for a failed call: retryable for network errors, 429 and 5xx."""
    if isinstance(exc, APIError):
        status = exc.status_code
        retryable = status is None or status == 429 or status >= 500
        return BrokerError(
            f"{what}: broker answered {status}: {_reason(exc)}", retryable=retryable, status=status
        )
    return BrokerError(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
