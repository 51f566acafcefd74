"""Benchmark: training time per walk-forward fold and inference latency per batch of 100 rows, for
every model family, against the raw library a user would call without Quanto.

Dataset: the demo job (configs/demo.yaml: AAPL, MSFT, IBM, GOOG daily sample bars 2004-09..2013-03,
the 67 default features, the 5-day forward log return as label), built in process into a temporary
lake by the ingest, validate, features and labels stage functions (as `run_pipeline_local` runs them,
nothing recorded), then read back with `load_design`. One fold: the last rolling walk-forward fold with
train_bars 756, valid_bars 126, test_bars 63 and the demo's embargo_bars 5 (`make_folds`), its purged
rows from `fold_rows` (3,024 training and 504 validation rows; the panel ends 49 bars into that
fold's test window, so 196 test rows). The validation window is passed to every fit; with the default
parameters only the torch families use it (early stopping after `patience` epochs without a better
validation loss); the GBDT families' early_stopping_rounds is off by default.

Families, each with its default parameters (quanto.config.model_params), regression, seed 42,
n_jobs 2: lightgbm, xgboost, random_forest, extra_trees, linear, lstm, cnn, transformer.

Training time per fold (bench `train_fold_<family>`): ours = `make_model(cfg).fit(design, rows, y,
valid=...)`, everything it does included (matrix/window gathering, standardization, the torch
families' per-epoch validation, best-weights copies and permutation importance). Peer = the raw
library on the same prebuilt inputs with the same parameters:
- lightgbm: `lightgbm.train` with the same parameter dict on the same float64 matrix;
- xgboost: `xgboost.train` (hist) on a DMatrix of the same matrix;
- random_forest / extra_trees: scikit-learn `RandomForestRegressor` / `ExtraTreesRegressor.fit`, NaN
  features handled as ours does (left to the trees where the installed scikit-learn supports it, else
  median-filled);
- linear: a scikit-learn pipeline SimpleImputer(median) -> StandardScaler -> Ridge;
- lstm / cnn / transformer: a bare loop (Adam, MSE, the same batch size, the transformer's warm-up /
  inverse-sqrt schedule) over the SAME nn.Module class ours builds (StackedLSTM, ConvNet,
  TransformerNet), on the same standardized windows (`quanto.models.sequences.windows`, what
  `Design.windows` returns, scaled with the training rows' mean/std) and the same standardized
  target, for as many epochs as ours ran (ours stops early on the validation window); no validation,
  no early stopping, no checkpoints, no importance. The ratio is then our wrapper's overhead.
Correctness (on the warm-up fit): tree and linear families must predict the fold's test rows as the
peer does (rtol 1e-9, atol 1e-12; the predictions' std is ~1e-2), else the benchmark fails. Torch families: ours
and the peer must give finite predictions on the test rows (asserted), the peer's windows must equal
ours (asserted), and the correlation of ours vs the peer's predictions is reported, not asserted.
Reps alternate ours/peer; medians of $QUANTO_BENCH_REPS (default 3) after one warm-up each; the torch
families use min(REPS, TORCH_REPS) reps (the lines say how many).

Inference latency (bench `predict_100_<family>`): the demo has 4 symbols, so the batch is the first
100 rows of the test window in (symbol, ts) order (AAPL 49, GOOG 49, IBM 2; the line says so). Ours =
`model.predict(design, rows)`; peer = the raw library's predict on the prebuilt float64 matrix
(`Booster.predict`, `Booster.inplace_predict`, `estimator.predict`, the ridge pipeline's predict) or,
for torch, the module's forward under `torch.no_grad` on the prebuilt window tensor. Each is called
$QUANTO_BENCH_CALLS (default 1,000) times after 50 warm-up calls, ours and peer alternating; p50 and
p99 in ms. Goal: p99 < 5 ms for the tree families (lightgbm, xgboost, random_forest, extra_trees); the
line says whether ours meets it.

Torch runs on the device `device: auto` picks (the lines name it); with no GPU lent it is the CPU, with
torch limited to n_jobs = 2 threads on both sides. Prints one JSON line per (family, measure)
(DESIGN.md section 9); progress goes to stderr. $QUANTO_BENCH_FAMILIES (comma-separated) limits the
families, for development.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REPS = int(os.environ.get("QUANTO_BENCH_REPS", 3))
TORCH_REPS = 2  # torch fits take seconds to minutes each: at most this many timed reps
CALLS = int(os.environ.get("QUANTO_BENCH_CALLS", 1000))
WARMUP_CALLS = 50
SEED, N_JOBS = 42, 2
TRAIN_BARS, VALID_BARS, TEST_BARS = 756, 126, 63
BATCH_ROWS = 100
TREE_FAMILIES = ("lightgbm", "xgboost", "random_forest", "extra_trees")
TORCH_FAMILIES = ("lstm", "cnn", "transformer")
FAMILIES = (*TREE_FAMILIES, "linear", *TORCH_FAMILIES)
LATENCY_GOAL_MS = 5.0
RTOL, ATOL = 1e-9, 1e-12  # tree / linear predictions: ours vs peer


def log(msg: str) -> None:
    print(f"[models_training] {msg}", file=sys.stderr, flush=True)


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Fold:
    design: Any  # quanto.models.base.Design
    train: np.ndarray
    y_train: np.ndarray
    valid: np.ndarray
    y_valid: np.ndarray
    test: np.ndarray
    batch: np.ndarray  # the latency batch: the first BATCH_ROWS test rows
    span: str  # the latency batch's symbols
    desc: str  # the fold's windows


def build_fold(work: Path) -> Fold:
    """The demo dataset in a temporary lake, as a Design, and its last walk-forward fold."""
    from quanto.config.loading import load_config
    from quanto.config.models import PipelineConfig
    from quanto.contracts import PIPELINE_STAGES, StageRequest
    from quanto.evaluation.stage import load_design
    from quanto.evaluation.walkforward import fold_rows, make_folds
    from quanto.lake.materialize import StageContext
    from quanto.lake.storage import Lake
    from quanto.research import STAGE_FUNCTIONS

    base = load_config(PipelineConfig, REPO / "configs/demo.yaml")
    wf = base.walk_forward.model_copy(
        update={"train_bars": TRAIN_BARS, "valid_bars": VALID_BARS, "test_bars": TEST_BARS}
    )
    cfg = base.model_copy(update={"lake_root": str(work / "lake"), "walk_forward": wf})
    ctx = StageContext(lake=Lake(work / "lake"), workflow_id="bench", run_id="bench", record=False)
    config = cfg.model_dump(mode="json")
    results: dict[str, Any] = {}
    for spec in PIPELINE_STAGES:
        if spec.name not in ("ingest", "validate", "features", "labels"):
            continue
        req = StageRequest(
            stage=spec.name,
            config=config,
            inputs={n: results[n] for n in spec.needs},
            workflow_id=ctx.workflow_id,
            run_id=ctx.run_id,
        )
        results[spec.name] = STAGE_FUNCTIONS[spec.name](req, ctx)
    design = load_design(ctx.lake, results["features"].files("features"), results["labels"].files("labels"))
    frame = design.frame
    fold = make_folds(frame["ts"], cfg.walk_forward)[-1]
    rows = fold_rows(frame, fold)
    labels = frame["label"].to_numpy(dtype=np.float64)
    batch = rows.test[:BATCH_ROWS]
    counts = frame["symbol"].iloc[batch].value_counts(sort=False)
    span = (
        f"fold {fold.index}: train {fold.train_start.date()}..{fold.train_end.date()}, "
        f"valid {fold.valid_start.date()}..{fold.valid_end.date()}, test {fold.test_start.date()}..{fold.test_end.date()}"
    )
    log(f"demo design: {len(frame):,} rows x {len(design.columns)} features, {frame['symbol'].nunique()} symbols; "
        f"{span}; {len(rows.train)} train / {len(rows.valid)} valid / {len(rows.test)} test rows")  # fmt: skip
    return Fold(
        design=design,
        train=rows.train,
        y_train=labels[rows.train],
        valid=rows.valid,
        y_valid=labels[rows.valid],
        test=rows.test,
        batch=batch,
        span=", ".join(f"{s} {n}" for s, n in counts.items()),
        desc=span,
    )


# --- peers: the raw libraries --------------------------------------------------------------------


@dataclass
class TabularPeer:
    name: str
    fit: Callable[[np.ndarray, np.ndarray], Any]
    predict: Callable[[Any, np.ndarray], np.ndarray]


def tabular_peer(kind: str, p: dict[str, Any]) -> TabularPeer:
    """What a user writes with the library itself, with the family's parameters."""
    if kind == "lightgbm":
        import lightgbm as lgb

        params = {
            "objective": "regression",
            "learning_rate": p["learning_rate"],
            "num_leaves": p["num_leaves"],
            "min_data_in_leaf": p["min_child_samples"],
            "bagging_fraction": p["subsample"],
            "bagging_freq": 1 if p["subsample"] < 1.0 else 0,
            "feature_fraction": p["colsample_bytree"],
            "lambda_l2": p["reg_lambda"],
            "seed": SEED,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": N_JOBS,
            "verbosity": -1,
        }
        return TabularPeer(
            "lightgbm.train",
            lambda X, y: lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=p["n_estimators"]),
            lambda booster, X: booster.predict(X, num_threads=N_JOBS),
        )
    if kind == "xgboost":
        import xgboost as xgb

        params = {
            "objective": "reg:squarederror",
            "eta": p["learning_rate"],
            "max_depth": p["max_depth"],
            "min_child_weight": p["min_child_weight"],
            "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"],
            "lambda": p["reg_lambda"],
            "tree_method": "hist",
            "seed": SEED,
            "nthread": N_JOBS,
            "verbosity": 0,
        }
        return TabularPeer(
            "xgboost.train",
            lambda X, y: xgb.train(
                params, xgb.DMatrix(X, label=y, nthread=N_JOBS), num_boost_round=p["n_estimators"]
            ),
            lambda booster, X: booster.inplace_predict(X),
        )
    if kind in ("random_forest", "extra_trees"):
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        from quanto.models.base import family_class

        cls = RandomForestRegressor if kind == "random_forest" else ExtraTreesRegressor
        native_nan = family_class(kind).native_nan()  # ours' NaN handling for this scikit-learn

        def fit_forest(X: np.ndarray, y: np.ndarray) -> Any:
            forest = cls(
                n_estimators=p["n_estimators"],
                max_depth=p["max_depth"],
                min_samples_leaf=p["min_samples_leaf"],
                max_features=p["max_features"],
                random_state=SEED,
                n_jobs=N_JOBS,
            )
            if native_nan:
                return forest.fit(X, y), None
            medians = np.nan_to_num(np.nanmedian(X, axis=0))
            return forest.fit(np.where(np.isnan(X), medians, X), y), medians

        def predict_forest(fitted: Any, X: np.ndarray) -> np.ndarray:
            forest, medians = fitted
            return forest.predict(X if medians is None else np.where(np.isnan(X), medians, X))

        return TabularPeer(f"sklearn.{cls.__name__}.fit", fit_forest, predict_forest)
    if kind == "linear":
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if p["penalty"] != "l2":
            raise ValueError("the linear peer is written for the default penalty l2 (ridge)")
        return TabularPeer(
            "sklearn SimpleImputer(median)+StandardScaler+Ridge",
            lambda X, y: make_pipeline(
                SimpleImputer(strategy="median"),
                StandardScaler(),
                Ridge(alpha=p["alpha"], max_iter=p["max_iter"], random_state=SEED),
            ).fit(X, y),
            lambda pipe, X: pipe.predict(X),
        )
    raise ValueError(f"no tabular peer for {kind!r}")


