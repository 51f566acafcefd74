"""Bars of a trading day: the session on the exchange calendar, and, for a replay, its bars and the
warm-up sessions before it, ingested and validated through the research pipeline's own stages.

A replay reads what validation accepted (silver bars): the bars a backtest of the same range sees.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from quanto.config.models import PipelineConfig
from quanto.config.trading import TradingConfig
from quanto.contracts import StageRequest, StageResult
from quanto.errors import InputError
from quanto.lake.materialize import StageContext

TIMEFRAME_SECONDS = {"1min": 60, "5min": 300, "15min": 900, "1h": 3600}


@dataclass(frozen=True)
class SessionTimes:
    """One session of the calendar (UTC), or `is_session` False for a holiday or weekend."""

    date: dt.date
    is_session: bool
    open: dt.datetime | None = None
    close: dt.datetime | None = None


def session_times(calendar: str, date: dt.date) -> SessionTimes:
    """Open and close of `date` on the exchange calendar (half days close early); a day without a
    session (a holiday) says so."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar(calendar)
    day = pd.Timestamp(date)
    if day < cal.first_session or day > cal.last_session:
        raise InputError(
            f"calendar {calendar} has no sessions on {date} (it covers {cal.first_session.date()}..{cal.last_session.date()})"
        )
    if not cal.is_session(day):
        return SessionTimes(date, False)
    return SessionTimes(
        date,
        True,
        cal.session_open(day).to_pydatetime(),
        cal.session_close(day).to_pydatetime(),
    )


def next_session(calendar: str, date: dt.date) -> dt.date:
    """The first session after `date` on the exchange calendar."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar(calendar)
    return cal.date_to_session(pd.Timestamp(date) + pd.Timedelta(days=1), direction="next").date()


def warmup_start(calendar: str, date: dt.date, sessions: int) -> dt.date:
    """The first day of the `sessions` sessions before `date`."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar(calendar)
    return cal.sessions_window(pd.Timestamp(date), -(sessions + 1))[0].date()


def research_config(cfg: TradingConfig, start: dt.date, end: dt.date) -> PipelineConfig:
    """The pipeline config whose ingest and validate stages bring the replay's bars into the lake."""
    u = cfg.universe
    return PipelineConfig.model_validate(
        {
            "name": f"{cfg.name}-bars",
            "lake_root": cfg.lake_root,
            "universe": {
                "vendor": u.vendor,
                "source": u.source,
                "symbols": u.symbols,
                "timeframe": u.timeframe,
                "start": start,
                "end": end,
                "synthetic": u.synthetic.model_dump(),
                "adjustment": "all" if u.vendor != "lake" else "split",
            },
        }
    )


def replay_bars(
    cfg: TradingConfig, ctx: StageContext, date: dt.date, with_day: bool = True
) -> tuple[pd.DataFrame, StageResult]:
    """Validated bars of the warm-up sessions and (`with_day`) of `date` itself (symbol, ts sorted),
    through the pipeline's ingest and validate stages (content-addressed: a repeated prepare reuses
    them). A live session takes the warm-up only: its day comes from the stream."""
    from quanto.data.ingest import run_ingest
    from quanto.validation.stage import run_validate

    start = warmup_start(cfg.calendar, date, cfg.feed.warmup_sessions)
    job = research_config(cfg, start, date + dt.timedelta(days=1) if with_day else date)
    config = job.model_dump(mode="json")

    def request(stage: str, inputs: dict[str, StageResult]) -> StageRequest:
        return StageRequest(
            stage=stage, config=config, inputs=inputs, workflow_id=ctx.workflow_id, run_id=ctx.run_id
        )

    ingested = run_ingest(request("ingest", {}), ctx)
    validated = run_validate(request("validate", {"ingest": ingested}), ctx)
    bars = ctx.lake.read_frame(validated.files("bars"))
    bars = bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    return bars, validated


def bar_groups(
    bars: pd.DataFrame, start: dt.datetime, end: dt.datetime
) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
    """The session's bars grouped by timestamp, in time order: every bar whose open is in [start, end)."""
    ts = bars["ts"]
    inside = bars[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]
    return [(t, g) for t, g in inside.groupby("ts", sort=True)]


def bar_payload(group: pd.DataFrame, timeframe: str) -> list[dict]:
    """Bars as the local exchange's /_quanto/bars takes them (ISO timestamps, floats)."""
    cols = ["symbol", "ts", "open", "high", "low", "close", "volume"]
    quotes = [c for c in ("bid", "ask") if c in group.columns]
    out = []
    for row in group[cols + quotes].itertuples(index=False):
        bar = {
            "symbol": row.symbol,
            "ts": row.ts.isoformat(),
            "timeframe": timeframe,
            "open": float(row.open),
            "high": float(row.high),
            "low": float(row.low),
            "close": float(row.close),
            "volume": float(row.volume),
        }
        for q in quotes:
            bar[q] = float(getattr(row, q))
        out.append(bar)
    return out
