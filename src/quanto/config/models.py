"""Pydantic models for job files. Every threshold, window and cost lives here with a documented default."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from abc import abstractmethod
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quanto.config.model_params import DEFAULT_SPACES, PARAMS, FamilyName, SearchDim, check_space

TIMEFRAMES = ("1min", "5min", "15min", "1h", "1d")
# Bar timeframes that quote/depth snapshots can be bucketed into (features.microstructure.BAR_EVERY).
MICROSTRUCTURE_TIMEFRAMES = ("1min", "5min", "1h")


class Strict(BaseModel):
    """Base for every job-file section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def known_timezone(v: str) -> str:
    """Validator of IANA time-zone names."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown timezone {v!r}; use an IANA name such as 'America/New_York'") from err
    return v


def unique_symbols(v: list[str]) -> list[str]:
    """Validator of symbol lists: unique and non-empty names."""
    if len(set(v)) != len(v):
        raise ValueError(f"symbols must be unique, got {v}")
    if any(not s.strip() for s in v):
        raise ValueError("symbols must not be empty strings")
    return v


class SyntheticSpec(Strict):
    """Seeded synthetic minute-bar generator (vendor `synthetic`)."""

    seed: int = Field(7, description="random seed; the same seed always gives the same bars")
    bad_tick_rate: float = Field(
        0.0005, ge=0, le=0.1, description="share of bars corrupted on purpose for validation to catch"
    )
    start_price: float = Field(100.0, gt=0)
    annual_vol: float = Field(0.25, gt=0, le=5)


class UniverseConfig(Strict):
    """What to ingest: vendor, symbols, timeframe and the date range (inclusive start, exclusive end)."""

    vendor: Literal["sample", "synthetic", "lake"] = Field(
        "sample", description="lake: bars that `quanto data ingest` brought into lake_root"
    )
    source: str | None = Field(
        None, description="vendor: lake: which ingested vendor's bars to read (alpaca, polygon, ...)"
    )
    symbols: list[str] = Field(min_length=1)
    timeframe: Literal["1min", "5min", "15min", "1h", "1d"] = "1d"
    adjustment: Literal["raw", "split", "all"] = Field(
        "all",
        description="'all' = split- and dividend-adjusted prices, 'split' = split-adjusted only (lake), "
        "'raw' = as delivered",
    )
    start: dt.date
    end: dt.date
    synthetic: SyntheticSpec = SyntheticSpec()

    _unique_symbols = field_validator("symbols")(lambda cls, v: unique_symbols(v))

    @model_validator(mode="after")
    def _range(self) -> UniverseConfig:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if self.vendor == "synthetic" and self.timeframe != "1min":
            raise ValueError("the synthetic vendor generates 1min bars; set timeframe: 1min")
        if (self.vendor == "lake") != (self.source is not None):
            raise ValueError("set source (the ingested vendor) exactly when vendor is lake")
        if self.adjustment == "split" and self.vendor != "lake":
            raise ValueError("adjustment: split needs vendor lake (corporate actions from ingestion)")
        return self


Policy = Literal["warn", "quarantine", "fail"]


class Rule(Strict):
    """A validation rule's policy: warn (flag, keep the row), quarantine (move the row out) or fail."""

    policy: Policy = "quarantine"


class WarnRule(Rule):
    """A rule that only flags by default."""

    policy: Policy = "warn"


class SpikeRule(WarnRule):
    """Price spike: |close - rolling mean of the previous `window` closes| > k_sigma * their rolling std."""

    k_sigma: float = Field(8.0, gt=0)
    window: int = Field(50, ge=5, le=100_000)


class StaleRule(WarnRule):
    """Stale price: close unchanged for `bars` consecutive bars (the rows from the `bars`-th on are hit)."""

    bars: int = Field(20, ge=2, le=100_000)


class BarRules(Strict):
    """Rules on bars. Schema mismatches always fail; exact duplicates are always dropped and counted."""

    duplicate_conflict: Rule = Rule()
    out_of_order: WarnRule = WarnRule()  # rows are sorted either way; the count is reported
    ohlc: Rule = Rule()  # high >= max(open, close) >= min(open, close) >= low
    price_positive: Rule = Rule()  # prices finite and > 0
    volume_nonnegative: Rule = Rule()  # volume finite and >= 0
    zero_volume_rth: WarnRule = WarnRule()  # zero volume inside regular trading hours (intraday bars)
    spike: SpikeRule = SpikeRule()
    stale: StaleRule = StaleRule()


class SessionRules(Strict):
    """Expected bars from the exchange calendar; gaps inside sessions and their repair."""

    enabled: bool = True
    calendar: str = Field("XNYS", description="exchange_calendars code")
    extended_hours: bool = Field(False, description="expect pre- and post-market minutes (04:00-20:00 ET)")
    gap: WarnRule = WarnRule()  # missing bars inside a session; never holidays or after an early close
    unexpected_bar: WarnRule = WarnRule()  # a bar outside the calendar's sessions
    repair: bool = Field(True, description="fill short gaps by carrying the last close forward (volume 0)")
    max_fill_bars: int = Field(
        5, ge=1, description="gaps shorter than this are filled; longer ones tagged for review"
    )


