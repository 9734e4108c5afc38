"""steer() on a tiny model of every supported type: effect, identity at λ = 0, per-row λ, exact
removal, modes agreeing, compile parity without recompiles, generate."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import CAUSAL_LM_TYPES, DIFFUSERS_FACTORIES, tiny_bert, tiny_causal_lm, tiny_inputs
from tiny_models import model_output as output
import tiny_models
from tolerances import assert_close

import act_fast as af

MODELS = list(CAUSAL_LM_TYPES) + ["bert"] + list(DIFFUSERS_FACTORIES)


def build(kind: str):
    if kind == "bert":
        return tiny_bert()
    if kind in CAUSAL_LM_TYPES:
        return tiny_causal_lm(kind)
    return getattr(tiny_models, kind)()




def steered_sites(model):
    """All norms in the blocks, plus the attention output projections (op mode)."""
    return af.sites(model, "layernorm") + af.sites(model, "o_proj")


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    model = build(request.param)
    inputs = tiny_inputs(model, batch=3, generator=torch.Generator().manual_seed(0))
    return request.param, model, inputs


def test_effect_identity_per_row_and_exact_removal(case):
    kind, model, inputs = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = output(model, inputs)
    maps = random_maps(model, steered_sites(model), support=True)
    with af.steer(model, maps, 0.0) as h:
        assert {h.modes[s] for s in af.sites(model, "o_proj")} == {"op"}
        assert_close(output(model, inputs), base)
        h.set_strength(1.0)
        full = output(model, inputs)
        assert (full - base).abs().max() > 1e-3, f"{kind}: steering had no effect"
        h.set_strength(torch.tensor([0.0, 1.0, 0.5]))
        rows = output(model, inputs)
        assert_close(rows[0], base[0])
        assert_close(rows[1], full[1])
        h.set_strength(0.5)
        assert_close(rows[2], output(model, inputs)[2])
        assert list(model.state_dict()) == list(before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{kind}: {k} not restored"
    torch.testing.assert_close(output(model, inputs), base, rtol=0, atol=0)


def test_fold_fused_op_agree(case):
    kind, model, inputs = case
    sites = af.sites(model, "layernorm")
    maps = random_maps(model, sites, zero_bias=True)  # foldable into any norm with an affine weight
    results = {}
    for mode in ("fused", "op"):
        with af.steer(model, maps, 0.8, mode=mode):
            results[mode] = output(model, inputs)
    assert_close(results["fused"], results["op"])
    with af.steer(model, maps, 0.8, mode="auto") as h:
        assert set(h.modes.values()) <= {"fold", "fused"}
        assert_close(output(model, inputs), results["op"])


@pytest.mark.slow
def test_compile_parity_without_recompiles(case):
    from torch._dynamo.testing import CompileCounterWithBackend

    kind, model, inputs = case
    maps = random_maps(model, steered_sites(model), support=True)
    with af.steer(model, maps, 0.5) as h:
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("eager")
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        for s in (0.5, 1.0, 0.0):
            h.set_strength(s)
            assert_close(output(compiled, inputs), output(model, inputs))
        assert counter.frame_count == 1, f"{kind}: a strength change recompiled"
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", CAUSAL_LM_TYPES)
def test_generate_at_strength_zero_equals_unsteered(kind):
    model = tiny_causal_lm(kind)
    model.generation_config.pad_token_id = 0
    inputs = tiny_inputs(model, batch=3, generator=torch.Generator().manual_seed(0))

    def generate():
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=4, do_sample=False)

    base = generate()
    with af.steer(model, random_maps(model, steered_sites(model), support=True, scale=2.0), 0.0) as h:
        torch.testing.assert_close(generate(), base, rtol=0, atol=0)
        h.set_strength(1.0)
        assert not torch.equal(generate(), base), f"{kind}: steering did not change any generated token"
