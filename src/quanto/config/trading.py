"""The trading job file (configs/trading.yaml): one account's trading day.

The strategy section is the research pipeline's `backtest` section (signals, sizing, costs), so a
backtest and a trading day of the same model read the same keys — the parity test depends on it.
Risk limits are checked before every order (quanto.execution.risk); secrets (Alpaca keys) come only
from the environment.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from quanto.config.models import BacktestConfig, Strict, SyntheticSpec, unique_symbols

TradingStateName = Literal["ACTIVE", "REDUCING", "HALTED"]
_ACCOUNT = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


class BrokerConfig(Strict):
    """Where orders go. `local`: the local paper exchange (quanto.execution.paper_exchange), started
    on 127.0.0.1:`port` when none runs there. `alpaca`: Alpaca's paper or live Trading API (by the
    job's `mode`), keys from ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY. `url` overrides the endpoint."""

    kind: Literal["local", "alpaca"] = "local"
    port: int = Field(8765, ge=1, le=65535, description="local: the paper exchange's port")
    url: str | None = Field(None, description="the Trading API's base URL (default: by kind and mode)")

    def base_url(self, mode: str) -> str:
        """The Trading API base URL for this broker in `mode` (paper|live)."""
        if self.url:
            return self.url.rstrip("/")
        if self.kind == "local":
            return f"http://127.0.0.1:{self.port}"
        return "https://api.alpaca.markets" if mode == "live" else "https://paper-api.alpaca.markets"


class ReplayConfig(Strict):
    """A historical session replayed from lake bars: `date`'s bars (ingested and validated for the
    universe's vendor first, with the feed's warm-up sessions before it), delivered `speed` times
    faster than real time (390: a 390-minute day in a minute; 0: as fast as possible)."""

    date: dt.date
    speed: float = Field(390.0, ge=0)
    bars: int | None = Field(
        None, ge=2, description="replay only the session's first N bars and close there (quick looks, tests)"
    )


class FeedConfig(Strict):
    """Where bars come from: `replay` (lake data, any speed) or `alpaca` (Alpaca's live data stream;
    with the local exchange as broker, it fills paper orders from those live bars). The features'
    warm-up is the `warmup_sessions` sessions before the day, from the lake (for a live feed: what
    the nightly ingestion brought in, `universe.vendor: lake`)."""

    source: Literal["replay", "alpaca"] = "replay"
    feed: Literal["iex", "sip"] = Field("iex", description="alpaca: the data feed")
    url: str | None = Field(None, description="alpaca: the data stream's URL (default: Alpaca's, by feed)")
    grace_s: float = Field(
        3.0,
        gt=0,
        description="alpaca: a minute's bars are traded once all arrived or this long after the first",
    )
    warmup_sessions: int = Field(3, ge=1, le=60, description="sessions of history before the day")
    replay: ReplayConfig | None = None

    @model_validator(mode="after")
    def _replay_needs_date(self) -> FeedConfig:
        if self.source == "replay" and self.replay is None:
            raise ValueError("source replay needs replay: {date: YYYY-MM-DD}")
        return self


class TradingUniverse(Strict):
    """The traded symbols and where their bars come from (replay: ingested into the lake first)."""

    vendor: Literal["synthetic", "lake"] = "synthetic"
    source: str | None = Field(None, description="vendor lake: which ingested vendor's bars")
    symbols: list[str] = Field(min_length=1)
    timeframe: Literal["1min", "5min", "15min", "1h"] = "1min"
    synthetic: SyntheticSpec = SyntheticSpec()
    sectors: dict[str, str] = Field(
        default_factory=dict, description="symbol -> sector for the sector limit (missing: its own sector)"
    )

    _unique_symbols = field_validator("symbols")(lambda cls, v: unique_symbols(v))


class ModelRef(Strict):
    """The model: the production model of job `job` in the registry. `bootstrap` (a research job file,
    relative to this file) trains and promotes one when the registry has none — for demos; in
    production promote explicitly (`quanto models promote ID`)."""

    job: str
    bootstrap: str | None = None


