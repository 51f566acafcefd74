"""Domain error types. Activities turn InputError into a non-retryable Temporal failure."""


class InputError(ValueError):
    """Bad input that retrying cannot fix (bad config, schema mismatch, no data); the message says what."""