class QuoteRules(Strict):
    """Rules on quotes and depth snapshots."""

    crossed: Rule = Rule()  # bid > ask at any level
    locked: WarnRule = WarnRule()  # bid == ask
    size_nonnegative: Rule = Rule()
    levels_ordered: Rule = Rule()  # bids descending, asks ascending across levels


class FundamentalRules(Strict):
    """Rules on fundamentals."""

    period_before_filing: Rule = Rule()  # period_end < filed_at
    duplicate_period: Rule = Rule()  # one statement per (symbol, period_end, field)


class ValidationConfig(Strict):
    """Validation rules, each with a policy, and the stage's tolerance for quarantined rows."""

    max_quarantine_share: float = Field(
        0.05, ge=0, le=1, description="fail the stage when more than this share of rows is quarantined"
    )
    bars: BarRules = BarRules()
    sessions: SessionRules = SessionRules()
    quotes: QuoteRules = QuoteRules()
    fundamentals: FundamentalRules = FundamentalRules()


class PcaConfig(Strict):
    """PCA factors of 1-bar log returns across the universe, fitted on the first `fit_bars` bars only.

    Adds pca_loading_<k>, pca_factor_<k> (k = 1..n_components) and pca_resid (see features/pca.py).
    """

    n_components: int = Field(3, ge=1, le=20, description="principal components kept")
    fit_bars: int | None = Field(
        None,
        ge=2,
        description="bars (unique timestamps) of the fit window from the panel's start; default "
        "walk_forward.train_bars, the first training window, so no fold tests on fitted rows",
    )


class MicrostructureConfig(Strict):
    """Microstructure features from the universe's ingested quotes (level 1) or depth (levels 1..n),
    aggregated per bar: `<feature>_last` and `<feature>_mean` of mid, spread, rel_spread,
    depth_imbalance_<k>, ofi, depth_imbalance_<k>_mean_<window> and (depth, levels >= 2) book_slope*,
    plus `snapshots` (see features/microstructure.py). A bar's row uses the snapshots inside the bar,
    [ts, ts + timeframe): known at its close, like its close price. Needs universe.vendor lake."""

    source: Literal["quotes", "depth"] = Field(
        "quotes", description="quotes: top of book (one level); depth: order-book snapshots"
    )
    levels: int | None = Field(
        None,
        ge=1,
        le=50,
        description="depth: book levels 1..levels used (imbalances, book slope); default every "
        "level the ingested depth has",
    )
    window: int = Field(50, ge=1, le=100_000, description="snapshots in the rolling mean imbalance")

    @model_validator(mode="after")
    def _levels_need_depth(self) -> MicrostructureConfig:
        if self.source == "quotes" and self.levels not in (None, 1):
            raise ValueError(f"levels ({self.levels}) applies to source: depth; quotes have one level")
        return self


class FeaturesConfig(Strict):
    """Feature selection by registered name (`default`, a name, or `talib:FUNC(param=value)`), plus
    panel features computed across the universe after the per-symbol ones."""

    names: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    cross_sectional: list[str] = Field(
        default_factory=list,
        description="selected features to rank and z-score across symbols at each timestamp",
    )
    sectors: dict[str, str] = Field(
        default_factory=dict,
        description="symbol -> sector: adds sector z-scores of the cross_sectional features",
    )
    benchmark: str | None = Field(None, description="a universe symbol: rolling corr/beta of returns to it")
    benchmark_windows: list[int] = Field(default_factory=lambda: [20, 60], min_length=1)
    pca: PcaConfig | None = Field(None, description="statistical factor model across the universe")
    incremental: bool = Field(
        True,
        description="reuse stored per-symbol features and compute only new or restated bars (with "
        "their warm-up); false recomputes everything",
    )
    microstructure: MicrostructureConfig | None = Field(
        None, description="per-bar features from ingested quotes or depth (universe.vendor lake)"
    )
    fundamentals: bool = Field(
        False,
        description="point-in-time ratios (pe, pb, ev_ebitda, roe, roa, margins, growth, liquidity, "
        "leverage) from ingested fundamentals, a statement visible once filed_at <= the bar's close "
        "(universe.vendor lake)",
    )

    def lake_datasets(self) -> tuple[str, ...]:
        """The lake datasets besides bars that these features read (quotes or depth, fundamentals)."""
        micro = (self.microstructure.source,) if self.microstructure else ()
        return (*micro, *(("fundamentals",) if self.fundamentals else ()))

    @field_validator("benchmark_windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if any(w < 2 for w in v):
            raise ValueError(f"windows must be >= 2, got {v}")
        return v

    @model_validator(mode="after")
    def _cross_sectional_selected(self) -> FeaturesConfig:
        from quanto.features.registry import expand_names

        selected = set(expand_names(self.names))
        missing = [n for n in self.cross_sectional if n not in selected]
        if missing:
            raise ValueError(f"cross_sectional features {missing} are not among the selected names")
        return self

    @field_validator("names")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from quanto.features.registry import expand_names

        expand_names(v)  # raises ValueError naming the unknown feature
        return v


# The training target's columns in the gold labels table; an extra target may not reuse them.
LABEL_COLUMNS = ("symbol", "ts", "fwd_return", "label", "t1")


def _prefix(default: str) -> Any:
    """The `prefix` field of an extra target: the start of every column it writes."""
    return Field(
        default,
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="start of the target's column names (lowercase letters, digits, _); give two "
        "targets of one kind different prefixes",
    )


class ExtraLabelSpec(Strict):
    """An extra target of the gold labels table, written as prefixed columns beside the training label.

    Every label column belongs to a group with one end-time column (`..._t1`, NaT where the label is
    undefined), which purging uses exactly like the training label's t1. The training stages read
    only `label`, `fwd_return` and `t1`; extra targets are there for research and later models.
    """

    kind: str
    prefix: str

    @abstractmethod
    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """End-time column → the label columns that end then, in table order."""

    def columns(self) -> list[str]:
        """Every column the target writes, in table order: each group's labels, then its t1."""
        return [c for t1, cols in self.column_groups().items() for c in (*cols, t1)]


class ForwardReturnsLabel(ExtraLabelSpec):
    """Forward log returns at several horizons. For each h: `<prefix>_<h>` = log(close[t+h] / close[t])
    and its end time `<prefix>_<h>_t1` = ts of bar t+h (defaults: fwd_ret_1, fwd_ret_1_t1, fwd_ret_5,
    …). A symbol's last h bars are NaN / NaT."""

    kind: Literal["forward_returns"] = "forward_returns"
    prefix: str = _prefix("fwd_ret")
    horizons: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(
        default_factory=lambda: [1, 5, 20], min_length=1, description="bars ahead, distinct"
    )

    @field_validator("horizons")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"horizons must be distinct, got {v}")
        return v

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_{h}_t1": (f"{self.prefix}_{h}",) for h in self.horizons}


