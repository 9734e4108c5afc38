"""One API grammar — (model, batches…, sites, *, options) — with the first release's call forms
still working for one release under a DeprecationWarning; method-dependent default supports;
the model helpers every layer shares."""

import warnings

import pytest
import torch
from tiny_models import tiny_inputs, tiny_llama, tiny_unet

import act_fast as af
from act_fast.modeling import module_channels, site_channels


def prompts(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return [tiny_inputs(tiny_llama_model(), batch=4, generator=g) for _ in range(n)]


_MODEL = None


def tiny_llama_model():
    global _MODEL
    if _MODEL is None:
        _MODEL = tiny_llama()
    return _MODEL


def same(a, b):
    return all(torch.equal(a[k].histogram, b[k].histogram) and torch.equal(a[k].mean, b[k].mean) for k in a)


def test_collect_old_order_still_works_with_a_deprecation_warning():
    model, batches = tiny_llama_model(), prompts(1)
    names = af.sites(model, "post_layernorm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = af.collect(model, batches, names, pooling="last", progress=False)
    with pytest.warns(DeprecationWarning, match=r"collect\(model, sites, batches\) is deprecated"):
        old = af.collect(model, names, batches, progress=False, pooling="last")
    assert same(new, old)
    with pytest.warns(DeprecationWarning, match="passing pooling positionally"):
        positional = af.collect(model, batches, names, "last", progress=False)
    assert same(new, positional)


def test_a_string_is_a_preset_everywhere_and_one_module_name_is_deprecated():
    model, batches = tiny_llama_model(), prompts(2)
    by_preset = af.collect(model, batches, "post_layernorm", progress=False)
    assert list(by_preset) == af.sites(model, "post_layernorm")
    name = "model.layers.0.input_layernorm"
    with pytest.warns(DeprecationWarning, match=rf"sites='{name}' names a module, but a string is a preset name"):
        one = af.collect(model, batches, name, progress=False)
    assert list(one) == [name]
    with pytest.raises(ValueError, match="unknown site preset 'post_norm'"):
        af.collect(model, batches, "post_norm", progress=False)
    with pytest.raises(ValueError, match="sites is empty"):
        af.collect(model, batches, [], progress=False)


def test_fit_positional_options_are_deprecated_and_keywords_win():
    model, src, tgt = tiny_llama_model(), prompts(3), prompts(4)
    kw = af.fit(model, src, tgt, "post_layernorm", method="mean_act", support="q_all", incremental=False, progress=False)
    with pytest.warns(DeprecationWarning, match=r"passing method, support, incremental positionally to fit is deprecated"):
        old = af.fit(model, src, tgt, "post_layernorm", "mean_act", "q_all", False, progress=False)
    for site in kw:
        assert torch.equal(kw[site].bias, old[site].bias)


@pytest.mark.parametrize("method,default", [("linear_act", "q_0_100"), ("mean_act", "q_all"), ("gaussian_act", "q_all"), ("aura", "q_all"), ("mean_diff", "q_all")])
def test_default_support_follows_the_method_in_fit_map_and_fit(method, default):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g) + 1.0
    m = af.fit_map(s, t, method=method)
    assert (m.lo is None) == (default == "q_all")
    model, src, tgt = tiny_llama_model(), prompts(5), prompts(6)
    maps = af.fit(model, src, tgt, "post_layernorm", method=method, incremental=False, progress=False)
    assert maps.support == default
    assert all((mm.lo is None) == (default == "q_all") for mm in maps.values())


def test_mean_diff_is_never_masked():
    """A CAA / mean-difference vector is added to every value, as steering-vector libraries do."""
    model, src, tgt = tiny_llama_model(), prompts(7), prompts(8)
    maps = af.fit(model, src, tgt, "post_layernorm", method="mean_diff", progress=False)
    x = torch.randn(2, 3, 32) * 10.0  # far outside the source's range
    for site, m in maps.items():
        assert torch.equal(m.apply(x, 1.0), x + m.bias)


def test_empty_support_intervals_become_no_support_with_a_warning():
    s = torch.tensor([[1.0, 5.0, 2.0]])  # one sample: every quantile coincides
    t = torch.tensor([[2.0, 6.0, 4.0], [3.0, 7.0, 5.0]])
    with pytest.warns(UserWarning, match="3 of 3 channels have an empty support interval"):
        m = af.fit_map(s, t, method="mean_act", support="q_5_95")
    x = torch.tensor([[0.0, 100.0, -50.0]])
    assert torch.equal(m.apply(x, 1.0), x + m.bias)  # the map applies everywhere
    s2 = torch.tensor([[1.0, 5.0], [1.0, 6.0], [1.0, 7.0]])  # channel 0 constant
    with pytest.warns(UserWarning, match="1 of 2 channels"):
        m2 = af.fit_map(s2, torch.randn(3, 2), method="linear_act", support="q_0_100")
    assert m2.lo[1] < m2.hi[1] and m2.lo[0] < -1e38 and m2.hi[0] > 1e38


def test_a_source_channel_without_finite_values_is_named():
    s = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]])
    with pytest.raises(ValueError, match=r"source has channels with no finite value \(all NaN/Inf or no data\): \[1\]"):
        af.fit_map(s, torch.randn(3, 2))


def test_site_channels_from_types_then_by_probing():
    model = tiny_llama_model()
    sites = ["model.layers.0.input_layernorm", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp", "model.layers.1"]
    assert site_channels(model, sites) == {sites[0]: 32, sites[1]: 32, sites[2]: None, sites[3]: None}
    assert site_channels(model, sites, tiny_inputs(model)) == dict.fromkeys(sites, 32)
    unet = tiny_unet()
    block = "down_blocks.1"  # returns (hidden_states [B, 16, H, W], residuals)
    assert module_channels(dict(unet.named_modules())[block]) is None
    assert site_channels(unet, [block], tiny_inputs(unet))[block] == 16  # conv features: channels on dim 1
