"""Folded parameters written by others while steered (issue 21 item 1, docs/design.md §3):
load_state_dict replaces the originals (in either order with remove), any other write is refused by
name until the user says what remove() should leave."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_causal_lm, tiny_inputs

import act_fast as af


@pytest.fixture
def setup():
    model = tiny_causal_lm("llama")
    sites = af.sites(model, "layernorm")
    maps = random_maps(model, sites, zero_bias=True, scale=0.9)
    inputs = tiny_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    other = tiny_causal_lm("llama")  # the same architecture, other random weights
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    new = {k: v.clone() for k, v in other.state_dict().items()}
    return model, maps, inputs, other, new


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def assert_state(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    bad = [k for k in expected if not torch.equal(state[k], expected[k])]
    assert not bad, bad


def test_load_while_folded_then_remove_leaves_the_loaded_weights(setup):
    model, maps, inputs, other, new = setup
    h = af.steer(model, maps, 0.7, mode="fold")
    model.load_state_dict(new)
    assert_state(model, new)  # state_dict while folded reports the loaded weights
    with af.steer(other, maps, 0.7, mode="fold"):
        assert torch.equal(logits(model, inputs), logits(other, inputs))  # still steered, on the new weights
    h.set_strength(0.3)  # refolds from the loaded weights
    with af.steer(other, maps, 0.3, mode="fold"):
        assert torch.equal(logits(model, inputs), logits(other, inputs))
    h.remove()
    assert_state(model, new)
    assert torch.equal(logits(model, inputs), logits(other, inputs))


def test_remove_then_load_gives_the_loaded_weights(setup):
    model, maps, inputs, other, new = setup
    with af.steer(model, maps, 0.7, mode="fold"):
        pass
    model.load_state_dict(new)
    assert_state(model, new)
    assert torch.equal(logits(model, inputs), logits(other, inputs))


@pytest.mark.parametrize("assign", [False, True])
def test_partial_load_and_assign(setup, assign):
    model, maps, inputs, other, new = setup
    original = {k: v.clone() for k, v in model.state_dict().items()}
    site = af.sites(model, "layernorm")[0]
    key = site + ".weight"
    h = af.steer(model, maps, 0.7, mode="fold")
    model.load_state_dict({key: new[key]}, strict=False, assign=assign)
    h.remove()
    expected = dict(original, **{key: new[key]})
    assert_state(model, expected)


def test_failed_load_keeps_the_steering(setup):
    model, maps, inputs, other, new = setup
    original = {k: v.clone() for k, v in model.state_dict().items()}
    key = af.sites(model, "layernorm")[0] + ".weight"
    h = af.steer(model, maps, 0.7, mode="fold")
    steered = logits(model, inputs)
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict({key: torch.ones(3)}, strict=False)
    assert torch.equal(logits(model, inputs), steered)
    h.remove()
    assert_state(model, original)


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.add_(0.25),  # an in-place op (optimizer steps are in-place ops)
        lambda p: p.copy_(torch.zeros_like(p)),
        lambda p: p.data.mul_(2.0),  # no version counter bump: caught by value
    ],
    ids=["add_", "copy_", "data"],
)
def test_other_writes_are_refused_by_name(setup, write):
    model, maps, inputs, other, new = setup
    original = {k: v.clone() for k, v in model.state_dict().items()}
    site = af.sites(model, "layernorm")[1]
    param = dict(model.named_modules())[site].weight
    h = af.steer(model, maps, 0.7, mode="fold")
    with torch.no_grad():
        write(param)
    written = param.detach().clone()
    for action in (h.remove, model.state_dict):
        with pytest.raises(RuntimeError, match=f"{site}.weight"):
            action()
    assert torch.equal(param, written)  # nothing changed by the refusals
    h.remove(changed="keep")
    assert torch.equal(param, written)
    rest = {k: v for k, v in original.items() if k != site + ".weight"}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in rest.items())


def test_optimizer_step_refused_then_restore(setup):
    model, maps, inputs, other, new = setup
    original = {k: v.clone() for k, v in model.state_dict().items()}
    h = af.steer(model, maps, 0.7, mode="fold")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(**inputs).logits.sum().backward()
    opt.step()
    with pytest.raises(RuntimeError, match="written while steered"):
        h.set_strength(0.2)
    h.remove(changed="restore")
    folded = {k for k in original if any(k.startswith(s + ".") for s in af.sites(model, "layernorm"))}
    state = model.state_dict()
    assert all(torch.equal(state[k], original[k]) for k in folded)


def test_dtype_conversion_is_not_a_write(setup):
    model, maps, inputs, other, new = setup
    original = {k: v.clone() for k, v in model.state_dict().items()}
    h = af.steer(model, maps, 0.7, mode="fold")
    model.double()
    h.remove()
    assert_state(model, {k: v.double() for k, v in original.items()})


def test_remove_changed_is_checked(setup):
    model, maps, *_ = setup
    with af.steer(model, maps, 0.7, mode="fold") as h:
        with pytest.raises(ValueError, match="changed must be"):
            h.remove(changed="ignore")