class NextBarRangeLabel(ExtraLabelSpec):
    """Next bar's log range log(high[t+1] / low[t+1]), a volatility target: `<prefix>_label` with end
    time `<prefix>_t1` = ts of bar t+1 (defaults: range_label, range_t1)."""

    kind: Literal["next_bar_range"] = "next_bar_range"
    prefix: str = _prefix("range")

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_t1": (f"{self.prefix}_label",)}


class DirectionLabel(ExtraLabelSpec):
    """Direction over `horizon` bars: `<prefix>_label` = 1.0 when `<prefix>_ret` = log(close[t+h] /
    close[t]) exceeds `threshold`, else 0.0; end time `<prefix>_t1` = ts of bar t+h (defaults:
    dir_label, dir_ret, dir_t1)."""

    kind: Literal["direction"] = "direction"
    prefix: str = _prefix("dir")
    horizon: int = Field(5, ge=1, le=10_000, description="bars ahead")
    threshold: float = Field(0.0, allow_inf_nan=False, description="log return the move must exceed")

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_t1": (f"{self.prefix}_label", f"{self.prefix}_ret")}


class _BarrierLabel(ExtraLabelSpec):
    """Barriers on the close path: profit-take at pt_mult·vol, stop-loss at −sl_mult·vol and a vertical
    barrier `horizon` bars ahead; vol = std of the last `vol_window` one-bar log returns."""

    pt_mult: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="profit-take in volatility units (large = off)"
    )
    sl_mult: float = Field(2.0, gt=0, allow_inf_nan=False, description="stop-loss in volatility units")
    vol_window: int = Field(20, ge=2, le=10_000, description="bars of the volatility estimate")
    horizon: int = Field(10, ge=1, le=10_000, description="bars to the vertical barrier")


class TripleBarrierLabel(_BarrierLabel):
    """Triple-barrier label (López de Prado): `<prefix>_label` = +1 (profit-take first), −1 (stop-loss
    first) or 0 (vertical barrier); `<prefix>_ret` = the log return to the first touch; end time
    `<prefix>_t1` = the touching bar's ts (defaults: tb_label, tb_ret, tb_t1)."""

    kind: Literal["triple_barrier"] = "triple_barrier"
    prefix: str = _prefix("tb")

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_t1": (f"{self.prefix}_label", f"{self.prefix}_ret")}


class MetaLabel(_BarrierLabel):
    """Meta-label of a backward-looking primary rule: `<prefix>_side` = the sign of the past
    `side_window`-bar return (+1 long, −1 short, 0 no bet; known at t's close); its trade gets the
    triple barriers, and `<prefix>_label` = 1.0 when it paid off (profit-take, or the vertical barrier
    with a positive return), else 0.0; `<prefix>_ret` = the trade's log return to the touch; end time
    `<prefix>_t1` (defaults: meta_label, meta_side, meta_ret, meta_t1). No bet, no label."""

    kind: Literal["meta"] = "meta"
    prefix: str = _prefix("meta")
    side_window: int = Field(20, ge=1, le=10_000, description="bars of the primary rule's past return")

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        p = self.prefix
        return {f"{p}_t1": (f"{p}_label", f"{p}_side", f"{p}_ret")}


class _RegimeLabel(ExtraLabelSpec):
    """A regime fitted on the training window only and labelled from what is known at each close."""

    fit_bars: int | None = Field(
        None,
        ge=2,
        description="bars (unique timestamps) of the fit window from the panel's start; default "
        "walk_forward.train_bars, the first training window; the labels inside it are in sample",
    )


class VolatilityRegimeLabel(_RegimeLabel):
    """Volatility tertile: `<prefix>_label` = 0 calm, 1 normal, 2 turbulent, by where `<prefix>_vol`
    (std of the last `window` one-bar log returns) falls among the symbol's 1/3 and 2/3 quantiles over
    the fit window; end time `<prefix>_t1` = ts (defaults: vol_regime_label, vol_regime_vol,
    vol_regime_t1)."""

    kind: Literal["volatility_regime"] = "volatility_regime"
    prefix: str = _prefix("vol_regime")
    window: int = Field(20, ge=2, le=10_000, description="bars of the volatility estimate")

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_t1": (f"{self.prefix}_label", f"{self.prefix}_vol")}


