"""The retrain job file (configs/retrain.yaml): a research job retrained on a rolling window, scored on
a held-out period against the production model, and promoted only when it wins by a margin.

`pipeline` is the research job: a job file (path relative to the retrain file) or the job inline.
Referencing the file keeps one source of truth for features, label, model and tuning: retraining is
the research job on a moving window, not a second copy of it. `load_retrain` reads the reference, so a
loaded RetrainConfig always holds the job itself (and so does every workflow payload built from it).
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator

from quanto.config.loading import load_config, parse_config
from quanto.config.models import PipelineConfig, Strict
from quanto.errors import InputError

RetrainMetric = Literal["ic", "rank_ic", "sharpe", "mse", "accuracy", "auc"]
# Every metric is "higher is better" except these (the floor is then a ceiling).
LOWER_IS_BETTER = frozenset({"mse"})


class RetrainWindow(Strict):
    """The rolling window the research job is retrained on: `months` calendar months ending at `end`
    (exclusive, like universe.end), never starting before the research job's universe.start."""

    months: int = Field(24, ge=1, le=600, description="length of the window in calendar months")
    end: Literal["pipeline", "today"] | dt.date = Field(
        "pipeline",
        description="pipeline: the research job's universe.end (fixed data such as the demo's); today: "
        "the UTC date the run starts (scheduled retraining on fresh data); or an ISO date",
    )


class HoldoutConfig(Strict):
    """The held-out period that both models are scored on and that training never sees."""

    bars: int = Field(
        63, ge=1, description="the window's last labelled bars (unique timestamps) are the holdout"
    )
    embargo_bars: int | None = Field(
        None,
        ge=0,
        description="bars before the holdout whose labels training also leaves out (besides purging "
        "every label that ends inside the holdout); default walk_forward.embargo_bars",
    )


class RetrainConfig(Strict):
    """A retrain job: which research job, which window, which holdout, and the promotion rule.

    The rule: the challenger (the model trained now) replaces the production model of the job name
    (the incumbent) when its `metric` on the holdout beats the incumbent's by more than `margin`
    (`margin_kind` absolute: score difference; relative: a share of |incumbent score|). With no
    incumbent, or one that cannot be scored on the new features, the challenger is promoted when its
    score passes `floor` (a ceiling for mse; null: any defined score). `promote: never` records the
    decision without touching the registry.
    """

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="job name: models are registered and promoted under it; default the research job's name",
    )
    pipeline: Annotated[
        Annotated[PipelineConfig, Tag("inline")] | Annotated[str, Tag("file")],
        Discriminator(lambda v: "file" if isinstance(v, str) else "inline"),
    ] = Field(description="the research job: a job file relative to this file, or the job inline")
    window: RetrainWindow = RetrainWindow()
    holdout: HoldoutConfig = HoldoutConfig()
    metric: RetrainMetric = Field(
        "ic",
        description="holdout score compared, as the walk-forward defines it: ic, rank_ic, sharpe (of the "
        "sign signal, annualized), mse (lower is better), accuracy, auc (classification)",
    )
    margin: float = Field(0.0, ge=0, description="how much the challenger must beat the incumbent by")
    margin_kind: Literal["absolute", "relative"] = Field(
        "absolute", description="absolute: score difference; relative: share of |incumbent score|"
    )
    floor: float | None = Field(
        None,
        description="without a comparable incumbent, the challenger's score must reach it (mse: stay at "
        "or below it); null: any defined score",
    )
    promote: Literal["auto", "never"] = Field(
        "auto", description="auto: promote a winning challenger; never: record the decision only"
    )

    @field_validator("metric")
    @classmethod
    def _fits_the_job(cls, v: str, info: ValidationInfo) -> str:
        job = info.data.get("pipeline")  # a file name until `load_retrain` reads it and validates again
        if v == "auc" and isinstance(job, PipelineConfig) and job.model.objective != "classification":
            raise ValueError("auc needs a classification job; use ic, rank_ic, sharpe, mse or accuracy")
        return v

    @property
    def job(self) -> PipelineConfig:
        """The research job (a loaded config always holds it; see `load_retrain`)."""
        if isinstance(self.pipeline, str):
            raise InputError(
                f"pipeline: {self.pipeline!r} is not loaded yet; read the file with load_retrain"
            )
        return self.pipeline

    @property
    def job_name(self) -> str:
        """The name models are registered and promoted under."""
        return self.name or self.job.name

    @property
    def embargo_bars(self) -> int:
        """Bars before the holdout left out of training (holdout.embargo_bars or the job's)."""
        given = self.holdout.embargo_bars
        return self.job.walk_forward.embargo_bars if given is None else given

    def window_end(self, today: dt.date) -> dt.date:
        """The window's (exclusive) end for a run starting on `today`."""
        end = self.window.end
        if end == "pipeline":
            return self.job.universe.end
        return today if end == "today" else end

    def window_start(self, end: dt.date) -> dt.date:
        """`window.months` before `end`, but not before the job's universe.start."""
        start = max(self.job.universe.start, months_before(end, self.window.months))
        if start >= end:
            raise InputError(
                f"window: ends {end}, not after the research job's universe.start {self.job.universe.start}"
            )
        return start

    def research(self, end: dt.date) -> PipelineConfig:
        """The research job on the window ending at `end`, under the job name."""
        data = self.job.model_dump(mode="json")
        data["name"] = self.job_name
        data["universe"] = {
            **data["universe"],
            "start": self.window_start(end).isoformat(),
            "end": end.isoformat(),
        }
        return PipelineConfig.model_validate(data)

    def workflow_id(self, end: dt.date) -> str:
        """Business key: retrain-<job name>-<hash8 of the config and the window end> (lake location
        and runtime timing excluded, as for the research job)."""
        data = self.model_dump(mode="json")
        data["pipeline"] = self.job.model_dump(mode="json", exclude={"runtime", "lake_root"})
        payload = json.dumps({"config": data, "window_end": end.isoformat()}, sort_keys=True)
        return f"retrain-{self.job_name}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def months_before(day: dt.date, months: int) -> dt.date:
    """The same day `months` calendar months earlier (the month's last day when it is shorter)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def load_retrain(path: str | Path) -> RetrainConfig:
    """Read a retrain job file and the research job file it names (relative to its folder); errors
    name the file, the key path and the value."""
    path = Path(path)
    cfg = load_config(RetrainConfig, path)
    if not isinstance(cfg.pipeline, str):
        return cfg
    job = load_config(PipelineConfig, path.parent / cfg.pipeline)
    data = {**cfg.model_dump(mode="json", exclude={"pipeline"}), "pipeline": job.model_dump(mode="json")}
    return parse_config(RetrainConfig, data, str(path))
