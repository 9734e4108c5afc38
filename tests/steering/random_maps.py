"""Random steering maps for tests: strong enough to change a tiny model's output visibly."""

import torch
from tiny_models import tiny_inputs
from torch import nn

import act_fast as af
from act_fast.modeling import site_channels


def random_maps(model: nn.Module, sites: list[str], *, seed: int = 0, support: bool = False, zero_bias: bool = False, scale: float = 0.5) -> af.SteeringMaps:
    """``w ~ 1 + scale·U(-1, 1)``, ``b ~ scale·N(0, 1)`` (0 with ``zero_bias``); with ``support``
    ``lo, hi`` = ∓(0.5 + U(0, 1)), so that some values fall outside."""
    g = torch.Generator().manual_seed(seed)
    channels = site_channels(model, sites, tiny_inputs(model))
    maps = {}
    for site in sites:
        C = channels[site]
        w = 1 + scale * (2 * torch.rand(C, generator=g) - 1)
        b = torch.zeros(C) if zero_bias else scale * torch.randn(C, generator=g)
        lo = hi = None
        if support:
            lo = -(0.5 + torch.rand(C, generator=g))
            hi = 0.5 + torch.rand(C, generator=g)
        maps[site] = af.AffineMap(w, b, lo, hi)
    return af.SteeringMaps(maps, method="random")
