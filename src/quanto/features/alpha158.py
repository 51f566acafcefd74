"""Alpha158 exactly as Qlib defines it (158 features).

The expressions are those of Qlib's `Alpha158DL.get_feature_config` with its default config: the 9
K-bar shapes, the 4 price ratios at offset 0, and 29 rolling families over windows 5, 10, 20, 30, 60.
Each feature's description is its Qlib expression; `QLIB_NAMES` maps our names to Qlib's columns.

Qlib operator semantics kept here: `Ref(x, d)` is x d bars back; `Std` is the sample std (ddof=1);
`Quantile` interpolates linearly; `Rank` is the average-rank percentile of the last value in its
window; `IdxMax`/`IdxMin` are the 1-based position of the first extreme counted from the window's
oldest bar; `Slope`/`Rsquare`/`Resi` regress the window on x = 1..N (Resi is the last bar's
residual); `Corr` and `Rsquare` are NaN where a rolling std is within 2e-5 of zero; `Greater`/`Less`
are elementwise max/min; epsilons of 1e-12 appear only where the expression has them.

One departure: Qlib's rolling operators accept partial windows (`min_periods=1`) at the start of a
history. Here every window must be full, so a feature is NaN for exactly its `lookback` warm-up bars
and identical to Qlib's value afterwards. Comparisons against `Ref(x, 1)` (CNTP/CNTN/CNTD) are NaN on
the first bar rather than Qlib's False, which only matters inside that warm-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from quanto.features.spec import register

FAMILY = "alpha158"
WINDOWS = (5, 10, 20, 30, 60)
_EPS = 1e-12  # Qlib adds it to denominators that can be zero (high == low, no volume, no change)
_DEGENERATE_STD = 2e-5  # Qlib's Corr/Rsquare: a window whose std is this close to 0 gives NaN

Array = np.ndarray


# --- Qlib operators on one symbol's arrays (full windows only) -----------------------------------


def _col(bars: pd.DataFrame, name: str) -> Array:
    """A bar column as float64 (a null vwap becomes NaN)."""
    return bars[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _ref(x: Array, d: int) -> Array:
    """Qlib `Ref(x, d)`: the value d bars back, NaN where there is none."""
    out = np.full_like(x, np.nan)
    if d < len(x):
        out[d:] = x[: len(x) - d]
    return out


def _roll(x: Array, n: int) -> pd.api.typing.Rolling:
    """A pandas rolling window that needs all n values (NaN inside the window gives NaN)."""
    return pd.Series(x).rolling(n, min_periods=n)


def _mean(x: Array, n: int) -> Array:
    return _roll(x, n).mean().to_numpy()


def _std(x: Array, n: int) -> Array:
    return _roll(x, n).std(ddof=1).to_numpy()


def _sum(x: Array, n: int) -> Array:
    return _roll(x, n).sum().to_numpy()


def _max(x: Array, n: int) -> Array:
    return _roll(x, n).max().to_numpy()


def _min(x: Array, n: int) -> Array:
    return _roll(x, n).min().to_numpy()


def _quantile(x: Array, n: int, q: float) -> Array:
    return _roll(x, n).quantile(q, interpolation="linear").to_numpy()


def _windowed(x: Array, n: int, reduce: Callable[[Array], Array]) -> Array:
    """Apply `reduce` (rows of a (k, n) window matrix -> k values) to every full window ending at t.

    Windows holding a NaN give NaN, matching the pandas ops above.
    """
    out = np.full(len(x), np.nan)
    if len(x) < n:
        return out
    windows = sliding_window_view(x, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(reduce(windows), dtype=np.float64)
    values[np.isnan(windows).any(axis=1)] = np.nan
    out[n - 1 :] = values
    return out


def _rank(x: Array, n: int) -> Array:
    """Qlib `Rank`: pandas `rolling.rank(pct=True)`, i.e. the last value's average rank / n."""

    def reduce(w: Array) -> Array:
        last = w[:, -1:]
        return ((w < last).sum(axis=1) + ((w == last).sum(axis=1) + 1) / 2) / n

    return _windowed(x, n, reduce)


