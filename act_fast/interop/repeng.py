"""repeng ``ControlVector`` objects and files → additive :class:`SteeringMaps`.

A ``ControlVector`` holds ``model_type`` and ``directions`` (decoder-layer index → numpy vector
``[C]``); repeng's ``ControlModel`` adds ``coeff · directions[i]`` to the output of
``model.model.layers[i]`` (``model.transformer.h[i]`` for GPT-2). So it is ``w = 1, b = direction``
at ``model.layers.{i}`` with λ = coeff. repeng's files are GGUF control vectors
(:mod:`act_fast.interop.gguf`). Read by duck typing: repeng itself is not imported.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from act_fast.interop.additive import additive_maps
from act_fast.maps import SteeringMaps


def from_repeng(vector: Any, model: nn.Module | None = None) -> SteeringMaps:
    """A repeng ``ControlVector`` (or the path of its ``.gguf`` export) as additive maps.

    Args:
        vector: ``repeng.ControlVector`` (``model_type``, ``directions: {layer: ndarray [C]}``) or a
            path to a GGUF control vector.
        model: name the sites after this model's decoder layers and check that they fit.

    Steering with ``act_fast.steer(model, maps, strength=coeff)`` adds what repeng's
    ``ControlModel.set_control(vector, coeff)`` adds (without its ``normalize`` option).

    Raises:
        TypeError: not a ControlVector or path; ValueError: negative layers, bad vectors, a model
            of another type or without those layers.
    """
    if isinstance(vector, (str, os.PathLike)):
        from act_fast.interop.gguf import read_control_vector

        return read_control_vector(vector, model=model)
    directions = getattr(vector, "directions", None)
    model_type = getattr(vector, "model_type", None)
    if not isinstance(directions, dict) or not isinstance(model_type, str):
        raise TypeError(f"a repeng ControlVector (model_type, directions) or a .gguf path expected, got {type(vector).__name__}")
    return additive_maps(directions, model=model, model_type=model_type, source="repeng ControlVector")
