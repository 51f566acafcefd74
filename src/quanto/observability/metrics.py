"""Quanto's Prometheus metrics, and the one `/metrics` endpoint a worker serves.

Domain code calls the small functions below (`count_rows`, `observe_stage`, `count_order`, ...) where a
number is born. They are cheap (a labelled child lookup and an add), never raise (a bad call is logged
once and dropped: a metric must never fail the work it measures) and work whether or not an endpoint
runs — without one the values simply stay in this process.

Processes. A worker runs CPU-bound activities in a spawned process pool (quanto.workers.build), so a
counter incremented in a pool child must reach the parent's endpoint. We use prometheus_client's
multiprocess mode: `use_multiprocess()` points `PROMETHEUS_MULTIPROC_DIR` at a fresh folder of this
worker process before the pool starts; every process (the worker and each spawned child, which
inherits the environment) then keeps its values in memory-mapped files there, and a scrape merges the
files (counters and histograms summed, gauges: the most recent value set in any process). The
alternatives were worse: shipping deltas from children to the parent over a queue needs a hook after
every activity and loses what a crashed child counted; a second endpoint per child gives Prometheus
unknowable, changing ports. The folder is removed when the worker exits; counts of children that died
stay in it (counters never go down within one worker's life), which is what Prometheus expects.

Temporal SDK metrics. The SDK (Rust core) serves its own `temporal_*` metrics on an HTTP endpoint of
its runtime (quanto.starter.client.prometheus_runtime, on a free local port). `serve()` appends that
text to Quanto's on the same `/metrics`, so Prometheus scrapes one port per worker; both sides use the
classic text format 0.0.4 and their names never clash (`quanto_*` vs `temporal_*`). When the SDK's
endpoint does not answer, the scrape still returns Quanto's metrics, with a comment saying so.

This module is infrastructure: it does not import temporalio.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

log = structlog.get_logger("quanto.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SDK_FETCH_TIMEOUT_S = 2.0  # a scrape must answer even when the SDK's endpoint hangs

ROW_KINDS = frozenset({"in", "out", "quarantined", "imputed"})
STAGE_STATUSES = frozenset({"completed", "skipped", "failed"})
ORDER_STATUSES = frozenset({"submitted", "accepted", "rejected", "cancelled", "filled"})

# Seconds. Stages run from milliseconds (a skipped stage) to an hour (walk-forward training).
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Seconds. A compiled forest predicts 100 rows in ~2 ms; a sequence model on a CPU takes longer.
PREDICTION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# Every metric is labelled, so no value exists before the first call: `use_multiprocess()` can still
# switch where values live after this module was imported.
STAGE_SECONDS = Histogram(
    "quanto_stage_duration_seconds",
    "Wall time of a pipeline stage, by outcome (completed, skipped: already materialized, failed).",
    ["stage", "status"],
    buckets=STAGE_BUCKETS,
)
STAGE_ROWS = Counter(
    "quanto_stage_rows",
    "Rows a stage read (in), wrote (out), quarantined or imputed.",
    ["stage", "kind"],
)
INGEST_ROWS = Counter("quanto_ingest_rows", "Rows fetched from a vendor by ingestion.", ["vendor"])
INGEST_SECONDS = Counter(
    "quanto_ingest_seconds",
    "Seconds spent fetching and writing those rows (rows / seconds = ingestion rows/s while busy).",
    ["vendor"],
)
VENDOR_FAILURES = Counter(
    "quanto_vendor_failures",
    "Failed vendor API attempts (timeout, connection, throttled, server_error, malformed, client_error).",
    ["vendor", "kind"],
)
ACTIVITY_RETRIES = Counter(
    "quanto_activity_retries", "Activity attempts after the first (Temporal retries).", ["activity"]
)
PREDICTION_SECONDS = Histogram(
    "quanto_prediction_latency_seconds",
    "Time of one model predict call (a batch of rows), by model family.",
    ["family"],
    buckets=PREDICTION_BUCKETS,
)
ORDERS = Counter("quanto_orders", "Order events by status.", ["account", "status"])
FILLS = Counter("quanto_fills", "Fills received.", ["account", "symbol"])
RISK_BREACHES = Counter(
    "quanto_risk_breaches", "Risk rule breaches (orders blocked, halts).", ["account", "rule"]
)
# Gauges a trading loop sets: the most recent value wins across the worker's processes.
PNL = Gauge(
    "quanto_pnl",
    "P&L of the trading session so far (realized + unrealized), account currency.",
    ["account"],
    multiprocess_mode="mostrecent",
)
DRAWDOWN = Gauge(
    "quanto_drawdown",
    "Drawdown from the session's equity peak, as a fraction (0.05 = 5 %).",
    ["account"],
    multiprocess_mode="mostrecent",
)
EXPOSURE = Gauge(
    "quanto_exposure",
    "Exposure in account currency: gross = sum of |position value|, net = sum of position value.",
    ["account", "kind"],
    multiprocess_mode="mostrecent",
)
DAILY_LOSS_USED = Gauge(
    "quanto_daily_loss_used_ratio",
    "Loss so far today / max daily loss (0 = no loss, 1 = at the limit).",
    ["account"],
    multiprocess_mode="mostrecent",
)
LIVE_ACCURACY = Gauge(
    "quanto_live_accuracy",
    "Directional accuracy of the last N live predictions against realized returns (0..1).",
    ["account"],
    multiprocess_mode="mostrecent",
)
LIVE_ACCURACY_N = Gauge(
    "quanto_live_accuracy_predictions",
    "N: how many realized predictions quanto_live_accuracy is measured over.",
    ["account"],
    multiprocess_mode="mostrecent",
)
TRADING_STATE = Gauge(
    "quanto_trading_state",
    "1 for the account's current trading state (e.g. running, halted, flattening), 0 for earlier ones.",
    ["account", "state"],
    multiprocess_mode="mostrecent",
)

# The Temporal SDK metrics (with prometheus_runtime's settings: no `_total` suffix on counters, no unit
# suffix, durations in seconds) that the dashboards and alerts in deploy/ use. tests/unit checks the
# dashboards against this list; tests/integration checks a live worker exports these names.
TEMPORAL_SDK_METRICS = frozenset(
    {
        "temporal_request",
        "temporal_workflow_completed",
        "temporal_workflow_failed",
        "temporal_workflow_task_execution_latency",
        "temporal_workflow_task_schedule_to_start_latency",
        "temporal_activity_execution_latency",
        "temporal_activity_schedule_to_start_latency",
        "temporal_activity_execution_failed",
        "temporal_worker_task_slots_available",
        "temporal_worker_task_slots_used",
        "temporal_num_pollers",
    }
)

_F = TypeVar("_F", bound=Callable[..., None])
_reported: set[str] = set()
_state_lock = threading.Lock()
_current_state: dict[str, str] = {}


def _never_raises(fn: _F) -> _F:
    """`fn` that logs its first failure (per function) and otherwise stays silent."""

    @functools.wraps(fn)
    def safe(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:  # a metric must never fail the work it measures
            if fn.__name__ not in _reported:
                _reported.add(fn.__name__)
                log.warning("metric update dropped", function=fn.__name__, error=str(err))

    return safe  # type: ignore[return-value]


def _one_of(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, got {value!r}")
    return value


# Numbers are checked before a labelled series is touched: a bad call must not leave an empty series.
def _count(n: float) -> float:
    amount = float(n)
    if not amount >= 0:
        raise ValueError(f"a count must be >= 0, got {n!r}")
    return amount


# --- pipeline ------------------------------------------------------------------------------------------


@_never_raises
def observe_stage(stage: str, seconds: float, status: str) -> None:
    """A stage finished: its wall time and outcome (completed | skipped | failed)."""
    seconds = float(seconds)
    STAGE_SECONDS.labels(str(stage), _one_of(status, STAGE_STATUSES, "status")).observe(seconds)


@_never_raises
def count_rows(stage: str, kind: str, n: int) -> None:
    """`n` rows of a stage: kind = in | out | quarantined | imputed."""
    n = _count(n)
    STAGE_ROWS.labels(str(stage), _one_of(kind, ROW_KINDS, "kind")).inc(n)


@_never_raises
def count_ingest(vendor: str, rows: int, seconds: float) -> None:
    """Ingestion fetched and wrote `rows` rows from `vendor` in `seconds`."""
    rows, seconds = _count(rows), _count(seconds)
    INGEST_ROWS.labels(str(vendor)).inc(rows)
    INGEST_SECONDS.labels(str(vendor)).inc(seconds)


@_never_raises
def count_vendor_failure(vendor: str, kind: str) -> None:
    """One failed vendor API attempt (retried or not); kind says how it failed."""
    VENDOR_FAILURES.labels(str(vendor), str(kind)).inc()


@_never_raises
def count_retry(activity: str) -> None:
    """An activity started an attempt after the first."""
    ACTIVITY_RETRIES.labels(str(activity)).inc()


# --- models --------------------------------------------------------------------------------------------


@_never_raises
def observe_prediction_latency(seconds: float, family: str = "unknown") -> None:
    """One predict call of a model (of `family`) took `seconds`."""
    seconds = float(seconds)
    PREDICTION_SECONDS.labels(str(family)).observe(seconds)


# --- trading -------------------------------------------------------------------------------------------


@_never_raises
def count_order(account: str, status: str) -> None:
    """An order event: status = submitted | accepted | rejected | cancelled | filled."""
    ORDERS.labels(str(account), _one_of(status, ORDER_STATUSES, "status")).inc()


@_never_raises
def count_fill(account: str, symbol: str) -> None:
    """A fill (partial or full) arrived."""
    FILLS.labels(str(account), str(symbol)).inc()


@_never_raises
def count_risk_breach(account: str, rule: str) -> None:
    """A risk rule was breached (the order blocked, or trading halted)."""
    RISK_BREACHES.labels(str(account), str(rule)).inc()


@_never_raises
def set_pnl(account: str, pnl: float) -> None:
    """The session's P&L so far (realized + unrealized), in account currency."""
    pnl = float(pnl)
    PNL.labels(str(account)).set(pnl)


