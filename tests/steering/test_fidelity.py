"""λ = 0 is the model, bit for bit, in half precision: every registered model type in bfloat16 and
float16, with norm weights far from 1 (so the norms' rounding order matters), in fold, fused and
op mode; unsteered rows of a per-row batch equal the unsteered run; generate() is token-identical.

Run on the reference / CPU path of the ops (what steering uses on CPU tensors)."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import CAUSAL_LM_TYPES, DIFFUSERS_FACTORIES, tiny_bert, tiny_causal_lm, tiny_inputs
from tiny_models import model_output as output
import tiny_models

import act_fast as af
from act_fast.integrations import FoldTarget, fold_target, norm_spec

MODELS = list(CAUSAL_LM_TYPES) + ["bert"] + list(DIFFUSERS_FACTORIES)
HALF = [torch.bfloat16, torch.float16]


def build(kind: str, dtype: torch.dtype):
    model = tiny_bert() if kind == "bert" else tiny_causal_lm(kind) if kind in CAUSAL_LM_TYPES else getattr(tiny_models, kind)()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            spec = norm_spec(module)
            if spec is not None and spec.weight is not None:  # far from 1: 0.25 … 4
                spec.weight.copy_(torch.exp(torch.empty(spec.weight.shape).uniform_(-1.4, 1.4, generator=g)))
            if spec is not None and spec.bias is not None:
                spec.bias.copy_(0.5 * torch.randn(spec.bias.shape, generator=g))
    return model.to(dtype)




def half_inputs(model, dtype, batch=3):
    inputs = tiny_inputs(model, batch=batch, generator=torch.Generator().manual_seed(0))
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def mode_maps(model, mode):
    """Maps every site of ``mode`` accepts: fold — the norms and attention output projections that
    have affine parameters, no support, no bias; fused — the norms with supports; op — norms and
    attention output projections."""
    norms = af.sites(model, "layernorm")
    if mode == "fold":
        modules = dict(model.named_modules())
        foldable = [s for s in norms + af.sites(model, "o_proj") if isinstance(fold_target(modules[s]), FoldTarget)]
        return random_maps(model, foldable, zero_bias=True, scale=0.9)
    sites = norms if mode == "fused" else norms + af.sites(model, "o_proj")
    return random_maps(model, sites, support=True, scale=0.9)


@pytest.fixture(scope="module", params=[(k, d) for k in MODELS for d in HALF], ids=lambda p: f"{p[0]}-{str(p[1])[6:]}")
def case(request):
    kind, dtype = request.param
    model = build(kind, dtype)
    inputs = half_inputs(model, dtype)
    return kind, model, inputs, output(model, inputs)


@pytest.mark.parametrize("mode", ["fold", "fused", "op"])
def test_lambda_zero_is_the_model_bit_for_bit(case, mode):
    kind, model, inputs, base = case
    with af.steer(model, mode_maps(model, mode), 0.0, mode=mode) as h:
        assert set(h.modes.values()) == {mode}
        steered = output(model, inputs)
        h.set_strength(1.0)
        moved = output(model, inputs)
    assert torch.equal(steered, base), f"{kind} {mode}: λ = 0 differs by {(steered.float() - base.float()).abs().max().item():.3g}"
    assert not torch.equal(moved, base), f"{kind} {mode}: λ = 1 had no effect"
    assert torch.equal(output(model, inputs), base)  # removed


@pytest.mark.parametrize("mode", ["fused", "op"])
def test_unsteered_rows_of_a_per_row_batch_are_the_model(case, mode):
    kind, model, inputs, base = case
    maps = mode_maps(model, mode)
    with af.steer(model, maps, torch.tensor([0.8, 0.0, 1.5]), mode=mode):
        rows = output(model, inputs)
    assert torch.equal(rows[1], base[1])
    assert not torch.equal(rows[0], base[0]) and not torch.equal(rows[2], base[2])
    other = random_maps(model, list(maps), support=True, seed=5, scale=0.9)
    with af.steer(model, {"a": maps, "b": other}, 1.0, mode=mode) as h:
        h.select(["a", None, "b"])
        rows = output(model, inputs)
    assert torch.equal(rows[1], base[1])


@pytest.mark.parametrize("dtype", HALF, ids=["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2"])
def test_generate_is_token_identical_at_lambda_zero(kind, dtype):
    model = build(kind, dtype)
    inputs = tiny_inputs(model, batch=2, generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    base = model.generate(**inputs, **kwargs)
    for mode in ("fold", "fused", "op"):
        with af.steer(model, mode_maps(model, mode), 0.0, mode=mode):
            assert torch.equal(model.generate(**inputs, **kwargs), base), f"{kind} {mode}"
    with af.steer(model, mode_maps(model, "fused"), torch.tensor([1.5, 0.0]), mode="fused"):
        rows = model.generate(**inputs, **kwargs)
    assert torch.equal(rows[1], base[1])
