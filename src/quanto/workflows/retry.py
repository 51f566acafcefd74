"""The retry policy of Quanto's activities: exponential backoff, and no retry for errors that
retrying cannot fix (bad config, schema mismatch, rejected keys)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

NON_RETRYABLE = [
    "InputError",
    "ConfigError",
    "SchemaError",
    "SchemaMismatch",
    "VendorRequestError",
    "ValidationError",
]


def activity_retry(max_attempts: int) -> RetryPolicy:
    """Backoff from 1 s doubling to 60 s, at most `max_attempts` tries."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60),
        maximum_attempts=max_attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )
