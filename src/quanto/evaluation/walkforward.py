"""Walk-forward evaluation: folds over the panel's bars, purged rows, one fold's run, stitching.

Windows are counted in bars = the sorted unique timestamps of the panel, so every symbol shares the
same calendar of folds. A label is known only at its end time `t1`, so leakage is prevented twice:

- purging: a training row whose t1 reaches the validation window (the test window when there is
  none) is dropped, and so is a validation row whose t1 reaches the test window; in cpcv, a
  training row whose label interval [ts, t1] overlaps any test group;
- embargo: `embargo_bars` bars are skipped after the training and after the validation window
  (cpcv: before and after each test group), for features that look back across the boundary.

rolling / expanding folds each predict a test window; `stitch` joins them into the one
out-of-sample series the backtest trades (the latest fold wins where test windows overlap). cpcv
(combinatorial purged cross-validation) tests every choice of `k_test_groups` of `n_groups` groups;
its predictions form C(n_groups - 1, k_test_groups - 1) paths, each covering every bar once
(`cpcv_paths`). The backtest gets path 0, which is out of sample bar by bar but trained on later
data too; every path's metrics are reported, their spread being the point of cpcv.

`run_fold` runs one fold (what a Temporal activity calls); `walk_forward` runs them all in process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quanto.backtest.metrics import periods_per_year_for
from quanto.config.models import PipelineConfig, WalkForwardConfig
from quanto.errors import InputError
from quanto.evaluation import canary
from quanto.evaluation.baselines import baseline_predictions, previous_returns
from quanto.evaluation.metrics import prediction_metrics
from quanto.models.base import Design, Progress

PREDICTION_COLUMNS = ["symbol", "ts", "fold", "prediction", "label", "fwd_return"]
CANARY_COLUMN = "canary"
BASELINE_PREFIX = "baseline_"
# The fitted model's and the canary's checkpoints, under a fold's checkpoint folder.
MODEL_CHECKPOINT, CANARY_CHECKPOINT = "model", "canary"

Span = tuple[pd.Timestamp, pd.Timestamp]


@dataclass(frozen=True)
class Fold:
    """One fold; every bound is an inclusive bar timestamp.

    rolling / expanding: training [train_start, train_end], optional validation [valid_start,
    valid_end], test [test_start, test_end]. cpcv: `groups` are the test groups, `test_spans` their
    first and last bars, `blocked_spans` the same widened by the embargo (never trained on);
    train_start/train_end are the panel's first and last bars and test_start/test_end enclose the
    test spans.
    """

    index: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    valid_start: pd.Timestamp | None = None
    valid_end: pd.Timestamp | None = None
    groups: tuple[int, ...] = ()
    test_spans: tuple[Span, ...] = ()
    blocked_spans: tuple[Span, ...] = ()

    @property
    def is_cpcv(self) -> bool:
        """Whether this is a combinatorial purged cross-validation fold."""
        return bool(self.test_spans)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (timestamps as ISO-8601 strings; cpcv keys only for cpcv folds)."""
        iso = _iso
        out: dict[str, Any] = {
            "index": int(self.index),
            "train_start": iso(self.train_start),
            "train_end": iso(self.train_end),
            "valid_start": iso(self.valid_start),
            "valid_end": iso(self.valid_end),
            "test_start": iso(self.test_start),
            "test_end": iso(self.test_end),
        }
        if self.is_cpcv:
            out["groups"] = list(self.groups)
            out["test_spans"] = [[iso(a), iso(b)] for a, b in self.test_spans]
            out["blocked_spans"] = [[iso(a), iso(b)] for a, b in self.blocked_spans]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fold:
        """Inverse of `to_dict`."""
        ts = _timestamp
        return cls(
            index=int(d["index"]),
            train_start=ts(d["train_start"]),
            train_end=ts(d["train_end"]),
            test_start=ts(d["test_start"]),
            test_end=ts(d["test_end"]),
            valid_start=ts(d.get("valid_start")),
            valid_end=ts(d.get("valid_end")),
            groups=tuple(int(g) for g in d.get("groups", ())),
            test_spans=tuple((ts(a), ts(b)) for a, b in d.get("test_spans", ())),
            blocked_spans=tuple((ts(a), ts(b)) for a, b in d.get("blocked_spans", ())),
        )


def _iso(t: pd.Timestamp | None) -> str | None:
    return None if t is None else t.isoformat()