class HmmRegimeLabel(_RegimeLabel):
    """Gaussian-HMM regime per symbol (hmmlearn), fitted on the fit window and decoded forward-only
    (filtering): `<prefix>_label` = the most likely state, 0 the calmest; `<prefix>_prob_<k>` = the
    filtered probability of state k; end time `<prefix>_t1` = ts (defaults: hmm_label, hmm_prob_0, …,
    hmm_t1)."""

    kind: Literal["hmm_regime"] = "hmm_regime"
    prefix: str = _prefix("hmm")
    n_states: int = Field(2, ge=2, le=10, description="hidden states")
    use_volatility: bool = Field(False, description="observe log rolling volatility besides the return")
    vol_window: int = Field(20, ge=2, le=10_000, description="bars of that volatility")
    seed: int = Field(0, description="hmmlearn random_state: the same seed gives the same fit")
    n_iter: int = Field(100, ge=1, le=10_000, description="EM iterations")
    min_train_rows: int = Field(
        100, ge=2, description="a symbol with fewer fit-window observations gets no model (NaN labels)"
    )

    @model_validator(mode="after")
    def _enough_rows(self) -> HmmRegimeLabel:
        if self.min_train_rows < self.n_states:
            raise ValueError(f"min_train_rows ({self.min_train_rows}) must be >= n_states ({self.n_states})")
        return self

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        p = self.prefix
        return {f"{p}_t1": (f"{p}_label", *(f"{p}_prob_{k}" for k in range(self.n_states)))}


class RlRewardLabel(ExtraLabelSpec):
    """Reward of a one-bar trade for an agent that is flat at t: for each side in `sides`,
    `<prefix>_<side>` = position·(close[t+1] / close[t] − 1) − cost_bps / 10 000 with position +1
    (long) or −1 (short), i.e. the next-bar PnL of going in at close t minus the cost of trading in;
    end time `<prefix>_<side>_t1` = ts of bar t+1 (defaults: rl_long, rl_long_t1, rl_short,
    rl_short_t1). Holding on would cost nothing more; getting out costs cost_bps again."""

    kind: Literal["rl_reward"] = "rl_reward"
    prefix: str = _prefix("rl")
    cost_bps: float = Field(
        3.0, ge=0, allow_inf_nan=False, description="cost of trading one unit, in bps (backtest: 1 + 2)"
    )
    sides: list[Literal["long", "short"]] = Field(
        default_factory=lambda: ["long", "short"], min_length=1, description="positions rewarded"
    )

    @field_validator("sides")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"sides must be distinct, got {v}")
        return v

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_{s}_t1": (f"{self.prefix}_{s}",) for s in self.sides}


class SpreadExplosionLabel(ExtraLabelSpec):
    """Spread explosion in the next bar (quotes): `<prefix>_label` = 1.0 when a quote inside the
    symbol's next bar has a spread above mean + k·std of the `window` spreads before it, 0.0 when
    none has, NaN when the next bar has no quote to judge; end time `<prefix>_t1` = the last quote
    judged (defaults: spread_label, spread_t1). Per quote it is
    `quanto.labels.rewards.spread_explosion`; the bar-level rule and why are in
    `quanto.labels.extra.spread_explosion_by_bar`. Needs the job's validated quotes:
    features.microstructure with source quotes and universe.vendor lake."""

    kind: Literal["spread_explosion"] = "spread_explosion"
    prefix: str = _prefix("spread")
    window: int = Field(100, ge=2, le=1_000_000, description="quotes of the rolling history")
    k: float = Field(2.0, allow_inf_nan=False, description="standard deviations above the mean")

    def column_groups(self) -> dict[str, tuple[str, ...]]:
        """See the class docstring."""
        return {f"{self.prefix}_t1": (f"{self.prefix}_label",)}


ExtraLabel = Annotated[
    ForwardReturnsLabel
    | NextBarRangeLabel
    | DirectionLabel
    | TripleBarrierLabel
    | MetaLabel
    | VolatilityRegimeLabel
    | HmmRegimeLabel
    | RlRewardLabel
    | SpreadExplosionLabel,
    Field(discriminator="kind"),
]


