"""steering-vectors ``SteeringVector``: act_fast applies it as the library's own ``apply`` does."""

from __future__ import annotations

import pytest
import torch
from interop_helpers import import_or_skip, inputs, llama, logits
from tolerances import assert_close

import act_fast as af

steering_vectors = import_or_skip("steering_vectors")


@pytest.mark.parametrize(
    "layer_type, layers, sites",
    [
        ("decoder_block", (1, -1), ["model.layers.1", "model.layers.2"]),
        ("mlp", (0,), ["model.layers.0.mlp"]),
    ],
)
@pytest.mark.parametrize("multiplier", [1.0, 2.5])
def test_same_logits_as_the_library(layer_type, layers, sites, multiplier):
    model = llama()
    batch = inputs(model)
    vector = steering_vectors.SteeringVector({i: torch.randn(32) for i in layers}, layer_type)
    with vector.apply(model, multiplier=multiplier):
        expected = logits(model, batch)
    maps = af.from_steering_vectors(vector, model)
    assert sorted(maps) == sites
    with af.steer(model, maps, strength=multiplier):
        assert_close(logits(model, batch), expected)
    assert not torch.equal(logits(model, batch), expected)


def test_layer_out_of_range():
    model = llama()
    vector = steering_vectors.SteeringVector({5: torch.randn(32)}, "decoder_block")
    with pytest.raises(ValueError, match="layer 5: LlamaForCausalLM has 3 decoder_block layers"):
        af.from_steering_vectors(vector, model)
