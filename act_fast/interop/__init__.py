"""Interoperability: steering vectors made by other tools in, act_fast maps out.

- :func:`read_control_vector` / :func:`write_control_vector`: llama.cpp / repeng GGUF control
  vectors (:mod:`act_fast.interop.gguf`); :func:`act_fast.load_maps` reads ``.gguf`` files too.
- :func:`from_repeng`, :func:`from_steering_vectors`, :func:`from_vectors`: repeng
  ``ControlVector``, steering-vectors ``SteeringVector`` and ``{layer: tensor}`` dicts.
- :func:`push_to_hub` / :func:`load_from_hub`: maps in a Hugging Face Hub repository.

All imports give additive maps (``w = 1, b = v``, no support) at decoder-layer outputs
(:mod:`act_fast.interop.additive`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from act_fast.interop.additive import additive_maps
from act_fast.interop.gguf import gguf_refusals, read_control_vector, write_control_vector
from act_fast.interop.hub import load_from_hub, push_to_hub, save_folder
from act_fast.interop.repeng import from_repeng
from act_fast.interop.steering_vectors import from_steering_vectors
from act_fast.maps import SteeringMaps


def from_vectors(vectors: dict[Any, Any], model: nn.Module | None = None, *, model_type: str = "") -> SteeringMaps:
    """``{layer: vector [C]}`` (decoder-layer index, or a site name) → additive maps
    (:func:`act_fast.interop.additive.additive_maps`); ``model`` or ``model_type`` names the sites."""
    return additive_maps(vectors, model=model, model_type=model_type, source="vectors")


__all__ = [
    "from_repeng",
    "from_steering_vectors",
    "from_vectors",
    "gguf_refusals",
    "load_from_hub",
    "push_to_hub",
    "read_control_vector",
    "save_folder",
    "write_control_vector",
]
