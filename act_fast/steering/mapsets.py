"""Map sets as ``steer`` receives them, and the per-site map banks it installs.

One map set is a :class:`SteeringMaps` (or a dict site → :class:`AffineMap`); several are a dict
name → map set, one chosen per batch row. A site's bank holds its maps on the site's device:
``[C]`` tensors for one set, ``[K + 1, C]`` for K sets, where slot 0 and every set without this
site are the identity (``w = 1, b = 0``, open support).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from act_fast.maps import AffineMap, SteeringMaps

MapSets = SteeringMaps | Mapping[str, AffineMap] | Mapping[str, SteeringMaps | Mapping[str, AffineMap]]
# Support bounds of map slots that have no support, in a bank where another slot has one.
OPEN_BOUND = torch.finfo(torch.float32).max


def _one_set(m: Any) -> SteeringMaps | None:
    """``m`` as a SteeringMaps when it is one map set (a SteeringMaps or a dict site -> AffineMap)."""
    if isinstance(m, SteeringMaps):
        return m
    if isinstance(m, Mapping) and m and all(isinstance(v, AffineMap) for v in m.values()):
        return SteeringMaps(dict(m))
    return None


def as_map_sets(maps: MapSets) -> tuple[dict[str, SteeringMaps], bool]:
    """``({name: SteeringMaps}, multi)``; a single set is named ``""`` and ``multi`` is False."""
    single = _one_set(maps)
    if single is not None:
        return {"": single}, False
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError("maps must be a SteeringMaps, a dict of site -> AffineMap, or a non-empty dict of name -> SteeringMaps")
    sets = {}
    for name, m in maps.items():
        one = _one_set(m)
        if one is None:
            raise TypeError(f"map set {name!r} must be a SteeringMaps or a dict of site -> AffineMap, got {type(m).__name__}")
        sets[str(name)] = one
    return sets, True


def site_order(sets: Mapping[str, SteeringMaps]) -> list[str]:
    """Every site of every set, first appearance first."""
    return list(dict.fromkeys(site for s in sets.values() for site in s))


@dataclass
class MapBank:
    """A site's maps on its device: ``[C]`` tensors (one set) or ``[K + 1, C]`` (K sets)."""

    weight: Tensor
    bias: Tensor
    lo: Tensor | None
    hi: Tensor | None

    @property
    def channels(self) -> int:
        return self.weight.shape[-1]

    @classmethod
    def build(cls, site: str, sets: Mapping[str, SteeringMaps], multi: bool, device: torch.device) -> "MapBank":
        if not multi:
            m = next(iter(sets.values()))[site].to(device)
            return cls(m.weight, m.bias, m.lo, m.hi)
        present = [s[site] for s in sets.values() if site in s]
        C = present[0].num_channels
        slots = [None] + [s.maps.get(site) for s in sets.values()]

        def stack(field: str, identity: float) -> Tensor:
            fill = torch.full((C,), identity, device=device)
            return torch.stack([fill if m is None or getattr(m, field) is None else getattr(m, field).to(device, torch.float32) for m in slots])

        if all(m.lo is None for m in present):
            return cls(stack("weight", 1.0), stack("bias", 0.0), None, None)
        return cls(stack("weight", 1.0), stack("bias", 0.0), stack("lo", -OPEN_BOUND), stack("hi", OPEN_BOUND))
