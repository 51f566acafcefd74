"""The whole TA-Lib catalog, usable by name with parameters.

Every function in `talib.get_functions()` is registered with TA-Lib's default parameters as
`talib_<function>` (one output) or `talib_<function>_<output>` (several outputs), e.g. `talib_rsi`,
`talib_bbands_upperband`. Values are TA-Lib's raw outputs, not normalized: most carry the price
scale, so these are building blocks rather than model-ready features (the curated, scale-free set
lives in `technical`). A function that cannot be registered is listed in `SKIPPED` with the reason.

Other parameters are asked for with a call string, `talib:RSI(timeperiod=21)` or
`talib:BBANDS(timeperiod=30,nbdevup=2.5).upperband`. `resolve_call` validates it and registers a
feature under a canonical name, `talib_bbands_upperband_nbdevup2p5_timeperiod30`: parameters that
differ from TA-Lib's defaults, sorted by name, each written `<param><value>` with '.' as 'p' and '-'
as 'm'. The canonical name carries everything needed to rebuild the feature, so `resolve_name`
re-creates it in any process (a worker that never saw the call string) from the name alone.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import talib
import talib.abstract

from quanto.features.spec import REGISTRY, register

FAMILY = "talib"
PREFIX = "talib:"
NAME_PREFIX = "talib_"
# TA-Lib's default input names that are bar columns (the canonical schema's spelling).
BAR_INPUTS = ("open", "high", "low", "close", "volume")

# `talib:NAME`, `talib:NAME(k=v, ...)`, optionally followed by `.output`; blanks allowed around parts.
_CALL_RE = re.compile(
    r"^talib:\s*(?P<func>[A-Za-z0-9_]+)\s*(?:\((?P<args>[^()]*)\))?\s*(?:\.\s*(?P<output>[A-Za-z0-9_]+))?\s*$"
)
# Literal values a call string may give: TA-Lib's integer parameters take integers only.
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# A parameter value inside a canonical name: optional minus ('m'), digits, optional fraction ('p').
_VALUE_TOKEN = re.compile(r"m?\d+(?:p\d+)?")


@dataclass(frozen=True)
class TalibFunction:
    """What the catalog needs to know about one TA-Lib function (from `talib.abstract`)."""

    name: str
    inputs: tuple[str, ...]
    defaults: dict[str, int | float]
    outputs: tuple[str, ...]

    def base_name(self, output: str) -> str:
        """Feature name with default parameters: the output is named only when there are several."""
        stem = f"{NAME_PREFIX}{self.name.lower()}"
        return stem if len(self.outputs) == 1 else f"{stem}_{output}"


def _describe(name: str) -> TalibFunction | str:
    """The function's catalog entry, or the reason it cannot be computed from bars."""
    info = talib.abstract.Function(name).info
    inputs: list[str] = []
    for value in info["input_names"].values():
        inputs.extend(value if isinstance(value, list) else [value])
    missing = [i for i in inputs if i not in BAR_INPUTS]
    if missing:
        return f"needs input(s) {missing} that bars do not have (only {', '.join(BAR_INPUTS)})"
    return TalibFunction(
        name=name,
        inputs=tuple(inputs),
        defaults=dict(info["parameters"]),
        outputs=tuple(info["output_names"]),
    )


FUNCTIONS: dict[str, TalibFunction] = {}
# TA-Lib functions left out of the catalog, with the reason (e.g. MAVP: per-bar periods input).
SKIPPED: dict[str, str] = {}
for _name in talib.get_functions():
    _entry = _describe(_name)
    if isinstance(_entry, str):
        SKIPPED[_name] = _entry
    else:
        FUNCTIONS[_name] = _entry

# Default feature name -> (function, output); the reverse index `resolve_name` parses against.
BASE_NAMES: dict[str, tuple[str, str]] = {
    f.base_name(o): (f.name, o) for f in FUNCTIONS.values() for o in f.outputs
}
# Longest first, so `talib_minmax_min` is tried before a shorter name it starts with.
_BASES_LONGEST_FIRST = sorted(BASE_NAMES, key=len, reverse=True)
_LOCK = threading.Lock()  # dynamic registration may happen from several threads of one worker


