"""PEFT LoRA-wrapped models: maps fitted on the base model resolve through the wrapper's names,
fold never writes into a LoRA layer, and merging the adapter keeps steering correct (sites outside
adapter layers) or is refused (a steered adapter layer)."""

from __future__ import annotations

import copy

import pytest
import torch
from interop_helpers import inputs, llama, logits
from tolerances import assert_close

import act_fast as af
from act_fast.maps import AffineMap, SteeringMaps

peft = pytest.importorskip("peft", reason="peft is not installed (it is in the dev extra)")

LORA_SITE = "model.layers.1.self_attn.o_proj"


def _wrapped():
    """(base model, LoRA-wrapped copy with non-zero adapters on q_proj and o_proj)."""
    base = llama()
    torch.manual_seed(7)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], init_lora_weights=False)
    return base, peft.get_peft_model(copy.deepcopy(base), config).eval()


def _maps(lora_site: bool = True) -> SteeringMaps:
    torch.manual_seed(11)
    maps = {
        "model.layers.0.post_attention_layernorm": AffineMap(torch.rand(32) + 0.5, torch.zeros(32)),  # folds into the norm
        "model.layers.2": AffineMap(torch.ones(32), torch.randn(32)),
    }
    if lora_site:
        maps[LORA_SITE] = AffineMap(torch.rand(32) + 0.5, torch.zeros(32))  # would fold into a plain Linear
    return SteeringMaps(maps, model_type="llama")


def _merged_reference(wrapped, maps, batch) -> torch.Tensor:
    """The same maps on a plain copy with the adapter merged in (what steering the wrapper must give)."""
    merged = copy.deepcopy(wrapped).merge_and_unload()
    with af.steer(merged, maps):
        return logits(merged, batch)


def test_base_model_maps_steer_the_wrapped_model():
    base, wrapped = _wrapped()
    batch = inputs(base)
    maps = _maps()
    expected = _merged_reference(wrapped, maps, batch)
    lora = wrapped.base_model.model.model.layers[1].self_attn.o_proj
    weight = lora.base_layer.weight.detach().clone()
    unsteered = logits(wrapped, batch)
    with af.steer(wrapped, maps) as handle:
        assert handle.modes == {"model.layers.0.post_attention_layernorm": "fold", "model.layers.2": "op", LORA_SITE: "op"}
        assert "fold refused: a PEFT adapter layer" in handle.explain().splitlines()[2]
        assert_close(logits(wrapped, batch), expected)
        assert torch.equal(lora.base_layer.weight, weight)
    assert torch.equal(logits(wrapped, batch), unsteered)


@pytest.mark.parametrize("site", [LORA_SITE, LORA_SITE + ".base_layer"])
def test_fold_into_a_lora_layer_is_refused_at_steer(site):
    _, wrapped = _wrapped()
    maps = SteeringMaps({site: AffineMap(torch.rand(32) + 0.5, torch.zeros(32))}, model_type="llama")
    with pytest.raises(ValueError, match=rf"{site}: a PEFT adapter layer"):
        af.steer(wrapped, maps, mode="fold")


def test_merging_a_steered_adapter_layer_is_refused_until_removed():
    base, wrapped = _wrapped()
    batch = inputs(base)
    unsteered_merged = logits(copy.deepcopy(wrapped).merge_and_unload(), batch)
    handle = af.steer(wrapped, _maps())
    with pytest.raises(RuntimeError, match=rf"site '{LORA_SITE}' is steered by act_fast \(op mode\) on a PEFT adapter layer"):
        wrapped.merge_and_unload()
    with pytest.raises(RuntimeError, match="remove the SteeringHandle"):
        wrapped.merge_adapter()
    copied = copy.deepcopy(wrapped)  # copies are unsteered: no guard, they merge
    assert torch.equal(logits(copied.merge_and_unload(), batch), unsteered_merged)
    handle.remove()
    merged = wrapped.merge_and_unload()
    assert "merge" not in vars(merged.model.layers[1].self_attn.o_proj)


def test_merging_keeps_steering_outside_adapter_layers_correct():
    base, wrapped = _wrapped()
    batch = inputs(base)
    maps = _maps(lora_site=False)
    expected = _merged_reference(wrapped, maps, batch)
    unsteered_merged = logits(copy.deepcopy(wrapped).merge_and_unload(), batch)
    handle = af.steer(wrapped, maps)
    merged = wrapped.merge_and_unload()  # replaces the LoRA layers only; the steered norm and layer stay
    assert_close(logits(merged, batch), expected)
    handle.remove()
    assert torch.equal(logits(merged, batch), unsteered_merged)


def test_maps_made_on_the_base_model_match_the_wrapper_fingerprint():
    import warnings

    base, wrapped = _wrapped()
    maps = af.from_vectors({2: torch.randn(32)}, base)
    assert maps.model_fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with af.steer(wrapped, maps) as handle:
            assert handle.modes == {"model.layers.2": "op"}
