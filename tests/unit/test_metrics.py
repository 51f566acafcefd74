"""quanto.observability.metrics: the functions domain code calls update the expected series, bad calls
never raise, pool children report through the parent's endpoint, and the endpoint appends the SDK's text."""

from __future__ import annotations

import concurrent.futures
import http.server
import multiprocessing
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from quanto.observability import metrics


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name as exposed, labels) -> value of a scrape that prometheus_client's parser accepts.

    Names are read from the lines themselves: that parser renames counter samples to `*_total`,
    which Prometheus does not do to the SDK's counters.
    """
    list(text_string_to_metric_families(text))  # raises on malformed exposition text
    out = {}
    for line in text.splitlines():
        if (match := SAMPLE.match(line)) is not None:
            name, labels, number = match.groups()
            out[(name, frozenset(LABEL.findall(labels or "")))] = float(number)
    return out


def test_pipeline_functions_update_their_series():
    metrics.observe_stage("t-validate", 1.5, "completed")
    metrics.observe_stage("t-validate", 0.01, "skipped")
    for kind, n in (("in", 100), ("out", 97), ("quarantined", 3), ("imputed", 2)):
        metrics.count_rows("t-validate", kind, n)
    metrics.count_rows("t-validate", "in", 50)
    metrics.count_ingest("t-vendor", 1000, 2.0)
    metrics.count_ingest("t-vendor", 500, 0.5)
    metrics.count_vendor_failure("t-vendor", "throttled")
    metrics.count_retry("t-activity")
    metrics.count_retry("t-activity")
    metrics.observe_prediction_latency(0.003, "t-family")

    stage = {"stage": "t-validate"}
    assert value("quanto_stage_duration_seconds_count", **stage, status="completed") == 1
    assert value("quanto_stage_duration_seconds_sum", **stage, status="completed") == 1.5
    assert value("quanto_stage_duration_seconds_bucket", **stage, status="completed", le="1.0") == 0
    assert value("quanto_stage_duration_seconds_bucket", **stage, status="completed", le="2.5") == 1
    assert value("quanto_stage_duration_seconds_count", **stage, status="skipped") == 1
    assert value("quanto_stage_rows_total", **stage, kind="in") == 150
    assert value("quanto_stage_rows_total", **stage, kind="out") == 97
    assert value("quanto_stage_rows_total", **stage, kind="quarantined") == 3
    assert value("quanto_stage_rows_total", **stage, kind="imputed") == 2
    assert value("quanto_ingest_rows_total", vendor="t-vendor") == 1500
    assert value("quanto_ingest_seconds_total", vendor="t-vendor") == 2.5
    assert value("quanto_vendor_failures_total", vendor="t-vendor", kind="throttled") == 1
    assert value("quanto_activity_retries_total", activity="t-activity") == 2
    assert value("quanto_prediction_latency_seconds_count", family="t-family") == 1
    assert value("quanto_prediction_latency_seconds_bucket", family="t-family", le="0.005") == 1
    assert value("quanto_prediction_latency_seconds_bucket", family="t-family", le="0.002") == 0


def test_trading_functions_update_their_series():
    acct = "t-paper"
    for status in ("submitted", "accepted", "filled", "submitted", "rejected"):
        metrics.count_order(acct, status)
    metrics.count_fill(acct, "AAPL")
    metrics.count_risk_breach(acct, "max_position")
    metrics.set_pnl(acct, 120.0)
    metrics.set_pnl(acct, -35.5)
    metrics.set_drawdown(acct, 0.04)
    metrics.set_exposure(acct, gross=50_000.0, net=-10_000.0)
    metrics.set_daily_loss_fraction(acct, 0.85)
    metrics.set_live_accuracy(acct, 0.47, 120)

    assert value("quanto_orders_total", account=acct, status="submitted") == 2
    assert value("quanto_orders_total", account=acct, status="rejected") == 1
    assert value("quanto_fills_total", account=acct, symbol="AAPL") == 1
    assert value("quanto_risk_breaches_total", account=acct, rule="max_position") == 1
    assert value("quanto_pnl", account=acct) == -35.5  # a gauge: the last value set
    assert value("quanto_drawdown", account=acct) == 0.04
    assert value("quanto_exposure", account=acct, kind="gross") == 50_000
    assert value("quanto_exposure", account=acct, kind="net") == -10_000
    assert value("quanto_daily_loss_used_ratio", account=acct) == 0.85
    assert value("quanto_live_accuracy", account=acct) == 0.47
    assert value("quanto_live_accuracy_predictions", account=acct) == 120


def test_trading_state_marks_only_the_current_state():
    acct = "t-state"
    metrics.set_trading_state(acct, "running")
    metrics.set_trading_state(acct, "halted")
    assert value("quanto_trading_state", account=acct, state="running") == 0
    assert value("quanto_trading_state", account=acct, state="halted") == 1
    metrics.set_trading_state(acct, "running")
    assert value("quanto_trading_state", account=acct, state="running") == 1
    assert value("quanto_trading_state", account=acct, state="halted") == 0


def test_bad_calls_never_raise_and_record_nothing():
    metrics.count_rows("t-bad", "missing", 5)  # unknown kind
    metrics.count_rows("t-bad", "in", -1)  # counters only go up
    metrics.observe_stage("t-bad", 1.0, "exploded")
    metrics.count_order("t-bad", "teleported")
    metrics.set_pnl("t-bad", "not a number")  # type: ignore[arg-type]
    metrics.count_ingest("t-bad", "many", 1.0)  # type: ignore[arg-type]
    assert value("quanto_stage_rows_total", stage="t-bad", kind="missing") is None
    assert not value("quanto_stage_rows_total", stage="t-bad", kind="in")
    assert value("quanto_stage_duration_seconds_count", stage="t-bad", status="exploded") is None
    assert value("quanto_orders_total", account="t-bad", status="teleported") is None
    assert value("quanto_pnl", account="t-bad") is None
    assert not value("quanto_ingest_rows_total", vendor="t-bad")


class _FakeSdk(http.server.BaseHTTPRequestHandler):
    """Stands in for the Temporal SDK's Prometheus endpoint."""

    def do_GET(self) -> None:
        body = b'# TYPE temporal_request counter\ntemporal_request{operation="Poll"} 3'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def fake_sdk():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeSdk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def test_endpoint_serves_quanto_metrics_then_the_sdk_text(fake_sdk):
    metrics.count_rows("t-endpoint", "out", 7)
    server = metrics.serve(0, "127.0.0.1", sdk_metrics_url=fake_sdk)
    try:
        text, content_type = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(f"http://127.0.0.1:{server.server_port}/other")
    finally:
        server.shutdown()
        server.server_close()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert missing.value.code == 404
    parsed = samples(text)
    assert parsed[("quanto_stage_rows_total", frozenset({("stage", "t-endpoint"), ("kind", "out")}))] == 7
    assert parsed[("temporal_request", frozenset({("operation", "Poll")}))] == 3
    assert text.index("quanto_stage_rows_total") < text.index("temporal_request")


