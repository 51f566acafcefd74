"""The schedules job file (configs/schedules.yaml): which jobs Temporal starts, and when."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from quanto.config.models import Strict, known_timezone

Stage = Literal["ingest", "validate", "features", "labels", "train", "walk_forward", "backtest", "report"]


class ScheduleEntry(Strict):
    """One Temporal Schedule: a job file run on a cron calendar in the schedules' time zone.

    kind `ingest` starts IngestionWorkflow (with `end` unset, each run fetches only the new dates);
    kind `pipeline` starts ResearchPipelineWorkflow, optionally only `until` a stage (validate for a
    nightly check, features for a weekly refresh); kind `retrain` starts RetrainWorkflow on a
    retrain job file (monthly retraining: promoted only when the new model wins on the holdout);
    kind `trading` starts TradingDayWorkflow on a trading job file for the day it fires (a replay job
    trades its replay date), whose first step skips holidays on the exchange calendar.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="schedule id: quanto-<name>")
    kind: Literal["ingest", "pipeline", "retrain", "trading"]
    config: str = Field(description="the job file, relative to the schedules file's folder")
    cron: list[str] = Field(min_length=1, description="cron expressions (minute hour day month weekday)")
    until: Stage | None = Field(None, description="pipeline: stop after this stage")
    paused: bool = False
    note: str = ""
    overlap: Literal["skip", "buffer_one", "allow_all", "cancel_other", "terminate_other"] = Field(
        "skip", description="what a run does when the previous one is still going"
    )
    catchup_window_s: float = Field(
        3600.0, gt=0, description="after an outage, missed runs younger than this still start"
    )

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: list[str]) -> list[str]:
        for expr in v:
            if len(expr.split()) != 5:
                raise ValueError(
                    f"cron {expr!r} must have 5 fields: minute hour day-of-month month day-of-week"
                )
        return v


class SchedulesConfig(Strict):
    """Every schedule of a deployment; `quanto schedule apply` makes Temporal match it."""

    timezone: str = Field("America/New_York", description="IANA zone the cron expressions are read in")
    schedules: list[ScheduleEntry] = Field(min_length=1)

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, v: list[ScheduleEntry]) -> list[ScheduleEntry]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule names must be unique, got {names}")
        return v

    _zone = field_validator("timezone")(lambda cls, v: known_timezone(v))
