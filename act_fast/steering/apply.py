"""``steer``: plan the modes (:func:`act_fast.steering.plan`), then install each site."""

from __future__ import annotations

from torch import Tensor, nn

from act_fast.modeling import module_device
from act_fast.ops.reference import MAX_CHAIN
from act_fast.steering.chains import chain_tensors, chain_width, finite_strength
from act_fast.steering.control import StrengthControl, check_strength_range
from act_fast.steering.fold import FoldedSite
from act_fast.steering.fused import FusedSite
from act_fast.steering.handle import STEERED, SteeringHandle
from act_fast.steering.mapsets import MapBank, MapSets, as_map_sets
from act_fast.steering.op import OpSite
from act_fast.steering.plan import plan
from act_fast.steering.site import SteeredSite

INSTALLERS: dict[str, type[SteeredSite]] = {"fold": FoldedSite, "fused": FusedSite, "op": OpSite}


def _chain_of(maps: list | tuple, strength: object) -> tuple[dict, list[float], float | Tensor]:
    """A list of map sets (the whole-model chain, in order): ``(sets named "0", "1", …, λ per set,
    the handle's strength)``; ``strength`` is a list of one λ per set, or a number / tensor that is
    every set's λ (kept as the handle's strength, the sets' λ at 1)."""
    if not 1 <= len(maps) <= MAX_CHAIN:
        raise ValueError(f"a chain of map sets composes 1 to {MAX_CHAIN} sets, got {len(maps)}")
    sets = {str(k): m for k, m in enumerate(maps)}
    if isinstance(strength, (list, tuple)):
        if len(strength) != len(maps):
            raise ValueError(f"strength has {len(strength)} values for a chain of {len(maps)} map sets {list(sets)}; give one per set")
        return sets, [finite_strength(v, f"strength for map set {k}") for k, v in enumerate(strength)], 1.0
    return sets, [1.0] * len(maps), strength  # type: ignore[return-value]


def steer(
    model: nn.Module,
    maps: MapSets | list | tuple,
    strength: float | Tensor | list[float] = 1.0,
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
            dict name → SteeringMaps for per-request steering: one map set, or an ordered chain of
            them, chosen per batch row with :meth:`SteeringHandle.select` (rows start
            unsteered); or a list of up to 4 map sets: one chain for the whole model,
            ``y = T_K(… T_1(x))`` at every site (sets named ``"0"``, ``"1"``, …; support-free
            chains fold into the weights).
        strength: λ, a finite number or a ``[B]`` tensor (one per batch row); with a list of map
            sets also a list of one λ per set; see :meth:`SteeringHandle.set_strength`.
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
    chain = isinstance(maps, (list, tuple))
    lams: list[float] = []
    if chain:
        maps, lams, strength = _chain_of(maps, strength)  # type: ignore[arg-type]
    elif isinstance(strength, (list, tuple)):
        raise ValueError("a list of strengths (one per map set) goes with a list of map sets, steer(model, [m1, m2], strength=[0.8, 0.5])")
    per_row = isinstance(strength, Tensor) and strength.ndim == 1
    check_strength_range(strength_range)
    plans = plan(model, maps, mode, per_row, pool_spatial=pool_spatial, chain=chain)  # type: ignore[arg-type]
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
        handle = SteeringHandle(sites, plans, control, list(sets) if multi else [], chain=chain)
        if chain:
            slots, lam_t = chain_tensors([[(k + 1, lam) for k, lam in enumerate(lams)]], chain_width(len(sets)))
            control.chain = (slots, lam_t)
            control.set_slots(slots)
        handle.set_strength(strength)  # type: ignore[arg-type]
    except BaseException:
        for site in sites:
            site.remove()
            STEERED.pop(site.module, None)
        raise
    return handle