class LabelConfig(Strict):
    """The training target; every label carries its end time t1, which walk-forward purging uses.

    forward_return: log return over `horizon` bars. direction: 1 when that return exceeds `threshold`.
    triple_barrier: 1 when the close first touches the profit-take barrier (close * exp(pt_mult * vol))
    before the stop (sl_mult) or the vertical barrier `horizon` bars ahead; vol is the rolling std of
    1-bar log returns over `vol_window`; t1 is the first touch. The target's columns are `symbol, ts,
    fwd_return, label, t1`; `extra` targets follow as prefixed columns (see each kind's model).
    """

    kind: Literal["forward_return", "direction", "triple_barrier"] = "forward_return"
    horizon: int = Field(
        5, ge=1, le=10_000, description="bars ahead (the vertical barrier for triple_barrier)"
    )
    threshold: float = Field(0.0, ge=0, description="direction = 1 when the forward return exceeds it")
    pt_mult: float = Field(2.0, gt=0, description="triple_barrier: profit-take in volatility units")
    sl_mult: float = Field(2.0, gt=0, description="triple_barrier: stop-loss in volatility units")
    vol_window: int = Field(20, ge=2, description="triple_barrier: bars of the volatility estimate")
    extra: list[ExtraLabel] = Field(
        default_factory=list,
        description="more targets in the same gold labels table, each as its own prefixed columns "
        "with end times: forward_returns, next_bar_range, direction, triple_barrier, meta, "
        "volatility_regime, hmm_regime, rl_reward, spread_explosion (needs features.microstructure "
        "with source quotes)",
    )

    @field_validator("extra")
    @classmethod
    def _extra_columns(cls, v: list[ExtraLabelSpec]) -> list[ExtraLabelSpec]:
        owner = dict.fromkeys(LABEL_COLUMNS, "the training label")
        for i, spec in enumerate(v):
            for column in spec.columns():
                if column in owner:
                    raise ValueError(
                        f"extra[{i}] ({spec.kind}) would write column {column!r}, which "
                        f"{owner[column]} writes too; give one of them another prefix"
                    )
                owner[column] = f"extra[{i}] ({spec.kind})"
        return v


Metric = Literal["ic", "rank_ic", "sharpe", "mse", "auc", "accuracy"]


class SearchConfig(Strict):
    """Budget, score and pruning of a hyperparameter search (`model.tuning`, `model.automl`).

    Each trial fits a candidate on the fold's training rows and is scored on its validation rows
    only (`walk_forward.valid_bars` > 0). The search stops after `n_trials` trials or, once
    `timeout_s` has passed, before starting another (the running trial finishes).
    """

    n_trials: int | None = Field(30, ge=1, description="trials per fold (pruned ones count)")
    timeout_s: float | None = Field(None, gt=0, description="no new trial starts after this many seconds")
    metric: Metric = Field(
        "ic",
        description="validation score, as the walk-forward's metrics define it: ic (Pearson of prediction "
        "and forward return), rank_ic (Spearman), sharpe (of the sign signal, per period), mse "
        "(classification: Brier score), auc (classification), accuracy (directional hit rate)",
    )
    pruner: Literal["median", "successive_halving", "none"] = Field(
        "median",
        description="stops trials whose per-epoch validation loss (torch families) falls behind; "
        "families that report no per-epoch validation loss are scored per trial and never pruned",
    )
    n_startup_trials: int = Field(
        5, ge=0, description="random trials before TPE models the space; the median pruner waits for as many"
    )
    n_warmup_steps: int = Field(2, ge=0, description="epochs a trial runs before it can be pruned")

    @model_validator(mode="after")
    def _budget(self) -> SearchConfig:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("a search needs a budget: set n_trials, timeout_s or both")
        return self


class TuningConfig(SearchConfig):
    """Optuna search (seeded TPE) over the hyperparameters of `model.kind`, `model.params` holding
    the values of those not searched. `space` replaces the family's default space
    (`quanto.config.model_params.DEFAULT_SPACES`)."""

    space: dict[str, SearchDim] | None = Field(
        None,
        description="parameter -> [low, high], [low, high, log] or a list of choices; "
        "default: the family's default space",
    )

    def space_for(self, kind: str) -> dict[str, SearchDim]:
        """The dimensions searched for family `kind`."""
        return self.space if self.space is not None else DEFAULT_SPACES[kind]


class AutoMLConfig(SearchConfig):
    """Optuna search across `families` and their hyperparameters; `model.kind` and `model.params`
    are not used. The leaderboard (family, params, score, fit seconds) goes into the report."""

    n_trials: int | None = Field(40, ge=1, description="trials per fold (pruned ones count)")
    families: list[FamilyName] = Field(
        default_factory=lambda: ["lightgbm", "xgboost", "random_forest", "linear"], min_length=1
    )
    space: dict[FamilyName, dict[str, SearchDim]] = Field(
        default_factory=dict, description="family -> its search space, replacing that family's default"
    )
    params: dict[FamilyName, dict[str, Any]] = Field(
        default_factory=dict, description="family -> fixed values of the parameters not searched"
    )

    @model_validator(mode="after")
    def _known_families(self) -> AutoMLConfig:
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families must be distinct, got {self.families}")
        for field in ("space", "params"):
            stray = sorted(set(getattr(self, field)) - set(self.families))
            if stray:
                raise ValueError(f"{field} names families {stray} that are not in families {self.families}")
        for family in self.families:
            fixed = self.params.get(family, {})
            try:
                PARAMS[family].model_validate(fixed)
                check_space(family, self.space_for(family), fixed)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in (family, *first["loc"]))
                raise ValueError(f"params.{where}: {first['msg']}") from None
            except ValueError as err:
                raise ValueError(f"{family}: {err}") from None
        return self

    def space_for(self, family: str) -> dict[str, SearchDim]:
        """The dimensions searched for `family`."""
        return self.space.get(family, DEFAULT_SPACES[family])


