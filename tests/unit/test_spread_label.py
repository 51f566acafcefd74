"""The spread-explosion target in the gold labels table: per quote from the label library, per bar
from the quotes stamped inside the symbol's next bar (`spread_explosion_by_bar`), read by the labels
stage from the validated quotes, and refused at config load when the job's validated data has none."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quanto.config.loading import ConfigError, parse_config
from quanto.config.models import PipelineConfig
from quanto.contracts import StageRequest, StageResult
from quanto.labels.extra import extra_labels, spread_explosion_by_bar
from quanto.labels.rewards import spread_explosion
from quanto.labels.stage import run_labels
from quanto.lake.materialize import StageContext
from quanto.lake.storage import Lake

OPEN = pd.Timestamp("2024-01-02 14:30", tz="UTC")  # 09:30 New York
MIN = pd.Timedelta(minutes=1)
SEC = pd.Timedelta(seconds=1)
NORMAL = (100.00, 100.02)  # the same bid/ask each time: exactly equal spreads, std 0
WIDE = (99.95, 100.05)
# (symbol, seconds after the open, (bid, ask)). With window 3 and k 1: A's quote at 80 s explodes
# (its three predecessors share one spread); minute 14:32 has no quote; B has too few quotes to judge.
QUOTES = [
    ("A", 0, NORMAL), ("A", 20, NORMAL), ("A", 40, NORMAL),             # bar 14:30
    ("A", 60, NORMAL), ("A", 80, WIDE), ("A", 100, NORMAL),             # bar 14:31 (60 s: its open)
    ("A", 180, NORMAL), ("A", 210, NORMAL),                             # bar 14:33
    ("B", 70, NORMAL), ("B", 80, WIDE),                                 # bar 14:31
]  # fmt: skip
BARS = {"A": 5, "B": 2}  # minute bars from the open


def minute_bars(counts: dict[str, int] = BARS) -> pd.DataFrame:
    rows = [
        {"symbol": s, "ts": OPEN + i * MIN, "timeframe": "1min", "open": 100.0 + i, "high": 101.0 + i,
         "low": 99.0 + i, "close": 100.5 + i, "volume": 1e3, "vwap": None, "trades": None,
         "vendor": "polygon", "imputed": False}
        for s, n in counts.items() for i in range(n)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def quotes_frame(rows=QUOTES) -> pd.DataFrame:
    return pd.DataFrame(
        [{"symbol": s, "ts": OPEN + t * SEC, "bid_px": bid, "bid_sz": 1.0, "ask_px": ask, "ask_sz": 1.0,
          "vendor": "polygon"} for s, t, (bid, ask) in rows]
    )  # fmt: skip


def raw_job(extra: list[dict], **features) -> dict:
    return {
        "name": "spread",
        "universe": {"vendor": "lake", "source": "polygon", "symbols": ["A", "B"], "timeframe": "1min",
                     "start": "2024-01-02", "end": "2024-01-03", "adjustment": "raw"},
        "features": {"names": ["logret_1"], **features},
        "label": {"extra": extra},
    }  # fmt: skip


SPREAD = [{"kind": "spread_explosion", "window": 3, "k": 1.0}]
QUOTE_FEATURES = {"microstructure": {"source": "quotes"}}


def job(extra: list[dict] = SPREAD, features: dict = QUOTE_FEATURES) -> PipelineConfig:
    return parse_config(PipelineConfig, raw_job(extra, **features), "job.yaml")


def oracle(bars: pd.DataFrame, quotes: pd.DataFrame, window: int, k: float) -> pd.DataFrame:
    """A plain loop over bars: the library's per-quote labels whose t1 (the judged quote's ts) lies in
    the symbol's next bar [ts', ts' + 1min); label = any of them, t1 = the latest."""
    per_quote = spread_explosion(quotes, window=window, k=k).dropna(subset=["label"])
    out = []
    for _, bar in bars.iterrows():
        later = bars[(bars["symbol"] == bar["symbol"]) & (bars["ts"] > bar["ts"])]
        label, t1 = np.nan, pd.NaT
        if len(later):
            start = later["ts"].min()
            mine = per_quote[(per_quote["symbol"] == bar["symbol"]) & (per_quote["t1"] >= start)
                             & (per_quote["t1"] < start + MIN)]  # fmt: skip
            if len(mine):
                label, t1 = float(mine["label"].max()), mine["t1"].max()
        out.append({"label": label, "t1": t1})
    return pd.DataFrame(out, index=bars.index)


def write_validated(
    lake: Lake, bars: pd.DataFrame, quotes: pd.DataFrame, per_symbol: bool = True
) -> StageResult:
    """A validate stage's result: silver bars, and silver quotes one file per symbol (the lake layout)
    or one file of all."""
    outputs = [lake.write_frame("silver/bars/t", bars, role="bars")]
    if per_symbol:
        for symbol, rows in quotes.groupby("symbol"):
            outputs.append(lake.write_frame(f"silver/quotes/vendor=polygon/symbol={symbol}/year=2024", rows,
                                            role="quotes"))  # fmt: skip
    else:
        outputs.append(lake.write_frame("silver/quotes/all", quotes, role="quotes"))
    return StageResult(stage="validate", key="v", outputs=outputs)