def _idxmax(x: Array, n: int) -> Array:
    """Qlib `IdxMax`: 1-based position of the first maximum, counted from the oldest bar."""
    return _windowed(x, n, lambda w: np.argmax(w, axis=1) + 1.0)


def _idxmin(x: Array, n: int) -> Array:
    """Qlib `IdxMin`: 1-based position of the first minimum, counted from the oldest bar."""
    return _windowed(x, n, lambda w: np.argmin(w, axis=1) + 1.0)


def _centered(w: Array) -> tuple[Array, Array]:
    """Window rows minus their means, and the rows' sums of squares (centred for precision)."""
    c = w - w.mean(axis=1, keepdims=True)
    return c, (c * c).sum(axis=1)


def _regression(x: Array, n: int, what: str) -> Array:
    """Qlib `Slope`, `Rsquare` or `Resi` of the window regressed on x = 1..n.

    Computed on centred windows rather than Qlib's running sums, which lose digits on price levels.
    """
    xc = np.arange(1, n + 1) - (n + 1) / 2
    sxx = float(xc @ xc)

    def reduce(w: Array) -> Array:
        yc, syy = _centered(w)
        sxy = yc @ xc
        if what == "slope":
            return sxy / sxx
        if what == "resi":
            return yc[:, -1] - (sxy / sxx) * xc[-1]
        rsquare = sxy * sxy / (sxx * syy)
        rsquare[np.sqrt(syy / (n - 1)) <= _DEGENERATE_STD] = np.nan
        return rsquare

    return _windowed(x, n, reduce)


def _corr(a: Array, b: Array, n: int) -> Array:
    """Qlib `Corr`: rolling Pearson correlation, NaN where either side's std is within 2e-5 of 0."""
    out = np.full(len(a), np.nan)
    if len(a) < n:
        return out
    wa, wb = sliding_window_view(a, n), sliding_window_view(b, n)
    ac, saa = _centered(wa)
    bc, sbb = _centered(wb)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (ac * bc).sum(axis=1) / np.sqrt(saa * sbb)
    flat = (np.sqrt(saa / (n - 1)) <= _DEGENERATE_STD) | (np.sqrt(sbb / (n - 1)) <= _DEGENERATE_STD)
    r[flat] = np.nan  # NaNs in a window already propagate through the sums
    out[n - 1 :] = r
    return out


def _compare(a: Array, b: Array, op: Callable[[Array, Array], Array]) -> Array:
    """Qlib `Gt`/`Lt` as 1.0/0.0, NaN where either side is missing (Qlib says False there)."""
    return np.where(np.isnan(a) | np.isnan(b), np.nan, op(a, b).astype(np.float64))


