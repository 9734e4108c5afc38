"""steering-vectors ``SteeringVector`` objects → additive :class:`SteeringMaps`.

A ``SteeringVector`` holds ``layer_activations`` (layer number → tensor ``[C]``) and ``layer_type``
(``decoder_block``, ``self_attn``, ``mlp``, ``input_layernorm``, ``post_attention_layernorm``);
``patch_activations`` adds ``multiplier · v`` to the output of the ``layer_num``-th module of that
type. The module names come from the library's own layer matching on the model, so the sites are
exactly the modules it would patch (``model.layers.{i}`` for a Llama ``decoder_block``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from act_fast.interop.additive import additive_maps
from act_fast.maps import SteeringMaps


def from_steering_vectors(vector: Any, model: nn.Module, layer_config: Any = None) -> SteeringMaps:
    """A steering-vectors ``SteeringVector`` as additive maps on ``model``.

    Args:
        vector: ``steering_vectors.SteeringVector``.
        model: the model it is applied to (its layer names are matched as the library does).
        layer_config: the library's ``ModelLayerConfig`` if the vector was trained with one.

    ``act_fast.steer(model, maps, strength=multiplier)`` adds what
    ``vector.apply(model, multiplier=multiplier)`` adds (every token, no custom operator).

    Raises:
        ImportError: steering-vectors is not installed; TypeError: not a SteeringVector;
        ValueError: a layer type or number the model does not have, bad vectors.
    """
    activations = getattr(vector, "layer_activations", None)
    layer_type = getattr(vector, "layer_type", None)
    if not isinstance(activations, dict) or not isinstance(layer_type, str):
        raise TypeError(f"a steering_vectors.SteeringVector (layer_activations, layer_type) expected, got {type(vector).__name__}")
    try:
        from steering_vectors.layer_matching import collect_matching_layers, guess_and_enhance_layer_config
    except ImportError as err:
        raise ImportError("from_steering_vectors needs the steering-vectors package (its layer matching names the sites)") from err
    config = guess_and_enhance_layer_config(model, layer_config, layer_type)
    if layer_type not in config:
        raise ValueError(f"steering vector layer_type {layer_type!r}: the library finds no such layers in {type(model).__name__}")
    names = collect_matching_layers(model, config[layer_type])
    sites = {}
    for layer, value in activations.items():
        if not isinstance(layer, int) or not -len(names) <= layer < len(names):
            raise ValueError(f"steering vector layer {layer!r}: {type(model).__name__} has {len(names)} {layer_type} layers")
        sites[names[layer]] = value
    return additive_maps(sites, model=model, source=f"SteeringVector ({layer_type})")
