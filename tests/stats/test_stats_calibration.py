"""Calibration of the centred histogram: the rule and its fallbacks, the explicit API, merging,
serialisation and the errors."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import act_fast as af
from act_fast.ops.stats_reference import HistogramParams, calibrate_ref

PARAMS = HistogramParams()


def floor_log2(v: torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.log2(v.double())).to(torch.int32)


def test_rule_is_lower_median_and_mean_absolute_deviation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(101, 4, generator=g) * torch.tensor([1.0, 1e-4, 0.1, 30.0]) + torch.tensor([0.0, 0.0, 100.0, -1e4])
    x[5, 0] = math.nan  # dropped: 100 finite values, lower median = 50th smallest
    centre, exp_offset = calibrate_ref(x, PARAMS)
    for c in range(4):
        v = x[:, c][torch.isfinite(x[:, c])]
        median = v.sort().values[(v.numel() - 1) // 2]
        assert centre[c] == median
        spread = (v.double() - median.double()).abs().mean()
        assert exp_offset[c] == floor_log2(spread)
    assert centre.dtype == torch.float32 and exp_offset.dtype == torch.int32


def test_row_mask_and_non_finite_values_are_ignored():
    x = torch.randn(50, 3)
    mask = torch.ones(50, dtype=torch.bool)
    mask[:10] = False
    x[:10] = 1e6  # masked rows
    x[20, 1] = math.inf
    centre, exp_offset = calibrate_ref(x, PARAMS, mask)
    expected = calibrate_ref(torch.cat([x[10:20], x[21:]]), PARAMS)  # channel 1 without row 20
    assert torch.equal(centre[[0, 2]], calibrate_ref(x[10:], PARAMS)[0][[0, 2]])
    assert centre[1] == expected[0][1] and exp_offset[1] == expected[1][1]


@pytest.mark.parametrize(
    "rows,expected_centre,expected_offset",
    [
        ([[3.5]], 3.5, 1),  # one row: s = |c|
        ([[-0.25], [-0.25], [-0.25]], -0.25, -2),  # constant: s = |c|
        ([[0.0], [0.0]], 0.0, 0),  # constant zero: s = 1
        ([[-0.0], [-0.0]], 0.0, 0),  # -0 becomes +0
        ([[math.nan], [math.inf]], 0.0, 0),  # no finite value: c = 0, k = 0
        ([[1e-40], [1e-40]], 0.0, PARAMS.exp_offset_range[0]),  # subnormal median: c = 0; s = 1e-40, k clamped
    ],
)
def test_fallbacks_are_finite(rows, expected_centre, expected_offset):
    centre, exp_offset = calibrate_ref(torch.tensor(rows), PARAMS)
    assert centre.item() == expected_centre and exp_offset.item() == expected_offset
    assert not torch.signbit(centre).item() or expected_centre < 0


def test_empty_batch_and_all_rows_masked():
    centre, exp_offset = calibrate_ref(torch.zeros(0, 3), PARAMS)
    assert centre.tolist() == [0.0] * 3 and exp_offset.tolist() == [0] * 3
    centre, exp_offset = calibrate_ref(torch.randn(4, 3), PARAMS, torch.zeros(4, dtype=torch.bool))
    assert centre.tolist() == [0.0] * 3 and exp_offset.tolist() == [0] * 3


def test_offset_is_clamped_to_the_normal_exponent_range():
    x = torch.tensor([[0.0, 0.0], [1e-38, 3e38], [-1e-38, -3e38]])
    _, exp_offset = calibrate_ref(x, PARAMS)
    lo, hi = PARAMS.exp_offset_range
    assert exp_offset.tolist() == [lo, hi]


def test_first_update_calibrates_from_its_batch():
    x = torch.randn(64, 5) * 0.1 + 100.0
    stats = af.ChannelStats(5)
    assert not stats.calibrated
    stats.update(x[:32]).update(x[32:])
    centre, exp_offset = stats.calibration
    expected = calibrate_ref(x[:32], PARAMS)
    assert torch.equal(centre, expected[0]) and torch.equal(exp_offset, expected[1])
    # A zero-row update does not calibrate.
    assert not af.ChannelStats(5).update(torch.zeros(0, 5)).calibrated


def test_one_row_first_batch_keeps_the_bounds():
    """A 1-row first batch falls back to s = |c|; quantiles of the many rows after it still meet
    the documented bound, and nothing is NaN or infinite."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5001, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.1, 1e-4, 3.0]) + torch.tensor([0.0, 100.0, 0.0, -7.0])
    x = x.float()
    stats = af.ChannelStats(4).update(x[:1])
    for chunk in x[1:].split(1000):
        stats.update(chunk)
    levels = torch.linspace(0, 1, 41, dtype=torch.float64)
    n = x.shape[0]
    truth = x.double().sort(0).values[(torch.ceil(levels * n).long() - 1).clamp(0, n - 1)]
    est = stats.quantile(levels)
    assert torch.isfinite(est).all() and torch.isfinite(stats.calibration[0]).all()
    assert torch.all((est - truth).abs() <= stats.quantile_error_bound(truth))
    lo, hi = stats.quantile_bounds(levels)
    assert torch.all((lo <= truth) & (truth <= hi))


