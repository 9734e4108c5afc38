"""Derived queries (exact mode, cross moment, AUROC) and state round trips."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import act_fast as af


def pairwise_auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Brute force ``P(X > Y) + ½ P(X = Y)`` per channel over all pairs."""
    p, n = pos.double()[:, None, :], neg.double()[None, :, :]
    return ((p > n).double() + 0.5 * (p == n).double()).mean((0, 1))


def coupled_cross_moment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``E[Q_a(U) Q_b(U)]`` of the empirical step quantile functions, by repeating both sorted
    samples up to ``lcm(N_a, N_b)`` (then it is the mean of products of sorted pairs)."""
    lcm = math.lcm(a.shape[0], b.shape[0])
    sa = a.double().sort(0).values.repeat_interleave(lcm // a.shape[0], 0)
    sb = b.double().sort(0).values.repeat_interleave(lcm // b.shape[0], 0)
    return (sa * sb).mean(0)


@pytest.fixture
def pair():
    s = torch.randn(60, 4) * torch.tensor([1.0, 2.0, 0.5, 1.0]) + torch.tensor([0.0, 1.0, -1.0, 0.0])
    t = torch.randn(45, 4) * 1.5 + 0.5
    s[:, 3] = torch.randint(-2, 3, (60,)).float()  # ties
    t[:, 3] = torch.randint(-2, 3, (45,)).float()
    return s, t


def test_exact_mode_quantile_is_torch_quantile(pair):
    s, _ = pair
    stats = af.ChannelStats(4, exact=True)
    for chunk in s.split(17):
        stats.update(chunk)
    q = torch.tensor([0.0, 0.1, 0.33, 0.5, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(stats.quantile(q), torch.quantile(s.double(), q, dim=0), rtol=1e-12, atol=1e-12)
    idx = (torch.ceil(q * 60).long() - 1).clamp(0, 59)
    assert torch.equal(stats.quantile(q, interpolate=False), s.double().sort(0).values[idx])
    assert torch.equal(stats.samples, s)


def test_exact_mode_drops_masked_rows_and_non_finite_values():
    x = torch.randn(20, 2)
    x[2, 0] = math.nan
    x[5, 1] = math.inf
    mask = torch.ones(20, dtype=torch.bool)
    mask[7] = False
    stats = af.ChannelStats(2, exact=True).update(x, mask)
    assert stats.samples.shape == (19, 2)
    for c, bad in ((0, 2), (1, 5)):
        keep = torch.ones(20, dtype=torch.bool)
        keep[[bad, 7]] = False
        torch.testing.assert_close(stats.quantile(0.3)[c], torch.quantile(x[keep, c].double(), 0.3), rtol=1e-12, atol=0)


def test_exact_cross_moment_equal_n_is_sorted_pairs(pair):
    s, t = pair
    a = af.ChannelStats(4, exact=True).update(s[:45])
    b = af.ChannelStats(4, exact=True).update(t)
    expected = (s[:45].double().sort(0).values * t.double().sort(0).values).mean(0)
    torch.testing.assert_close(a.cross_moment(b), expected, rtol=1e-12, atol=1e-12)


def test_exact_cross_moment_unequal_n_is_quantile_coupling(pair):
    s, t = pair
    a = af.ChannelStats(4, exact=True).update(s)
    b = af.ChannelStats(4, exact=True).update(t)
    torch.testing.assert_close(a.cross_moment(b), coupled_cross_moment(s, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.cross_moment(a), coupled_cross_moment(s, t), rtol=1e-12, atol=1e-12)


def test_histogram_cross_moment_within_quantile_bound():
    """Pointwise |Q̂ - Q| ≤ ε|Q| gives |E[Q̂_s Q̂_t] - E[Q_s Q_t]| ≤ (2ε + ε²) E|Q_s Q_t| (no value
    of this data lies in the zero bucket)."""
    s = torch.randn(3000, 3) * 2 + 5
    t = torch.randn(2000, 3).exp()
    a, b = af.ChannelStats(3).update(s), af.ChannelStats(3).update(t)
    eps = a.params.relative_error
    truth = coupled_cross_moment(s, t)
    bound = (2 * eps + eps * eps) * coupled_cross_moment(s, t).abs()
    assert torch.all((a.cross_moment(b) - truth).abs() <= bound)
    # Mixed modes agree on the same data up to the same bound.
    exact = af.ChannelStats(3, exact=True).update(t)
    assert torch.all((a.cross_moment(exact) - truth).abs() <= bound)


def test_exact_auroc_is_mann_whitney(pair):
    s, t = pair
    a = af.ChannelStats(4, exact=True).update(s)
    b = af.ChannelStats(4, exact=True).update(t)
    torch.testing.assert_close(a.auroc(b), pairwise_auroc(s, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.auroc(a), torch.full((4,), 0.5, dtype=torch.float64))


def test_histogram_auroc_within_tie_bound(pair):
    """One calibration on both sides: only pairs sharing a bucket are approximated (each side
    uniform on the bucket's support): error ≤ Σ_i p_s[i] p_t[i] (the ½ of uncalibrated days is
    gone: the two sides' supports may be clipped differently)."""
    s, t = pair
    a = af.ChannelStats(4).update(s)
    b = af.ChannelStats(4).set_calibration(a).update(t)
    ps = a.histogram.double() / 60
    pt = b.histogram.double() / 45
    bound = (ps * pt).sum(1) + 1e-12
    assert torch.all((a.auroc(b) - pairwise_auroc(s, t)).abs() <= bound)
    # Integer-valued channel: every tie is in one bucket and exact.
    torch.testing.assert_close(a.auroc(b)[3], pairwise_auroc(s, t)[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_state_dict_round_trip_through_safetensors(exact, tmp_path):
    x = torch.randn(77, 6)
    x[0, 0] = math.nan
    stats = af.ChannelStats(6, mantissa_bits=4, exp_min=-10, exp_max=10, exact=exact).update(x)
    save_file(stats.state_dict(), tmp_path / "s.safetensors")
    back = af.ChannelStats.from_state_dict(load_file(tmp_path / "s.safetensors"))
    assert torch.equal(back.histogram, stats.histogram)
    for name in ("count", "mean", "min", "max", "nan_count"):
        assert torch.equal(getattr(back, name), getattr(stats, name)), name
    assert torch.equal(back.var(), stats.var())
    assert torch.equal(back.quantile(0.3), stats.quantile(0.3))
    assert back.rows_seen == 77 and back.exact == exact
    # Loading into an existing object continues the stream.
    more = torch.randn(5, 6)
    target = af.ChannelStats(6, mantissa_bits=4, exp_min=-10, exp_max=10, exact=exact).load_state_dict(stats.state_dict())
    target.update(more)
    assert target.calibrated and torch.equal(target.calibration[0], stats.calibration[0])
    whole = af.ChannelStats(6, mantissa_bits=4, exp_min=-10, exp_max=10, exact=exact).set_calibration(stats)
    whole.update(torch.cat([x, more]))
    assert torch.equal(target.histogram, whole.histogram)
    torch.testing.assert_close(target.mean, whole.mean, rtol=1e-12, atol=1e-12)


def test_exact_merge_concatenates_samples(pair):
    s, t = pair
    a = af.ChannelStats(4, exact=True).update(s)
    a.merge(af.ChannelStats(4, exact=True).set_calibration(a).update(t))
    assert torch.equal(a.samples, torch.cat([s, t]))
    torch.testing.assert_close(a.quantile(0.5), torch.quantile(torch.cat([s, t]).double(), 0.5, dim=0), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- coupled covariance
def test_exact_coupled_covariance_is_centred_sorted_pairs(pair):
    s, t = pair
    a = af.ChannelStats(4, exact=True).update(s[:45])
    b = af.ChannelStats(4, exact=True).update(t)
    ss, ts = s[:45].double().sort(0).values, t.double().sort(0).values
    expected = ((ss - ss.mean(0)) * (ts - ts.mean(0))).mean(0)
    torch.testing.assert_close(a.coupled_covariance(b), expected, rtol=1e-12, atol=1e-14)
    # Unequal counts: the quantile coupling; consistent with the cross moment.
    c = af.ChannelStats(4, exact=True).update(s)
    torch.testing.assert_close(c.coupled_covariance(b), coupled_cross_moment(s, t) - c.mean * b.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c.coupled_covariance(c), c.var(), rtol=1e-12, atol=0)


def test_histogram_coupled_covariance_variance_matching():
    """Variance-matched: each side's own coupled variance is its exact variance; unmatched: the
    plain integral of the histogram quantile functions, whose error the matching reduces."""
    g = torch.Generator().manual_seed(8)
    s = torch.randn(3000, 3, generator=g) * torch.tensor([1.0, 0.1, 5.0]) + torch.tensor([0.0, 100.0, -3.0])
    t = torch.randn(2000, 3, generator=g).exp() + torch.tensor([0.0, 50.0, 1.0])
    s[:3, 0] = 300.0  # a few far values carry most of the variance of channel 0
    a, b = af.ChannelStats(3).update(s), af.ChannelStats(3).update(t)
    torch.testing.assert_close(a.coupled_covariance(a), a.var(), rtol=1e-12, atol=0)
    truth = af.ChannelStats(3, exact=True).update(s).coupled_covariance(af.ChannelStats(3, exact=True).update(t))
    matched, raw = a.coupled_covariance(b), a.coupled_covariance(b, match_variance=False)
    raw_own = a.coupled_covariance(a, match_variance=False)
    torch.testing.assert_close(matched, raw * (a.var() / raw_own).sqrt() * (b.var() / b.coupled_covariance(b, match_variance=False)).sqrt())
    assert torch.all((matched / truth - 1).abs() <= 2e-3)
    assert torch.all((matched / truth - 1).abs() <= (raw / truth - 1).abs())
    # Mixed modes: an exact side is used as is.
    exact_t = af.ChannelStats(3, exact=True).update(t)
    torch.testing.assert_close(a.coupled_covariance(exact_t), a.coupled_covariance(exact_t, match_variance=False) * (a.var() / raw_own).sqrt())


# ---------------------------------------------------------------------------- AUROC across calibrations
def bucket_supports(stats: af.ChannelStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed value interval of every bucket, clipped to the exact [min, max]: float64 ``[C, B]``."""
    centre, exp_offset = stats.calibration
    lo, hi = af.stats.histogram.bucket_bounds(stats.params, exp_offset)
    c = centre.double()[:, None]
    vmin, vmax = stats.min[:, None], stats.max[:, None]
    return (c + lo).clamp(vmin, vmax), (c + hi).clamp(vmin, vmax)


def overlap_bound(a: af.ChannelStats, b: af.ChannelStats) -> torch.Tensor:
    """``Σ p_i q_j`` over bucket pairs whose closed value intervals intersect: only those pairs can
    be ordered differently by the histograms than by the samples."""
    pa = a.histogram.double() / a.count.double()[:, None]
    pb = b.histogram.double() / b.count.double()[:, None]
    (la, ha), (lb, hb) = bucket_supports(a), bucket_supports(b)
    out = []
    for c in range(a.num_channels):
        i, j = pa[c].nonzero()[:, 0], pb[c].nonzero()[:, 0]
        meet = torch.maximum(la[c, i][:, None], lb[c, j][None, :]) <= torch.minimum(ha[c, i][:, None], hb[c, j][None, :])
        out.append((pa[c, i][:, None] * pb[c, j][None, :] * meet).sum())
    return torch.stack(out)


def test_histogram_auroc_with_different_calibrations_within_overlap_bound():
    g = torch.Generator().manual_seed(9)
    s = torch.randn(1200, 4, generator=g) * torch.tensor([1.0, 0.1, 3.0, 1.0]) + torch.tensor([0.0, 100.0, 1.0, 0.3])
    t = torch.randn(1000, 4, generator=g) * torch.tensor([2.0, 0.3, 1.0, 1.0]) + torch.tensor([0.5, 100.05, -2.0, 0.0])
    a, b = af.ChannelStats(4).update(s), af.ChannelStats(4).update(t)
    assert not torch.equal(a.calibration[0], b.calibration[0])
    truth = pairwise_auroc(s, t)
    assert torch.all((a.auroc(b) - truth).abs() <= overlap_bound(a, b) + 1e-12)
    assert torch.all((a.auroc(b) - truth).abs() <= 2e-3)
    torch.testing.assert_close(a.auroc(b) + b.auroc(a), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.auroc(a), torch.full((4,), 0.5, dtype=torch.float64), rtol=0, atol=1e-12)
    # Different resolutions too.
    c = af.ChannelStats(4, mantissa_bits=3, exp_min=-6, exp_max=10).update(t)
    assert torch.all((a.auroc(c) - truth).abs() <= overlap_bound(a, c) + 1e-12)


def test_histogram_auroc_integrates_the_interpolated_distributions():
    """The AUROC of the two distributions whose quantile functions the histograms interpolate:
    equal to P(Q̂_s(U) > Q̂_t(V)) + ½ P(=) over fine independent level grids."""
    g = torch.Generator().manual_seed(10)
    s = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 0.5, 2.0])
    t = torch.randn(400, 3, generator=g) * torch.tensor([1.5, 0.5, 1.0]) + torch.tensor([0.4, 0.0, -1.0])
    t[:, 1] = torch.randint(-2, 3, (400,), generator=g).float() * 0.25  # point masses
    a, b = af.ChannelStats(3).update(s), af.ChannelStats(3).update(t)
    n = 20_000
    qa = a.quantile_function(n).t().contiguous()
    qb = b.quantile_function(n).t().sort(1).values.contiguous()
    below = torch.searchsorted(qb, qa, side="left").double()
    not_above = torch.searchsorted(qb, qa, side="right").double()
    grid = ((below + not_above) / 2).mean(1) / n
    assert torch.all((a.auroc(b) - grid).abs() <= 2.0 / n)


def test_histogram_auroc_separated_and_tied():
    lo = torch.randn(200, 2)
    hi = lo + 100.0
    a, b = af.ChannelStats(2).update(hi), af.ChannelStats(2).update(lo)
    assert a.auroc(b).tolist() == [1.0, 1.0] and b.auroc(a).tolist() == [0.0, 0.0]
    const = af.ChannelStats(2).update(torch.full((10, 2), 3.0))
    other = af.ChannelStats(2).set_calibration(torch.tensor([1.0, -5.0]), torch.tensor([4, -3])).update(torch.full((7, 2), 3.0))
    assert const.auroc(other).tolist() == [0.5, 0.5]
