"""Logging (structlog) and Prometheus metrics (Quanto's own and the Temporal SDK's, on one endpoint)."""
