"""Additive steering vectors (one vector added to a layer's output) as :class:`SteeringMaps`.

Control vectors (llama.cpp, repeng), steering-vectors' ``SteeringVector`` and plain
``{layer: vector}`` dicts all add ``v`` to the output of a decoder layer. As an act_fast map that is
``w = 1, b = v`` with no support (``y = x + λ v``, :func:`act_fast.fit_map`'s ``mean_diff`` form) at
the decoder layer's site, e.g. ``model.layers.{i}`` for a Llama causal LM.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from act_fast.maps import AffineMap, SteeringMaps, model_fingerprint

METHOD = "mean_diff"  # an additive map: w = 1, b = v, no support
# Decoder-layer list of a causal LM by model type (repeng's convention: ``model.model.layers``,
# GPT-2's ``model.transformer.h``); every other type uses the default.
LAYER_LISTS: dict[str, str] = {"gpt2": "transformer.h"}
DEFAULT_LAYER_LIST = "model.layers"


def as_vector(value: Any, where: str) -> Tensor:
    """A 1-D float32 CPU copy of a tensor or numpy array ``[C]``; ValueError/TypeError naming ``where``."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{where}: a floating-point vector expected, got a numpy array of {value.dtype}")
        value = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}: a tensor or numpy array expected, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{where}: a floating-point vector expected, got {value.dtype}")
    if value.ndim != 1:
        squeezed = value.reshape(-1) if value.numel() == value.shape[-1] else None
        if squeezed is None:
            raise ValueError(f"{where}: a vector [C] expected, got shape {list(value.shape)}")
        value = squeezed
    return value.detach().to("cpu", torch.float32).clone()


def layer_list_name(model_type: str, model: nn.Module | None = None) -> str:
    """The qualified name of the decoder-layer list: found in ``model`` when given (the ModuleList
    named ``layers`` or ``h`` holding the decoder layers), else by ``model_type``."""
    if model is not None:
        for name in (LAYER_LISTS.get(model_type, DEFAULT_LAYER_LIST), DEFAULT_LAYER_LIST, *LAYER_LISTS.values()):
            if isinstance(_get(model, name), nn.ModuleList):
                return name
        lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] in ("layers", "h")]
        if len(lists) == 1:
            return lists[0]
        raise ValueError(f"cannot tell the decoder-layer list of {type(model).__name__}: ModuleLists named layers/h: {lists}")
    return LAYER_LISTS.get(model_type, DEFAULT_LAYER_LIST)


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _hidden_size(model: nn.Module | None) -> int | None:
    """The decoder layers' output width from the model's config (None without one)."""
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return size if isinstance(size, int) else None


def layer_index(site: str) -> int | None:
    """The decoder-layer index of a site that is a decoder layer's output (``…layers.7``, ``…h.7``),
    else None."""
    match = re.fullmatch(r"(?:.*\.)?(?:layers|h)\.(\d+)", site)
    return None if match is None else int(match.group(1))


def additive_maps(
    vectors: Mapping[Any, Any],
    *,
    model: nn.Module | None = None,
    model_type: str = "",
    source: str = "vectors",
) -> SteeringMaps:
    """``{layer or site: vector [C]}`` → additive :class:`SteeringMaps` (``w = 1, b = v``).

    Args:
        vectors: keys are decoder-layer indices (int ≥ 0, the layer whose output gets the vector)
            or site names (str); values tensors or numpy arrays ``[C]`` (all the same C).
        model: when given, sites are named after its modules (and checked to exist), and the model
            type and config fingerprint are recorded.
        model_type: the model type the vectors were made for, used for the site names without a
            model (a model's own type must agree).
        source: what the vectors are, for error messages.

    Raises:
        ValueError / TypeError: a negative or non-integer layer, a vector of the wrong shape or
            dtype, NaN/Inf, different channel counts, a layer the model does not have.
    """
    fingerprint = ""
    if model is not None:
        own_type, fingerprint = model_fingerprint(model)
        if model_type and own_type and own_type != model_type:
            raise ValueError(f"{source} were made for a {model_type!r} model; this model is {own_type!r}")
        model_type = own_type or model_type
    if not vectors:
        raise ValueError(f"{source}: no vectors")
    prefix = None
    maps: dict[str, AffineMap] = {}
    for key in sorted(vectors, key=lambda k: (0, int(k), "") if isinstance(k, (int, np.integer)) else (1, 0, str(k))):
        if isinstance(key, str):
            site = key
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if key < 0:
                raise ValueError(f"{source}: layer {key} is negative; give the decoder-layer index (0 = first layer)")
            prefix = prefix or layer_list_name(model_type, model)
            site = f"{prefix}.{int(key)}"
        else:
            raise TypeError(f"{source}: keys must be layer indices (int) or site names (str), got {key!r}")
        bias = as_vector(vectors[key], f"{source}: layer {key}")
        try:
            maps[site] = AffineMap(torch.ones_like(bias), bias)
        except ValueError as err:
            raise ValueError(f"{source}: layer {key}: {err}") from err
    counts = {m.num_channels for m in maps.values()}
    if len(counts) > 1:
        raise ValueError(f"{source}: vectors of different sizes {dict((s, m.num_channels) for s, m in maps.items())}")
    hidden = _hidden_size(model)
    wrong = {site: m.num_channels for site, m in maps.items() if hidden and layer_index(site) is not None and m.num_channels != hidden}
    if wrong:
        raise ValueError(f"{source}: decoder layers of this model output {hidden} channels; the vectors have {wrong}")
    result = SteeringMaps(maps, method=METHOD, support="", pooling="", model_type=model_type, model_fingerprint=fingerprint)
    if model is not None:
        from act_fast.steering.plan import check_model

        check_model(model, {"": result})  # sites exist (also through a PEFT wrapper), channel counts agree
    return result
