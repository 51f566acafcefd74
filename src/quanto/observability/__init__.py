"""Logging (structlog) and, later, metrics."""
