"""The train stage: fit the deployable model on the most recent windows and register it as a candidate."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quanto.config.models import PipelineConfig, WalkForwardConfig
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import Lake


def load_dataset(
    lake: Lake, features: list[FileRef], labels: list[FileRef]
) -> tuple[pd.DataFrame, list[str]]:
    """Features joined with labels on (symbol, ts), sorted; returns the frame and the feature columns."""
    feats = lake.read_frame(features)
    labs = lake.read_frame(labels)
    data = feats.merge(labs, on=["symbol", "ts"], how="inner", validate="one_to_one")
    data = data.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    columns = [c for c in feats.columns if c not in ("symbol", "ts")]
    return data, columns


def latest_windows(data: pd.DataFrame, wf: WalkForwardConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Row positions of the deployable model's training window and validation window (None without
    `valid_bars`): the most recent labelled bars, laid out as a walk-forward fold ending today.

    Validation: the last `valid_bars` labelled bars. Training: the `train_bars` bars before them,
    less `embargo_bars`; a training row whose label ends (t1) inside the validation window is purged.
    Only labels whose horizon has ended are known today, so unlabelled rows are never used.
    """
    known = data["label"].notna().to_numpy()
    stamps = pd.DatetimeIndex(data.loc[known, "ts"].drop_duplicates().sort_values())
    ts = data["ts"]
    valid = None
    end = len(stamps)
    if wf.valid_bars:
        if len(stamps) <= wf.valid_bars + wf.embargo_bars:
            raise ValueError(
                f"{len(stamps)} labelled bars cannot hold walk_forward.valid_bars={wf.valid_bars} "
                f"+ embargo_bars={wf.embargo_bars} and a training window"
            )
        valid_start = stamps[len(stamps) - wf.valid_bars]
        valid = np.flatnonzero(known & (ts >= valid_start).to_numpy())
        end = len(stamps) - wf.valid_bars - wf.embargo_bars
    first = stamps[max(0, end - wf.train_bars)]
    last = stamps[end - 1]
    in_train = known & ((ts >= first) & (ts <= last)).to_numpy()
    if valid is not None:  # purge: a label that ends inside the validation window saw its prices
        in_train &= (data["t1"] < stamps[len(stamps) - wf.valid_bars]).to_numpy()
    return np.flatnonzero(in_train), valid


def run_train(req: StageRequest, ctx: StageContext) -> StageResult:
    """Train the production candidate on the latest windows (`latest_windows`) and register it."""
    from quanto.models.base import Design
    from quanto.models.registry import feature_versions, inspect_artifact, register_model
    from quanto.models.selection import fit_fold

    cfg = PipelineConfig.model_validate(req.config)
    feat_refs = req.inputs["features"].files("features")
    label_refs = req.inputs["labels"].files("labels")
    stage_cfg = {
        "model": cfg.model.model_dump(mode="json"),
        "windows": cfg.walk_forward.model_dump(mode="json"),
        "name": cfg.name,  # the model id and folder carry the job's name
    }

    def compute(key: str) -> Materialized:
        data, columns = load_dataset(ctx.lake, feat_refs, label_refs)
        design = Design(data, columns)
        train, valid = latest_windows(data, cfg.walk_forward)
        labels = data["label"].to_numpy(dtype=np.float64)

        def progress(p: dict) -> None:
            ctx.progress(int(p.get("step", 0)), int(p.get("of", 0)), "training")

        fit = fit_fold(
            cfg.model,
            design,
            (train, labels[train]),
            None if valid is None else (valid, labels[valid]),
            progress=progress,
            checkpoint=ctx.lake.abspath(f"scratch/train/{key[:16]}"),
        )
        model = fit.model
        model_id = f"{cfg.name}-{key[:12]}"
        window = data.iloc[train]
        metrics = {
            "n_train": len(train),
            "n_valid": 0 if valid is None else len(valid),
            "n_trials": fit.n_trials,
        }
        registration = {
            "model_id": model_id,
            "config": cfg,
            "features": feature_versions(model.features),
            "data_hashes": {f.path: f.sha256 for f in feat_refs + label_refs},
            "metrics": metrics,
            "fold_summary": {"leaderboard": fit.leaderboard[:20]} if fit.leaderboard else None,
        }
        if ctx.record:
            with ctx.db() as conn:
                register_model(ctx.lake, model, db=conn, **registration)
        else:
            register_model(ctx.lake, model, db=None, **registration)
        summary = {
            "model_id": model_id,
            "family": model.family,
            "train_start": str(window["ts"].min()),
            "train_end": str(window["ts"].max()),
            "n_train": len(train),
            "n_trials": fit.n_trials,
            "note": model.note,
            "feature_importance": [[k, float(v)] for k, v in model.feature_importance().items()],
        }
        return Materialized(
            inspect_artifact(ctx.lake, model_id).files,
            counters={"rows": len(train), "features": len(columns)},
            summary=summary,
        )

    return materialize("train", ctx, feat_refs + label_refs, stage_cfg, compute)