class ModelConfig(Strict):
    """The model family (`kind`), its objective and its `params` (validated per family: see
    `quanto.config.model_params`; `quanto config schema pipeline` lists them). Seeds are fixed."""

    kind: FamilyName = "lightgbm"
    objective: Literal["regression", "classification"] = "regression"
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="family parameters, e.g. lightgbm: {n_estimators: 200, num_leaves: 15}",
    )
    seed: int = 42
    n_jobs: int = Field(2, ge=1)
    tuning: TuningConfig | None = Field(None, description="search this family's hyperparameters per fold")
    automl: AutoMLConfig | None = Field(None, description="search across families per fold (kind unused)")
    ensemble: EnsembleConfig | None = Field(None, description="combine member models per fold (kind unused)")

    @model_validator(mode="before")
    @classmethod
    def _members_objective(cls, data: Any) -> Any:
        # An ensemble member predicts what the ensemble predicts unless it says otherwise.
        ensemble = data.get("ensemble") if isinstance(data, dict) else None
        if not isinstance(ensemble, dict) or not isinstance(ensemble.get("members"), list):
            return data
        objective = data.get("objective", "regression")
        members = [{"objective": objective, **m} if isinstance(m, dict) else m for m in ensemble["members"]]
        return {**data, "ensemble": {**ensemble, "members": members}}

    @model_validator(mode="after")
    def _selection(self) -> ModelConfig:
        chosen = [name for name in ("tuning", "automl", "ensemble") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)} exclude each other; set one (an ensemble member may have its own tuning)"
            )
        for name in chosen:
            if getattr(self, name).metric == "auc" and self.objective != "classification":
                raise ValueError(
                    f"{name}.metric auc needs objective classification; use ic, rank_ic, sharpe, mse or accuracy"
                )
        if self.tuning is not None:
            try:
                check_space(self.kind, self.tuning.space_for(self.kind), self.params)
            except ValueError as err:
                raise ValueError(f"tuning.{err}") from None
        if self.ensemble is not None:
            for i, member in enumerate(self.ensemble.members):
                if member.objective != self.objective:
                    raise ValueError(
                        f"ensemble.members[{i}].objective {member.objective!r} differs from objective {self.objective!r}"
                    )
        return self

    @model_validator(mode="before")
    @classmethod
    def _family_params(cls, data: Any) -> Any:
        # Validated and completed with the family's defaults, so stage keys see every value.
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "lightgbm")
        if kind not in PARAMS:
            return data  # the `kind` field reports it
        try:
            params = PARAMS[kind].model_validate(data.get("params") or {}).model_dump(mode="json")
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(f"params for {kind}: {problems}") from None
        return {**data, "params": params}


class EnsembleConfig(Strict):
    """Several member models fitted per fold and combined: `mean` (equal weights), `stacking` (a
    ridge / logistic meta-model on the members' predictions for the validation window, never on
    their in-sample fits) or `sharpe` (weights >= 0 summing to 1, each <= `max_weight`, that maximize
    the Sharpe ratio of the weighted signal on the validation window)."""

    method: Literal["mean", "stacking", "sharpe"] = "mean"
    members: list[ModelConfig] = Field(
        min_length=2,
        description="model blocks (kind, params, tuning, ...); objective defaults to the ensemble's",
    )
    max_weight: float = Field(0.4, gt=0, le=1, description="sharpe: the largest weight of one member")
    meta_alpha: float = Field(
        1.0, gt=0, description="stacking: penalty of the meta-model (logistic: C = 1/alpha)"
    )
    metric: Metric = Field(
        "ic", description="score of each member on the validation window, for the leaderboard"
    )

    @model_validator(mode="after")
    def _feasible(self) -> EnsembleConfig:
        for i, member in enumerate(self.members):
            if member.ensemble is not None:
                raise ValueError(f"members[{i}] is an ensemble itself; list its members here instead")
        if self.method == "sharpe" and self.max_weight * len(self.members) < 1:
            raise ValueError(
                f"max_weight {self.max_weight} x {len(self.members)} members < 1: the weights cannot sum "
                f"to 1; raise max_weight to at least {1 / len(self.members):.4g} or add members"
            )
        return self


ModelConfig.model_rebuild()


class WalkForwardConfig(Strict):
    """Walk-forward windows in bars (unique timestamps of the panel).

    rolling / expanding: train, then `valid_bars` of validation (model selection and early stopping
    only; 0 = none), then `test_bars` of test, moved forward by `step_bars`; `embargo_bars` are
    skipped after the training and after the validation window. cpcv: combinatorial purged
    cross-validation (López de Prado): the bars split into `n_groups` groups, every choice of
    `k_test_groups` of them is one fold's test set, the rest (purged, embargoed on both sides of each
    test group) its training set; the backtest gets the first of its paths (see
    quanto.evaluation.walkforward).
    """

    scheme: Literal["rolling", "expanding", "cpcv"] = "rolling"
    train_bars: int = Field(756, ge=10, description="rolling/expanding: bars of the (first) training window")
    valid_bars: int = Field(0, ge=0, description="bars of the validation window; 0 = no validation window")
    test_bars: int = Field(63, ge=1)
    step_bars: int | None = Field(None, ge=1, description="defaults to test_bars")
    embargo_bars: int = Field(
        0,
        ge=0,
        description="bars dropped after the training and the validation window (cpcv: around each test group)",
    )
    max_folds: int | None = Field(None, ge=1, description="keep only the last N folds")
    n_groups: int = Field(6, ge=2, le=64, description="cpcv: groups of consecutive bars")
    k_test_groups: int = Field(2, ge=1, description="cpcv: groups in each fold's test set")

    @property
    def step(self) -> int:
        """The step between fold starts."""
        return self.step_bars or self.test_bars

    @model_validator(mode="after")
    def _scheme_fields(self) -> WalkForwardConfig:
        # Values, not `model_fields_set`: a dumped config (every field present) must validate again.
        fields = type(self).model_fields
        given = {f for f in fields if getattr(self, f) != fields[f].default}
        if self.scheme == "cpcv":
            wrong = [f for f in ("valid_bars", "step_bars", "max_folds") if f in given]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to scheme rolling or expanding, not cpcv")
            if self.k_test_groups >= self.n_groups:
                raise ValueError(
                    f"k_test_groups ({self.k_test_groups}) must be below n_groups ({self.n_groups}): "
                    "some groups must be left to train on"
                )
        else:
            wrong = [f for f in ("n_groups", "k_test_groups") if f in given]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to scheme cpcv, not {self.scheme}")
        return self


