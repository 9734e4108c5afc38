"""Steering is a runtime property of a model: state_dict(), copy.deepcopy and pickle / torch.save of
a steered model give the unsteered model, in every mode, and the copy is independent."""

import copy
import io
import pickle

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_causal_lm, tiny_inputs

import act_fast as af

MODES = ["fold", "fused", "op"]


def maps_for(model, mode):
    norms = af.sites(model, "layernorm")
    if mode == "fold":
        return random_maps(model, norms, zero_bias=True, scale=0.9)
    sites = norms if mode == "fused" else norms + af.sites(model, "o_proj")
    return random_maps(model, sites, support=True, scale=0.9)


@pytest.fixture
def setup():
    model = tiny_causal_lm("llama")
    inputs = tiny_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(**inputs).logits
    return model, inputs, base, {k: v.clone() for k, v in model.state_dict().items()}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_while_steered_is_the_original(setup, mode):
    model, inputs, base, original = setup
    with af.steer(model, maps_for(model, mode), 0.8, mode=mode):
        assert not torch.equal(logits(model, inputs), base)
        state = model.state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in original), mode


@pytest.mark.parametrize("mode", MODES)
def test_deepcopy_is_an_unsteered_independent_model(setup, mode):
    model, inputs, base, original = setup
    with af.steer(model, maps_for(model, mode), 0.8, mode=mode):
        steered = logits(model, inputs)
        twin = copy.deepcopy(model)
        assert torch.equal(logits(twin, inputs), base)  # unsteered
        assert torch.equal(logits(model, inputs), steered)  # the original stays steered
        # independent: changing the copy's norm weight changes the copy only
        with torch.no_grad():
            dict(twin.named_modules())[af.sites(twin, "layernorm")[0]].weight.mul_(3.0)
        assert not torch.equal(logits(twin, inputs), base)
        assert torch.equal(logits(model, inputs), steered)
        # the copy can be steered on its own
        with af.steer(twin, maps_for(twin, mode), 0.8, mode=mode):
            pass
    assert torch.equal(logits(model, inputs), base)


@pytest.mark.parametrize("mode", MODES)
def test_pickle_and_torch_save_give_the_unsteered_model(setup, mode):
    model, inputs, base, original = setup
    with af.steer(model, maps_for(model, mode), 0.8, mode=mode):
        restored = pickle.loads(pickle.dumps(model))
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    for m in (restored, loaded):
        assert torch.equal(logits(m, inputs), base)
        assert all(torch.equal(m.state_dict()[k], original[k]) for k in original)
        assert not any("act_fast" in repr(h) for mod in m.modules() for h in mod._forward_hooks.values())
