"""Minimal site presets: module names whose outputs are collected or steered.

A site is a module's qualified name in ``model.named_modules()``. This generic, class-name based
matcher serves collection; the model registry of the steering code refines it per model type.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

_BLOCK = re.compile(r"(^|\.)\d+(\.|$)")


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith("Norm") or name.endswith("LayerNorm") or name.endswith("RMSNorm") or name == "GroupNorm"


def _in_block(name: str) -> bool:
    """Inside a repeated block (a numbered child of a ModuleList)."""
    return bool(_BLOCK.search(name))


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


PRESETS: dict[str, Callable[[str, nn.Module], bool]] = {
    "post_layernorm": lambda name, m: _is_norm(m) and _in_block(name),
    "layernorm": lambda name, m: _is_norm(m),
    "o_proj": lambda name, m: _in_block(name) and _last(name) in ("o_proj", "out_proj", "c_proj") and ".mlp" not in name,
    "attn_out": lambda name, m: _in_block(name) and _last(name) in ("self_attn", "attn", "attention"),
    "mlp_out": lambda name, m: _in_block(name) and _last(name) in ("mlp", "feed_forward", "ff"),
}


def sites(model: nn.Module, preset: str = "post_layernorm") -> list[str]:
    """Qualified names of the modules a preset selects, in ``named_modules`` order.

    Presets: ``post_layernorm`` (norm outputs inside the repeated blocks), ``layernorm`` (every
    norm), ``o_proj`` (attention output projections), ``attn_out`` (attention modules),
    ``mlp_out`` (MLP modules).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown site preset {preset!r}; known presets: {sorted(PRESETS)}")
    match = PRESETS[preset]
    found = [name for name, module in model.named_modules() if name and match(name, module)]
    if not found:
        raise ValueError(f"site preset {preset!r} matches no module of {type(model).__name__}")
    return found