def lookback(function: str, params: dict[str, Any]) -> int:
    """TA-Lib's own warm-up for `function` with `params`; -1 when TA-Lib rejects the parameters."""
    return int(talib.abstract.Function(function, **params).lookback)


def _compute(
    bars: pd.DataFrame,
    *,
    function: str,
    output_index: int,
    inputs: tuple[str, ...],
    warmup: int,
    **params: Any,
) -> np.ndarray:
    """Call TA-Lib's `function` on the bar columns and return one output as float64.

    Integer outputs (candlestick patterns, index and trend outputs) are 0 during TA-Lib's warm-up;
    those rows are set to NaN so every catalog feature honours the registry's "first `lookback`
    values are NaN" contract. Float outputs are already NaN there, so nothing else changes.
    """
    arrays = [np.ascontiguousarray(bars[c].to_numpy(dtype=np.float64)) for c in inputs]
    result = getattr(talib, function)(*arrays, **params)
    out = np.asarray(result[output_index] if isinstance(result, tuple) else result, dtype=np.float64)
    out[: min(warmup, len(out))] = np.nan
    return out


def _register(name: str, fn: TalibFunction, output: str, params: dict[str, Any], warmup: int) -> None:
    """Register one (function, output, params) as feature `name`."""
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    which = f" {output}" if len(fn.outputs) > 1 else ""
    compute = functools.partial(
        _compute,
        function=fn.name,
        output_index=fn.outputs.index(output),
        inputs=fn.inputs,
        warmup=warmup,
    )
    register(
        name,
        family=FAMILY,
        inputs=fn.inputs,
        lookback=warmup,
        params=params,
        description=f"TA-Lib {fn.name}({shown}){which}, raw output",
    )(compute)


for _base, (_func, _output) in BASE_NAMES.items():
    _fn = FUNCTIONS[_func]
    _register(_base, _fn, _output, dict(_fn.defaults), lookback(_func, _fn.defaults))


# --- parameterized features -----------------------------------------------------------------------


def _format_value(value: int | float) -> str:
    """A parameter value as name characters: shortest round-trip decimal, '.'->'p', '-'->'m'."""
    text = str(value) if isinstance(value, int) else np.format_float_positional(value, trim="-")
    return text.replace(".", "p").replace("-", "m")


def canonical_name(function: str, output: str, params: dict[str, Any]) -> str:
    """The feature name for `function`'s `output` with `params` (defaults left out, sorted)."""
    fn = FUNCTIONS[function]
    changed = {k: v for k, v in params.items() if v != fn.defaults[k]}
    parts = [fn.base_name(output), *(f"{k}{_format_value(changed[k])}" for k in sorted(changed))]
    return "_".join(parts)


def _coerce(fn: TalibFunction, param: str, raw: str, where: str) -> int | float:
    """Parse `raw` as the type TA-Lib expects for `param` (its default's type)."""
    want_int = isinstance(fn.defaults[param], int)
    if not (_INT if want_int else _FLOAT).fullmatch(raw):
        kind = "an integer" if want_int else "a finite number"
        raise ValueError(f"{where}: bad value {param}={raw!r}; {fn.name} expects {kind}")
    return int(raw) if want_int else float(raw)


