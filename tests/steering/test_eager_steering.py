"""Steering's hot path calls the ops' bodies in plain eager inference (act_fast.ops.eager) and
the custom ops wherever the dispatcher has work to do; both give the same outputs."""

import torch
from random_maps import random_maps
from tiny_models import tiny_causal_lm, tiny_inputs
from torch.utils._python_dispatch import TorchDispatchMode

import act_fast as af
from act_fast.ops.eager import BODIES


def test_steered_model_under_a_dispatch_mode_shows_the_act_fast_ops():
    model = tiny_causal_lm("llama")
    inputs = tiny_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with af.steer(model, random_maps(model, af.sites(model, "layernorm"), support=True), 0.5), torch.no_grad():
        plain = model(**inputs).logits
        with Log():
            logged = model(**inputs).logits
    assert torch.equal(plain, logged)
    assert any(name.startswith("act_fast.rms_norm_transport") for name in seen)


def test_grad_mode_records_autograd_and_equals_no_grad():
    model = tiny_causal_lm("llama")
    inputs = tiny_inputs(model, batch=2, generator=torch.Generator().manual_seed(1))
    with af.steer(model, random_maps(model, af.sites(model, "layernorm"), support=True), 0.5):
        with torch.no_grad():
            fast = model(**inputs).logits
        out = model(**inputs).logits  # the norms' weights require grad: through the custom ops
        assert out.grad_fn is not None
        out.sum().backward()
    assert torch.equal(fast, out.detach())
    assert all(m.weight.grad is not None for n, m in model.named_modules() if n in af.sites(model, "layernorm"))


def test_bodies_are_what_plain_inference_calls():
    model = tiny_causal_lm("llama")
    inputs = tiny_inputs(model, batch=2, generator=torch.Generator().manual_seed(2))
    sites = af.sites(model, "layernorm")
    calls = []
    original = BODIES["rms_norm_transport"]
    try:
        BODIES["rms_norm_transport"] = lambda *a: calls.append(1) or original(*a)
        with af.steer(model, random_maps(model, sites, support=True), 0.5, mode="fused"), torch.no_grad():
            model(**inputs)
    finally:
        BODIES["rms_norm_transport"] = original
    assert len(calls) == len(sites)