def _timestamp(v: Any) -> Any:
    return None if v is None else pd.Timestamp(v)


def panel_bars(timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex | pd.Series) -> pd.DatetimeIndex:
    """The sorted unique timestamps (bars) of a panel, NaT dropped."""
    return pd.DatetimeIndex(pd.unique(pd.DatetimeIndex(timestamps).dropna())).sort_values()


def make_folds(
    timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex | pd.Series, cfg: WalkForwardConfig
) -> list[Fold]:
    """Folds over the panel's bars (`panel_bars(timestamps)`), in index order.

    rolling / expanding, fold k: training window (rolling: `train_bars` bars from bar k*step;
    expanding: from the first bar to the same end), `embargo_bars` skipped, `valid_bars` of
    validation (if any), `embargo_bars` skipped again, then `test_bars` test bars; the last fold's
    test window may be shorter (at least one bar). With `max_folds` only the last folds are kept.
    cpcv: see `cpcv_folds`. Fold indices are always 0..len-1.
    """
    bars = panel_bars(timestamps)
    if cfg.scheme == "cpcv":
        return cpcv_folds(bars, cfg)
    n = len(bars)
    gap = cfg.embargo_bars
    valid_span = cfg.valid_bars + gap if cfg.valid_bars else 0  # validation + the embargo after it
    needed = cfg.train_bars + gap + valid_span + 1
    if n < needed:
        raise ValueError(
            f"walk-forward needs at least {needed} bars (train_bars={cfg.train_bars} + "
            f"embargo_bars={cfg.embargo_bars}"
            + (f" + valid_bars={cfg.valid_bars} + embargo_bars={cfg.embargo_bars}" if cfg.valid_bars else "")
            + f" + 1 test bar) but the panel has {n} unique timestamps"
        )

    folds: list[Fold] = []
    k = 0
    while True:
        offset = k * cfg.step
        train_end = offset + cfg.train_bars - 1
        valid_start = train_end + gap + 1
        test_start = train_end + gap + 1 + valid_span
        if test_start >= n:
            break
        valid = (
            (bars[valid_start], bars[valid_start + cfg.valid_bars - 1]) if cfg.valid_bars else (None, None)
        )
        folds.append(
            Fold(
                index=k,
                train_start=bars[0 if cfg.scheme == "expanding" else offset],
                train_end=bars[train_end],
                valid_start=valid[0],
                valid_end=valid[1],
                test_start=bars[test_start],
                test_end=bars[min(test_start + cfg.test_bars - 1, n - 1)],
            )
        )
        k += 1
    if cfg.max_folds is not None:
        folds = folds[-cfg.max_folds :]
    return [replace(f, index=i) for i, f in enumerate(folds)]


