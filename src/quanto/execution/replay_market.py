"""The replay's side of the local paper exchange: create the account, deliver the next bars.

A thin client of the exchange's admin paths (`quanto.execution.paper_exchange`), so the trading loop
can drive a replay without importing the aiohttp server. Orders go through the broker adapter
(`quanto.execution.alpaca.AlpacaBroker`) with the same API key.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping

import httpx
import orjson

from quanto.execution.broker import BrokerError

KEY_HEADER = "APCA-API-KEY-ID"


class LocalReplayMarket:
    """Admin client of the local exchange for the account of API key `key` (the adapter's key id)."""

    def __init__(self, base_url: str, key: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        # Plain http (the local exchange) needs no TLS context; building one costs ~0.1 s.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={KEY_HEADER: key},
            timeout=timeout_s,
            verify=self.base_url.startswith("https://"),
        )

    def __repr__(self) -> str:
        return f"LocalReplayMarket({self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> LocalReplayMarket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_account(
        self,
        cash: float,
        costs: Mapping[str, float] | None = None,
        fractional: bool = True,
        calendar: str = "XNYS",
    ) -> dict:
        """Create (or reset) this key's account with `cash` and `costs` (commission_bps,
        commission_per_share, commission_per_order, commission_min, slippage_bps, borrow_rate,
        periods_per_year: the backtest's meanings); the account as Alpaca's JSON."""
        body = {
            "key": self.key,
            "cash": cash,
            "costs": dict(costs or {}),
            "fractional": fractional,
            "calendar": calendar,
        }
        return self._post("/_quanto/accounts", body)

    def deliver(self, bars: Iterable[Mapping]) -> int:
        """Deliver the replay's next bars (symbol, ts = bar open, timeframe, open, high, low, close,
        volume, optional bid and ask; all symbols of a timestamp together); how many were applied
        (bars at or before a symbol's last delivered ts are ignored)."""
        rows = [_bar_json(b) for b in bars]
        return int(self._post("/_quanto/bars", {"bars": rows})["applied"])

    def health(self) -> dict:
        """The exchange's health answer."""
        return self._request("GET", "/_quanto/health")

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))

    def _request(self, method: str, path: str, content: bytes | None = None) -> dict:
        try:
            r = self._http.request(
                method, path, content=content, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise BrokerError(f"local exchange {self.base_url}{path}: {exc}", retryable=True) from exc
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise BrokerError(
                f"local exchange {method} {path} refused ({r.status_code}): {message}",
                retryable=r.status_code >= 500,
                status=r.status_code,
            )
        return r.json()


def _bar_json(bar: Mapping) -> dict:
    """A bar as the exchange reads it: ts as ISO-8601 UTC, prices as floats, no NaN quotes."""
    row = {k: bar[k] for k in ("symbol", "open", "high", "low", "close") if k in bar}
    ts = bar["ts"]
    if hasattr(ts, "to_pydatetime"):  # a pandas Timestamp
        ts = ts.to_pydatetime()
    if isinstance(ts, dt.datetime):
        ts = (ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()
    row["ts"] = ts
    row["timeframe"] = bar.get("timeframe", "1min")
    row["volume"] = float(bar.get("volume", 0.0) or 0.0)
    for name in ("open", "high", "low", "close"):
        if name in row:
            row[name] = float(row[name])
    for name in ("bid", "ask"):
        v = bar.get(name)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            row[name] = float(v)
    return row
