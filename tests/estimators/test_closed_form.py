"""fit_map: hand-computed expectations for every method, exact vs streaming, degenerate input."""

import numpy as np
import pytest
import torch

import act_fast as af
from act_fast import ChannelStats
from act_fast.estimators import fit_map, formulas, support_levels
from tiny_models import tiny_llama


def test_linear_act_is_the_sorted_pair_regression():
    s = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    t = torch.tensor([[10.0], [30.0], [20.0], [40.0]])  # sorted: 10, 20, 30, 40
    m = fit_map(s, t)
    assert m.weight.tolist() == [10.0] and m.bias.tolist() == [0.0]
    assert m.lo.tolist() == [1.0] and m.hi.tolist() == [4.0]  # Linear-AcT's default support: the source's [min, max]
    assert fit_map(s, t, support="q_all").lo is None


def test_linear_act_matches_least_squares_on_sorted_pairs():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(50, 7, generator=g) * torch.linspace(0.5, 3.0, 7) + 1.0
    t = torch.randn(50, 7, generator=g).exp()
    m = fit_map(s, t)
    for c in range(7):
        slope, intercept = np.polyfit(np.sort(s[:, c].double().numpy()), np.sort(t[:, c].double().numpy()), 1)
        assert m.weight[c].item() == pytest.approx(slope, rel=1e-5)
        assert m.bias[c].item() == pytest.approx(intercept, rel=1e-5, abs=1e-5)


def test_linear_act_unequal_counts_uses_the_quantile_coupling():
    # Q_s = 0 on (0, ½], 1 on (½, 1]; Q_t = 0, 1, 2, 3 on quarters. E[Q_s Q_t] = (2 + 3) / 4.
    s = torch.tensor([[0.0], [1.0]])
    t = torch.tensor([[3.0], [0.0], [2.0], [1.0]])
    m = fit_map(s, t)
    assert m.weight.item() == pytest.approx(2.0) and m.bias.item() == pytest.approx(0.5)
    # Repeating every source sample keeps its quantile function: the same map with equal counts.
    m2 = fit_map(s.repeat_interleave(2, 0), t)
    assert m2.weight.item() == pytest.approx(2.0) and m2.bias.item() == pytest.approx(0.5)


def test_zero_spread_source_channel():
    s = torch.tensor([[5.0, 1.0], [5.0, 2.0], [5.0, 3.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 2.0], [6.0, 3.0]])
    for method in ("linear_act",):
        with pytest.warns(UserWarning, match="1 of 2 channels have an empty support interval"):
            m = fit_map(s, t, method=method)
        assert m.weight[0].item() == 1.0 and m.bias[0].item() == pytest.approx(3.0 - 5.0)
        assert m.weight[1].item() == pytest.approx(1.0) and m.bias[1].item() == pytest.approx(0.0, abs=1e-6)


def test_mean_and_gaussian_act_with_std_mask():
    s = torch.tensor([[1.0, 7.0, 0.0], [3.0, 7.0, 2.0]])  # means 2, 7, 1; unbiased stds √2, 0, √2
    t = torch.tensor([[4.0, 1.0, 5.0], [10.0, 3.0, 5.0]])  # means 7, 2, 5; unbiased stds 3√2, √2, 0
    mean = fit_map(s, t, method="mean_act")
    assert mean.weight.tolist() == [1.0, 1.0, 1.0]
    assert mean.bias.tolist() == [5.0, 0.0, 0.0]  # channels 1 and 2 masked: identity
    gauss = fit_map(s, t, method="gaussian_act")
    assert gauss.weight[0].item() == pytest.approx(3.0) and gauss.bias[0].item() == pytest.approx(7.0 - 3.0 * 2.0)
    assert gauss.weight[1:].tolist() == [1.0, 1.0] and gauss.bias[1:].tolist() == [0.0, 0.0]
    # The formula without the mask (std_eps must be ≥ 0, so call it directly): never NaN.
    m_s, m_t = s.double().mean(0), t.double().mean(0)
    std_s, std_t = s.double().std(0), t.double().std(0)
    w, b = formulas.gaussian_act(m_s, std_s, m_t, std_t, torch.ones(3, dtype=torch.bool), formulas.has_spread(s.double().var(0), m_s))
    assert w[1].item() == 1.0 and b[1].item() == pytest.approx(2.0 - 7.0)  # σ_s = 0: shift only
    assert w[2].item() == 0.0 and b[2].item() == pytest.approx(5.0)  # σ_t = 0: collapse


