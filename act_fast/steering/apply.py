"""``steer``: plan the modes (:func:`act_fast.steering.plan`), then install each site."""

from __future__ import annotations

from torch import Tensor, nn

from act_fast.modeling import module_device
from act_fast.steering.control import StrengthControl, check_strength_range
from act_fast.steering.fold import FoldedSite
from act_fast.steering.fused import FusedSite
from act_fast.steering.handle import STEERED, SteeringHandle
from act_fast.steering.mapsets import MapBank, MapSets, as_map_sets
from act_fast.steering.op import OpSite
from act_fast.steering.plan import plan
from act_fast.steering.site import SteeredSite

INSTALLERS: dict[str, type[SteeredSite]] = {"fold": FoldedSite, "fused": FusedSite, "op": OpSite}


def steer(
    model: nn.Module,
    maps: MapSets,
    strength: float | Tensor = 1.0,
    mode: str = "auto",
    *,
    pool_spatial: bool = True,
    strength_range: tuple[float, float] | None = None,
) -> SteeringHandle:
    """Applies steering maps inside ``model`` until the returned handle is removed.

    Args:
        model: a transformers / diffusers model or any ``nn.Module``, already on its devices
            (``device_map`` placements are fine: each site's maps go to its module's device).
        maps: a :class:`act_fast.SteeringMaps` (or a dict site → :class:`act_fast.AffineMap`), or a
            dict name → SteeringMaps for per-request steering: one map set chosen per batch row
            with :meth:`SteeringHandle.select` (rows start unsteered).
        strength: λ, a finite number or a ``[B]`` tensor (one per batch row); see
            :meth:`SteeringHandle.set_strength`.
        mode: ``"auto"`` (per site: fold when possible, else fused for norms, else op), or
            ``"fold"`` / ``"fused"`` / ``"op"`` for every site (an error lists the sites that
            cannot take it). :meth:`SteeringHandle.explain` says what was chosen and why.
        pool_spatial: conv features ``[B, C, *spatial]``: evaluate support and map on each plane's
            spatial mean and shift the plane (the AcT diffusion setting, as in :func:`act_fast.fit`,
            which pools conv outputs); False: per-position map. Keyword-only: the transport op's
            own default is per-position.
        strength_range: ``(lo, hi)``: every λ this handle is given (here, by
            :meth:`SteeringHandle.set_strength` or a step callback; each value of a ``[B]`` λ) must
            lie in ``[lo, hi]``, else ValueError naming the range. Default None: any finite λ. A
            Hugging Face user owns the process, so an extreme λ only reaches their own outputs;
            pass a range where λ comes from someone else (a request, a config file). The vLLM
            plugin, where one request's λ must not reach another's, sets its own engine range.

    Returns:
        A :class:`SteeringHandle` (also a context manager that removes itself on exit).

    Steering is a runtime property: ``state_dict()``, ``copy.deepcopy`` and ``pickle`` /
    ``torch.save`` of a steered model give the unsteered model in every mode.

    Raises:
        ValueError: unknown mode, maps for another model or sites/channels that do not fit
            (all mismatches listed), a site already steered, sites that cannot take ``mode``, or
            a strength outside ``strength_range``.
    """
    per_row = isinstance(strength, Tensor) and strength.ndim == 1
    check_strength_range(strength_range)
    plans = plan(model, maps, mode, per_row, pool_spatial=pool_spatial)
    busy = [p.site for p in plans if p.context.module in STEERED]
    if busy:
        raise ValueError(f"sites {busy[:4]} are already steered by another handle; remove it first")
    refused = [f"{p.site}: {p.refused[mode]}" for p in plans if p.mode is None]
    if refused:
        raise ValueError(f"mode={mode!r} does not fit {len(refused)} site(s):\n  " + "\n  ".join(refused))
    sets, multi = as_map_sets(maps)
    devices = {p.site: module_device(p.context.module, model) for p in plans}
    control = StrengthControl(devices.values(), multi, strength_range)
    sites: list[SteeredSite] = []
    try:
        for p in plans:
            bank = MapBank.build(p.site, sets, multi, devices[p.site])
            site = INSTALLERS[p.mode](p.context, devices[p.site], bank, control)  # type: ignore[index]
            site.guard()
            sites.append(site)
        handle = SteeringHandle(sites, plans, control, list(sets) if multi else [])
        handle.set_strength(strength)
    except BaseException:
        for site in sites:
            site.remove()
            STEERED.pop(site.module, None)
        raise
    return handle
