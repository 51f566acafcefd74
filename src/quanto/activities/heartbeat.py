"""Activity heartbeats from a background thread, so long computations that never call back stay alive."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from temporalio import activity


class Heartbeat:
    """Heartbeats every `interval` seconds, and at once on progress, until stopped.

    `ctx` is any context with a settable `progress(done, total, note)` callback and a
    `heartbeat_details` attribute (the checkpoint a retried attempt should receive).
    """

    def __init__(self, ctx: Any, interval: float):
        self.ctx = ctx
        self.interval = interval
        self.latest: dict[str, Any] = {"done": 0, "total": 0, "note": "started"}
        self._stop = threading.Event()
        # The activity context lives in a contextvar: copy it so the thread may heartbeat.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), daemon=True)

    def payload(self) -> dict[str, Any]:
        return {**self.latest, "details": self.ctx.heartbeat_details}

    def progress(self, done: int, total: int, note: str = "") -> None:
        self.latest = {"done": done, "total": total, "note": note}
        activity.heartbeat(self.payload())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            activity.heartbeat(self.payload())

    def __enter__(self) -> Heartbeat:
        self.ctx.progress = self.progress
        activity.heartbeat(self.payload())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def resume_details() -> Any:
    """The checkpoint details of the previous attempt's last heartbeat, if any."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], dict):
        return details[0].get("details")
    return None
