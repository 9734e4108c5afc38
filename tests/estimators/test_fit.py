"""fit() on tiny models built from configs: independent and incremental, LLM and UNet."""

import pytest
import torch

import act_fast as af
from act_fast.estimators.fitting import forward_order
from act_fast.maps import SteeringMaps
from tiny_models import tiny_llama, tiny_unet, unet_batches


def prompts(seed: int, n_batches: int = 3, batch: int = 4, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 100, (batch, T), generator=g)
        mask = torch.ones(batch, T, dtype=torch.int64)
        mask[0, :3] = 0  # left padding
        mask[1, 5:] = 0  # right padding
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


SITES = ["model.layers.0.post_attention_layernorm", "model.layers.0.input_layernorm", "model.layers.1.input_layernorm"]


def test_forward_order_differs_from_registration_order():
    model = tiny_llama()
    order = forward_order(model, SITES, prompts(0)[0])
    assert order == ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.layers.1.input_layernorm"]


@pytest.mark.parametrize("method", ["linear_act", "gaussian_act"])
def test_independent_fit_equals_fit_map_on_collected_stats(method):
    model = tiny_llama()
    src, tgt = prompts(1), prompts(2)
    maps = af.fit(model, src, tgt, SITES, method=method, incremental=False, progress=False)
    assert isinstance(maps, SteeringMaps) and list(maps) == SITES
    s = af.collect(model, src, SITES, progress=False, exact=True)
    t = af.collect(model, tgt, SITES, progress=False, exact=True)
    for site in SITES:
        expected = af.fit_map(s[site], t[site], method=method)  # the same default support
        assert expected.tensors().keys() == maps[site].tensors().keys()
        for name, v in expected.tensors().items():
            torch.testing.assert_close(getattr(maps[site], name), v)
    meta = maps.metadata()
    default_support = "q_0_100" if method == "linear_act" else "q_all"
    assert meta["method"] == method and meta["support"] == default_support and meta["pooling"] == "mean"
    assert meta["model_type"] == "llama" and len(meta["model_fingerprint"]) == 64


def test_incremental_fit_sees_earlier_sites_transported():
    model = tiny_llama()
    src, tgt = prompts(3), prompts(4)
    maps = af.fit(model, src, tgt, SITES, method="mean_act", support="q_all", progress=False)
    first, second = "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm"
    assert list(maps)[:2] == [first, second]
    # Site 1 by hand: collect with the first map applied (λ = 1) on both prompt sets.
    module = dict(model.named_modules())[first]
    handle = module.register_forward_hook(lambda m, a, out: maps[first].apply(out, 1.0))
    try:
        s = af.collect(model, src, [second], progress=False, exact=True)[second]
        t = af.collect(model, tgt, [second], progress=False, exact=True)[second]
    finally:
        handle.remove()
    torch.testing.assert_close(maps[second].bias, af.fit_map(s, t, method="mean_act").bias)
    independent = af.fit(model, src, tgt, SITES, method="mean_act", support="q_all", incremental=False, progress=False)
    torch.testing.assert_close(maps[first].bias, independent[first].bias)
    assert not torch.allclose(maps[second].bias, independent[second].bias)


def test_streaming_when_asked():
    model = tiny_llama()
    maps = af.fit(model, prompts(5), prompts(6), SITES[:1], exact=False, incremental=False, progress=False)
    assert maps[SITES[0]].num_channels == 32 and torch.isfinite(maps[SITES[0]].weight).all()


def test_fit_on_a_unet_pools_conv_features():
    unet = tiny_unet()
    g = torch.Generator().manual_seed(0)

    def batches(shift):
        return unet_batches(g, shift, batch=3, n_batches=2)

    sites = ["down_blocks.0.resnets.0", "mid_block.resnets.0"]
    maps = af.fit(unet, batches(1.0), batches(0.0), sites, method="gaussian_act", progress=False)
    assert maps.channels() == {"down_blocks.0.resnets.0": 8, "mid_block.resnets.0": 16}
    assert maps.model_type == "UNet2DConditionModel"


def test_bad_arguments():
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown method"):
        af.fit(model, prompts(0), prompts(1), SITES, method="nope")
    with pytest.raises(ValueError, match="fit needs batches on both sides"):
        af.fit(model, [], prompts(1), SITES)
    with pytest.raises(ValueError, match="unknown site 'model.layers.9.mlp'"):
        af.fit(model, prompts(0), prompts(1), ["model.layers.9.mlp"], incremental=False, progress=False)
    with pytest.raises(ValueError, match="unknown support"):
        af.fit(model, prompts(0), prompts(1), SITES, support="q_1_2")


def test_progress_is_one_bar_per_phase_and_quiet_off_a_terminal(capsys):
    """fit shows one bar for the whole fit (not one per collection pass), and nothing at all when
    stderr is not a terminal unless asked (pytest's capture is not a terminal)."""
    model = tiny_llama()
    src, tgt = prompts(1), prompts(2)
    af.fit(model, src, tgt, SITES, method="mean_act")
    capsys.readouterr()  # the first CPU op may build the compiled kernels and say so
    af.fit(model, src, tgt, SITES, method="mean_act")
    assert capsys.readouterr().err == ""
    af.fit(model, src, tgt, SITES, method="mean_act", progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "collect" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert all(line.lstrip().startswith("fit") for line in lines), lines[:5]