# --- measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def latency(ours: Callable[[], Any], peer: Callable[[], Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-call seconds of `ours` and `peer`, CALLS each after WARMUP_CALLS, alternating."""
    for _ in range(WARMUP_CALLS):
        ours()
        peer()
    gc.collect()
    a, b = np.empty(CALLS), np.empty(CALLS)
    clock = time.perf_counter
    for i in range(CALLS):
        t = clock()
        ours()
        a[i] = clock() - t
        t = clock()
        peer()
        b[i] = clock() - t
    return a, b


def ms(x: np.ndarray, q: float) -> float:
    return round(float(np.percentile(x, q)) * 1e3, 3)


def train_line(kind: str, fold: Fold, ours_s: list[float], peer: str, peer_s: list[float], reps: int,
               device: str, **extra: Any) -> None:  # fmt: skip
    o, p = statistics.median(ours_s), statistics.median(peer_s)
    n = len(fold.train)
    emit({
        "bench": f"train_fold_{kind}", "n": n, "ours_s": round(o, 4), "peer": peer, "peer_s": round(p, 4),
        "ratio": round(p / o, 3), "unit_rate": round(n / o, 1), "device": device, "n_valid": len(fold.valid),
        "n_test": len(fold.test), "features": len(fold.design.columns), "fold": fold.desc, "reps": reps,
        "load_avg_1m": round(os.getloadavg()[0], 2), **extra,
    })  # fmt: skip