@_never_raises
def set_drawdown(account: str, drawdown: float) -> None:
    """The drawdown from the session's equity peak, as a fraction (>= 0)."""
    drawdown = float(drawdown)
    DRAWDOWN.labels(str(account)).set(drawdown)


@_never_raises
def set_exposure(account: str, gross: float, net: float) -> None:
    """Gross (sum of |position value|) and net (sum of position value) exposure, account currency."""
    gross, net = float(gross), float(net)
    EXPOSURE.labels(str(account), "gross").set(gross)
    EXPOSURE.labels(str(account), "net").set(net)


@_never_raises
def set_daily_loss_fraction(account: str, used: float) -> None:
    """Loss so far today / max daily loss: 0..1, above 1 past the limit (alert above 0.8)."""
    used = float(used)
    DAILY_LOSS_USED.labels(str(account)).set(used)


@_never_raises
def set_live_accuracy(account: str, accuracy: float, n: int) -> None:
    """Directional accuracy (0..1) of the last `n` live predictions against realized returns."""
    accuracy, n = float(accuracy), _count(n)
    LIVE_ACCURACY.labels(str(account)).set(accuracy)
    LIVE_ACCURACY_N.labels(str(account)).set(n)


@_never_raises
def set_trading_state(account: str, state: str) -> None:
    """The account's trading state: its series becomes 1, the account's previous state's 0."""
    account, state = str(account), str(state)
    with _state_lock:
        previous = _current_state.get(account)
        if previous is not None and previous != state:
            TRADING_STATE.labels(account, previous).set(0)
        TRADING_STATE.labels(account, state).set(1)
        _current_state[account] = state


