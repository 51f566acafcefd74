"""The feature specification and the global registry that family modules add themselves to.

Kept apart from `registry.py` so family modules (technical, statistical, ...) can import `register`
without importing the registry, which imports them: no circular imports.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

FeatureFn = Callable[[pd.DataFrame], "np.ndarray | pd.Series"]

# Lowercase words and numbers joined by underscores, e.g. `rsi_14`, `macd_hist_12_26_9`.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Reserved by `expand_names` for the default set.
RESERVED_NAMES = frozenset({"default"})


@dataclass(frozen=True)
class FeatureSpec:
    """One registered feature.

    `fn` takes one symbol's bars (canonical columns, sorted by ts) and returns a float64 array or
    Series of the same length; the first `lookback` values are NaN (warm-up), and the value at row t
    depends only on rows <= t.
    """

    name: str
    family: str
    params: dict[str, Any] = field(hash=False)
    inputs: tuple[str, ...]
    lookback: int
    version: int
    description: str
    fn: FeatureFn = field(repr=False)
    # True: the value at row t depends on rows t-lookback..t only; False: on the whole history (EMA,
    # Wilder smoothing, cumulative sums); None: not declared, `engine.is_bounded` probes it.
    bounded: bool | None = None


REGISTRY: dict[str, FeatureSpec] = {}


def register(
    name: str,
    *,
    family: str,
    inputs: tuple[str, ...],
    lookback: int,
    description: str,
    params: dict[str, Any] | None = None,
    version: int = 1,
    bounded: bool | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering `fn(bars, **params)` as feature `name`; returns `fn` unchanged.

    The stored `FeatureSpec.fn` has `params` bound, so one function can back several registrations
    (`register("sma_ratio_5", params={"timeperiod": 5}, ...)(sma_ratio)`). `bounded=True` declares
    that the value at t is computed from the last `lookback` rows alone, window by window, with no
    running state, so incremental computation may start `lookback` rows back and the engine may run
    it over many symbols laid end to end; `False`, that it needs the whole history; None (the
    default) has both probed (`engine.is_bounded`, `engine.is_batchable`). Raises ValueError for a
    repeated, reserved or badly formed name, or a negative lookback.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"feature name {name!r} must be lowercase words/numbers joined by '_'")
    if name in RESERVED_NAMES:
        raise ValueError(f"feature name {name!r} is reserved")
    if name in REGISTRY:
        raise ValueError(f"feature {name!r} is already registered")
    if lookback < 0:
        raise ValueError(f"feature {name!r}: lookback must be >= 0, got {lookback}")
    bound_params = dict(params or {})

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        bound = functools.partial(fn, **bound_params) if bound_params else fn
        REGISTRY[name] = FeatureSpec(
            name=name,
            family=family,
            params=bound_params,
            inputs=tuple(inputs),
            lookback=lookback,
            version=version,
            description=description,
            fn=bound,
            bounded=bounded,
        )
        return fn

    return decorator
