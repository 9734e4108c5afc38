"""Accuracy of ChannelStats against float64 torch: moments, extremes, quantiles, merges."""

import math

import pytest
import torch

import act_fast as af
from act_fast.ops import set_backend

LEVELS = torch.tensor([0.0, 1e-3, 0.005, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.995, 0.999, 1.0], dtype=torch.float64)


def order_statistic(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Generalised inverse CDF ``x_(⌈qN⌉)`` per channel: ``x [N, C]`` → ``[len(q), C]`` float64."""
    n = x.shape[0]
    idx = (torch.ceil(q * n).long() - 1).clamp(0, n - 1)
    return x.double().sort(0).values[idx]


def distributions(n: int) -> dict[str, torch.Tensor]:
    """Each entry ``[n, 3]`` float32."""
    g = torch.Generator().manual_seed(1)
    normal = torch.randn(n, 3, generator=g, dtype=torch.float64)
    chi = torch.randn(n, 3, generator=g, dtype=torch.float64).square() + torch.randn(n, 3, generator=g, dtype=torch.float64).square()
    student = normal / (chi / 2.0).sqrt()
    point_mass = torch.where(torch.rand(n, 3, generator=g) < 0.4, 0.0, normal)
    outliers = torch.randn(n, 3, generator=g, dtype=torch.float64)
    outliers[torch.randperm(n, generator=g)[:3], :] = 3000.0
    spanning = normal * torch.logspace(-4, 4, 3, dtype=torch.float64)
    return {
        "gaussian": normal * torch.tensor([1.0, 0.01, 50.0]) + torch.tensor([0.0, 1.0, -20.0]),
        "student_t2": student,
        "log_normal": normal.exp(),
        "zero_plus_normal": point_mass,
        "outliers": outliers,
        "spanning_1e-4_1e4": spanning,
    }


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_moments_match_float64(backend, device):
    """Mean within 1e-6 standard deviations, variance within 1e-5 relative, extremes exact, including
    a 1e4 + N(0, 1e-2) channel; data fed in several updates."""
    rows = 4096 if backend == "torch" else 64
    x64 = torch.randn(rows, 5, dtype=torch.float64)
    x64[:, 0] = 1e4 + 1e-2 * x64[:, 0]
    x64[:, 1] = x64[:, 1] * 1e-3 - 7.0
    x64[:, 2] = x64[:, 2].exp() * 100.0
    x = x64.float().to(device)
    truth = x.double()
    previous = set_backend(backend)
    try:
        stats = af.ChannelStats(5, device)
        for chunk in x.split(rows // 4 + 3):
            stats.update(chunk)
    finally:
        set_backend(previous)
    std = truth.std(0, unbiased=False)
    assert torch.all((stats.mean - truth.mean(0)).abs() <= 1e-6 * std)
    assert torch.all((stats.var() / truth.var(0, unbiased=False) - 1).abs() <= 1e-5)
    assert torch.all((stats.var(unbiased=True) / truth.var(0, unbiased=True) - 1).abs() <= 1e-5)
    assert torch.equal(stats.min, truth.amin(0)) and torch.equal(stats.max, truth.amax(0))
    assert torch.equal(stats.count, torch.full((5,), rows, dtype=torch.int64, device=device))


def test_non_finite_values_are_counted_apart():
    x = torch.randn(100, 4)
    x[3, 0], x[4, 0], x[5, 0], x[6, 1] = math.nan, math.inf, -math.inf, math.nan
    x[:, 3] = math.nan
    stats = af.ChannelStats(4).update(x)
    finite = x[:, 0][torch.isfinite(x[:, 0])].double()
    assert stats.count.tolist() == [97, 99, 100, 0]
    assert stats.nan_count.tolist() == [1, 1, 0, 100]
    assert stats.pos_inf_count.tolist() == [1, 0, 0, 0] and stats.neg_inf_count.tolist() == [1, 0, 0, 0]
    torch.testing.assert_close(stats.mean[0], finite.mean(), rtol=1e-12, atol=0)
    assert stats.max[0] == finite.max() and stats.min[0] == finite.min()
    assert torch.isnan(stats.mean[3]) and torch.isnan(stats.quantile(0.5)[3])
    assert int(stats.histogram[0].sum()) == 97 and int(stats.histogram[3].sum()) == 0


@pytest.mark.parametrize("name", list(distributions(8)))
def test_quantiles_within_documented_bound(name):
    """The true quantile lies in the reported bucket and the estimate is within the documented
    bound 2^-m·|Q − c| + 2^(E_lo+k+1) (+ float32 rounding of x − c) at the default resolution."""
    x = distributions(20_000)[name].float()
    stats = af.ChannelStats(3).update(x)
    truth = order_statistic(x, LEVELS)
    lo, hi = stats.quantile_bounds(LEVELS)
    assert torch.all((lo <= truth) & (truth <= hi))
    est = stats.quantile(LEVELS)
    assert torch.all((est - truth).abs() <= stats.quantile_error_bound(truth))
    assert torch.equal(est[0], x.double().amin(0)) and torch.equal(est[-1], x.double().amax(0))
    assert torch.all(est[1:] >= est[:-1])


def test_point_mass_at_the_centre_is_reported_within_the_zero_bucket():
    """40 % exact zeros: the median calibration puts the centre at 0; levels inside the point mass
    report the centre exactly without interpolation, within the zero bucket's half-width with it.
    (Before calibration existed the zero bucket was the point 0; it is now the interval
    [c − 2^(E_lo+k), c + 2^(E_lo+k)].)"""
    x = distributions(5000)["zero_plus_normal"].float()
    stats = af.ChannelStats(3).update(x)
    centre, exp_offset = stats.calibration
    assert torch.equal(centre, torch.zeros(3))
    frac_neg = (x < 0).double().mean(0)
    frac_zero = (x == 0).double().mean(0)
    inside = (frac_neg + frac_zero / 2).clamp(0, 1)
    assert torch.all(stats.quantile(inside.tolist(), interpolate=False).diagonal() == 0.0)
    half_width = torch.ldexp(torch.ones(3, dtype=torch.float64), (exp_offset + stats.params.exp_min).double())
    assert torch.all(stats.quantile(inside.tolist()).diagonal().abs() <= half_width)


def test_bf16_data_is_lossless_at_bf16_resolution():
    """Uncentred layout (c = 0, k = 0) with m = 7: each bf16 value owns a bucket, and on the bf16
    value grid each bucket's support is that one value, so quantiles, interpolated or not, are
    the exact order statistics."""
    x = (torch.randn(5000, 4) * torch.tensor([1.0, 1e-3, 300.0, 1.0])).to(torch.bfloat16)
    x[:, 3] = x[:, 3].exp()
    stats = af.ChannelStats(4, mantissa_bits=7, exp_min=-24, exp_max=24)
    stats.set_calibration(torch.zeros(4), torch.zeros(4, dtype=torch.int32)).update(x)
    assert stats.value_grid == torch.bfloat16
    truth = order_statistic(x, LEVELS)
    assert torch.equal(stats.quantile(LEVELS, interpolate=False), truth)
    assert torch.equal(stats.quantile(LEVELS), truth)


def test_histogram_bit_identical_under_random_splits_and_merge_order():
    """Parts calibrated like the whole (a merge needs equal calibrations) merge to the same
    histogram in any order."""
    x = distributions(3000)["student_t2"].float()
    whole = af.ChannelStats(3).update(x)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        cuts = sorted(torch.randint(0, 3000, (5,), generator=g).tolist())
        pieces = [x[a:b] for a, b in zip([0] + cuts, cuts + [3000])]
        parts = [af.ChannelStats(3).set_calibration(whole).update(p) for p in pieces]
        order = torch.randperm(len(parts), generator=g).tolist()
        merged = af.ChannelStats(3)
        for i in order:
            merged.merge(parts[i])
        assert torch.equal(merged.histogram, whole.histogram)
        assert torch.equal(merged.count, whole.count)
        assert torch.equal(merged.min, whole.min) and torch.equal(merged.max, whole.max)
        torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged.var(), whole.var(), rtol=1e-12, atol=0)


def test_pending_int32_histogram_folds_before_overflow():
    """The int32 pending counts fold into int64 before 2^31 rows could overflow them."""
    stats = af.ChannelStats(2)
    stats.update(torch.ones(5, 2))
    stats._pending_rows = 2**31 - 3  # as if 2^31 - 3 rows were pending
    stats.update(torch.ones(5, 2))
    assert stats._pending_rows == 5
    assert stats.histogram.sum(1).tolist() == [10, 10]


def test_quantile_function_grid_and_shapes():
    x = torch.randn(4000, 3)
    stats = af.ChannelStats(3).update(x)
    grid = af.stats.midpoint_grid(16)
    qf = stats.quantile_function(16)
    assert qf.shape == (16, 3)
    torch.testing.assert_close(qf, stats.quantile(grid))
    assert stats.quantile(0.5).shape == (3,)
    assert stats.quantile([0.1, 0.9]).shape == (2, 3)


# ---------------------------------------------------------------------------- accuracy at scale
SCALE_CHANNELS = [
    "mean 1e4 sd 1e-2",
    "mean 100 sd 0.1",
    "mean 0 sd 1e-4",
    "mean 10 sd 0.1",
    "mean 1e4 sd 1",
    "mean 0 sd 1e4",
    "student_t2",
    "bimodal",
    "outliers (5 at 3000 sd)",
    "log_normal",
]


def scale_data(n: int, seed: int) -> torch.Tensor:
    """``[n, 10]`` float32: the channels of :data:`SCALE_CHANNELS`, mean / sd from 0 to 1e4."""
    g = torch.Generator().manual_seed(seed)

    def normal() -> torch.Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64)

    chi = normal().square() + normal().square()
    bimodal = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.3, -3.0 + 0.5 * normal(), 2.0 + normal())
    outliers = normal()
    outliers[torch.randperm(n, generator=g)[:5]] = 3000.0
    cols = [
        1e4 + 1e-2 * normal(),
        100.0 + 0.1 * normal(),
        1e-4 * normal(),
        10.0 + 0.1 * normal(),
        1e4 + normal(),
        1e4 * normal(),
        normal() / (chi / 2.0).sqrt(),
        bimodal,
        outliers,
        normal().exp(),
    ]
    return torch.stack(cols, 1).float()


def linear_act(src: af.ChannelStats, tgt: af.ChannelStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-AcT from centred moments: ``w = coupled_covariance / var_s``, ``b = m_t − w m_s``."""
    w = src.coupled_covariance(tgt) / src.var()
    return w, tgt.mean - w * src.mean


def streamed(x: torch.Tensor, chunk: int = 1000) -> af.ChannelStats:
    stats = af.ChannelStats(x.shape[1])
    for part in x.split(chunk):
        stats.update(part)
    return stats


@pytest.fixture(scope="module")
def scale_pair() -> tuple[torch.Tensor, torch.Tensor]:
    s = scale_data(20_000, seed=11)
    t = scale_data(15_000, seed=12) * 1.5 + 0.25
    t[:, 0] = scale_data(15_000, seed=13)[:, 0] * 1.0  # mean 1e4, sd 1e-2 on both sides (float32 spacing 1e-3)
    return s, t


def test_quantiles_at_scale_within_documented_bound(scale_pair):
    """Default resolution, channels with mean / sd from 0 to 1e4: every quantile within the bound
    of the exact order statistic; the bound is far below each channel's spread."""
    s, _ = scale_pair
    stats = streamed(s)
    levels = torch.linspace(0, 1, 201, dtype=torch.float64)
    truth = order_statistic(s, levels)
    est = stats.quantile(levels)
    bound = stats.quantile_error_bound(truth)
    assert torch.all((est - truth).abs() <= bound)
    lo, hi = stats.quantile_bounds(levels)
    assert torch.all((lo <= truth) & (truth <= hi))
    # Resolution relative to the spread: at the median the bound is below 0.5 % of the sd on every
    # channel (it was 2^-5 of |median|, 3e4 sd on the mean 1e4, sd 1e-2 channel).
    assert torch.all(stats.quantile_error_bound(truth[100]) <= 5e-3 * s.double().std(0))


@pytest.mark.slow
def test_streaming_linear_act_at_scale_matches_exact(scale_pair):
    """Streaming Linear-AcT weights within 1 % of the exact-mode ones on every channel, and the
    transported outputs ``w x + b`` within 0.01 target sd of the exact map's (RMS over the source
    samples)."""
    s, t = scale_pair
    w_exact, b_exact = linear_act(af.ChannelStats(10, exact=True).update(s), af.ChannelStats(10, exact=True).update(t))
    w, b = linear_act(streamed(s), streamed(t))
    assert torch.all((w / w_exact - 1).abs() <= 0.01), dict(zip(SCALE_CHANNELS, (w / w_exact - 1).abs().tolist()))
    diff = (w - w_exact) * s.double() + (b - b_exact)
    out_err = diff.square().mean(0).sqrt() / t.double().std(0)
    assert torch.all(out_err < 0.01), dict(zip(SCALE_CHANNELS, out_err.tolist()))


def test_tiny_spread_channel_median_within_bound():
    """N(0, 1e-4): the median is resolved (before calibration it came out as exactly 0, the zero
    bucket being |x| < 2^-16 = 0.15 sd)."""
    x = (torch.randn(20_000, 1, dtype=torch.float64) * 1e-4).float()
    stats = streamed(x)
    truth = order_statistic(x, torch.tensor([0.5], dtype=torch.float64))[0]
    est = stats.quantile(0.5)
    assert est.item() != 0.0
    bound = stats.quantile_error_bound(truth)
    assert (est - truth).abs().item() <= bound.item() <= 1e-3 * 1e-4


def centred_mean_of_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean((a − mean a)(b − mean b))`` per column with exactly rounded sums (math.fsum): float64."""
    out = []
    for c in range(a.shape[1]):
        x, y = a[:, c].tolist(), b[:, c].tolist()
        mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
        out.append(math.fsum((u - mx) * (v - my) for u, v in zip(x, y)) / len(x))
    return torch.tensor(out, dtype=torch.float64)


def test_centred_covariance_exact_mode_large_mean():
    """Mean 1e4, sd 1e-2: the exact-mode Linear-AcT weight from the centred cross moment equals the
    exactly rounded centred reference to 1e-9 (E[Q_s Q_t] − m_s m_t was 1.9e-4 off)."""
    g = torch.Generator().manual_seed(5)
    n = 4000
    s = (1e4 + 1e-2 * torch.randn(n, 3, generator=g, dtype=torch.float64)).float()
    t = (1e4 + 2e-2 * torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, -1.0, 0.5])).float()
    a, b = af.ChannelStats(3, exact=True).update(s), af.ChannelStats(3, exact=True).update(t)
    sd, td = s.double().sort(0).values, t.double().sort(0).values
    w_ref = centred_mean_of_products(sd, td) / centred_mean_of_products(sd, sd)
    w = a.coupled_covariance(b) / a.var()
    assert torch.all((w / w_ref - 1).abs() <= 1e-9)
    old = (a.cross_moment(b) - a.mean * b.mean) / a.var()
    assert torch.any((old / w_ref - 1).abs() > 1e-6)  # the uncentred form cancels catastrophically
    # Unequal counts: the quantile coupling, by repeating both sorted samples to lcm(N_s, N_t).
    b2 = af.ChannelStats(3, exact=True).update(t[:3000])
    t2 = t[:3000].double().sort(0).values.repeat_interleave(4, 0)
    s2 = sd.repeat_interleave(3, 0)
    assert torch.all((a.coupled_covariance(b2) / centred_mean_of_products(s2, t2) - 1).abs() <= 1e-9)
