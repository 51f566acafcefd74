"""The labels stage: silver bars → gold labels (each with its end time t1, for purging).

A `spread_explosion` target also reads the silver quotes (role "quotes" of the validate stage, there
when the job asks for features.microstructure from quotes); their files are inputs of the stage, so a
quote top-up reruns it.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from quanto.config.models import LabelConfig, PipelineConfig, SpreadExplosionLabel
from quanto.contracts import FileRef, StageRequest, StageResult
from quanto.lake.materialize import Materialized, StageContext, materialize
from quanto.lake.storage import Lake

# The quote columns the spread label reads.
_QUOTE_COLUMNS = ["symbol", "ts", "bid_px", "ask_px"]


def triple_barrier_labels(bars: pd.DataFrame, spec: LabelConfig) -> pd.DataFrame:
    """Triple-barrier labels in the stage's columns: label 1.0 when the profit-take is hit first,
    fwd_return = the log return to the first touch, t1 = the first touch."""
    from quanto.labels.barriers import triple_barrier

    tb = triple_barrier(
        bars, vol_window=spec.vol_window, pt_mult=spec.pt_mult, sl_mult=spec.sl_mult, max_bars=spec.horizon
    )
    label = (tb["label"] > 0).astype(float).where(tb["label"].notna())
    return pd.DataFrame(
        {"symbol": tb["symbol"], "ts": tb["ts"], "fwd_return": tb["ret"], "label": label, "t1": tb["t1"]}
    )


def run_labels(req: StageRequest, ctx: StageContext) -> StageResult:
    """Compute the job's label, then its `label.extra` targets as prefixed columns, from validated bars."""
    from quanto.labels.forward import compute_labels

    cfg = PipelineConfig.model_validate(req.config)
    spec = cfg.label
    inputs = req.inputs["validate"].files("bars")
    wants_quotes = any(isinstance(e, SpreadExplosionLabel) for e in spec.extra)
    quotes = req.inputs["validate"].files("quotes") if wants_quotes else []

    def compute(key: str) -> Materialized:
        bars = ctx.lake.read_frame(inputs)
        if spec.kind == "triple_barrier":
            labels = triple_barrier_labels(bars, spec)
        else:
            labels = compute_labels(bars, spec.kind, spec.horizon, spec.threshold)
        if spec.extra:
            from quanto.labels.extra import extra_labels

            more = extra_labels(
                bars,
                spec.extra,
                cfg.walk_forward.train_bars,
                quotes=quote_reader(ctx.lake, quotes) if wants_quotes else None,
                timeframe=cfg.universe.timeframe,
            )
            labels = pd.concat([labels, more.drop(columns=["symbol", "ts"])], axis=1)
        ref = ctx.lake.write_frame(f"gold/labels/{key[:16]}", labels, role="labels")
        labelled = int(labels["label"].notna().sum())
        return Materialized([ref], counters={"rows": len(labels), "labelled": labelled})

    return materialize("labels", ctx, inputs + quotes, label_key_config(cfg), compute)


def quote_reader(lake: Lake, refs: list[FileRef]) -> Callable[[str], pd.DataFrame]:
    """symbol → its validated quotes (symbol, ts, bid_px, ask_px) from the files `refs`, reading only
    that symbol's files when they are stored per symbol; an empty frame for a symbol without any."""
    from quanto.data.ingest import files_by_symbol
    from quanto.data.schemas import QUOTE_SCHEMA

    empty = QUOTE_SCHEMA.empty_table().select(_QUOTE_COLUMNS).to_pandas()
    groups = files_by_symbol(refs)
    if None in groups:  # files outside a symbol folder: read them all once
        every = lake.read_frame(refs, columns=_QUOTE_COLUMNS)
        return lambda symbol: every.loc[every["symbol"] == symbol]

    def read(symbol: str) -> pd.DataFrame:
        files = groups.get(symbol)
        return lake.read_frame(files, columns=_QUOTE_COLUMNS) if files else empty

    return read


def label_key_config(cfg: PipelineConfig) -> dict:
    """The labels stage's part of its materialize key: `label` with every extra target, each regime's
    default fit window resolved (it is walk_forward.train_bars, which is not in `label`)."""
    config = cfg.label.model_dump(mode="json")
    for item in config["extra"]:
        if "fit_bars" in item and item["fit_bars"] is None:
            item["fit_bars"] = cfg.walk_forward.train_bars
    return config
