"""Quote and depth validation: each fault reported by its rule, policies honoured, rows conserved."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quanto.config.models import QuoteRules
from quanto.data.schemas import SchemaError, depth_columns
from quanto.validation.checks import ValidationFailed
from quanto.validation.quotes import rule_policies, validate_depth, validate_quotes

T0 = dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC)
TICK = 0.01


def ts(i: int) -> dt.datetime:
    return T0 + dt.timedelta(microseconds=i)


def quotes(rows: list[tuple]) -> pl.DataFrame:
    """Quotes from (symbol, i, bid_px, bid_sz, ask_px, ask_sz) with ts = T0 + i µs."""
    return pl.DataFrame(
        [(s, ts(i), *rest, "test") for s, i, *rest in rows],
        schema={
            "symbol": pl.String,
            "ts": pl.Datetime("ns", "UTC"),
            "bid_px": pl.Float64,
            "bid_sz": pl.Float64,
            "ask_px": pl.Float64,
            "ask_sz": pl.Float64,
            "vendor": pl.String,
        },
        orient="row",
    )


def depth(rows: list[tuple], levels: int) -> pl.DataFrame:
    """Depth snapshots from (symbol, i, [(bid_px, bid_sz, ask_px, ask_sz) per level])."""
    schema = {"symbol": pl.String, "ts": pl.Datetime("ns", "UTC")}
    for lvl in range(1, levels + 1):
        schema.update(dict.fromkeys(depth_columns(lvl), pl.Float64))
    schema["vendor"] = pl.String
    data = [(s, ts(i), *[v for level in book for v in level], "test") for s, i, book in rows]
    return pl.DataFrame(data, schema=schema, orient="row")


def rules(**policies: str) -> QuoteRules:
    return QuoteRules(**{rule: {"policy": p} for rule, p in policies.items()})


def by_ts(frame: pl.DataFrame) -> dict[dt.datetime, tuple[str, str]]:
    return {r["ts"]: (r["rule"], r["reason"]) for r in frame.iter_rows(named=True)}


def assert_conserved(out, rows_in: int) -> None:
    c = out.counters
    assert c["rows_in"] == rows_in == c["accepted"] + c["quarantined"] + c["duplicates_dropped"]


# --- quotes ---------------------------------------------------------------------------------------


def test_clean_quotes_pass_sorted_by_symbol_and_ts():
    df = quotes([("B", 1, 10.0, 1, 10.01, 1), ("A", 2, 10.0, 1, 10.01, 1), ("A", 0, 10.0, 1, None, None)])
    out = validate_quotes(df, QuoteRules())
    assert out.quarantined.height == 0 and out.flags.height == 0
    assert out.accepted.select("symbol", "ts").rows() == [("A", ts(0)), ("A", ts(2)), ("B", ts(1))]
    assert out.accepted.columns == df.columns


def test_crossed_quarantined_locked_flagged_and_kept_negative_size_quarantined():
    df = quotes(
        [
            ("A", 0, 10.0, 100, 10.01, 100),  # fine
            ("A", 1, 10.05, 100, 10.04, 100),  # crossed
            ("A", 2, 10.02, 100, 10.02, 100),  # locked
            ("A", 3, 10.0, -5, 10.01, 100),  # negative size
            ("A", 4, 10.0, 100, 10.01, math.inf),  # infinite size
            ("A", 5, 10.0, None, 10.01, 100),  # price without size
        ]
    )
    out = validate_quotes(df, QuoteRules())
    q = by_ts(out.quarantined)
    assert q[ts(1)] == ("crossed", "bid 10.05 > ask 10.04")
    assert q[ts(3)] == ("size_nonnegative", "bid size -5.0 must be finite and >= 0")
    assert q[ts(4)][0] == "size_nonnegative" and "ask size inf" in q[ts(4)][1]
    assert q[ts(5)] == ("size_nonnegative", "bid size missing for price 10.0")
    assert set(out.accepted["ts"]) == {ts(0), ts(2)}
    assert by_ts(out.flags) == {ts(2): ("locked", "bid 10.02 == ask 10.02")}
    assert_conserved(out, df.height)


def test_one_sided_quotes_are_fine_and_nan_prices_are_quarantined():
    df = quotes(
        [("A", 0, None, None, 10.01, 100), ("A", 1, 10.0, 5, None, None), ("A", 2, math.nan, 5, 10.0, 5)]
    )
    out = validate_quotes(df, QuoteRules())
    assert set(out.accepted["ts"]) == {ts(0), ts(1)}
    assert by_ts(out.quarantined) == {ts(2): ("price_finite", "bid price NaN")}
    # pandas cannot tell NaN from missing: there the NaN bid is an absent side.
    out = validate_quotes(df.to_pandas(), QuoteRules())
    assert out.accepted.height == 3


def test_exact_duplicates_are_dropped_and_counted():
    df = quotes([("A", 0, 10.0, 1, 10.01, 1)] * 3 + [("A", 0, 10.0, 2, 10.01, 1)])
    out = validate_quotes(df, QuoteRules())
    assert out.duplicates_dropped == 2 and out.accepted.height == 2
    assert_conserved(out, 4)


@pytest.mark.parametrize("rule", ["crossed", "size_nonnegative"])
def test_policies_warn_quarantine_fail(rule):
    bad = (10.05, 100, 10.04, 100) if rule == "crossed" else (10.0, -1, 10.01, 100)
    df = quotes([("A", 0, 10.0, 100, 10.01, 100), ("A", 1, *bad)])

    out = validate_quotes(df, rules(**{rule: "warn"}))
    assert out.accepted.height == 2 and out.quarantined.height == 0
    assert out.flags["rule"].to_list() == [rule]

    out = validate_quotes(df, rules(**{rule: "quarantine"}))
    assert out.accepted.height == 1 and out.quarantined["rule"].to_list() == [rule]
    assert out.flags.height == 0

    with pytest.raises(ValidationFailed, match=f"quotes: rule '{rule}' \\(policy fail\\) failed on 1 row"):
        validate_quotes(df, rules(**{rule: "fail"}))


def test_locked_policies():
    df = quotes([("A", 0, 10.0, 1, 10.0, 1)])
    assert validate_quotes(df, rules(locked="quarantine")).quarantined["rule"].to_list() == ["locked"]
    with pytest.raises(ValidationFailed, match="'locked'"):
        validate_quotes(df, rules(locked="fail"))


def test_schema_checked_first_and_quality_uses_policies():
    with pytest.raises(SchemaError, match="my-quotes: missing column"):
        validate_quotes(quotes([]).drop("ask_sz"), QuoteRules(), source="my-quotes")
    df = quotes([("A", 0, 10.05, 1, 10.04, 1), ("A", 1, 10.0, 1, 10.0, 1)])
    out = validate_quotes(df, QuoteRules())
    quality = {r["rule"]: r for r in out.quality(rule_policies(QuoteRules()))}
    assert quality["crossed"]["policy"] == "quarantine" and quality["locked"]["policy"] == "warn"
    assert rule_policies(QuoteRules())["price_finite"] == "quarantine"


def test_empty_input():
    out = validate_quotes(quotes([]), QuoteRules())
    assert out.counters["rows_in"] == 0 and out.accepted.columns == quotes([]).columns


# --- depth ----------------------------------------------------------------------------------------

GOOD = [(10.00, 100, 10.01, 100), (9.99, 200, 10.02, 200), (9.98, 300, 10.03, 300)]


def test_depth_faults_name_the_level():
    rows = [
        ("A", 0, GOOD),
        ("A", 1, [GOOD[0], (10.05, 200, 10.04, 200), GOOD[2]]),  # crossed at level 2 only
        ("A", 2, [GOOD[0], (10.005, 200, 10.02, 200), GOOD[2]]),  # bid level 2 above level 1
        ("A", 3, [GOOD[0], GOOD[1], (9.98, 300, 10.015, 300)]),  # ask level 3 below level 2
        ("A", 4, [GOOD[0], (None, None, None, None), GOOD[2]]),  # empty level before a present one
        ("A", 5, [GOOD[0], GOOD[1], (None, None, None, None)]),  # thin book: fine
        ("A", 6, [GOOD[0], (9.99, 200, 10.02, -1), GOOD[2]]),  # negative size at level 2
        ("A", 7, [GOOD[0], GOOD[1], (9.98, 300, 10.02, 300)]),  # equal asks across levels: fine
    ]
    out = validate_depth(depth(rows, 3), QuoteRules(), levels=3)
    q = by_ts(out.quarantined)
    assert q[ts(1)] == ("crossed", "level 2: bid 10.05 > ask 10.04")
    assert q[ts(2)] == ("levels_ordered", "level 2: bid 10.005 > level 1 bid 10.0")
    assert q[ts(3)] == ("levels_ordered", "level 3: ask 10.015 < level 2 ask 10.02")
    assert q[ts(4)] == ("levels_ordered", "level 3: bid 9.98 after empty bid at level 2")
    assert q[ts(6)] == ("size_nonnegative", "level 2: ask size -1.0 must be finite and >= 0")
    assert set(out.accepted["ts"]) == {ts(0), ts(5), ts(7)}
    assert_conserved(out, len(rows))


def test_depth_locked_and_one_sided_levels():
    rows = [
        ("A", 0, [(10.0, 1, 10.0, 1), (9.99, 1, 10.01, 1)]),  # locked at level 1, kept and flagged
        ("A", 1, [(10.0, 1, 10.01, 1), (None, None, 10.02, 1)]),  # one-sided level 2: fine
        ("A", 2, [(10.0, 1, None, None), (9.99, 1, 10.02, 1)]),  # ask side reappears after a gap
    ]
    out = validate_depth(depth(rows, 2), QuoteRules(), levels=2)
    assert by_ts(out.flags) == {ts(0): ("locked", "level 1: bid 10.0 == ask 10.0")}
    assert by_ts(out.quarantined) == {
        ts(2): ("levels_ordered", "level 2: ask 10.02 after empty ask at level 1")
    }


def test_depth_levels_must_match_the_schema():
    with pytest.raises(SchemaError, match=r"depth: missing column\(s\) \['bid_px_3'"):
        validate_depth(depth([("A", 0, GOOD[:2])], 2), QuoteRules(), levels=3)
    with pytest.raises(SchemaError, match="unexpected column"):
        validate_depth(depth([("A", 0, GOOD)], 3), QuoteRules(), levels=2)


def test_depth_accepts_pandas():
    df = depth([("A", 0, GOOD), ("A", 1, [GOOD[0], (10.05, 1, 10.04, 1), GOOD[2]])], 3)
    out = validate_depth(df.to_pandas(), QuoteRules(), levels=3)
    assert isinstance(out.accepted, pl.DataFrame)
    assert out.quarantined["rule"].to_list() == ["crossed"]


# --- depth, property-based ------------------------------------------------------------------------

FAULTS = (
    "none",
    "crossed",
    "locked",
    "neg_size",
    "nan_size",
    "missing_size",
    "order_bid",
    "order_ask",
    "gap",
    "nan_price",
)
EXPECTED = {
    "none": None,
    "crossed": "crossed",
    "locked": "locked",
    "neg_size": "size_nonnegative",
    "nan_size": "size_nonnegative",
    "missing_size": "size_nonnegative",
    "order_bid": "levels_ordered",
    "order_ask": "levels_ordered",
    "gap": "levels_ordered",
    "nan_price": "price_finite",
}


@st.composite
def book_with_fault(draw, levels: int):
    """A valid book (prices on a 1-cent grid, independent depth per side) and one injected fault.

    Returns (levels as [bid_px, bid_sz, ask_px, ask_sz] lists, the fault actually injected)."""
    bid_depth = draw(st.integers(0, levels))
    ask_depth = draw(st.integers(0, levels))
    best_bid = draw(st.integers(500, 2000))
    spread = draw(st.integers(1, 5))
    bid_steps = draw(st.lists(st.integers(1, 3), min_size=levels, max_size=levels))
    ask_steps = draw(st.lists(st.integers(0, 3), min_size=levels, max_size=levels))  # equal asks allowed
    bid_ticks = [best_bid - sum(bid_steps[:i]) for i in range(levels)]
    ask_ticks = [best_bid + spread + sum(ask_steps[1 : i + 1]) for i in range(levels)]
    book = [
        [
            bid_ticks[i] * TICK if i < bid_depth else None,
            float(draw(st.integers(0, 10_000))) if i < bid_depth else None,
            ask_ticks[i] * TICK if i < ask_depth else None,
            float(draw(st.integers(0, 10_000))) if i < ask_depth else None,
        ]
        for i in range(levels)
    ]
    fault = draw(st.sampled_from(FAULTS))
    both = bid_depth >= 1 and ask_depth >= 1
    present = [(i, side) for i in range(levels) for side in (0, 2) if book[i][side] is not None]
    if fault == "crossed" and both:
        book[0][0] = (ask_ticks[0] + draw(st.integers(1, 5))) * TICK
    elif fault == "locked" and both:
        book[0][0] = book[0][2]
    elif fault in ("neg_size", "nan_size", "missing_size") and present:
        i, side = draw(st.sampled_from(present))
        book[i][side + 1] = {"neg_size": -float(draw(st.integers(1, 100))), "nan_size": math.nan}.get(fault)
    elif fault == "order_bid" and bid_depth >= 2:
        i = draw(st.integers(0, bid_depth - 2))
        book[i][0], book[i + 1][0] = book[i + 1][0], book[i][0]
    elif fault == "order_ask" and ask_depth >= 2 and ask_ticks[0] != ask_ticks[ask_depth - 1]:
        i = next(i for i in range(ask_depth - 1) if ask_ticks[i] != ask_ticks[i + 1])
        book[i][2], book[i + 1][2] = book[i + 1][2], book[i][2]
    elif fault == "gap" and max(bid_depth, ask_depth) >= 2:
        i = draw(st.integers(0, max(bid_depth, ask_depth) - 2))
        book[i] = [None, None, None, None]
    elif fault == "nan_price" and present:
        i, side = draw(st.sampled_from(present))
        book[i][side] = math.nan
    else:
        fault = "none"
    return [tuple(level) for level in book], fault


@st.composite
def depth_batches(draw):
    levels = draw(st.integers(1, 5))
    n = draw(st.integers(0, 30))
    rows, faults = [], {}
    for i in range(n):
        book, fault = draw(book_with_fault(levels))
        symbol = draw(st.sampled_from(["A", "B"]))
        rows.append((symbol, i, book))
        faults[ts(i)] = fault
    dupes = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=5)) if n else []
    rows += [rows[k] for k in dupes]
    order = draw(st.permutations(range(len(rows))))
    return levels, [rows[k] for k in order], faults, len(dupes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth_batches())
def test_every_injected_depth_fault_is_reported_by_its_rule(batch):
    levels, rows, faults, n_dupes = batch
    out = validate_depth(depth(rows, levels), QuoteRules(), levels=levels)
    assert_conserved(out, len(rows))
    assert out.duplicates_dropped == n_dupes
    quarantined = by_ts(out.quarantined)
    flagged = by_ts(out.flags)
    for t, fault in faults.items():
        expected = EXPECTED[fault]
        if expected is None:
            assert t not in quarantined and t not in flagged, (fault, quarantined.get(t), flagged.get(t))
        elif expected == "locked":  # warn by default: kept and flagged
            assert flagged.get(t, (None,))[0] == "locked" and t not in quarantined
        else:
            assert quarantined.get(t, (None,))[0] == expected, (fault, quarantined.get(t))
            assert quarantined[t][1].startswith("level ")
    keys = out.accepted.select("symbol", "ts").rows()
    assert keys == sorted(keys)


cell = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0]),
    st.floats(min_value=-10, max_value=20, allow_nan=False),
)


@settings(max_examples=150, deadline=None)
@given(levels=st.integers(1, 4), data=st.data())
def test_garbage_books_never_crash_and_accepted_rows_are_sound(levels, data):
    n = data.draw(st.integers(0, 25))
    rows = [("A", i, [tuple(data.draw(cell) for _ in range(4)) for _ in range(levels)]) for i in range(n)]
    df = depth(rows, levels)
    out = validate_depth(df, QuoteRules(), levels=levels)
    assert_conserved(out, n)
    assert out.accepted.columns == df.columns
    # Whatever is accepted obeys every quarantine rule.
    for r in out.accepted.iter_rows(named=True):
        for side in ("bid", "ask"):
            seen_gap, prev = False, None
            for lvl in range(1, levels + 1):
                px, sz = r[f"{side}_px_{lvl}"], r[f"{side}_sz_{lvl}"]
                if px is None:
                    seen_gap = True
                    continue
                assert math.isfinite(px) and not seen_gap
                assert sz is not None and math.isfinite(sz) and sz >= 0
                if prev is not None:
                    assert px <= prev if side == "bid" else px >= prev
                prev = px
        for lvl in range(1, levels + 1):
            b, a = r[f"bid_px_{lvl}"], r[f"ask_px_{lvl}"]
            assert b is None or a is None or b <= a
    # pandas input (NaN read as missing) is conserved too.
    assert_conserved(validate_depth(df.to_pandas(), QuoteRules(), levels=levels), n)
