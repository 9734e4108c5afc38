"""``plan``: which mode each site is steered in, and why a cheaper mode was refused. Pure: it
reads the model's modules and the maps and changes nothing.

Modes, cheapest first (docs/design.md §3):

- ``fold``: the map is folded into the affine parameters that produce the site's output (a
  norm's weight/bias, a linear layer's weight/bias): zero runtime cost. Needs no support, one map
  and one λ for all rows, and a bias parameter unless the map's bias is 0.
- ``fused``: a registered norm module computes norm + transport in one kernel.
- ``op``: any module output goes through the transport op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from act_fast.integrations import fold_target, host_refusals, norm_spec, wrapped_site
from act_fast.maps import SteeringMaps, model_fingerprint
from act_fast.modeling import module_channels
from act_fast.steering.fold import refuse_fold
from act_fast.steering.fused import refuse_fused
from act_fast.steering.mapsets import MapSets, as_map_sets, site_order
from act_fast.steering.op import refuse_op
from act_fast.steering.site import SiteContext

MODES = ("auto", "fold", "fused", "op")
# Mode -> why it cannot take a site (None: it can), cheapest first.
REFUSALS: dict[str, Callable[[SiteContext], str | None]] = {"fold": refuse_fold, "fused": refuse_fused, "op": refuse_op}


@dataclass
class SitePlan:
    """How one site is steered.

    Attributes:
        context: the facts the modes decided on (site, module, norm, fold target, maps, ...).
        mode: ``"fold"`` | ``"fused"`` | ``"op"``, or None when a forced mode cannot take the site.
        refused: mode → why it cannot take this site (the cheaper modes auto skipped, or the
            forced mode that failed).
    """

    context: SiteContext
    mode: str | None
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def site(self) -> str:
        return self.context.site

    def explain(self) -> str:
        """``site: mode`` and the reasons cheaper modes were refused, on one line."""
        why = "; ".join(f"{m} refused: {r}" for m, r in self.refused.items())
        head = f"{self.site}: {self.mode or 'cannot be steered in the asked mode'}"
        return f"{head} ({why})" if why else head


def site_modules(model: nn.Module, sets: Mapping[str, SteeringMaps]) -> dict[str, str]:
    """Site → the name of its module in ``model`` (the same name, or under a PEFT wrapper's base
    model: :func:`act_fast.integrations.wrapped_site`), for the sites that resolve."""
    modules = dict(model.named_modules())
    found = {site: wrapped_site(model, modules, site) for site in site_order(sets)}
    return {site: name for site, name in found.items() if name is not None}


def check_model(model: nn.Module, sets: Mapping[str, SteeringMaps]) -> None:
    """Refuses maps fitted on another model type, unknown sites and channel mismatches (every
    mismatch listed); warns when the config fingerprint differs."""
    model_type, fingerprint = model_fingerprint(model)
    named = dict(model.named_modules())
    modules = {site: named[name] for site, name in site_modules(model, sets).items()}
    for name, maps in sets.items():
        label = f"map set {name!r}" if name else "maps"
        if maps.model_type and model_type and maps.model_type != model_type:
            raise ValueError(f"{label} were fitted on a {maps.model_type!r} model; this model is {model_type!r}")
        if maps.model_fingerprint and fingerprint and maps.model_fingerprint != fingerprint:
            warnings.warn(f"{label} were fitted on a {maps.model_type} model with another config; check that the sites match", stacklevel=4)
        maps.check_model(model, {site: module_channels(modules[site]) for site in maps if site in modules}, modules)


def plan(
    model: nn.Module, maps: MapSets, mode: str = "auto", per_row: bool = False, *, pool_spatial: bool = True, chain: bool = False
) -> list[SitePlan]:
    """The steering plan of ``maps`` on ``model``: one :class:`SitePlan` per site, in map order.

    Args:
        model: the model to steer.
        maps: as :func:`act_fast.steer` takes them (one map set, or name → map set).
        mode: ``"auto"`` (per site the cheapest mode that fits: fold, then fused, then op) or a
            mode forced on every site (a site that cannot take it gets ``mode=None``).
        per_row: λ will differ between batch rows (rules out fold).
        pool_spatial: maps on conv features act on each plane's spatial mean (rules out fold).
        chain: the map sets (several) are one chain for the whole model, not chosen per row (fold
            can take it when no map has a support).

    Raises:
        ValueError: unknown mode, maps for another model type, unknown sites or channel mismatches.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sets, multi = as_map_sets(maps)
    check_model(model, sets)
    modules = dict(model.named_modules())
    names = site_modules(model, sets)
    plans = []
    for site in site_order(sets):
        module = modules[names[site]]
        ctx = SiteContext(
            site, module, norm_spec(module), fold_target(module, pool_spatial),
            [s[site] for s in sets.values() if site in s], multi, per_row, pool_spatial, chain,
        )
        host = host_refusals(modules, names[site], module, ctx.fold)  # quantized / offloaded / adapter hosts
        candidates = tuple(REFUSALS) if mode == "auto" else (mode,)
        refused: dict[str, str] = {}
        chosen = None
        for candidate in candidates:
            reason = host.get(candidate) or REFUSALS[candidate](ctx)
            if reason is None:
                chosen = candidate
                break
            refused[candidate] = reason
        plans.append(SitePlan(ctx, chosen, refused))
    return plans