def run_stage(lake: Lake, validated: StageResult, cfg: PipelineConfig) -> tuple[StageResult, pd.DataFrame]:
    req = StageRequest(stage="labels", config=cfg.model_dump(mode="json"), inputs={"validate": validated})
    result = run_labels(req, StageContext(lake=lake, record=False))
    return result, lake.read_frame(result.files("labels")).sort_values(["symbol", "ts"], ignore_index=True)


def test_bar_label_by_hand():
    bars, quotes = minute_bars(), quotes_frame()
    out = spread_explosion_by_bar(bars, quotes, timeframe="1min", window=3, k=1.0)
    assert list(out.columns) == ["symbol", "ts", "label", "t1"] and out.index.equals(bars.index)
    a = out[out["symbol"] == "A"].set_index("ts")
    # 14:30: the next bar's quotes are judged by the labels of the quotes before them (40 s: 0, 60 s: 1,
    # 80 s: 0); the 80 s quote exploded, and the last quote judged is the one at 100 s.
    assert a.loc[OPEN, "label"] == 1.0 and a.loc[OPEN, "t1"] == OPEN + 100 * SEC
    # 14:31: nothing is stamped in 14:32.
    assert np.isnan(a.loc[OPEN + MIN, "label"]) and pd.isna(a.loc[OPEN + MIN, "t1"])
    # 14:32: 14:33's quotes (180 s, 210 s) are judged against the window with the wide spread: no explosion.
    assert a.loc[OPEN + 2 * MIN, "label"] == 0.0 and a.loc[OPEN + 2 * MIN, "t1"] == OPEN + 210 * SEC
    # 14:33: 14:34 has no quote; 14:34: the symbol's last bar.
    assert a.loc[[OPEN + 3 * MIN, OPEN + 4 * MIN], "label"].isna().all()
    # B's next bar has quotes but fewer than the window: none is judged.
    assert out.loc[out["symbol"] == "B", "label"].isna().all()
    assert out["t1"].isna().equals(out["label"].isna())  # t1 NaT exactly where the label is undefined

    # The same from a plain loop over the library's per-quote labels, and from a per-symbol reader.
    want = oracle(bars, quotes, 3, 1.0)
    pd.testing.assert_series_equal(out["label"], want["label"], check_names=False)
    assert (out["t1"].isna() == want["t1"].isna()).all()
    assert (out["t1"].dropna() == want["t1"].dropna()).all()
    by_symbol = spread_explosion_by_bar(
        bars, lambda s: quotes[quotes["symbol"] == s], timeframe="1min", window=3, k=1.0
    )
    pd.testing.assert_frame_equal(by_symbol, out)


def test_a_quote_stamped_at_a_bar_open_belongs_to_that_bar():
    bars = minute_bars({"A": 3})
    # The 60 s quote (14:31:00, the open of 14:31) explodes; the 120 s one (14:32:00) does not.
    quotes = quotes_frame([("A", 0, NORMAL), ("A", 20, NORMAL), ("A", 40, NORMAL), ("A", 60, WIDE),
                           ("A", 120, NORMAL)])  # fmt: skip
    out = spread_explosion_by_bar(bars, quotes, timeframe="1min", window=3, k=1.0)
    assert out["label"].tolist() == pytest.approx([1.0, 0.0, np.nan], nan_ok=True)
    # 14:30's label ends at its close exactly (t1 >= close holds with equality), 14:31's at 14:32:00.
    assert out["t1"].tolist()[:2] == [OPEN + MIN, OPEN + 2 * MIN] and pd.isna(out["t1"].iloc[2])


def test_random_quotes_match_the_loop_and_end_at_or_after_the_close():
    rng = np.random.default_rng(7)
    bars = minute_bars({"A": 40, "B": 40}).sample(frac=1.0, random_state=1)  # any row order
    n = 600
    seconds = np.sort(rng.uniform(0, 42 * 60, n))  # reaches past the last bar; some minutes empty
    spread = np.exp(rng.normal(-4, 0.5, n))
    rows = [
        (("A", "B")[i % 2], float(t), (100.0, 100.0 + s))
        for i, (t, s) in enumerate(zip(seconds, spread, strict=True))
    ]
    rows = [r for r in rows if not 600 <= r[1] < 720]  # two quiet minutes
    quotes = quotes_frame(rows)
    out = spread_explosion_by_bar(bars, quotes, timeframe="1min", window=10, k=1.0)
    want = oracle(bars, quotes, 10, 1.0)
    pd.testing.assert_series_equal(out["label"], want["label"], check_names=False)
    assert (out["t1"].dropna() == want["t1"].dropna()).all() and (out["t1"].isna() == want["t1"].isna()).all()
    defined = out["label"].notna()
    assert 0 < defined.sum() < len(out) and out.loc[defined, "label"].isin([0.0, 1.0]).all()
    assert 0 < out["label"].sum() < defined.sum()
    close = out["ts"] + MIN
    assert (out.loc[defined, "t1"] >= close[defined]).all()
    assert (out.loc[defined, "t1"] < close[defined] + MIN).all()  # within the next bar


