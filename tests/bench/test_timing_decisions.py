"""The decisions of the shared timing core (act_fast/bench/timing.py) and of ``act-fast bench``'s
table on deterministic fake timings: spread, when a ratio is a finding, the order of interleaved
rounds. No timed assertion."""

from __future__ import annotations

import math

import pytest

from act_fast.bench.throughput import Throughput
from act_fast.bench.timing import compare, interleave, interleaved_rounds, round_order, spread, timing_of
from act_fast.cli.bench import format_rows, noise_line


def test_spread_is_the_relative_interquartile_range_or_the_range_for_few_samples():
    assert spread([10.0, 10.0, 10.0, 10.0, 10.0]) == 0.0
    # inclusive quartiles of 8, 9, 10, 11, 12: 9 and 11; median 10
    assert spread([12.0, 8.0, 10.0, 9.0, 11.0]) == pytest.approx(0.2)
    assert spread([9.0, 10.0, 12.0]) == pytest.approx(0.3)  # (12 - 9) / 10
    assert math.isinf(spread([10.0])) and math.isinf(spread([]))


def test_a_ratio_is_a_finding_only_when_the_difference_exceeds_the_larger_spread():
    base = [100.0, 98.0, 102.0, 99.0, 101.0]  # spread 0.02
    slower = [80.0, 79.0, 81.0, 80.5, 79.5]  # spread 0.0125, ratio 0.8
    c = compare(base, slower)
    assert c.ratio == pytest.approx(0.8) and c.noise == pytest.approx(0.02) and c.resolved
    assert c.describe() == "0.800"
    # the case: two runs of one plan, one of them hit by the load — spread 50 %, difference 3 %
    noisy = [41.0, 100.0, 97.0, 120.0, 60.0]
    c = compare(base, noisy)
    assert c.ratio == pytest.approx(0.97) and not c.resolved
    assert c.describe() == f"within noise (±{c.noise:.1%})" and c.noise > 0.3
    one = compare([100.0], [50.0])
    assert not one.resolved and one.describe() == "no spread (1 run)"


def test_rounds_rotate_the_order_and_collect_each_figure_per_round():
    assert round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert round_order(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert round_order(["a", "b", "c"], 5) == ["c", "a", "b"]
    calls = []

    def run(name):
        calls.append(name)
        return {"prefill": float(len(calls)), "decode": 10.0 * len(calls)}

    samples = interleaved_rounds(["u", "s"], 3, run)
    assert calls == ["u", "s", "s", "u", "u", "s"]
    assert samples == {"u": {"prefill": [1.0, 4.0, 5.0], "decode": [10.0, 40.0, 50.0]},
                       "s": {"prefill": [2.0, 3.0, 6.0], "decode": [20.0, 30.0, 60.0]}}


def test_interleave_warms_each_function_up_before_the_rounds():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timings = interleave(fns, rounds=2, warmup=2, inner=3)
    assert calls == ["a", "a", "b", "b", *"aaa", *"bbb", *"bbb", *"aaa"]
    assert timings["a"].repeats == 2 and timings["a"].inner == 3 and len(timings["b"].times_ms) == 2


def _row(config, pre_ms, dec_ms, base=None):
    pre, dec = timing_of(pre_ms), timing_of(dec_ms)
    row = Throughput(config, 1e3 / pre.median_ms, 1e3 / dec.median_ms, pre, dec, {} if base is None else {"fused": 4})
    if base is not None:
        row.prefill_vs_unsteered = compare([1e3 / t for t in base.prefill.times_ms], [1e3 / t for t in pre_ms])
        row.decode_vs_unsteered = compare([1e3 / t for t in base.decode.times_ms], [1e3 / t for t in dec_ms])
    return row


def test_the_table_prints_spreads_and_says_within_noise_instead_of_a_ratio():
    plain = _row("unsteered", [10.0, 10.1, 9.9, 10.0, 10.05], [20.0, 20.2, 19.8, 20.0, 20.1])
    fused = _row("fused", [12.5, 12.4, 12.6, 12.5, 12.45], [20.0, 26.0, 14.0, 23.0, 17.0], base=plain)
    rows = [plain, fused, Throughput("fold", error="the map has a support")]
    table = format_rows(rows)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["config", "prefill", "tok/s", "±"]
    fused_line = next(line for line in lines if line.startswith("fused"))
    assert "0.800" in fused_line  # prefill: 12.5 vs 10 ms, spreads ≤ 1 %: a finding
    assert f"within noise (±{fused.decode_vs_unsteered.noise:.1%})" in fused_line  # decode: spread 30 %, no ratio
    assert "1.000" not in fused_line and "%" in next(line for line in lines if line.startswith("unsteered"))
    assert "not possible: the map has a support" in table
    assert "within the noise of this machine (no finding): fused" in noise_line(rows)
