"""What a host model does to its modules that steering must respect: quantized weights (torchao
tensor subclasses, integer weights), offloaded parameters (accelerate hooks, meta tensors), PEFT
adapter layers and wrapper names. Read by duck typing (none of these libraries is imported).

- :func:`wrapped_site`: a site name of the base model resolved inside a wrapper (PEFT's
  ``base_model.model.`` prefix), so maps fitted on the base model apply to the wrapped one.
- :func:`host_refusals`: why fold / fused cannot take a site on this host (docs/design.md §3).
- :func:`is_adapter_layer`: a PEFT tuner layer (LoRA ``Linear``, …), whose ``merge`` replaces or
  rewrites it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

import torch
from torch import nn

from act_fast.integrations.fold_targets import FoldTarget


def wrapped_site(model: nn.Module, modules: Mapping[str, nn.Module], site: str) -> str | None:
    """The module name ``site`` denotes in ``model``: itself when it names a module, else the same
    name under the wrapper's base model (``model.get_base_model()``, PEFT), else None."""
    if site in modules:
        return site
    get_base = getattr(model, "get_base_model", None)
    if not callable(get_base):
        return None
    base = get_base()
    prefix = next((name for name, m in modules.items() if m is base and name), None)
    candidate = f"{prefix}.{site}" if prefix else None
    return candidate if candidate in modules else None


def is_adapter_layer(module: nn.Module) -> bool:
    """A PEFT tuner layer (LoRA, IA³, …): its output adds the adapter to its ``base_layer``'s."""
    peft_tuners = sys.modules.get("peft.tuners.tuners_utils")
    base = getattr(peft_tuners, "BaseTunerLayer", None) if peft_tuners is not None else None
    return base is not None and isinstance(module, base)


def _quantized(p: torch.Tensor) -> str | None:
    data = p.data if isinstance(p, nn.Parameter) else p
    if type(data) is not torch.Tensor:
        return f"quantized ({type(data).__name__}, a tensor subclass)"
    if not data.is_floating_point():
        return f"quantized ({data.dtype})"
    return None


def host_refusals(modules: Mapping[str, nn.Module], name: str, module: nn.Module, fold: FoldTarget | str) -> dict[str, str]:
    """Mode → why this host rules it out for the site ``name`` (fold, fused; op is always possible).

    Fold writes into the module's parameters, so it is refused when they are quantized (the
    float fold cannot be written into integer or subclass storage without requantizing), offloaded
    (meta tensors: accelerate reloads the weights from its own copy at every call) or belong to a
    PEFT adapter layer (merging or unloading the adapter would rewrite them). Fused replaces the
    module's ``forward``, which accelerate has wrapped to load weights and move tensors.
    """
    refused: dict[str, str] = {}
    parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
    if is_adapter_layer(module) or (parent is not None and is_adapter_layer(parent)):
        refused["fold"] = "a PEFT adapter layer (merging or unloading the adapter would rewrite its weights)"
    elif any(p.is_meta for p in module.parameters(recurse=False)):
        refused["fold"] = "its parameters are offloaded (meta device; accelerate loads them at each call)"
    elif isinstance(fold, FoldTarget):
        params = {"weight": fold.scale, "bias": fold.shift}
        for what, p in params.items():
            if p is None:
                continue
            if p.is_meta:
                refused["fold"] = f"its {what} is offloaded (meta device; accelerate loads it at each call)"
                break
            quantized = _quantized(p)
            if quantized is not None:
                refused["fold"] = f"its {what} is {quantized}; act_fast never folds into quantized weights"
                break
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        refused["fused"] = f"accelerate wraps its forward ({type(hook).__name__}: weight loading / device moves)"
    return refused


def merge_guard(site: str, mode: str) -> Callable[..., None]:
    """A ``merge`` for a steered PEFT adapter layer that refuses: merging and unloading the adapter
    replaces the module the steering is attached to (the steering would silently vanish)."""

    def merge(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"site {site!r} is steered by act_fast ({mode} mode) on a PEFT adapter layer: merging the adapter would "
            "replace or rewrite this module and drop the steering; remove the SteeringHandle, merge, then steer again"
        )

    return merge