# --- exposition ----------------------------------------------------------------------------------------


def use_multiprocess(directory: str | Path | None = None) -> Path:
    """Keep metric values in per-process files under `directory` (default: a fresh temporary folder),
    for this process and every process started after this call (they inherit the environment).

    Call it before the process pool starts and before this process updates any metric; the caller
    removes the folder when the worker exits. Returns the folder.
    """
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="quanto-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client picks its value store when first imported, which may have been before the
        # variable was set; values are created on a metric's first labelled use, so switching now holds.
        values.ValueClass = values.MultiProcessValue()
    return folder


def multiprocess_dir() -> Path | None:
    """The multiprocess folder when this process is in multiprocess mode, else None."""
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder and getattr(values.ValueClass, "_multiprocess", False) else None


def _registry() -> CollectorRegistry:
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    # A fresh registry per scrape reads every process's files (prometheus_client's documented recipe).
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    return registry


def _sdk_text(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=SDK_FETCH_TIMEOUT_S) as resp:
            body = resp.read()
    except OSError as err:
        return f"# Temporal SDK metrics unavailable at {url}: {err}\n".encode()
    return body if body.endswith(b"\n") or not body else body + b"\n"


def render(sdk_metrics_url: str | None = None) -> bytes:
    """The text a scrape returns: Quanto's metrics, then the Temporal SDK's from `sdk_metrics_url`."""
    body = generate_latest(_registry())
    return body + _sdk_text(sdk_metrics_url) if sdk_metrics_url else body


def serve(port: int, addr: str = "0.0.0.0", *, sdk_metrics_url: str | None = None) -> ThreadingHTTPServer:
    """Serve `render(sdk_metrics_url)` at http://addr:port/metrics from a daemon thread.

    Returns the server: `server.server_port` is the bound port (useful with port 0), `shutdown()` stops it.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "metrics are at /metrics")
                return
            body = render(sdk_metrics_url)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # one line per scrape would drown the worker's log

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="quanto-metrics", daemon=True).start()
    log.info("metrics endpoint", url=f"http://{addr}:{server.server_port}/metrics", sdk=sdk_metrics_url)
    return server
