"""Plain ``{layer: tensor}`` dicts → additive maps at decoder-layer outputs, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interop_helpers import add_at_layers, inputs, llama, logits
from tolerances import assert_close

import act_fast as af


def test_dict_steers_like_adding_at_layer_outputs():
    model = llama()
    batch = inputs(model)
    vectors = {0: torch.randn(32), 2: torch.randn(32)}
    maps = af.from_vectors(vectors, model)
    assert list(maps) == ["model.layers.0", "model.layers.2"]
    assert (maps.method, maps.support, maps.model_type) == ("mean_diff", "", "llama") and maps.model_fingerprint
    hooks = add_at_layers(model, vectors, 0.7)
    expected = logits(model, batch)
    for h in hooks:
        h.remove()
    with af.steer(model, maps, strength=0.7):
        assert_close(logits(model, batch), expected)


def test_keys_may_be_site_names_and_values_numpy():
    model = llama()
    maps = af.from_vectors({"model.layers.1.mlp": np.ones(32, np.float64), 1: torch.zeros(1, 1, 32)}, model)
    assert set(maps) == {"model.layers.1.mlp", "model.layers.1"}
    assert maps["model.layers.1.mlp"].bias.dtype == torch.float32


def test_without_model_sites_follow_the_model_type():
    assert list(af.from_vectors({3: torch.ones(4)}, model_type="llama")) == ["model.layers.3"]
    assert list(af.from_vectors({3: torch.ones(4)}, model_type="gpt2")) == ["transformer.h.3"]


@pytest.mark.parametrize(
    "vectors, error, match",
    [
        ({-1: torch.ones(32)}, ValueError, "negative"),
        ({1.5: torch.ones(32)}, TypeError, "keys must be layer indices"),
        ({True: torch.ones(32)}, TypeError, "keys must be layer indices"),
        ({1: torch.ones(2, 32)}, ValueError, r"a vector \[C\] expected, got shape \[2, 32\]"),
        ({1: torch.ones(32, dtype=torch.int64)}, TypeError, "floating-point"),
        ({1: [1.0, 2.0]}, TypeError, "tensor or numpy array"),
        ({1: torch.full((32,), float("inf"))}, ValueError, "layer 1: .*NaN or Inf"),
        ({1: torch.ones(32), 2: torch.ones(16)}, ValueError, "different sizes"),
        ({7: torch.ones(32)}, ValueError, "model.layers.7.*no such module"),
        ({1: torch.ones(16)}, ValueError, "decoder layers of this model output 32 channels; the vectors have {'model.layers.1': 16}"),
        ({}, ValueError, "no vectors"),
    ],
)
def test_bad_vectors_are_refused(vectors, error, match):
    with pytest.raises(error, match=match):
        af.from_vectors(vectors, llama())


def test_model_type_must_agree():
    with pytest.raises(ValueError, match="made for a 'gpt2' model; this model is 'llama'"):
        af.from_vectors({1: torch.ones(32)}, llama(), model_type="gpt2")


def test_keys_of_other_types_are_refused_by_name():
    with pytest.raises(TypeError, match=r"keys must be layer indices \(int\) or site names \(str\), got \(1, 2\)"):
        af.from_vectors({(1, 2): torch.ones(32), 1: torch.ones(32)}, llama())