def test_the_labels_stage_writes_the_columns_from_the_validated_quotes(tmp_path):
    lake = Lake(tmp_path / "lake")
    bars, quotes = minute_bars(), quotes_frame()
    for per_symbol in (True, False):
        result, table = run_stage(lake, write_validated(lake, bars, quotes, per_symbol), job())
        assert {"spread_label", "spread_t1"} <= set(table.columns)
        assert table.columns[-2:].tolist() == ["spread_label", "spread_t1"]
        want = spread_explosion_by_bar(bars, quotes, timeframe="1min", window=3, k=1.0)
        want = want.sort_values(["symbol", "ts"], ignore_index=True)
        pd.testing.assert_series_equal(table["spread_label"], want["label"], check_names=False)
        assert (table["spread_t1"].isna() == want["t1"].isna()).all()
        assert (table["spread_t1"].dropna() == want["t1"].dropna()).all()
        assert table.loc[table["symbol"] == "A", "spread_label"].head(3).tolist() == pytest.approx(
            [1.0, np.nan, 0.0], nan_ok=True
        )
        manifest = json.loads(lake.abspath(result.manifest).read_text())
        assert {f["role"] for f in manifest["inputs"]} == {"bars", "quotes"}  # quotes key the stage
    # A prefix of one's own.
    _, table = run_stage(lake, write_validated(lake, bars, quotes), job([{**SPREAD[0], "prefix": "blowout"}]))
    assert {"blowout_label", "blowout_t1"} <= set(table.columns) and "spread_label" not in table.columns


def test_a_quote_top_up_reruns_the_stage_and_other_jobs_ignore_quotes(tmp_path):
    lake = Lake(tmp_path / "lake")
    bars, quotes = minute_bars(), quotes_frame()
    first, before = run_stage(lake, write_validated(lake, bars, quotes), job())
    again, _ = run_stage(lake, write_validated(lake, bars, quotes), job())
    assert again.skipped and again.key == first.key
    # 14:34 gets quotes: 14:33's label becomes defined, the key changes and the stage runs again.
    topped = quotes_frame([*QUOTES, ("A", 250, NORMAL), ("A", 260, WIDE)])
    after_result, after = run_stage(lake, write_validated(lake, bars, topped), job())
    assert not after_result.skipped and after_result.key != first.key
    row = (after["symbol"] == "A") & (after["ts"] == OPEN + 3 * MIN)
    assert np.isnan(before.loc[row, "spread_label"].item()) and after.loc[row, "spread_label"].item() == 1.0
    assert after.loc[row, "spread_t1"].item() == OPEN + 260 * SEC
    # A job without the spread target does not read quotes: their top-up leaves its key alone.
    plain = job([])
    one, _ = run_stage(lake, write_validated(lake, bars, quotes), plain)
    two, _ = run_stage(lake, write_validated(lake, bars, topped), plain)
    assert two.skipped and two.key == one.key


def test_extra_labels_needs_quotes_for_the_spread_target():
    from quanto.config.models import SpreadExplosionLabel
    from quanto.errors import InputError

    with pytest.raises(
        InputError, match=r"label.extra\[0\] \(spread_explosion\): needs the validated quotes"
    ):
        extra_labels(minute_bars(), [SpreadExplosionLabel()], 100)
    out = extra_labels(minute_bars(), [SpreadExplosionLabel(window=3, k=1.0)], 100, quotes=quotes_frame())
    assert list(out.columns) == ["symbol", "ts", "spread_label", "spread_t1"]  # timeframe from the bars


@pytest.mark.parametrize(
    "features", [{}, {"microstructure": {"source": "depth"}}], ids=["no microstructure", "depth"]
)
def test_a_job_whose_validated_data_has_no_quotes_is_refused(features):
    with pytest.raises(ConfigError) as err:
        job(SPREAD, features)
    assert str(err.value).startswith(
        "job.yaml: <root>: label.extra[0] (spread_explosion) needs quotes, which the validated data "
        "carries only when the job sets features.microstructure: {source: quotes} with "
        "universe.vendor: lake"
    )


def test_a_job_off_the_lake_is_refused_too():
    raw = raw_job([{"kind": "forward_returns"}, *SPREAD], **QUOTE_FEATURES)
    raw["universe"] = {"symbols": ["A"], "timeframe": "1min", "start": "2024-01-02", "end": "2024-01-03"}
    with pytest.raises(ConfigError, match=r"label.extra\[1\] \(spread_explosion\) needs quotes"):
        parse_config(PipelineConfig, raw, "job.yaml")


def test_a_job_with_quotes_accepts_the_target():
    cfg = job(SPREAD, {"microstructure": {"source": "quotes", "window": 5}})
    assert cfg.label.extra[0].columns() == ["spread_label", "spread_t1"]
    assert (cfg.label.extra[0].window, cfg.label.extra[0].k) == (3, 1.0)
