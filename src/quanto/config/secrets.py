"""Secrets come only from environment variables and stay SecretStr until the moment they are sent.

They are never part of a job file, a workflow payload, a manifest or a log line (DESIGN.md section 6).
"""

from __future__ import annotations

import os

from pydantic import SecretStr

from quanto.errors import InputError

# The variables each vendor reads, in the order its client needs them.
VENDOR_SECRETS: dict[str, tuple[str, ...]] = {
    "alpaca": ("ALPACA_API_KEY_ID", "ALPACA_API_SECRET_KEY"),
    "polygon": ("POLYGON_API_KEY",),
    "polygon_flat_files": ("POLYGON_S3_ACCESS_KEY_ID", "POLYGON_S3_SECRET_ACCESS_KEY"),
    "kite": ("KITE_API_KEY", "KITE_ACCESS_TOKEN"),
}


def secret(name: str, purpose: str) -> SecretStr:
    """The environment variable `name` as a SecretStr; InputError naming it (never a value) if unset."""
    value = os.environ.get(name)
    if not value:
        raise InputError(f"environment variable {name} is not set; {purpose} needs it")
    return SecretStr(value)


def vendor_secrets(vendor: str) -> dict[str, SecretStr]:
    """Every secret `vendor` needs, by variable name."""
    return {name: secret(name, f"vendor {vendor}") for name in VENDOR_SECRETS[vendor]}
