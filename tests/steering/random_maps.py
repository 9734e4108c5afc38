"""Random steering maps for tests: strong enough to change a tiny model's output visibly."""

import torch
from torch import nn

import act_fast as af


def site_channels(model: nn.Module, site: str) -> int:
    """Channel count of a site's output (norm weight, linear/Conv1D output features, else hidden size)."""
    module = dict(model.named_modules())[site]
    for attr in ("out_features", "nf", "num_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    if getattr(module, "normalized_shape", None):
        return module.normalized_shape[-1]
    return model.config.hidden_size  # blocks and attention modules: the residual width


def random_maps(model: nn.Module, sites: list[str], *, seed: int = 0, support: bool = False, zero_bias: bool = False, scale: float = 0.5) -> af.SteeringMaps:
    """``w ~ 1 + scale·U(-1, 1)``, ``b ~ scale·N(0, 1)`` (0 with ``zero_bias``); with ``support``
    ``lo, hi`` = ∓(0.5 + U(0, 1)), so that some values fall outside."""
    g = torch.Generator().manual_seed(seed)
    maps = {}
    for site in sites:
        C = site_channels(model, site)
        w = 1 + scale * (2 * torch.rand(C, generator=g) - 1)
        b = torch.zeros(C) if zero_bias else scale * torch.randn(C, generator=g)
        lo = hi = None
        if support:
            lo = -(0.5 + torch.rand(C, generator=g))
            hi = 0.5 + torch.rand(C, generator=g)
        maps[site] = af.AffineMap(w, b, lo, hi)
    return af.SteeringMaps(maps, method="random")