def test_mean_diff_has_no_mask():
    s = torch.tensor([[1.0, 7.0], [3.0, 7.0]])
    t = torch.tensor([[4.0, 1.0], [10.0, 3.0]])
    m = fit_map(s, t, method="mean_diff")
    assert m.weight.tolist() == [1.0, 1.0] and m.bias.tolist() == [5.0, -5.0]


def test_aura_auroc_dampening():
    s = torch.tensor([[5.0, 0.0, 1.0, 1.0], [6.0, 1.0, 3.0, 2.0]])
    t = torch.tensor([[1.0, 5.0, 2.0, 1.0], [2.0, 6.0, 0.0, 2.0]])
    m = fit_map(s, t, method="aura")
    # AUROCs: 1 (separable, source higher) → 0; 0 (source lower) → 1; 3/4 → 0.5; 1/2 (identical) → 1.
    assert m.weight.tolist() == pytest.approx([0.0, 1.0, 0.5, 1.0])
    assert m.bias.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("method", ["linear_act", "mean_act", "gaussian_act", "aura", "mean_diff"])
def test_degenerate_channels_never_give_nan(method):
    s = torch.tensor([[0.0, 2.0, 1e4, 1.0]] * 3)
    t = torch.tensor([[0.0, 2.0, 1e4, 1.0], [0.0, 2.0, 1e4, 5.0], [0.0, 2.0, 1e4, 9.0]])
    for src, tgt in ((s, t), (s[:1], t[:1])):
        if method == "mean_diff":  # takes no support
            m = fit_map(src, tgt, method=method)
        else:
            with pytest.warns(UserWarning, match="4 of 4 channels have an empty support interval"):  # constant source channels
                m = fit_map(src, tgt, method=method, support="q_5_95")
        for v in m.tensors().values():
            assert torch.isfinite(v).all()


@pytest.mark.parametrize("support", ["q_0_100", "q_0.5_99.5", "q_1_99", "q_2_98", "q_5_95", "q_10_90", "q_20_80", "q_30_70", "q_40_60", (0.25, 0.6)])
def test_exact_support_follows_torch_quantile(support):
    s = torch.randn(37, 5)
    m = fit_map(s, torch.randn(41, 5), support=support)
    lo_level, hi_level = support_levels(support)
    torch.testing.assert_close(m.lo, torch.quantile(s.double(), lo_level, dim=0).float())
    torch.testing.assert_close(m.hi, torch.quantile(s.double(), hi_level, dim=0).float())


