"""Shared by the interoperability tests: a 3-layer tiny Llama, its logits, a reference that adds
vectors to decoder-layer outputs with plain forward hooks, and importing optional libraries."""

from __future__ import annotations

import importlib

import pytest
import torch
from tiny_models import tiny_inputs, tiny_llama

# Why a library's tests skip where it cannot be imported beside the pinned torch 2.13 /
# transformers 5 / numpy 2 environment (the dev extra leaves these two out for that reason).
CANNOT_INSTALL = {
    "repeng": "repeng 0.4.0 (the latest) cannot install beside this environment: it requires numpy<2 and uses "
    "np.float_, removed in NumPy 2; the pinned torch 2.13 / transformers 5 environment has numpy 2",
    "steering_vectors": "steering-vectors 0.12.2 (the latest) cannot install beside this environment: every release "
    "requires transformers<5; transformers is pinned at 5.x",
}


def import_or_skip(name: str):
    """The module, or a skip with the reason it cannot be installed here (any import error)."""
    try:
        return importlib.import_module(name)
    except Exception as err:  # repeng raises AttributeError under NumPy 2, not ImportError
        pytest.skip(f"{CANNOT_INSTALL.get(name, name + ' is not installed')} ({type(err).__name__}: {err})", allow_module_level=True)


def llama(layers: int = 3):
    """A tiny Llama with ``layers`` decoder layers (hidden size 32), eval mode, seeded."""
    torch.manual_seed(0)
    return tiny_llama(num_hidden_layers=layers)


def inputs(model, batch: int = 2):
    return tiny_inputs(model, batch, torch.Generator().manual_seed(1))


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def add_at_layers(model, vectors: dict[int, torch.Tensor], scale: float = 1.0):
    """Forward hooks adding ``scale · vectors[i]`` to the output of ``model.model.layers[i]``: what
    llama.cpp's ``llama_adapter_cvec::apply_to`` does at the end of layer ``i``. Returns the handles."""

    def hook(vector):
        def fn(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            steered = hidden + scale * vector.to(hidden.dtype)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return fn

    return [model.model.layers[i].register_forward_hook(hook(v)) for i, v in vectors.items()]
