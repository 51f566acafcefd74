"""Live bars for the trading loop: Alpaca's market-data stream as a sequence of bar groups.

The stream (`quanto.data.streams.run_stream`: reconnects with backoff, credentials never logged) runs
in a background thread with its own event loop. Bars are grouped by their open time; a group (one
minute of the traded symbols) is handed to the loop when every symbol's bar has arrived, or
`grace_s` after its first bar arrived (a symbol that did not trade that minute has no bar, as in the
lake), or when a later minute's bar arrives. An updated bar (`u`) for a minute already handed over
is not replayed: the decision was taken on what was known then.

The session ends when a bar reaches the session's close, or, once the wall clock is past the close,
when no bar has come for `QUIET_S` seconds (the last minutes may not trade).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

QUIET_S = 60.0
BAR_COLUMNS = [
    "symbol",
    "ts",
    "timeframe",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trades",
    "vendor",
]


class LiveBars:
    """Bar groups of `symbols` from a stream `protocol` until the session's `close` (module docstring).

    Use as a context manager (it starts and stops the stream) and iterate: each item is
    (ts, bars of that minute as a DataFrame in the lake's bar columns).
    """

    def __init__(
        self,
        protocol: Any,
        credentials: Mapping[str, Any],
        symbols: Sequence[str],
        close: dt.datetime,
        timeframe_s: int = 60,
        grace_s: float = 3.0,
        clock: Any = time.time,
    ) -> None:
        self.protocol = protocol
        self.credentials = credentials
        self.symbols = list(symbols)
        self.close = pd.Timestamp(close)
        self.step = pd.Timedelta(timeframe_s, "s")
        self.grace_s = grace_s
        self.clock = clock
        self._bars: queue.Queue[pd.DataFrame] = queue.Queue()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.late_updates = 0

    def __enter__(self) -> LiveBars:
        started = threading.Event()

        def run() -> None:
            from quanto.data.streams import run_stream

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._stop = asyncio.Event()
            started.set()
            try:
                self._loop.run_until_complete(
                    run_stream(
                        self.protocol,
                        credentials=self.credentials,
                        symbols=self.symbols,
                        channels=["bars"],
                        on_batch=lambda batch: (
                            self._bars.put(batch.bars.to_pandas()) if batch.bars.height else None
                        ),
                        stop=self._stop,
                    )
                )
            except BaseException as err:  # surfaced to the loop by the next wait
                self._error = err
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="live-bars", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def __iter__(self) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
        pending: dict[pd.Timestamp, list[pd.DataFrame]] = {}
        seen: dict[pd.Timestamp, set[str]] = {}  # symbols arrived per minute
        first_seen: dict[pd.Timestamp, float] = {}
        handed: pd.Timestamp | None = None
        wanted = set(self.symbols)
        last_arrival = self.clock()
        while True:
            try:
                frame = self._bars.get(timeout=0.05)
            except queue.Empty:
                frame = None
            if self._error is not None:
                raise self._error
            if frame is not None:
                for ts, rows in frame.groupby("ts", sort=True):
                    ts = pd.Timestamp(ts)
                    if handed is not None and ts <= handed:
                        self.late_updates += 1  # a correction of a minute already traded
                        continue
                    pending.setdefault(ts, []).append(rows)
                    seen.setdefault(ts, set()).update(rows["symbol"])
                    first_seen.setdefault(ts, self.clock())
            for ts in sorted(pending):
                later = any(t > ts for t in pending)
                if not (seen[ts] >= wanted or later or self.clock() - first_seen[ts] >= self.grace_s):
                    break
                group = pd.concat(pending.pop(ts)).drop_duplicates(["symbol"], keep="last")
                del seen[ts], first_seen[ts]
                handed = ts
                yield (
                    ts,
                    group.sort_values("symbol").reset_index(drop=True)[
                        [c for c in BAR_COLUMNS if c in group.columns]
                    ],
                )
                if ts + self.step >= self.close:
                    return
            now = self.clock()
            if frame is not None:
                last_arrival = now
            quiet = now - last_arrival >= QUIET_S
            if not pending and quiet and now >= self.close.timestamp() + self.grace_s:
                return  # past the close and the stream has gone quiet


def alpaca_bars(
    feed: str, url: str | None, symbols: Sequence[str], close: dt.datetime, timeframe_s: int, grace_s: float
) -> LiveBars:
    """Alpaca's data stream (`feed` iex|sip; `url` overrides the endpoint) with the keys from the
    environment (ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY)."""
    from quanto.config.secrets import vendor_secrets
    from quanto.data.streams import AlpacaStreamProtocol

    keys = vendor_secrets("alpaca")
    credentials = {"key": keys["ALPACA_API_KEY_ID"], "secret": keys["ALPACA_API_SECRET_KEY"]}
    return LiveBars(AlpacaStreamProtocol(feed, url=url), credentials, symbols, close, timeframe_s, grace_s)
