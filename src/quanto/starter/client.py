"""Connecting to Temporal: address and namespace from the environment, pydantic data converter."""

from __future__ import annotations

import os
import socket

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

DEFAULT_ADDRESS = "127.0.0.1:7233"
ACTIVITY_SECONDS_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 900, 1800, 3600)
UI_URL = os.environ.get("QUANTO_UI_URL", f"http://127.0.0.1:{os.environ.get('QUANTO_UI_PORT', 8233)}")


def temporal_address() -> str:
    """`TEMPORAL_ADDRESS`, or the local dev server."""
    return os.environ.get("TEMPORAL_ADDRESS", DEFAULT_ADDRESS)


def temporal_namespace() -> str:
    """`TEMPORAL_NAMESPACE`, or `default`."""
    return os.environ.get("TEMPORAL_NAMESPACE", "default")


async def connect(address: str | None = None, runtime: Runtime | None = None) -> Client:
    """A client with Quanto's data converter (TLS and API key from TEMPORAL_TLS / TEMPORAL_API_KEY),
    on `runtime` when given (e.g. `prometheus_runtime`), else the SDK's default runtime."""
    api_key = os.environ.get("TEMPORAL_API_KEY")
    return await Client.connect(
        address or temporal_address(),
        namespace=temporal_namespace(),
        data_converter=pydantic_data_converter,
        api_key=api_key or None,
        tls=bool(api_key) or os.environ.get("TEMPORAL_TLS", "").lower() in ("1", "true"),
        runtime=runtime,
    )


def prometheus_runtime(bind_address: str | None = None) -> tuple[Runtime, str]:
    """A runtime whose SDK metrics (`temporal_*`) are served in Prometheus format at `bind_address`
    (host:port; default a free port on 127.0.0.1), and the URL of that endpoint.

    Durations in seconds like Quanto's own; counters keep the SDK's names without a `_total` suffix
    (quanto.observability.metrics.TEMPORAL_SDK_METRICS lists the ones the dashboards use).
    """
    if bind_address is None:
        with socket.socket() as s:  # the SDK cannot report the port it bound, so pick one first
            s.bind(("127.0.0.1", 0))
            bind_address = f"127.0.0.1:{s.getsockname()[1]}"
    config = PrometheusConfig(
        bind_address=bind_address,
        durations_as_seconds=True,
        # The SDK's buckets stop at 60 s; training folds and backtests run for minutes to an hour.
        histogram_bucket_overrides={"activity_execution_latency": ACTIVITY_SECONDS_BUCKETS},
    )
    return Runtime(telemetry=TelemetryConfig(metrics=config)), f"http://{bind_address}/metrics"


def ui_link(workflow_id: str, run_id: str | None = None) -> str:
    """Web UI link of a workflow (its latest run when run_id is None)."""
    base = f"{UI_URL}/namespaces/{temporal_namespace()}/workflows/{workflow_id}"
    return f"{base}/{run_id}/history" if run_id else base