class EvaluationConfig(Strict):
    """Honest-evaluation settings of the walk-forward stage (quanto.evaluation)."""

    canary: bool = Field(
        True,
        description="retrain every fold on labels shuffled within its training (and validation) window; "
        "out-of-sample skill must vanish, else the run is flagged as leaking (doubles training time)",
    )
    canary_alpha: float = Field(
        0.001, gt=0, lt=0.5, description="false-alarm rate of the canary's test (each of IC and accuracy)"
    )
    leaderboard_rows: int = Field(
        10, ge=0, description="candidates of each fold's search kept in the summary"
    )


class BacktestConfig(Strict):
    """The portfolio simulation (quanto.backtest.portfolio): signals from predictions, fill timing, costs,
    sizing, stops and limits. The defaults keep the original behaviour as far as one shared portfolio
    allows: long/flat signals, 1/N of equity per symbol, fills at the next bar's open, 1 bp commission
    + 2 bps slippage per side, fractional units, no stops, no leverage."""

    mode: Literal["long_flat", "long_short"] = Field(
        "long_flat", description="long_flat refuses short decisions; long_short allows them"
    )
    entry_threshold: float = Field(
        0.0, description="regression: go long above it; classification: probability above 0.5 + it"
    )
    commission_bps: float = Field(1.0, ge=0, description="commission in basis points of each fill's notional")
    slippage_bps: float = Field(
        2.0, ge=0, description="fill price moved against the order by this many basis points"
    )
    initial_capital: float = Field(1_000_000.0, gt=0)
    periods_per_year: float | None = Field(
        None, gt=0, description="annualization; defaults from the timeframe (252 days, 252*390 minutes)"
    )
    fill: Literal["next_open", "next_close", "this_close"] = Field(
        "next_open", description="where a decision made at a bar's close fills (quanto.backtest.fills)"
    )
    commission_per_share: float = Field(0.0, ge=0, description="currency per unit filled")
    commission_per_order: float = Field(0.0, ge=0, description="currency per fill")
    commission_min: float = Field(0.0, ge=0, description="minimum commission of one fill")
    borrow_rate: float = Field(
        0.0, ge=0, description="yearly borrow fee of shorts, a fraction of their value, accrued per bar"
    )
    sizing: Literal["fraction", "fixed_qty", "risk", "kelly", "vol_target"] = Field(
        "fraction", description="how a signal is sized when it enters (quanto.backtest.sizing)"
    )
    fraction: float | None = Field(
        None, gt=0, description="fraction of equity per position; default 1 / number of traded symbols"
    )
    fixed_qty: float | None = Field(None, gt=0, description="units per position for sizing fixed_qty")
    risk_per_trade: float = Field(
        0.01, gt=0, le=1, description="sizing risk: fraction of equity lost when the stop-loss is hit"
    )
    kelly_cap: float = Field(1.0, gt=0, description="sizing kelly: upper bound of the Kelly multiplier")
    vol_target: float = Field(0.15, gt=0, description="sizing vol_target: annualized volatility per position")
    sizing_window: int = Field(60, ge=2, description="trailing bar returns for kelly and vol_target")
    fractional_units: bool = Field(
        True, description="false: quantities are rounded toward zero to whole units"
    )
    drift_threshold: float = Field(
        0.0, ge=0, description="target weights: trade when |weight - target| exceeds it"
    )
    stop_loss: float | None = Field(None, gt=0, lt=1, description="exit at entry * (1 - it) for a long")
    take_profit: float | None = Field(None, gt=0, description="exit at entry * (1 + it) for a long")
    trailing_stop: float | None = Field(
        None, gt=0, lt=1, description="exit at the best price since entry * (1 - it) for a long"
    )
    max_leverage: float = Field(
        1.0, gt=0, description="gross exposure / equity after a fill; larger orders are scaled down"
    )
    close_at_end: bool = Field(False, description="close open positions at each symbol's last bar close")
    benchmark: str | None = Field(
        None,
        description="symbol bought and held as the benchmark; default equal weight of the traded symbols",
    )

    @model_validator(mode="after")
    def _sizing_inputs(self) -> BacktestConfig:
        if self.sizing == "fixed_qty" and self.fixed_qty is None:
            raise ValueError("sizing 'fixed_qty' needs fixed_qty (units per position)")
        if self.sizing == "risk" and self.stop_loss is None:
            raise ValueError("sizing 'risk' needs stop_loss (the distance that is risked)")
        return self


