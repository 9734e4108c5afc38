"""steer(..., strength_range=(lo, hi)): λ outside the range is refused when it is set, naming the
range (issue 26 item 1, the Hugging Face side); the default None accepts any finite λ."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_llama

import act_fast as af

IDS = torch.tensor([[5, 9, 17, 3], [8, 1, 63, 20]])


@pytest.fixture
def llama():
    return tiny_llama()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("mode", ["fold", "fused", "op"])
def test_values_outside_the_range_are_refused_and_change_nothing(llama, mode):
    sites = af.sites(llama, "layernorm")
    maps = random_maps(llama, sites, zero_bias=mode == "fold")
    with af.steer(llama, maps, 0.5, mode=mode, strength_range=(-1.0, 2.0)) as h:
        assert h.strength_range == (-1.0, 2.0)
        at_half = logits(llama)
        for bad in (2.5, -1.01, torch.tensor(3.0)):
            with pytest.raises(ValueError, match=r"outside the allowed range \[-1, 2\]"):
                h.set_strength(bad)
        assert float(h.strength) == 0.5 and torch.equal(logits(llama), at_half)
        for edge in (-1.0, 2.0):  # the bounds are inside
            h.set_strength(edge)
        if mode != "fold":
            with pytest.raises(ValueError, match=r"outside the allowed range \[-1, 2\] at batch rows \[1\]"):
                h.set_strength(torch.tensor([1.0, 2.5]))
            h.set_strength(torch.tensor([1.0, -1.0]))


def test_steer_refuses_a_first_strength_outside_the_range_and_installs_nothing(llama):
    base = logits(llama)
    maps = random_maps(llama, af.sites(llama, "layernorm"))
    with pytest.raises(ValueError, match=r"strength 5 is outside the allowed range \[0, 1\]"):
        af.steer(llama, maps, 5.0, strength_range=(0, 1))
    assert torch.equal(logits(llama), base)
    with af.steer(llama, maps, 1.0):  # nothing left installed
        pass


def test_default_is_no_range_and_bad_ranges_are_refused(llama):
    maps = random_maps(llama, af.sites(llama, "layernorm"))
    with af.steer(llama, maps, 1e6) as h:
        assert h.strength_range is None
        h.set_strength(-1e6)
    for bad, err in (((1.0, 0.0), ValueError), ((0.0, float("inf")), ValueError), (1.0, TypeError), ((0, 1, 2), TypeError), ("0,1", TypeError)):
        with pytest.raises(err, match="strength_range"):
            af.steer(llama, maps, 0.5, strength_range=bad)


def test_step_callback_values_are_checked(llama):
    maps = random_maps(llama, af.sites(llama, "layernorm"))
    with af.steer(llama, maps, 0.0, mode="op", strength_range=(0.0, 1.0)) as h:
        callback = h.step_callback([0.2, 0.5, 1.5])
        callback(None, 0, None, {})
        with pytest.raises(ValueError, match=r"strength 1.5 is outside the allowed range \[0, 1\]"):
            callback(None, 1, None, {})


def test_non_finite_strength_messages_name_batch_rows(llama):
    maps = random_maps(llama, af.sites(llama, "layernorm"))
    with af.steer(llama, maps, 0.0, mode="op") as h:
        with pytest.raises(ValueError, match=r"holds NaN or Inf at batch rows \[1\]; λ must be finite"):
            h.set_strength(torch.tensor([0.5, float("nan")]))
        with pytest.raises(ValueError, match=r"strength \(shape \[\]\) holds NaN or Inf; λ must be finite"):
            h.set_strength(torch.tensor(float("inf")))


def test_chains_check_each_positions_strength_against_the_range(llama):
    """With chains the kernels read λ_k × strength per position: each product must be in range."""
    norms = af.sites(llama, "layernorm")
    a, b = random_maps(llama, norms, seed=1, support=True), random_maps(llama, norms, seed=2)
    with af.steer(llama, {"a": a, "b": b}, strength_range=(-2.0, 2.0)) as h:
        with pytest.raises(ValueError, match=r"outside the allowed range \[-2, 2\]"):
            h.select([{"a": 0.5, "b": 2.5}, None])
        h.select([{"a": 0.5, "b": 1.5}, {"b": -2.0}])
        before = h.strength.clone()
        with pytest.raises(ValueError, match=r"outside the allowed range \[-2, 2\] at \[row, chain position\] entries \[\[0, 1\]"):
            h.set_strength(1.5)  # 1.5 × 1.5 = 2.25
        assert torch.equal(h.strength, before)
        h.set_strength(1.0)
    with pytest.raises(ValueError, match=r"outside the allowed range \[0, 1\]"):
        af.steer(llama, [a, b], strength=[0.5, 3.0], strength_range=(0.0, 1.0))
    with af.steer(llama, [a, b], strength=[0.5, 1.0], strength_range=(0.0, 1.0)) as h:
        before = h.strength.clone()
        with pytest.raises(ValueError, match=r"outside the allowed range \[0, 1\]"):
            h.set_strength([0.5, 1.5])
        assert torch.equal(h.strength, before)
        h.set_strength(1.0)  # the scale is still 1 after the refused list
        assert torch.equal(h.strength, before)
