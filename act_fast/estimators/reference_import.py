"""Import of maps fitted by the AcT reference implementation (torch-saved ``.statedict`` files).

Layouts read, per site (one file or dict each):

- Linear-AcT: ``net.w1``, ``net.b1`` (``[C]`` or ``[1, C]``): ``w = w1, b = b1``;
- Gaussian-AcT / Mean-AcT: ``mu1``, ``mu2``, ``std1``, ``std2`` (source 1 → target 2):
  ``w = std2 / std1, b = mu2 − w·mu1`` (Mean-AcT: ``w = 1, b = mu2 − mu1``), identity where
  either std is ``≤ std_eps``;
- AURA: ``auroc``: ``w = 1 − 2(auroc − 0.5)`` where ``auroc > 0.5``, else 1; ``b = 0``;
- support: ``quantiles_dict_src`` (name → ``[lo, hi]``) at the name in ``quantiles_src``
  (or the ``support`` argument); ``q_all`` means none.

Files are read with ``torch.load(weights_only=True)``: no arbitrary code runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from act_fast.estimators import formulas
from act_fast.maps import AffineMap, SteeringMaps

StateDict = Mapping[str, Any]


def _vector(sd: StateDict, key: str, where: str) -> Tensor:
    v = sd[key]
    if not isinstance(v, Tensor):
        raise ValueError(f"{where}: {key!r} must be a tensor, got {type(v).__name__}")
    return v.detach().to(torch.float64).reshape(-1)


def _reference_map(sd: StateDict, where: str, method: str | None, support: str | None, std_eps: float) -> tuple[str, str, AffineMap]:
    if "net.w1" in sd:
        kind = "linear_act"
        w, b = _vector(sd, "net.w1", where), _vector(sd, "net.b1", where)
    elif all(k in sd for k in ("mu1", "mu2", "std1", "std2")):
        only_mean = method == "mean_act" or bool(int(sd.get("hook_onlymean", 0)))
        kind = "mean_act" if only_mean else "gaussian_act"
        mu1, mu2 = _vector(sd, "mu1", where), _vector(sd, "mu2", where)
        std1, std2 = _vector(sd, "std1", where), _vector(sd, "std2", where)
        keep = formulas.std_mask(std1, std2, std_eps)
        if only_mean:
            w, b = formulas.mean_act(mu1, mu2, keep)
        else:
            w, b = formulas.gaussian_act(mu1, std1, mu2, std2, keep, torch.ones_like(keep))
    elif "auroc" in sd:
        kind = "aura"
        w, b = formulas.aura(_vector(sd, "auroc", where))
    else:
        raise ValueError(f"{where}: not a reference AcT state dict (expected net.w1/net.b1, mu1/mu2/std1/std2 or auroc; got keys {sorted(sd)[:10]})")
    name = support if support is not None else str(sd.get("quantiles_src", "q_all"))
    lo = hi = None
    if name != "q_all":
        quantiles = sd.get("quantiles_dict_src") or {}
        if name not in quantiles:
            raise ValueError(f"{where}: support {name!r} is not in quantiles_dict_src (has {sorted(quantiles)})")
        lo, hi = (v.detach().to(torch.float32).reshape(-1) for v in quantiles[name])
    return kind, name, AffineMap(w.float(), b.float(), lo, hi)


def import_reference_maps(
    state_dicts: Mapping[str, str | os.PathLike | StateDict],
    *,
    method: str | None = None,
    support: str | None = None,
    std_eps: float = 1e-4,
) -> SteeringMaps:
    """Builds SteeringMaps from the reference implementation's per-site state dicts.

    Args:
        state_dicts: site (module name, a ``:0`` output suffix is dropped) → path of a
            ``.statedict`` file or the loaded dict, in forward order.
        method: ``"mean_act"`` reads Gaussian layouts as Mean-AcT; otherwise the layout decides.
        support: a support name overriding each file's ``quantiles_src``.
        std_eps: the std mask of the Gaussian/Mean layouts.
    """
    maps: dict[str, AffineMap] = {}
    kinds, supports = set(), set()
    for site, sd in state_dicts.items():
        where = f"site {site!r}"
        if not isinstance(sd, Mapping):
            where = f"{where} ({sd})"
            sd = torch.load(sd, map_location="cpu", weights_only=True)
        kind, name, m = _reference_map(sd, where, method, support, std_eps)
        kinds.add(kind)
        supports.add(name)
        maps[site.split(":")[0]] = m
    return SteeringMaps(maps, method=",".join(sorted(kinds)), support=",".join(sorted(supports)))