def _unknown_function(func: str, where: str) -> ValueError:
    """Error for a name that is not a TA-Lib function, with close matches."""
    if func in SKIPPED:
        return ValueError(f"{where}: TA-Lib {func} is not available as a feature: {SKIPPED[func]}")
    close = difflib.get_close_matches(func, [*FUNCTIONS, *SKIPPED], n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ValueError(f"{where}: unknown TA-Lib function {func!r}{hint}")


def _pick_output(fn: TalibFunction, output: str | None, where: str) -> str:
    """The output to use: required and checked when there are several, optional when one."""
    if output is None:
        if len(fn.outputs) > 1:
            raise ValueError(
                f"{where}: {fn.name} has several outputs ({', '.join(fn.outputs)}); name one, "
                f"e.g. talib:{fn.name}.{fn.outputs[0]}"
            )
        return fn.outputs[0]
    if output.lower() not in fn.outputs:
        raise ValueError(f"{where}: {fn.name} has no output {output!r}; outputs: {', '.join(fn.outputs)}")
    return output.lower()


def _ensure(fn: TalibFunction, output: str, params: dict[str, Any], where: str) -> str:
    """Validate `params` with TA-Lib and register the feature if it is new; return its name."""
    full = {**fn.defaults, **params}
    name = canonical_name(fn.name, output, full)
    if name in REGISTRY:
        return name
    warmup = lookback(fn.name, full)
    if warmup < 0:  # TA-Lib's lookback is -1 for parameters outside its ranges
        given = ", ".join(f"{k}={v}" for k, v in params.items())
        raise ValueError(f"{where}: bad value: TA-Lib {fn.name} rejects {given} (out of range)")
    with _LOCK:
        if name not in REGISTRY:  # another thread may have registered it meanwhile
            _register(name, fn, output, full, warmup)
    return name


def resolve_call(text: str) -> str:
    """Register the feature a call string like `talib:BBANDS(timeperiod=30).upperband` names.

    Returns the canonical feature name (an existing one when the same feature was asked for before,
    or when every parameter is TA-Lib's default). Raises ValueError naming the problem: malformed
    string, unknown function (with close matches), unknown or repeated parameter (listing the valid
    ones), bad value, missing or unknown output (listing the outputs).
    """
    where = repr(text)
    match = _CALL_RE.match(text)
    if not match:
        raise ValueError(
            f"{where}: malformed TA-Lib feature; expected talib:FUNCTION(param=value, ...).output"
        )
    func = match["func"].upper()
    if func not in FUNCTIONS:
        raise _unknown_function(func, where)
    fn = FUNCTIONS[func]
    params: dict[str, int | float] = {}
    args = (match["args"] or "").strip()
    for item in args.split(",") if args else ():
        key, eq, raw = (p.strip() for p in item.partition("="))
        if not eq or not key or not raw:
            raise ValueError(f"{where}: malformed argument {item!r}; expected param=value")
        if key not in fn.defaults:
            valid = ", ".join(fn.defaults) or "none"
            raise ValueError(f"{where}: {func} has no parameter {key!r}; its parameters: {valid}")
        if key in params:
            raise ValueError(f"{where}: parameter {key!r} is given twice")
        params[key] = _coerce(fn, key, raw, where)
    return _ensure(fn, _pick_output(fn, match["output"], where), params, where)


def _parse_params(fn: TalibFunction, rest: str) -> dict[str, int | float] | None:
    """Parse `<param><value>_<param><value>...` against `fn`'s parameters; None if it does not fit."""
    params: dict[str, int | float] = {}
    pos = 0
    names = sorted(fn.defaults, key=len, reverse=True)  # longest first: no prefix is shadowed
    while pos < len(rest):
        for key in names:
            if rest.startswith(key, pos):
                token = _VALUE_TOKEN.match(rest, pos + len(key))
                if token and (token.end() == len(rest) or rest[token.end()] == "_"):
                    raw = token.group().replace("m", "-").replace("p", ".")
                    params[key] = int(raw) if isinstance(fn.defaults[key], int) else float(raw)
                    pos = token.end() + 1
                    break
        else:
            return None
    return params


def resolve_name(name: str) -> str | None:
    """Re-create a parameterized catalog feature from its canonical name, e.g. in a worker process.

    Returns `name` once registered, or None when `name` is not a catalog name at all. Raises
    ValueError when it parses but is not canonical (naming the canonical spelling) or its values
    are out of TA-Lib's range.
    """
    if name in REGISTRY:
        return name
    if not name.startswith(NAME_PREFIX):
        return None
    for base in _BASES_LONGEST_FIRST:
        if not name.startswith(base + "_"):
            continue
        function, output = BASE_NAMES[base]
        fn = FUNCTIONS[function]
        params = _parse_params(fn, name[len(base) + 1 :])
        if params is None:
            continue
        canonical = canonical_name(function, output, {**fn.defaults, **params})
        if canonical != name:
            raise ValueError(f"feature {name!r} is not in canonical form; write it as {canonical!r}")
        return _ensure(fn, output, params, repr(name))
    return None