def cpcv_folds(bars: pd.DatetimeIndex, cfg: WalkForwardConfig) -> list[Fold]:
    """Combinatorial purged cross-validation: `bars` split into `n_groups` groups of consecutive
    bars (sizes differ by at most one); one fold per choice of `k_test_groups` groups (in
    lexicographic order), testing those and training on the rest."""
    n, groups = len(bars), cfg.n_groups
    if n < 2 * groups:
        raise ValueError(f"cpcv with n_groups={groups} needs at least {2 * groups} bars; the panel has {n}")
    edges = [g * n // groups for g in range(groups + 1)]  # group g = bars [edges[g], edges[g+1])
    folds = []
    for index, chosen in enumerate(combinations(range(groups), cfg.k_test_groups)):
        spans = tuple((bars[edges[g]], bars[edges[g + 1] - 1]) for g in chosen)
        blocked = tuple(
            (bars[max(edges[g] - cfg.embargo_bars, 0)], bars[min(edges[g + 1] - 1 + cfg.embargo_bars, n - 1)])
            for g in chosen
        )
        folds.append(
            Fold(
                index=index,
                train_start=bars[0],
                train_end=bars[-1],
                test_start=spans[0][0],
                test_end=spans[-1][1],
                groups=chosen,
                test_spans=spans,
                blocked_spans=blocked,
            )
        )
    return folds


def plan_folds(
    cfg: PipelineConfig, timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex | pd.Series
) -> list[Fold]:
    """The job's folds over the panel's timestamps; ValueError when the job cannot be evaluated so
    (too few bars; cpcv with features fitted on a fixed window, which cpcv would test on)."""
    if cfg.walk_forward.scheme == "cpcv" and cfg.features.pca is not None:
        raise ValueError(
            "walk_forward.scheme cpcv tests every part of the panel, including the window "
            "features.pca is fitted on; use rolling or expanding, or drop features.pca"
        )
    return make_folds(timestamps, cfg.walk_forward)


@dataclass(frozen=True)
class FoldRows:
    """Integer positions (for `.iloc`) of a fold's training, validation and test rows."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _within(ts: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    return (ts >= start) & (ts <= end)


def fold_rows(frame: pd.DataFrame, fold: Fold) -> FoldRows:
    """The fold's rows of `frame` (columns ts, label, t1).

    Training and validation rows have a label and a known t1 and are purged (see the module
    docstring); test rows are every row in the test window(s), labelled or not (the unlabeled tail
    is still predicted). NaT compares False, so a row without a known horizon end is never fitted on.
    """
    ts, t1 = frame["ts"], frame["t1"]
    labelled = (frame["label"].notna() & t1.notna()).to_numpy()
    none = np.empty(0, dtype=np.int64)
    if fold.is_cpcv:
        test = np.zeros(len(frame), dtype=bool)
        train = labelled.copy()
        for (a, b), (block_a, block_b) in zip(fold.test_spans, fold.blocked_spans, strict=True):
            test |= _within(ts, a, b).to_numpy()
            train &= ~_within(ts, block_a, block_b).to_numpy()
            train &= ~((ts <= b) & (t1 >= a)).to_numpy()  # the label interval overlaps the test group
        return FoldRows(np.flatnonzero(train), none, np.flatnonzero(test))
    reach = fold.valid_start if fold.valid_start is not None else fold.test_start
    train = labelled & _within(ts, fold.train_start, fold.train_end).to_numpy() & (t1 < reach).to_numpy()
    valid = none
    if fold.valid_start is not None:
        in_valid = (
            _within(ts, fold.valid_start, fold.valid_end).to_numpy() & (t1 < fold.test_start).to_numpy()
        )
        valid = np.flatnonzero(labelled & in_valid)
    test = _within(ts, fold.test_start, fold.test_end).to_numpy()
    return FoldRows(np.flatnonzero(train), valid, np.flatnonzero(test))


def label_horizon_bars(frame: pd.DataFrame) -> float:
    """Median span of the labels in bars (bar of t1 minus bar of ts, over labelled rows); 1 when no
    label has ended. It annualizes the forward returns' Sharpe ratio and spaces the canary's time shifts."""
    t1 = pd.DatetimeIndex(frame["t1"])
    ended = ~t1.isna()
    if not ended.any():
        return 1.0
    bars = panel_bars(frame["ts"]).as_unit("ns").asi8
    start = np.searchsorted(bars, pd.DatetimeIndex(frame["ts"])[ended].as_unit("ns").asi8)
    end = np.searchsorted(bars, t1[ended].as_unit("ns").asi8)
    return max(1.0, float(np.median(end - start)))


def bars_per_year(cfg: PipelineConfig) -> float:
    """backtest.periods_per_year, or the timeframe's bars per year."""
    return cfg.backtest.periods_per_year or periods_per_year_for(cfg.universe.timeframe)


def signal_periods_per_year(cfg: PipelineConfig, horizon_bars: float) -> float:
    """Periods per year of `horizon_bars`-bar forward returns: `bars_per_year` / horizon."""
    return bars_per_year(cfg) / horizon_bars


@dataclass
class FoldOutcome:
    """One fold's out-of-sample predictions and its info.

    `predictions`: PREDICTION_COLUMNS, then `baseline_<name>` per baseline and `canary` (when the
    canary runs), one row per test row in (symbol, ts) order. `info`: JSON-safe; the fold's bounds
    (`Fold.to_dict`), n_train, n_valid, n_test, note, n_trials, leaderboard (best first, at most
    `evaluation.leaderboard_rows`), trial_sharpes ({n, var} of the candidates' per-period validation
    Sharpe ratios when the search reported them, else None), horizon_bars, periods_per_year, metrics,
    baselines ({name: metrics}), prev_return_source, and canary (`canary.fold_stats`, or None).
    """

    predictions: pd.DataFrame
    info: dict[str, Any]


def _phase(progress: Progress | None, fold: int, phase: str) -> Progress | None:
    if progress is None:
        return None
    return lambda d: progress({**d, "fold": fold, "phase": phase})


def _subfolder(checkpoint: Path | None, name: str) -> Path | None:
    return None if checkpoint is None else Path(checkpoint) / name


def _trial_sharpes(leaderboard: list[dict[str, Any]]) -> dict[str, Any] | None:
    values = [float(e["sharpe"]) for e in leaderboard if isinstance(e.get("sharpe"), int | float)]
    values = [v for v in values if math.isfinite(v)]
    return {"n": len(values), "var": float(np.var(values, ddof=1))} if len(values) >= 2 else None


def run_fold(
    design: Design,
    fold: Fold,
    cfg: PipelineConfig,
    *,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
) -> FoldOutcome:
    """Train fold `fold` (`quanto.models.selection.fit_fold` on its purged training rows, the
    validation rows for early stopping and selection), predict its test rows, and score them next to
    the baselines and, with `evaluation.canary`, a shuffled-label canary.

    `design.frame` is the features + labels dataset (symbol, ts, label, fwd_return, t1 and the
    feature columns), sorted by (symbol, ts). Deterministic; it writes nothing but the fits'
    checkpoints under `checkpoint` (model/ and canary/), from which an interrupted fit resumes.
    """
    from quanto.models.selection import fit_fold

    frame = design.frame
    missing = [c for c in ("label", "fwd_return", "t1") if c not in frame.columns]
    if missing:
        raise ValueError(f"design frame lacks label columns {missing}")
    objective = cfg.model.objective
    rows = fold_rows(frame, fold)
    if len(rows.train) == 0:
        raise InputError(
            f"fold {fold.index} ({fold.train_start} .. {fold.train_end}) has no labelled training rows "
            "after purging; lengthen train_bars or shorten the label horizon"
        )
    labels = frame["label"].to_numpy(dtype=np.float64)
    train = (rows.train, labels[rows.train])
    valid = (rows.valid, labels[rows.valid]) if len(rows.valid) else None
    notes = []
    if fold.valid_start is not None and valid is None:
        notes.append("every validation row was purged (labels reach the test window); fitted without one")

    fit = fit_fold(
        cfg.model,
        design,
        train,
        valid,
        progress=_phase(progress, fold.index, "model"),
        checkpoint=_subfolder(checkpoint, MODEL_CHECKPOINT),
    )
    if fit.model.note:
        notes.insert(0, fit.model.note)
    test = frame.iloc[rows.test]
    pred = np.asarray(fit.model.predict(design, rows.test), dtype=np.float64)
    predictions = pd.DataFrame(
        {
            "symbol": test["symbol"].to_numpy(),
            "ts": test["ts"].reset_index(drop=True),  # a Series keeps the panel's tz-aware dtype
            "fold": np.full(len(test), fold.index, dtype=np.int64),
            "prediction": pred,
            "label": test["label"].to_numpy(dtype=np.float64),
            "fwd_return": test["fwd_return"].to_numpy(dtype=np.float64),
        }
    )

    horizon = label_horizon_bars(frame)
    ppy = signal_periods_per_year(cfg, horizon)
    ts = predictions["ts"].to_numpy()

    def score(values: np.ndarray) -> dict[str, Any]:
        return prediction_metrics(values, predictions["label"], predictions["fwd_return"], ts, objective, ppy)

    prev, prev_source = previous_returns(frame)
    baselines = baseline_predictions(objective, train[1], prev[rows.test])
    for name, values in baselines.items():
        # Scored on exactly the model's rows: where the model has no prediction, neither do they.
        predictions[f"{BASELINE_PREFIX}{name}"] = np.where(np.isfinite(pred), values, np.nan)

    canary_stats = None
    if cfg.evaluation.canary:
        seed = cfg.model.seed
        shuffled_valid = None
        if valid is not None:
            shuffled_valid = (valid[0], canary.shuffled(valid[1], seed, fold.index, "valid"))
        canary_fit = fit_fold(
            cfg.model,
            design,
            (train[0], canary.shuffled(train[1], seed, fold.index, "train")),
            shuffled_valid,
            progress=_phase(progress, fold.index, "canary"),
            checkpoint=_subfolder(checkpoint, CANARY_CHECKPOINT),
        )
        predictions[CANARY_COLUMN] = np.asarray(canary_fit.model.predict(design, rows.test), dtype=np.float64)
        canary_stats = canary.fold_stats(
            predictions[CANARY_COLUMN],
            predictions["label"],
            predictions["fwd_return"],
            ts,
            predictions["symbol"].to_numpy(),
            objective,
            horizon,
            cfg.evaluation.canary_alpha,
        )

    info = {
        **fold.to_dict(),
        "n_train": int(len(rows.train)),
        "n_valid": int(len(rows.valid)),
        "n_test": int(len(predictions)),
        "note": "; ".join(notes) or None,
        "n_trials": int(fit.n_trials),
        "leaderboard": list(fit.leaderboard[: cfg.evaluation.leaderboard_rows]),
        "trial_sharpes": _trial_sharpes(fit.leaderboard),
        "horizon_bars": horizon,
        "periods_per_year": ppy,
        "metrics": score(pred),
        "baselines": {name: score(predictions[f"{BASELINE_PREFIX}{name}"]) for name in baselines},
        "prev_return_source": prev_source,
        "canary": canary_stats,
    }
    return FoldOutcome(predictions, info)


def walk_forward(
    design: Design,
    cfg: PipelineConfig,
    folds: Sequence[Fold],
    *,
    done: dict[int, FoldOutcome] | None = None,
    on_fold: Callable[[Fold, FoldOutcome], None] | None = None,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
) -> list[FoldOutcome]:
    """`run_fold` for every fold, in index order; returns their outcomes in that order.

    `done` maps fold index → the outcome of an earlier run, reused as it is (`on_fold` is not called
    for it). `on_fold(fold, outcome)` runs after each newly computed fold: the caller checkpoints
    there. Fits checkpoint under `checkpoint_dir`/fold-<index>.
    """
    if len({f.index for f in folds}) != len(folds):
        raise ValueError("fold indices must be unique")
    done = done or {}
    unknown = sorted(set(done) - {f.index for f in folds})
    if unknown:
        raise ValueError(f"done holds outcomes of folds {unknown} that are not in this fold list")
    outcomes = []
    for fold in sorted(folds, key=lambda f: f.index):
        if fold.index in done:
            outcomes.append(done[fold.index])
            continue
        where = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold-{fold.index:04d}"
        outcome = run_fold(design, fold, cfg, progress=progress, checkpoint=where)
        if on_fold is not None:
            on_fold(fold, outcome)
        outcomes.append(outcome)
    return outcomes


def stitch(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The folds' predictions as one out-of-sample series, sorted by (symbol, ts).

    Where test windows overlap (step_bars < test_bars) a (symbol, ts) predicted by several folds
    keeps the latest fold's prediction, trained on the most recent data; it is out of sample for
    that fold too.
    """
    if not parts:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    joined = pd.concat(parts, ignore_index=True).sort_values("fold", kind="stable")
    joined = joined.drop_duplicates(subset=["symbol", "ts"], keep="last")
    return joined.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


def cpcv_paths(folds: Sequence[Fold]) -> list[dict[int, int]]:
    """The backtest paths of cpcv folds: for path j, group → the fold whose test set supplies that
    group's predictions (the j-th fold, in index order, that tests the group). There are
    C(n_groups - 1, k_test_groups - 1) paths, each covering every group once."""
    testers: dict[int, list[int]] = {}
    for fold in sorted(folds, key=lambda f: f.index):
        if not fold.is_cpcv:
            raise ValueError(f"fold {fold.index} is not a cpcv fold")
        for g in fold.groups:
            testers.setdefault(g, []).append(fold.index)
    counts = {len(v) for v in testers.values()}
    if len(counts) != 1:
        raise ValueError(f"cpcv folds test their groups unevenly ({sorted(counts)} times); pass every fold")
    return [{g: testers[g][j] for g in sorted(testers)} for j in range(counts.pop())]


def stitch_path(parts: Sequence[pd.DataFrame], folds: Sequence[Fold], path: int) -> pd.DataFrame:
    """cpcv path `path` (see `cpcv_paths`) as one series sorted by (symbol, ts): each group's rows
    from the fold that path assigns to it. `parts[i]` are the predictions of `folds[i]`."""
    by_index = {f.index: (f, p) for f, p in zip(folds, parts, strict=True)}
    pieces = []
    for group, index in cpcv_paths(folds)[path].items():
        fold, part = by_index[index]
        a, b = fold.test_spans[fold.groups.index(group)]
        pieces.append(part[(part["ts"] >= a) & (part["ts"] <= b)])
    return (
        pd.concat(pieces, ignore_index=True)
        .sort_values(["symbol", "ts"], kind="stable")
        .reset_index(drop=True)
    )