def predict_line(kind: str, fold: Fold, ours: np.ndarray, peer: str, theirs: np.ndarray, device: str,
                 **extra: Any) -> None:  # fmt: skip
    tree = kind in TREE_FAMILIES
    p99 = ms(ours, 99)
    emit({
        "bench": f"predict_{BATCH_ROWS}_{kind}", "n": len(fold.batch), "ours_p50_ms": ms(ours, 50),
        "ours_p99_ms": p99, "peer": peer, "peer_p50_ms": ms(theirs, 50), "peer_p99_ms": ms(theirs, 99),
        "ratio": round(float(np.median(theirs) / np.median(ours)), 3),
        "unit_rate": round(len(fold.batch) / float(np.median(ours)), 1),
        "goal": f"p99 < {LATENCY_GOAL_MS:g} ms" if tree else None,
        "meets_goal": bool(p99 < LATENCY_GOAL_MS) if tree else None, "calls": CALLS,
        "batch": f"first {len(fold.batch)} test rows ({fold.span}); the demo has 4 symbols", "device": device,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **extra,
    })  # fmt: skip


# --- tabular families -----------------------------------------------------------------------------


def bench_tabular(kind: str, fold: Fold) -> None:
    from quanto.config.models import ModelConfig
    from quanto.models.base import make_model

    cfg = ModelConfig(kind=kind, objective="regression", params={}, seed=SEED, n_jobs=N_JOBS)
    peer = tabular_peer(kind, cfg.params)
    design = fold.design
    X_train, X_test, X_batch = (design.tabular(r) for r in (fold.train, fold.test, fold.batch))
    valid = (fold.valid, fold.y_valid)

    ours_s, peer_s = [], []
    for rep in range(REPS + 1):  # rep 0 warms up
        t, model = timed(lambda: make_model(cfg).fit(design, fold.train, fold.y_train, valid=valid))
        ours_s.append(t)
        t, fitted = timed(lambda: peer.fit(X_train, fold.y_train))
        peer_s.append(t)
        log(f"{kind} rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {ours_s[-1]:.3f} s, "
            f"{peer.name} {peer_s[-1]:.3f} s")  # fmt: skip
        if rep == 0:
            a, b = model.predict(design, fold.test), peer.predict(fitted, X_test)
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{kind}: ours vs {peer.name}")
            diff = float(np.max(np.abs(a - b)))
            log(f"{kind}: ours == peer on {len(a)} test predictions (max abs diff {diff:.2e}, "
                f"prediction std {np.std(a):.2e})")  # fmt: skip
            first_model, first_peer = model, fitted
    train_line(kind, fold, ours_s[1:], peer.name, peer_s[1:], REPS, "cpu",
               params=cfg.params, check=f"test predictions equal (rtol {RTOL:g}, atol {ATOL:g}; "
               f"max abs diff {diff:.1e})")  # fmt: skip

    ours_lat, peer_lat = latency(
        lambda: first_model.predict(design, fold.batch), lambda: peer.predict(first_peer, X_batch)
    )
    predict_name = {
        "lightgbm": "lightgbm.Booster.predict",
        "xgboost": "xgboost.Booster.inplace_predict",
        "linear": "sklearn pipeline.predict",
    }.get(kind, peer.name.replace(".fit", ".predict"))
    predict_line(kind, fold, ours_lat, predict_name, peer_lat, "cpu")