class DriftLimit(Strict):
    """Directional accuracy of the last `window` predictions against what happened; below
    `min_accuracy` it alerts, and with `halt: true` it halts trading."""

    window: int = Field(100, ge=10)
    min_accuracy: float = Field(0.5, ge=0, le=1)
    halt: bool = False


class RiskLimits(Strict):
    """Hard limits checked before every order (quanto.execution.risk); fractions are of equity."""

    max_order_notional: float = Field(100_000.0, gt=0, description="currency per order")
    max_position_fraction: float = Field(
        0.05, gt=0, le=10, description="|position value| / equity per symbol"
    )
    max_sector_fraction: float = Field(0.25, gt=0, le=10, description="|sector gross value| / equity")
    max_gross_leverage: float = Field(1.0, gt=0, description="gross exposure / equity")
    max_trades_per_minute: int = Field(120, ge=1, description="orders submitted in any 60 s")
    price_collar_bps: float = Field(
        500.0, gt=0, description="limit/stop prices further than this from the last price are refused"
    )
    max_daily_loss: float = Field(0.02, gt=0, lt=1, description="loss since the open / opening equity: halts")
    max_drawdown: float = Field(
        0.05, gt=0, lt=1, description="drawdown from the day's peak equity: the strategy is disabled"
    )
    underperformance_bars: int = Field(120, ge=2, description="window of the underperformance check")
    min_window_return: float = Field(
        -0.01, lt=0, description="a return below this over the window disables the strategy"
    )
    drift: DriftLimit = DriftLimit()


class TradingConfig(Strict):
    """One account's trading day: universe, feed, model, strategy (the backtest keys), risk, broker."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    account: str = Field(description="business key of the account: trading-<account>-<date>")
    mode: Literal["paper", "live"] = "paper"
    lake_root: str = ".quanto/lake"
    universe: TradingUniverse
    feed: FeedConfig
    model: ModelRef
    strategy: BacktestConfig = BacktestConfig()
    risk: RiskLimits = RiskLimits()
    broker: BrokerConfig = BrokerConfig()
    at_close: Literal["flatten", "hold"] = Field("flatten", description="positions at the session close")
    calendar: str = Field("XNYS", description="exchange_calendars name of the session calendar")
    continue_as_new: bool = Field(
        False, description="after the close, start the next session's run (live feeds)"
    )
    heartbeat_timeout_s: float = Field(
        20.0, ge=2, description="a session loop silent this long is presumed dead and restarted elsewhere"
    )

    @field_validator("account")
    @classmethod
    def _account(cls, v: str) -> str:
        if not _ACCOUNT.match(v):
            raise ValueError(
                f"account must match {_ACCOUNT.pattern} (it is part of the workflow id), got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TradingConfig:
        if self.strategy.fill != "next_open":
            raise ValueError("strategy.fill must be next_open for trading: an order fills after its decision")
        if self.mode == "live" and self.broker.kind == "local":
            raise ValueError("mode live needs broker kind alpaca (the local exchange is paper only)")
        if self.universe.vendor == "synthetic" and self.universe.timeframe != "1min":
            raise ValueError("the synthetic vendor generates 1min bars; set universe.timeframe: 1min")
        if (self.universe.vendor == "lake") != (self.universe.source is not None):
            raise ValueError("set universe.source (the ingested vendor) exactly when vendor is lake")
        return self

    def session_date(self, today: dt.date | None = None) -> dt.date:
        """The session this job trades: the replay date, else `today` (the schedule's date)."""
        if self.feed.source == "replay" and self.feed.replay is not None:
            return self.feed.replay.date
        return today or dt.date.today()

    def workflow_id(self, date: dt.date) -> str:
        """The business key of one session: trading-<account>-<YYYY-MM-DD>."""
        return f"trading-{self.account}-{date.isoformat()}"
