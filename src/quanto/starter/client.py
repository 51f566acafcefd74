"""Connecting to Temporal: address and namespace from the environment, pydantic data converter."""

from __future__ import annotations

import os

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

DEFAULT_ADDRESS = "127.0.0.1:7233"
UI_URL = os.environ.get("QUANTO_UI_URL", f"http://127.0.0.1:{os.environ.get('QUANTO_UI_PORT', 8233)}")


def temporal_address() -> str:
    """`TEMPORAL_ADDRESS`, or the local dev server."""
    return os.environ.get("TEMPORAL_ADDRESS", DEFAULT_ADDRESS)


def temporal_namespace() -> str:
    """`TEMPORAL_NAMESPACE`, or `default`."""
    return os.environ.get("TEMPORAL_NAMESPACE", "default")


async def connect(address: str | None = None) -> Client:
    """A client with Quanto's data converter (TLS and API key from TEMPORAL_TLS / TEMPORAL_API_KEY)."""
    api_key = os.environ.get("TEMPORAL_API_KEY")
    return await Client.connect(
        address or temporal_address(),
        namespace=temporal_namespace(),
        data_converter=pydantic_data_converter,
        api_key=api_key or None,
        tls=bool(api_key) or os.environ.get("TEMPORAL_TLS", "").lower() in ("1", "true"),
    )


def ui_link(workflow_id: str, run_id: str | None = None) -> str:
    """Web UI link of a workflow (its latest run when run_id is None)."""
    base = f"{UI_URL}/namespaces/{temporal_namespace()}/workflows/{workflow_id}"
    return f"{base}/{run_id}/history" if run_id else base