def _div(num: Array, den: Array) -> Array:
    """num / den, with NaN rather than +-inf where the denominator is 0 (a Qlib inf means undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(num / den, dtype=np.float64)
    out[np.isinf(out)] = np.nan
    return out


def _log(x: Array) -> Array:
    """Qlib `Log`, quietly NaN/-inf for non-positive input (later turned into NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


# --- K-bar features (lookback 0) ----------------------------------------------------------------


def _cols(bars: pd.DataFrame, *names: str) -> tuple[Array, ...]:
    """Several bar columns; each feature reads only its declared inputs."""
    return tuple(_col(bars, name) for name in names)


def _kmid(bars: pd.DataFrame) -> Array:
    o, c = _cols(bars, "open", "close")
    return _div(c - o, o)


def _klen(bars: pd.DataFrame) -> Array:
    o, h, lo = _cols(bars, "open", "high", "low")
    return _div(h - lo, o)


def _kmid2(bars: pd.DataFrame) -> Array:
    o, h, lo, c = _cols(bars, "open", "high", "low", "close")
    return _div(c - o, h - lo + _EPS)


def _kup(bars: pd.DataFrame) -> Array:
    o, h, c = _cols(bars, "open", "high", "close")
    return _div(h - np.maximum(o, c), o)


def _kup2(bars: pd.DataFrame) -> Array:
    o, h, lo, c = _cols(bars, "open", "high", "low", "close")
    return _div(h - np.maximum(o, c), h - lo + _EPS)


def _klow(bars: pd.DataFrame) -> Array:
    o, lo, c = _cols(bars, "open", "low", "close")
    return _div(np.minimum(o, c) - lo, o)


def _klow2(bars: pd.DataFrame) -> Array:
    o, h, lo, c = _cols(bars, "open", "high", "low", "close")
    return _div(np.minimum(o, c) - lo, h - lo + _EPS)


def _ksft(bars: pd.DataFrame) -> Array:
    o, h, lo, c = _cols(bars, "open", "high", "low", "close")
    return _div(2 * c - h - lo, o)


def _ksft2(bars: pd.DataFrame) -> Array:
    o, h, lo, c = _cols(bars, "open", "high", "low", "close")
    return _div(2 * c - h - lo, h - lo + _EPS)


_KBAR: tuple[tuple[str, tuple[str, ...], str, Callable[[pd.DataFrame], Array]], ...] = (
    ("KMID", ("open", "close"), "($close-$open)/$open", _kmid),
    ("KLEN", ("open", "high", "low"), "($high-$low)/$open", _klen),
    ("KMID2", ("open", "high", "low", "close"), "($close-$open)/($high-$low+1e-12)", _kmid2),
    ("KUP", ("open", "high", "close"), "($high-Greater($open, $close))/$open", _kup),
    (
        "KUP2",
        ("open", "high", "low", "close"),
        "($high-Greater($open, $close))/($high-$low+1e-12)",
        _kup2,
    ),
    ("KLOW", ("open", "low", "close"), "(Less($open, $close)-$low)/$open", _klow),
    (
        "KLOW2",
        ("open", "high", "low", "close"),
        "(Less($open, $close)-$low)/($high-$low+1e-12)",
        _klow2,
    ),
    ("KSFT", ("open", "high", "low", "close"), "(2*$close-$high-$low)/$open", _ksft),
    ("KSFT2", ("open", "high", "low", "close"), "(2*$close-$high-$low)/($high-$low+1e-12)", _ksft2),
)


def _price_ratio(bars: pd.DataFrame, field: str) -> Array:
    """Qlib `$field/$close` (OPEN0, HIGH0, LOW0, VWAP0); a null vwap gives NaN."""
    return _div(_col(bars, field), _col(bars, "close"))


# --- rolling families (one function per family, `window` = Qlib's d) ------------------------------


def _roc(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_ref(c, window), c)


def _ma(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_mean(c, window), c)


def _std_family(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_std(c, window), c)


def _beta(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_regression(c, window, "slope"), c)


def _rsqr(bars: pd.DataFrame, window: int) -> Array:
    return _regression(_col(bars, "close"), window, "rsquare")


def _resi(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_regression(c, window, "resi"), c)


def _max_family(bars: pd.DataFrame, window: int) -> Array:
    return _div(_max(_col(bars, "high"), window), _col(bars, "close"))


def _min_family(bars: pd.DataFrame, window: int) -> Array:
    return _div(_min(_col(bars, "low"), window), _col(bars, "close"))


def _qtlu(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_quantile(c, window, 0.8), c)


def _qtld(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _div(_quantile(c, window, 0.2), c)


def _rank_family(bars: pd.DataFrame, window: int) -> Array:
    return _rank(_col(bars, "close"), window)


def _rsv(bars: pd.DataFrame, window: int) -> Array:
    lowest = _min(_col(bars, "low"), window)
    highest = _max(_col(bars, "high"), window)
    return _div(_col(bars, "close") - lowest, highest - lowest + _EPS)


def _imax(bars: pd.DataFrame, window: int) -> Array:
    return _idxmax(_col(bars, "high"), window) / window


def _imin(bars: pd.DataFrame, window: int) -> Array:
    return _idxmin(_col(bars, "low"), window) / window


def _imxd(bars: pd.DataFrame, window: int) -> Array:
    return (_idxmax(_col(bars, "high"), window) - _idxmin(_col(bars, "low"), window)) / window


def _corr_family(bars: pd.DataFrame, window: int) -> Array:
    return _corr(_col(bars, "close"), _log(_col(bars, "volume") + 1), window)


def _cord(bars: pd.DataFrame, window: int) -> Array:
    c, v = _col(bars, "close"), _col(bars, "volume")
    with np.errstate(divide="ignore", invalid="ignore"):
        price_change, volume_change = c / _ref(c, 1), _log(v / _ref(v, 1) + 1)
    # A zero previous volume gives inf: the correlation of that window is undefined.
    volume_change[np.isinf(volume_change)] = np.nan
    return _corr(price_change, volume_change, window)


def _up_share(x: Array, window: int) -> Array:
    """Qlib `Mean(x>Ref(x, 1), d)`: the share of the last d bars that rose."""
    return _mean(_compare(x, _ref(x, 1), np.greater), window)


def _down_share(x: Array, window: int) -> Array:
    """Qlib `Mean(x<Ref(x, 1), d)`: the share of the last d bars that fell."""
    return _mean(_compare(x, _ref(x, 1), np.less), window)


def _cntp(bars: pd.DataFrame, window: int) -> Array:
    return _up_share(_col(bars, "close"), window)


def _cntn(bars: pd.DataFrame, window: int) -> Array:
    return _down_share(_col(bars, "close"), window)


def _cntd(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    return _up_share(c, window) - _down_share(c, window)


def _gains_losses(x: Array, window: int) -> tuple[Array, Array, Array]:
    """Sums over d bars of Greater(x-Ref(x, 1), 0), Greater(Ref(x, 1)-x, 0) and Abs(x-Ref(x, 1))."""
    change = x - _ref(x, 1)
    gains = _sum(np.maximum(change, 0.0), window)  # np.maximum keeps NaN, as Qlib's Greater does
    losses = _sum(np.maximum(-change, 0.0), window)
    return gains, losses, _sum(np.abs(change), window)


def _sump(bars: pd.DataFrame, window: int) -> Array:
    gains, _, total = _gains_losses(_col(bars, "close"), window)
    return _div(gains, total + _EPS)


def _sumn(bars: pd.DataFrame, window: int) -> Array:
    _, losses, total = _gains_losses(_col(bars, "close"), window)
    return _div(losses, total + _EPS)


def _sumd(bars: pd.DataFrame, window: int) -> Array:
    gains, losses, total = _gains_losses(_col(bars, "close"), window)
    return _div(gains - losses, total + _EPS)


def _vma(bars: pd.DataFrame, window: int) -> Array:
    v = _col(bars, "volume")
    return _div(_mean(v, window), v + _EPS)


def _vstd(bars: pd.DataFrame, window: int) -> Array:
    v = _col(bars, "volume")
    return _div(_std(v, window), v + _EPS)


def _wvma(bars: pd.DataFrame, window: int) -> Array:
    c = _col(bars, "close")
    weighted = np.abs(_div(c, _ref(c, 1)) - 1) * _col(bars, "volume")
    return _div(_std(weighted, window), _mean(weighted, window) + _EPS)


def _vsump(bars: pd.DataFrame, window: int) -> Array:
    gains, _, total = _gains_losses(_col(bars, "volume"), window)
    return _div(gains, total + _EPS)


def _vsumn(bars: pd.DataFrame, window: int) -> Array:
    _, losses, total = _gains_losses(_col(bars, "volume"), window)
    return _div(losses, total + _EPS)


def _vsumd(bars: pd.DataFrame, window: int) -> Array:
    gains, losses, total = _gains_losses(_col(bars, "volume"), window)
    return _div(gains - losses, total + _EPS)


def _sum_ratio(x: str, sign: str) -> str:
    """The Qlib text of SUMP/SUMN/SUMD (and the V- variants) for field `x`, `{d}` left open."""
    gains = f"Sum(Greater(${x}-Ref(${x}, 1), 0), {{d}})"
    losses = f"Sum(Greater(Ref(${x}, 1)-${x}, 0), {{d}})"
    total = f"(Sum(Abs(${x}-Ref(${x}, 1)), {{d}})+1e-12)"
    num = {"P": gains, "N": losses, "D": f"({gains}-{losses})"}[sign]
    return f"{num}/{total}"


_WVMA_X = "Abs($close/Ref($close, 1)-1)*$volume"
_C, _CV, _HLC = ("close",), ("close", "volume"), ("high", "low", "close")

# (Qlib name, inputs, extra warm-up beyond window - 1, Qlib expression with {d}, fn) in Qlib's order.
# The extra bar is for expressions that difference against Ref(x, 1) before rolling.
_ROLLING: tuple[tuple[str, tuple[str, ...], int, str, Callable[..., Array]], ...] = (
    ("ROC", _C, 1, "Ref($close, {d})/$close", _roc),
    ("MA", _C, 0, "Mean($close, {d})/$close", _ma),
    ("STD", _C, 0, "Std($close, {d})/$close", _std_family),
    ("BETA", _C, 0, "Slope($close, {d})/$close", _beta),
    ("RSQR", _C, 0, "Rsquare($close, {d})", _rsqr),
    ("RESI", _C, 0, "Resi($close, {d})/$close", _resi),
    ("MAX", ("high", "close"), 0, "Max($high, {d})/$close", _max_family),
    ("MIN", ("low", "close"), 0, "Min($low, {d})/$close", _min_family),
    ("QTLU", _C, 0, "Quantile($close, {d}, 0.8)/$close", _qtlu),
    ("QTLD", _C, 0, "Quantile($close, {d}, 0.2)/$close", _qtld),
    ("RANK", _C, 0, "Rank($close, {d})", _rank_family),
    ("RSV", _HLC, 0, "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)", _rsv),
    ("IMAX", ("high",), 0, "IdxMax($high, {d})/{d}", _imax),
    ("IMIN", ("low",), 0, "IdxMin($low, {d})/{d}", _imin),
    ("IMXD", ("high", "low"), 0, "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}", _imxd),
    ("CORR", _CV, 0, "Corr($close, Log($volume+1), {d})", _corr_family),
    ("CORD", _CV, 1, "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})", _cord),
    ("CNTP", _C, 1, "Mean($close>Ref($close, 1), {d})", _cntp),
    ("CNTN", _C, 1, "Mean($close<Ref($close, 1), {d})", _cntn),
    ("CNTD", _C, 1, "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})", _cntd),
    ("SUMP", _C, 1, _sum_ratio("close", "P"), _sump),
    ("SUMN", _C, 1, _sum_ratio("close", "N"), _sumn),
    ("SUMD", _C, 1, _sum_ratio("close", "D"), _sumd),
    ("VMA", ("volume",), 0, "Mean($volume, {d})/($volume+1e-12)", _vma),
    ("VSTD", ("volume",), 0, "Std($volume, {d})/($volume+1e-12)", _vstd),
    ("WVMA", _CV, 1, f"Std({_WVMA_X}, {{d}})/(Mean({_WVMA_X}, {{d}})+1e-12)", _wvma),
    ("VSUMP", ("volume",), 1, _sum_ratio("volume", "P"), _vsump),
    ("VSUMN", ("volume",), 1, _sum_ratio("volume", "N"), _vsumn),
    ("VSUMD", ("volume",), 1, _sum_ratio("volume", "D"), _vsumd),
)


# --- registration, in Qlib's column order ---------------------------------------------------------

QLIB_NAMES: dict[str, str] = {}  # our feature name -> Qlib's Alpha158 column name

for _qlib, _inputs, _expr, _fn in _KBAR:
    _name = f"alpha158_{_qlib.lower()}"
    register(_name, family=FAMILY, inputs=_inputs, lookback=0, description=_expr)(_fn)
    QLIB_NAMES[_name] = _qlib

for _field in ("open", "high", "low", "vwap"):
    _name = f"alpha158_{_field}_0"
    register(
        _name,
        family=FAMILY,
        inputs=(_field, "close"),
        lookback=0,
        params={"field": _field},
        description=f"${_field}/$close",
    )(_price_ratio)
    QLIB_NAMES[_name] = f"{_field.upper()}0"

for _qlib, _inputs, _extra, _expr, _fn in _ROLLING:
    for _d in WINDOWS:
        _name = f"alpha158_{_qlib.lower()}_{_d}"
        register(
            _name,
            family=FAMILY,
            inputs=_inputs,
            lookback=_d - 1 + _extra,
            params={"window": _d},
            description=_expr.format(d=_d),
        )(_fn)
        QLIB_NAMES[_name] = f"{_qlib}{_d}"

ALPHA158: tuple[str, ...] = tuple(QLIB_NAMES)