def test_calibrate_counts_nothing_and_fixes_the_buckets():
    x = torch.randn(40, 3) + 5.0
    stats = af.ChannelStats(3).calibrate(x[:10])
    assert stats.calibrated and stats.rows_seen == 0
    with pytest.raises(ValueError, match="ChannelStats is empty"):
        stats.mean
    stats.update(x)
    assert torch.equal(stats.calibration[0], calibrate_ref(x[:10], PARAMS)[0])
    assert int(stats.count[0]) == 40


def test_calibration_property_returns_copies():
    stats = af.ChannelStats(2).update(torch.randn(5, 2))
    centre, exp_offset = stats.calibration
    centre += 1.0
    exp_offset += 1
    assert not torch.equal(stats.calibration[0], centre) and not torch.equal(stats.calibration[1], exp_offset)


def test_recalibrating_after_updates_is_refused():
    stats = af.ChannelStats(2).update(torch.randn(5, 2))
    with pytest.raises(ValueError, match="already calibrated and has seen 5 rows"):
        stats.calibrate(torch.randn(5, 2))
    with pytest.raises(ValueError, match="already calibrated"):
        stats.set_calibration(torch.zeros(2), torch.zeros(2, dtype=torch.int32))
    # An empty, calibrated object may be calibrated again.
    fresh = af.ChannelStats(2).calibrate(torch.randn(5, 2))
    fresh.calibrate(torch.randn(5, 2) + 3.0)
    assert fresh.calibration[0].min() > 1.0


def test_uncalibrated_calibration_query():
    with pytest.raises(ValueError, match="not calibrated yet"):
        af.ChannelStats(2).calibration


def test_set_calibration_from_stats_and_tensors():
    a = af.ChannelStats(3).update(torch.randn(10, 3) * 4.0 + 1.0)
    b = af.ChannelStats(3).set_calibration(a)
    assert torch.equal(b.calibration[0], a.calibration[0]) and torch.equal(b.calibration[1], a.calibration[1])
    c = af.ChannelStats(3).set_calibration(torch.tensor([1.0, -0.0, 2.0], dtype=torch.float64), torch.tensor([0, 3, -2]))
    centre, exp_offset = c.calibration
    assert centre.dtype == torch.float32 and exp_offset.dtype == torch.int32
    assert centre.tolist() == [1.0, 0.0, 2.0] and not torch.signbit(centre).any()


@pytest.mark.parametrize(
    "centre,exp_offset,error,match",
    [
        (torch.zeros(2), torch.zeros(3, dtype=torch.int32), ValueError, r"shape \[3\], got \[2\] and \[3\]"),
        (torch.zeros(3), torch.zeros(3), TypeError, "exp_offset integer"),
        (torch.tensor([0.0, math.nan, 1.0]), torch.zeros(3, dtype=torch.int32), ValueError, "must be finite"),
        (torch.tensor([0.0, 1e39, 1.0], dtype=torch.float64), torch.zeros(3, dtype=torch.int32), ValueError, "must be finite"),
        (torch.tensor([0.0, 1e-40, 1.0]), torch.zeros(3, dtype=torch.int32), ValueError, "subnormal"),
        (torch.zeros(3), torch.tensor([0, 112, 0]), ValueError, r"exp_offset must lie in \[-110, 111\].*got values in \[0, 112\]"),
    ],
)
def test_set_calibration_validates(centre, exp_offset, error, match):
    with pytest.raises(error, match=match):
        af.ChannelStats(3).set_calibration(centre, exp_offset)