def test_endpoint_answers_when_the_sdk_endpoint_is_down():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/metrics"
    metrics.count_rows("t-sdk-down", "in", 1)
    text = metrics.render(dead).decode()
    assert f"# Temporal SDK metrics unavailable at {dead}" in text
    assert (
        samples(text)[("quanto_stage_rows_total", frozenset({("stage", "t-sdk-down"), ("kind", "in")}))] == 1
    )


# --- process pool: multiprocess mode -------------------------------------------------------------------


def _count_in_pool_child() -> int:
    metrics.count_rows("t-pool", "quarantined", 7)
    metrics.observe_stage("t-pool", 2.0, "completed")
    metrics.set_live_accuracy("t-pool", 0.55, 100)
    return os.getpid()


def _worker_scenario(folder: str, results) -> None:
    """What `quanto worker --metrics-port` does: multiprocess mode (prometheus_client is already
    imported here, as in the worker), then a spawned pool whose child counts, then a scrape."""
    metrics.use_multiprocess(folder)
    metrics.count_rows("t-pool", "in", 10)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child = pool.submit(_count_in_pool_child).result()
    results.put((os.getpid(), child, metrics.render().decode()))


def test_pool_child_counts_reach_the_parent_endpoint(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_worker_scenario, args=(str(tmp_path), results))
    proc.start()
    parent, child, text = results.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and parent != child
    # One file per process and kind of value: both processes kept their own.
    files = {p.name for p in tmp_path.glob("*.db")}
    assert f"counter_{parent}.db" in files and f"counter_{child}.db" in files
    parsed = samples(text)
    assert parsed[("quanto_stage_rows_total", frozenset({("stage", "t-pool"), ("kind", "in")}))] == 10
    assert parsed[("quanto_stage_rows_total", frozenset({("stage", "t-pool"), ("kind", "quarantined")}))] == 7
    completed = frozenset({("stage", "t-pool"), ("status", "completed")})
    assert parsed[("quanto_stage_duration_seconds_count", completed)] == 1
    assert parsed[("quanto_live_accuracy", frozenset({("account", "t-pool")}))] == 0.55
    assert parsed[("quanto_live_accuracy_predictions", frozenset({("account", "t-pool")}))] == 100


def test_in_process_mode_without_multiprocess_folder():
    assert os.environ.get(metrics.MULTIPROC_ENV) is None  # pytest itself keeps values in memory
    assert metrics.multiprocess_dir() is None


# --- prediction latency from every model family ---------------------------------------------------------


def _model_classes():
    import numpy as np

    from quanto.models.base import Model

    class Stub(Model):
        """Predicts zeros; the abstract rest is never called."""

        family = "t-stub"

        def predict(self, design, rows):
            return np.zeros(len(rows))

        fit = feature_importance = _save_state = _load_state = None  # type: ignore[assignment]

    class Blend(Stub):
        """Calls its members' predict, as an ensemble does."""

        family = "t-blend"

        def predict(self, design, rows):
            return sum(member.predict(design, rows) for member in self.members) / len(self.members)

    return Stub, Blend


def test_every_family_reports_prediction_latency_once_per_outer_call():
    import numpy as np

    stub_cls, blend_cls = _model_classes()
    stub = object.__new__(stub_cls)  # no config needed: predict uses no state
    blend = object.__new__(blend_cls)
    blend.members = [object.__new__(stub_cls), object.__new__(stub_cls)]
    rows = np.arange(5)
    assert stub.predict(None, rows).shape == (5,)
    assert blend.predict(None, rows).shape == (5,)
    assert value("quanto_prediction_latency_seconds_count", family="t-stub") == 1
    # The members' calls are part of the blend's time, not predictions of their own.
    assert value("quanto_prediction_latency_seconds_count", family="t-blend") == 1
