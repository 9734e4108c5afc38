"""steer() as plan + install: the plan's modes and reasons, explain(), and the refusals built
from them; in-place op mode; the fused mode's fallback when dtypes differ; λ validation."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_causal_lm, tiny_inputs
from tolerances import assert_close

import act_fast as af
from act_fast.steering import plan
from act_fast.ops.eager import BODIES


@pytest.fixture(scope="module")
def llama():
    return tiny_causal_lm("llama")


@pytest.fixture(scope="module")
def inputs(llama):
    return tiny_inputs(llama, batch=3, generator=torch.Generator().manual_seed(0))


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_plan_picks_the_cheapest_mode_and_says_why(llama):
    norms, o_proj = af.sites(llama, "layernorm"), af.sites(llama, "o_proj")
    maps = {**random_maps(llama, norms, zero_bias=True), **random_maps(llama, o_proj, support=True)}
    plans = {p.site: p for p in plan(llama, af.SteeringMaps(maps))}
    assert {plans[s].mode for s in norms} == {"fold"} and not plans[norms[0]].refused
    assert {plans[s].mode for s in o_proj} == {"op"}
    assert plans[o_proj[0]].refused == {"fold": "the map has a support", "fused": "Linear is not a norm this package can fuse"}
    assert plans[o_proj[0]].explain() == f"{o_proj[0]}: op (fold refused: the map has a support; fused refused: Linear is not a norm this package can fuse)"
    # a bias on a norm without a bias parameter, or a per-row λ, rules out fold
    with_bias = random_maps(llama, norms)
    assert {p.mode for p in plan(llama, with_bias)} == {"fused"}
    assert plan(llama, with_bias)[0].refused["fold"] == "the map has a bias but the module has no bias parameter"
    assert plan(llama, random_maps(llama, norms, zero_bias=True), per_row=True)[0].refused["fold"] == "rows do not all share one map and λ"


def test_explain_and_forced_mode_refusals(llama):
    o_proj = af.sites(llama, "o_proj")
    with af.steer(llama, random_maps(llama, o_proj, support=True)) as h:
        assert h.explain().splitlines()[0].startswith(f"{o_proj[0]}: op (fold refused")
    with pytest.raises(ValueError, match=r"mode='fused' does not fit 2 site\(s\):\n  model.layers.0.self_attn.o_proj: Linear is not a norm"):
        af.steer(llama, random_maps(llama, o_proj), mode="fused")
    assert plan(llama, random_maps(llama, o_proj), mode="fold")[0].mode is None


def test_op_mode_writes_in_place_under_no_grad_and_matches(llama, inputs):
    sites = af.sites(llama, "o_proj") + af.sites(llama, "mlp_out")
    maps = random_maps(llama, sites, support=True)
    with af.steer(llama, maps, 0.7, mode="op"):
        with torch.no_grad():
            in_place = llama(**inputs).logits
        with torch.enable_grad():
            functional = llama(**inputs).logits.detach()
    assert torch.equal(in_place, functional)
    calls = []
    original = BODIES["affine_transport_out"]  # plain eager inference calls the op's body directly
    try:
        BODIES["affine_transport_out"] = lambda *a: calls.append(1) or original(*a)
        with af.steer(llama, maps, 0.7, mode="op"):
            logits(llama, inputs)
    finally:
        BODIES["affine_transport_out"] = original
    assert len(calls) == len(sites)


def test_in_place_is_refused_for_outputs_that_alias_inputs():
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(4, 4))
    x = torch.randn(2, 4)
    keep = x.clone()
    maps = af.SteeringMaps({"0": af.AffineMap(torch.full((4,), 2.0), torch.ones(4))})
    with af.steer(model, maps, 1.0), torch.no_grad():
        y = model(x)
    assert torch.equal(x, keep)  # Identity returns its input: never overwritten
    assert_close(y, model[1](2.0 * keep + 1.0))


def test_fused_falls_back_when_the_input_dtype_differs_from_the_norm(llama, inputs):
    """A Llama RMSNorm with float32 weight fed bfloat16 returns float32; the fused op would return
    bfloat16, so the site runs the module and the transport op instead."""
    norm_name = af.sites(llama, "layernorm")[0]
    norm = dict(llama.named_modules())[norm_name]
    x = torch.randn(2, 3, 32).to(torch.bfloat16)
    maps = random_maps(llama, [norm_name], support=True)
    expected = af.ops.affine_transport(norm(x), maps[norm_name].weight, maps[norm_name].bias, 0.6, maps[norm_name].lo, maps[norm_name].hi)
    with af.steer(llama, maps, 0.6, mode="fused"):
        y = norm(x)
    assert y.dtype == torch.float32 and torch.equal(y, expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), torch.tensor(float("nan")), torch.tensor([0.5, float("inf"), 0.0])])
def test_non_finite_strength_is_refused_everywhere(llama, bad):
    norms = af.sites(llama, "layernorm")
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    with pytest.raises(ValueError, match="finite"):
        af.steer(llama, random_maps(llama, norms, zero_bias=True), bad)
    with af.steer(llama, random_maps(llama, norms, support=True), 0.5, mode="fused") as h:
        with pytest.raises(ValueError, match="finite"):
            h.set_strength(bad)
    with af.steer(llama, random_maps(llama, norms, zero_bias=True), 0.5, mode="fold") as h:
        if not (isinstance(bad, torch.Tensor) and bad.ndim == 1):
            with pytest.raises(ValueError, match="finite"):
                h.set_strength(bad)
    after = llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing NaN was folded in
    with pytest.raises(ValueError, match="finite"):
        af.ops.affine_transport(torch.randn(3, 4), torch.ones(4), torch.zeros(4), bad if not isinstance(bad, torch.Tensor) or bad.ndim == 0 else bad)


def test_numpy_strengths_are_numbers(llama, inputs):
    np = pytest.importorskip("numpy")
    maps = random_maps(llama, af.sites(llama, "layernorm"), support=True)
    with af.steer(llama, maps, np.float32(0.5)) as h:
        a = logits(llama, inputs)
        h.set_strength(0.5)
        assert torch.equal(a, logits(llama, inputs))
    x = torch.randn(2, 4)
    assert torch.equal(af.ops.affine_transport(x, torch.ones(4) * 2, torch.zeros(4), np.float32(0.5)), x * 1.5)
