"""Statistics collected apart merge whatever their calibrations (issue 23 item 1): exact counts,
moments, extremes and non-finite counts; quantiles within the stated bound; order of merging
mattering only within that bound."""

import math

import pytest
import torch

import act_fast as af
from act_fast.stats.rebucket import bucket_of_offset
from act_fast.ops.stats_reference import HistogramParams, bucket_index_ref

from tests.stats.test_stats_accuracy import order_statistic
from tests.tolerances import assert_close

LEVELS = torch.tensor([0.0, 1e-3, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0], dtype=torch.float64)


def hard_channels(n: int, seed: int = 0) -> torch.Tensor:
    """``[n, 6]`` float32: Cauchy-like heavy tails, a 40 % point mass at 3 plus noise, 1e4 + N(0, 1e-2),
    N(0, 1e-4), N(0, 1e4), a two-point distribution."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    heavy = z[:, 0] / torch.randn(n, generator=g, dtype=torch.float64).abs().clamp_min(1e-3)
    point = torch.where(torch.rand(n, generator=g) < 0.4, 3.0, z[:, 1])
    two = torch.where(torch.rand(n, generator=g) < 0.5, -2.5, 7.0)
    cols = [heavy, point, 1e4 + 1e-2 * z[:, 2], 1e-4 * z[:, 3], 1e4 * z[:, 4], two.to(torch.float64)]
    return torch.stack(cols, 1).float()


def collected(x: torch.Tensor, first_rows: int, batch: int = 500) -> af.ChannelStats:
    """One job's statistics: calibrated by its own first batch of ``first_rows`` rows."""
    stats = af.ChannelStats(x.shape[1]).update(x[:first_rows])
    for chunk in x[first_rows:].split(batch):
        stats.update(chunk)
    return stats


def assert_exact_parts(merged: af.ChannelStats, x: torch.Tensor) -> None:
    whole = af.ChannelStats(x.shape[1]).update(x)
    assert torch.equal(merged.count, whole.count) and merged.rows_seen == whole.rows_seen
    assert torch.equal(merged.min, whole.min) and torch.equal(merged.max, whole.max)
    for key in ("nan_count", "pos_inf_count", "neg_inf_count"):
        assert torch.equal(getattr(merged, key), getattr(whole, key))
    assert_close(merged.mean, whole.mean)
    assert_close(merged.var(), whole.var())
    assert torch.equal(merged.histogram.sum(1), merged.count)


@pytest.mark.parametrize("firsts", [(1, 400), (3000, 2), (50, 50)])
def test_halves_collected_apart_merge_within_the_bound(firsts):
    x = hard_channels(8000)
    x[17, 0], x[18, 1], x[19, 5] = math.nan, math.inf, -math.inf
    a = collected(x[:4000], firsts[0])
    b = collected(x[4000:], firsts[1])
    assert not torch.equal(a.calibration[1], b.calibration[1]) or not torch.equal(a.calibration[0], b.calibration[0])
    merged = af.ChannelStats(6).merge(a).merge(b)
    assert_exact_parts(merged, x)
    for c in range(6):
        values = x[:, c][torch.isfinite(x[:, c])]
        truth = order_statistic(values[:, None], LEVELS)[:, 0]
        est = merged.quantile(LEVELS)[:, c]
        bound = merged.quantile_error_bound(truth[:, None].expand(-1, 6))[:, c]
        assert torch.all((est - truth).abs() <= bound), (c, (est - truth).abs() / bound)
    # The bound is the coarser side's: useful when both sides calibrated on rows with spread (a
    # one-row first batch scales 1e4 + N(0, 1e-2) by |c| = 1e4).
    if min(firsts) > 1:
        assert merged.quantile_error_bound(torch.full((6,), 1e4, dtype=torch.float64))[2] < 1e-3


def test_merge_order_matters_only_within_the_bound():
    """Associativity and commutativity within the bound: three jobs with three calibrations."""
    x = hard_channels(6000, seed=2)
    parts = [collected(x[:2000], 1), collected(x[2000:4000], 700), collected(x[4000:], 5)]

    def fresh(i):
        return af.ChannelStats.from_state_dict(parts[i].state_dict())

    left = fresh(0).merge(fresh(1)).merge(fresh(2))
    right = fresh(0).merge(fresh(1).merge(fresh(2)))
    swapped = fresh(2).merge(fresh(0)).merge(fresh(1))
    assert torch.equal(left.calibration[0], right.calibration[0]) and torch.equal(left.calibration[1], swapped.calibration[1])
    for m in (left, right, swapped):
        assert_exact_parts(m, x)
    truth = order_statistic(x, LEVELS)
    for one, other in ((left, right), (left, swapped)):
        gap = (one.quantile(LEVELS) - other.quantile(LEVELS)).abs()
        assert torch.all(gap <= one.quantile_error_bound(truth) + other.quantile_error_bound(truth))
        assert torch.all((one.quantile(LEVELS) - truth).abs() <= one.quantile_error_bound(truth))


def test_equal_calibrations_stay_exact():
    x = hard_channels(3000)
    a = collected(x[:1500], 100)
    b = af.ChannelStats(6).set_calibration(a).update(x[1500:])
    merged = af.ChannelStats(6).merge(a).merge(b)
    whole = af.ChannelStats(6).set_calibration(a).update(x)
    assert torch.equal(merged.histogram, whole.histogram)
    assert torch.equal(merged.merge_envelope[0], torch.zeros(6, dtype=torch.float64))


def test_bucket_of_offset_matches_the_update_layout():
    params = HistogramParams(5, -16, 16)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 300, generator=g, dtype=torch.float64) * torch.logspace(-6, 6, 300, dtype=torch.float64)).float()
    k = torch.tensor([0, -5, 7, 20], dtype=torch.int32)
    d = x.double()
    ref = bucket_index_ref(x.t(), params, torch.zeros(4), k).t()
    assert torch.equal(bucket_of_offset(d, k, params), ref)


def test_merge_still_refuses_other_parameters():
    with pytest.raises(ValueError, match="histogram parameters differ"):
        af.ChannelStats(2).update(torch.randn(3, 2)).merge(af.ChannelStats(2, mantissa_bits=6).update(torch.randn(3, 2)))