class ReportConfig(Strict):
    """Report title and formats."""

    title: str = "Quanto research report"
    formats: list[Literal["html", "pdf"]] = Field(default_factory=lambda: ["html", "pdf"], min_length=1)


class RuntimeConfig(Strict):
    """Temporal timing for the pipeline's activities."""

    heartbeat_timeout_s: float = Field(30.0, gt=0, le=3600)
    stage_timeout_s: float = Field(3600.0, gt=0, description="start-to-close timeout of one stage")
    max_attempts: int = Field(5, ge=1, le=100)
    max_parallel_folds: int = Field(
        4, ge=1, le=256, description="walk-forward folds trained at once (one activity each, on quanto-train)"
    )


class PipelineConfig(Strict):
    """A research pipeline job file (configs/demo.yaml, configs/pipeline.yaml)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lake_root: str = Field(
        default_factory=lambda: os.environ.get("QUANTO_LAKE_ROOT", ".quanto/lake"),
        description="lake folder; default $QUANTO_LAKE_ROOT or .quanto/lake",
    )
    universe: UniverseConfig
    validation: ValidationConfig = ValidationConfig()
    features: FeaturesConfig = FeaturesConfig()
    label: LabelConfig = LabelConfig()
    model: ModelConfig = ModelConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    backtest: BacktestConfig = BacktestConfig()
    report: ReportConfig = ReportConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _benchmark_in_universe(self) -> PipelineConfig:
        if self.features.benchmark and self.features.benchmark not in self.universe.symbols:
            raise ValueError(
                f"features.benchmark {self.features.benchmark!r} must be one of universe.symbols {self.universe.symbols}"
            )
        return self

    @model_validator(mode="after")
    def _pca_fits_universe(self) -> PipelineConfig:
        pca = self.features.pca
        if pca is None:
            return self
        if len(self.universe.symbols) < max(2, pca.n_components):
            raise ValueError(
                f"features.pca needs at least max(2, n_components={pca.n_components}) universe.symbols, "
                f"got {len(self.universe.symbols)}"
            )
        if pca.fit_bars is not None and pca.fit_bars > self.walk_forward.train_bars:
            raise ValueError(
                f"features.pca.fit_bars ({pca.fit_bars}) must not exceed walk_forward.train_bars "
                f"({self.walk_forward.train_bars}): the first fold would test on rows the PCA was fitted on"
            )
        return self

    @model_validator(mode="after")
    def _regimes_fit_in_first_window(self) -> PipelineConfig:
        for i, extra in enumerate(self.label.extra):
            fit = getattr(extra, "fit_bars", None)
            if fit is not None and fit > self.walk_forward.train_bars:
                raise ValueError(
                    f"label.extra[{i}].fit_bars ({fit}) must not exceed walk_forward.train_bars "
                    f"({self.walk_forward.train_bars}): the first fold would test on rows the regimes were fitted on"
                )
        return self

    @model_validator(mode="after")
    def _spread_label_has_quotes(self) -> PipelineConfig:
        """A spread_explosion target reads the validated quotes, which the validate stage carries only
        for features.microstructure with source quotes from the lake."""
        micro = self.features.microstructure
        carried = micro is not None and micro.source == "quotes" and self.universe.vendor == "lake"
        for i, extra in enumerate(self.label.extra):
            if isinstance(extra, SpreadExplosionLabel) and not carried:
                raise ValueError(
                    f"label.extra[{i}] (spread_explosion) needs quotes, which the validated data carries only "
                    "when the job sets features.microstructure: {source: quotes} with universe.vendor: lake "
                    "(quotes brought in by `quanto data ingest`); add both or drop the target"
                )
        return self

    @model_validator(mode="after")
    def _sources_from_lake(self) -> PipelineConfig:
        wanted = [n for n in ("microstructure", "fundamentals") if getattr(self.features, n)]
        if wanted and self.universe.vendor != "lake":
            raise ValueError(
                f"features.{wanted[0]} reads datasets that `quanto data ingest` brought into the lake: "
                f"it needs universe.vendor lake (got {self.universe.vendor!r})"
            )
        micro = self.features.microstructure
        if micro is not None and self.universe.timeframe not in MICROSTRUCTURE_TIMEFRAMES:
            raise ValueError(
                f"features.microstructure needs intraday bars of {list(MICROSTRUCTURE_TIMEFRAMES)}; "
                f"universe.timeframe is {self.universe.timeframe!r}"
            )
        return self

    @model_validator(mode="after")
    def _label_fits_model(self) -> PipelineConfig:
        wants = "regression" if self.label.kind == "forward_return" else "classification"
        if self.model.objective != wants:
            raise ValueError(
                f"model.objective {self.model.objective!r} does not fit label.kind {self.label.kind!r};"
                f" use objective: {wants}"
            )
        return self

    def research_hash(self) -> str:
        """SHA-256 of everything that changes results (runtime timing and lake location excluded)."""
        payload = self.model_dump(mode="json", exclude={"runtime", "lake_root"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def workflow_id(self, kind: str = "pipeline") -> str:
        """Business key of the workflow: <kind>-<name>-<hash8> (kind `pipeline` or `validate`)."""
        return f"{kind}-{self.name}-{self.research_hash()[:8]}"
