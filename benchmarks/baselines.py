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
