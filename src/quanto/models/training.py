"""The train stage: fit the deployable model on the most recent training window and register it."""

from __future__ import annotations

import pandas as pd

from quanto.config.models import PipelineConfig
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import Lake, sha256_file


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


def run_train(req: StageRequest, ctx: StageContext) -> StageResult:
    """Train the production candidate on the last `walk_forward.train_bars` labelled bars."""
    from quanto.models.gbdt import LightGBMModel

    cfg = PipelineConfig.model_validate(req.config)
    feat_refs = req.inputs["features"].files("features")
    label_refs = req.inputs["labels"].files("labels")
    stage_cfg = {
        "model": cfg.model.model_dump(mode="json"),
        "objective": cfg.model.objective,
        "train_bars": cfg.walk_forward.train_bars,
        "name": cfg.name,  # the model id and folder carry the job's name
    }

    def compute(key: str) -> Materialized:
        data, columns = load_dataset(ctx.lake, feat_refs, label_refs)
        # Only labels whose horizon has ended are known today: a deployable model trains on those.
        known = data[data["label"].notna()]
        stamps = known["ts"].drop_duplicates().sort_values()
        window = known[known["ts"] >= stamps.iloc[max(0, len(stamps) - cfg.walk_forward.train_bars)]]
        model = LightGBMModel(cfg.model, cfg.model.objective).fit(window[columns], window["label"].to_numpy())
        model_id = f"{cfg.name}-{key[:12]}"
        folder = ctx.lake.abspath(f"models/{model_id}")
        model.save(folder)
        # A one-class window gives a constant model, saved as meta.json alone (no model.txt).
        outputs = [
            FileRef(path=ctx.lake.relpath(p), sha256=sha256_file(p), rows=0, role=role)
            for p, role in ((folder / "model.txt", "model"), (folder / "meta.json", "model_meta"))
            if p.is_file()
        ]
        importance = model.feature_importance()
        summary = {
            "model_id": model_id,
            "train_start": str(window["ts"].min()),
            "train_end": str(window["ts"].max()),
            "n_train": len(window),
            "feature_importance": [[k, float(v)] for k, v in importance.items()],
        }
        if ctx.record:
            from quanto.store.records import upsert_model

            with ctx.db() as conn:
                upsert_model(
                    conn,
                    {
                        "model_id": model_id,
                        "kind": cfg.model.kind,
                        "objective": cfg.model.objective,
                        "path": f"models/{model_id}",
                        "features": columns,
                        "config": stage_cfg,
                        "data_hashes": [f.sha256 for f in feat_refs + label_refs],
                        "metrics": {"n_train": len(window)},
                    },
                )
        return Materialized(
            outputs, counters={"rows": len(window), "features": len(columns)}, summary=summary
        )

    return materialize("train", ctx, feat_refs + label_refs, stage_cfg, compute)