def test_set_calibration_from_stats_with_other_parameters():
    with pytest.raises(ValueError, match="histogram parameters differ"):
        af.ChannelStats(3).set_calibration(af.ChannelStats(3, mantissa_bits=6).update(torch.randn(4, 3)))


def test_merge_rebuckets_different_calibrations_and_adopts_into_empty():
    s, t = torch.randn(30, 3), torch.randn(20, 3) + 10.0
    a, b = af.ChannelStats(3).update(s), af.ChannelStats(3).update(t)
    merged = af.ChannelStats(3).merge(a).merge(b)  # different calibrations: re-bucketed, not refused
    assert torch.equal(merged.count, torch.full((3,), 50)) and (merged.merge_envelope[0] > 0).all()
    empty = af.ChannelStats(3).merge(a)
    assert empty.calibrated and torch.equal(empty.calibration[0], a.calibration[0])
    assert torch.equal(empty.histogram, a.histogram)
    # Merging an empty, uncalibrated object changes nothing.
    before = a.histogram
    a.merge(af.ChannelStats(3))
    assert torch.equal(a.histogram, before) and a.calibrated


@pytest.mark.parametrize("exact", [False, True])
def test_state_dict_carries_the_calibration(exact, tmp_path):
    x = torch.randn(33, 4) * 0.01 + 1e4
    stats = af.ChannelStats(4, exact=exact).update(x)
    sd = stats.state_dict()
    assert sd["centre"].dtype == torch.float32 and sd["exp_offset"].dtype == torch.int32 and bool(sd["calibrated"])
    save_file(sd, tmp_path / "s.safetensors")
    back = af.ChannelStats.from_state_dict(load_file(tmp_path / "s.safetensors"))
    assert back.calibrated and back.value_grid == torch.float32
    for got, want in zip(back.calibration, stats.calibration):
        assert torch.equal(got, want)
    assert torch.equal(back.quantile(0.3), stats.quantile(0.3))
    # Uncalibrated, empty states round-trip as uncalibrated.
    assert not af.ChannelStats.from_state_dict(af.ChannelStats(4).state_dict()).calibrated


def test_load_state_dict_validates_the_calibration():
    sd = af.ChannelStats(4).update(torch.randn(9, 4)).state_dict()
    bad = dict(sd, exp_offset=torch.full((4,), 500, dtype=torch.int32))
    with pytest.raises(ValueError, match="exp_offset must lie in"):
        af.ChannelStats(4).load_state_dict(bad)
    with pytest.raises(ValueError, match="not calibrated but holds data"):
        af.ChannelStats(4).load_state_dict(dict(sd, calibrated=torch.tensor(False)))
    partial = dict(sd)
    del partial["centre"]
    with pytest.raises(ValueError, match="has .* but not all of"):
        af.ChannelStats(4).load_state_dict(partial)


def test_state_dict_without_calibration_loads_as_the_uncentred_layout():
    """State dicts written before calibration existed were bucketed with c = 0, k = 0."""
    x = torch.randn(50, 3) * 3.0
    old = af.ChannelStats(3).set_calibration(torch.zeros(3), torch.zeros(3, dtype=torch.int32)).update(x)
    sd = old.state_dict()
    for key in ("centre", "exp_offset", "calibrated", "dtypes_seen"):
        del sd[key]
    back = af.ChannelStats.from_state_dict(sd)
    assert back.calibrated and back.calibration[0].tolist() == [0.0] * 3 and back.calibration[1].tolist() == [0] * 3
    assert back.value_grid is None
    back.update(x)
    assert torch.equal(back.histogram, 2 * old.histogram)