# --- torch families -------------------------------------------------------------------------------


def bench_torch(kind: str, fold: Fold) -> None:
    import torch
    from torch import nn

    from quanto.config.models import ModelConfig
    from quanto.models.base import make_model
    from quanto.models.sequence import ConvNet, StackedLSTM, TransformerNet, resolve_device
    from quanto.models.sequences import Standardizer, windows

    cfg = ModelConfig(kind=kind, objective="regression", params={}, seed=SEED, n_jobs=N_JOBS)
    p = cfg.params
    device = resolve_device(p["device"])
    design = fold.design
    lookback, n_features = p["lookback"], len(design.columns)
    reps = max(1, min(REPS, TORCH_REPS))

    # The peer's inputs, prebuilt: standardized windows and target, as a user would prepare them.
    scaler = Standardizer.fit(design.tabular(fold.train))
    x_np, full = windows(design, fold.train, lookback, standardizer=scaler)
    x_np, y = x_np[full], fold.y_train[full]
    mean, std = float(y.mean()), float(y.std()) or 1.0
    x = torch.from_numpy(x_np).to(device)
    target = torch.from_numpy(((y - mean) / std).astype(np.float32)).to(device)
    test_np, test_full = windows(design, fold.test, lookback, standardizer=scaler)
    x_test = torch.from_numpy(test_np).to(device)
    x_batch = torch.from_numpy(windows(design, fold.batch, lookback, standardizer=scaler)[0]).to(device)

    def network() -> nn.Module:
        if kind == "lstm":
            return StackedLSTM(n_features, p["hidden"], p["dropout"])
        if kind == "cnn":
            return ConvNet(n_features, lookback, p["channels"], p["kernel_size"], p["dropout"])
        from quanto.config.model_params import TransformerParams

        return TransformerNet(n_features, lookback, TransformerParams.model_validate(p))

    def peer_fit(epochs: int) -> nn.Module:
        torch.manual_seed(SEED)
        net = network().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=p["learning_rate"], weight_decay=p["weight_decay"])
        sched = None
        if kind == "transformer":
            w = p["warmup_steps"]
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / w, math.sqrt(w / (s + 1))))
        order = torch.Generator().manual_seed(SEED)
        loss_fn = nn.MSELoss()
        net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=order).split(p["batch_size"]):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x[batch]), target[batch])
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
        return net.eval()

    def peer_forward(net: nn.Module, xs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return net(xs).double().cpu().numpy() * std + mean

    threads = torch.get_num_threads()
    torch.set_num_threads(N_JOBS)  # ours runs with n_jobs threads; the peer gets as many
    try:
        valid = (fold.valid, fold.y_valid)
        ours_s, peer_s, epochs = [], [], None
        for rep in range(reps + 1):  # rep 0 warms up
            t, model = timed(lambda: make_model(cfg).fit(design, fold.train, fold.y_train, valid=valid))
            ours_s.append(t)
            if epochs is None:
                epochs = model.epochs_run
            t, net = timed(lambda n=epochs: peer_fit(n))
            peer_s.append(t)
            log(f"{kind} rep {rep}{' (warm-up)' if rep == 0 else ''}: ours {ours_s[-1]:.2f} s "
                f"({model.epochs_run} epochs, best {model.best_epoch}), bare loop {peer_s[-1]:.2f} s "
                f"({epochs} epochs)")  # fmt: skip
            if rep == 0:
                mine, _ = windows(
                    design, fold.train, lookback, features=model.features, standardizer=model.standardizer
                )
                if not np.array_equal(mine[full], x_np):
                    raise AssertionError(f"{kind}: the peer's training windows differ from ours")
                a = model.predict(design, fold.test)[test_full]
                b = peer_forward(net, x_test)[test_full]
                if not (np.isfinite(a).all() and np.isfinite(b).all() and len(a)):
                    raise AssertionError(f"{kind}: non-finite test predictions (ours or peer)")
                corr = float(np.corrcoef(a, b)[0, 1])
                log(f"{kind}: {len(a)} finite test predictions each; corr(ours, peer) = {corr:.3f}")
                first_model, first_net = model, net
        train_line(kind, fold, ours_s[1:], f"bare torch loop ({type(first_net).__name__}, Adam, MSE)",
                   peer_s[1:], reps, device.type, params=p, epochs_run=first_model.epochs_run,
                   best_epoch=first_model.best_epoch, peer_epochs=epochs, corr_ours_peer=round(corr, 4),
                   torch_threads=N_JOBS, gpu="none lent: torch device cpu" if device.type == "cpu" else "used",
                   gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   note=f"default params, epochs not capped; ours ran {first_model.epochs_run} of {p['epochs']} "
                   f"epochs (early stopping on the validation window, best epoch {first_model.best_epoch} kept), "
                   f"the peer runs as many with no validation; {reps} timed reps (REPS capped at {TORCH_REPS} "
                   "for torch)")  # fmt: skip
        ours_lat, peer_lat = latency(
            lambda: first_model.predict(design, fold.batch), lambda: peer_forward(first_net, x_batch)
        )
        predict_line(kind, fold, ours_lat, f"{type(first_net).__name__}.forward under torch.no_grad",
                     peer_lat, device.type, torch_threads=N_JOBS)  # fmt: skip
    finally:
        torch.set_num_threads(threads)


# --- run ------------------------------------------------------------------------------------------


def main() -> None:
    chosen = [
        f.strip() for f in os.environ.get("QUANTO_BENCH_FAMILIES", ",".join(FAMILIES)).split(",") if f.strip()
    ]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families in QUANTO_BENCH_FAMILIES: {unknown}; known: {list(FAMILIES)}")
    work = Path(tempfile.mkdtemp(prefix="quanto-bench-models-"))
    os.environ["QUANTO_LOG_DIR"] = str(work)
    from quanto.observability.logging import configure_logging

    configure_logging(level="WARNING", console=True)  # warnings to stderr; stdout carries the JSON lines
    t0 = time.perf_counter()
    fold = build_fold(work)
    log(f"built in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.2f}, "
        f"{os.cpu_count()} CPUs")  # fmt: skip
    for kind in FAMILIES:
        if kind not in chosen:
            continue
        t0 = time.perf_counter()
        if kind in TORCH_FAMILIES:
            bench_torch(kind, fold)
        else:
            bench_tabular(kind, fold)
        log(f"{kind} done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