def test_streaming_linear_act_agrees_with_exact():
    """Default histogram resolution: Linear-AcT weights within 1 % of exact ones (the documented goal;
    measured ~0.1 %), support bounds within the histogram's documented quantile bound."""
    g = torch.Generator().manual_seed(3)
    C = 6
    s = torch.randn(4000, C, generator=g) * torch.linspace(0.2, 5.0, C) + torch.linspace(-3, 3, C)
    t = torch.randn(3000, C, generator=g).mul(0.7).exp() * 2.0 - 1.0
    exact = fit_map(s, t, support="q_5_95")
    src = ChannelStats(C).update(s)
    stream = fit_map(src, ChannelStats(C).update(t), support="q_5_95")
    torch.testing.assert_close(stream.weight, exact.weight, rtol=0.01, atol=0.0)
    # Moments are exact in both modes, so the bias error is the weight error times m_s.
    torch.testing.assert_close(stream.bias.double(), t.double().mean(0) - stream.weight.double() * s.double().mean(0), rtol=1e-5, atol=1e-5)
    # The bound is for the order statistic of rank ⌈uN⌉; torch.quantile interpolates between that
    # one and its neighbour, so allow one sample gap on top.
    for got, want, level in ((stream.lo, exact.lo, 0.05), (stream.hi, exact.hi, 0.95)):
        order = s.sort(0).values
        k = int(torch.ceil(torch.tensor(level * s.shape[0]))) - 1
        gap = (order[k + 1] - order[k - 1]).abs().double()
        assert bool(((got.double() - want.double()).abs() <= src.quantile_error_bound(want.double()[None])[0] + gap).all())
    for method in ("mean_act", "gaussian_act", "mean_diff"):  # moments are exact in both modes
        torch.testing.assert_close(fit_map(ChannelStats(C).update(s), ChannelStats(C).update(t), method=method).weight, fit_map(s, t, method=method).weight)


def test_bad_input():
    s, t = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="unknown method 'linear'"):
        fit_map(s, t, method="linear")
    with pytest.raises(ValueError, match="unknown support 'q_3_97'"):
        fit_map(s, t, support="q_3_97")
    with pytest.raises(ValueError, match=r"support levels must satisfy 0 <= lo < hi <= 1, got \(0.9, 0.1\)"):
        fit_map(s, t, support=(0.9, 0.1))
    with pytest.raises(ValueError, match="source has 3 channels but target has 2"):
        fit_map(s, torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"target must be \[N, C\] samples .* got shape \[5, 3, 1\]"):
        fit_map(s, t[..., None])
    with pytest.raises(ValueError, match="source has no samples"):
        fit_map(torch.randn(0, 3), t)
    with pytest.raises(TypeError, match="source must be floating-point"):
        fit_map(torch.ones(4, 3, dtype=torch.int64), t)


@pytest.mark.parametrize("std_eps", [float("nan"), -1e-4, float("inf"), "1e-4", None])
def test_std_eps_must_be_a_finite_non_negative_number(std_eps):
    s, t = torch.randn(20, 3), torch.randn(20, 3) + 1
    for method in ("mean_act", "gaussian_act", "linear_act"):
        with pytest.raises((ValueError, TypeError), match="std_eps"):
            fit_map(s, t, method=method, std_eps=std_eps)
    model = tiny_llama()
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.int64)}
    with pytest.raises((ValueError, TypeError), match="std_eps"):
        af.fit(model, [batch], [batch], ["model.layers.0.input_layernorm"], method="gaussian_act", std_eps=std_eps)


def test_std_eps_zero_masks_only_constant_channels():
    s = torch.tensor([[1.0, 7.0, 0.0], [3.0, 7.0, 2.0]])
    t = torch.tensor([[4.0, 1.0, 5.0], [10.0, 3.0, 5.0]])
    m = fit_map(s, t, method="gaussian_act", std_eps=0.0)
    assert m.weight.tolist() == pytest.approx([3.0, 1.0, 1.0]) and m.bias[1:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("support", ["q_0_100", "q_5_95", (0.1, 0.9)])
def test_mean_diff_takes_no_support(support):
    s, t = torch.randn(20, 3), torch.randn(20, 3) + 1
    with pytest.raises(ValueError, match="mean_diff.*no support"):
        fit_map(s, t, method="mean_diff", support=support)
    model = tiny_llama()
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.int64)}
    with pytest.raises(ValueError, match="mean_diff.*no support"):
        af.fit(model, [batch], [batch], ["model.layers.0.input_layernorm"], method="mean_diff", support=support)
    assert fit_map(s, t, method="mean_diff", support="q_all").lo is None  # "no support" said explicitly is fine
