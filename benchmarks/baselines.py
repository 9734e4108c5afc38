"""Baselines that act_fast is measured against, written the way steering code usually is."""

from __future__ import annotations

import torch
from torch import Tensor


def hook_style_transport(x: Tensor, weight: Tensor, bias: Tensor, strength: float, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """The map as a forward hook in the AcT reference code computes it: cast to float32, a
    masked copy with boolean indexing, several passes over the tensor, cast back.

    ``x: [..., C]``; ``weight, bias, lo, hi: [C]``.
    """
    z = x.float()
    out = z.clone()
    transported = z * weight + bias
    transported = z + strength * (transported - z)
    if lo is None:
        out = transported
    else:
        mask = (z > lo) & (z < hi)
        out[mask] = transported[mask]
    return out.to(x.dtype)


class ReferenceStyleHook:
    """One site's map as the AcT reference code applies it to a whole model: a forward hook
    (``InterventionHook.__call__`` then ``forward``) that

    1. picks the activation out of the module output (first element of a tuple),
    2. adds a token dim to 2-D outputs,
    3. casts it to float32 (``.to(dtype=torch.float32, device=...)``),
    4. applies the map in several passes: transported copy, strength blend, boolean support mask,
       masked indexing ``out[mask] = transported[mask]`` (:func:`hook_style_transport`),
    5. casts back to the input dtype and rebuilds the output tuple.

    Channels last only (``[..., C]``), one map set and a scalar strength: the LLM case that
    docs/design.md §6 compares against ("≥ 10× less added time per steered forward").
    """

    def __init__(self, weight: Tensor, bias: Tensor, lo: Tensor | None, hi: Tensor | None, strength: float, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.weight = weight.to(dtype)
        self.bias = bias.to(dtype)
        self.lo = None if lo is None else lo.to(dtype)
        self.hi = None if hi is None else hi.to(dtype)
        self.strength = strength

    def forward(self, z: Tensor) -> Tensor:
        return hook_style_transport(z, self.weight, self.bias, self.strength, self.lo, self.hi)

    def __call__(self, module, inputs, output):
        selected = output[0] if isinstance(output, tuple) else output
        original_ndim = selected.ndim
        if original_ndim == 2:
            selected = selected[:, None, :]
        dtype, device = selected.dtype, selected.device
        z = selected.to(dtype=self.dtype, device=self.weight.device)
        z = self.forward(z)
        z = z.to(dtype=dtype, device=device)
        if original_ndim == 2:
            z = z[:, 0, :]
        if isinstance(output, tuple):
            return (z, *output[1:])
        return z


def add_reference_hooks(model: torch.nn.Module, maps, strength: float = 1.0) -> list:
    """Registers one :class:`ReferenceStyleHook` per site of ``maps`` (site name -> object with
    ``weight``, ``bias``, ``lo``, ``hi``, e.g. :class:`act_fast.AffineMap`). Returns the hook
    handles; ``for h in handles: h.remove()`` undoes it."""
    modules = dict(model.named_modules())
    handles = []
    for site in maps:
        m = maps[site]
        hook = ReferenceStyleHook(m.weight, m.bias, m.lo, m.hi, strength)
        handles.append(modules[site].register_forward_hook(hook))
    return handles
