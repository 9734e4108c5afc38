"""``fit``: maps for many sites of a model, from two prompt sets, independently or incrementally."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from act_fast.estimators.closed_form import METHODS, fit_map
from act_fast.estimators.support import Support, support_levels, support_name
from act_fast.maps import AffineMap, SteeringMaps, model_fingerprint
from act_fast.integrations import sites as preset_sites
from act_fast.stats import ChannelStats, collect
from act_fast.stats.collect import model_device
from act_fast.steer import steer

Batches = Iterable[Mapping[str, Any]]
# Below this many pooled samples per side, exact order statistics are cheap: keep the raw rows.
EXACT_MAX_SAMPLES = 4096


def _rows_in(batches: Sequence[Mapping[str, Any]], pooling: str) -> int:
    total = 0
    for batch in batches:
        t = batch.get("attention_mask", next((v for v in batch.values() if isinstance(v, Tensor)), None))
        if t is None:
            return EXACT_MAX_SAMPLES + 1
        total += t.numel() if pooling == "none" and t.ndim >= 2 else t.shape[0]
    return total


def forward_order(model: nn.Module, site_names: Sequence[str], batch: Mapping[str, Any]) -> list[str]:
    """``site_names`` sorted by when each module first runs in ``model(**batch)`` (registration
    order differs from forward order in many models, e.g. Llama's post-attention norm)."""
    modules = dict(model.named_modules())
    order: list[str] = []
    handles = [
        modules[name].register_forward_hook(lambda mod, a, o, name=name: order.append(name) if name not in order else None)
        for name in site_names
    ]
    device = model_device(model)
    try:
        with torch.no_grad():
            model(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in site_names if name not in order]
    if missing:
        raise ValueError(f"sites {missing} did not run in a forward pass of {type(model).__name__}")
    return order


def fit(
    model: nn.Module,
    source_batches: Batches,
    target_batches: Batches,
    sites: str | Sequence[str],
    method: str = "linear_act",
    support: Support = "q_0_100",
    incremental: bool = True,
    pooling: str = "mean",
    *,
    std_eps: float = 1e-4,
    exact: bool | None = None,
    progress: bool = True,
    **stats_kwargs: Any,
) -> SteeringMaps:
    """Fits one map per site from source (has the concept) and target prompt sets.

    Args:
        model: a transformers / diffusers model or any ``nn.Module`` taking ``model(**batch)``.
        source_batches, target_batches: iterables of dicts of model inputs (as a tokenizer returns
            them; ``attention_mask`` marks padding). Iterated once per site when incremental.
        sites: module names, or a preset name for :func:`act_fast.sites`.
        method, support, std_eps: as :func:`act_fast.fit_map`.
        incremental: the AcT reference default: sites in forward order, site ``l`` fitted on
            activations already transported by the maps of the sites before it (λ = 1) on both
            prompt sets. False: one pass, every site fitted on the unsteered model.
        pooling: ``mean`` / ``last`` / ``max`` / ``min`` per prompt, or ``none`` (every token).
        exact: keep raw pooled rows and use exact order statistics. None: exact when each side
            has at most ``EXACT_MAX_SAMPLES`` rows, else streaming histograms (memory independent
            of the number of prompts).
        progress: progress bars.
        **stats_kwargs: histogram parameters for :class:`act_fast.ChannelStats`.

    Returns:
        :class:`act_fast.SteeringMaps` in forward order, with the fit's metadata.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    support_levels(support)
    site_names = preset_sites(model, sites) if isinstance(sites, str) else list(sites)
    source, target = list(source_batches), list(target_batches)
    if not source or not target:
        raise ValueError(f"fit needs batches on both sides, got {len(source)} source and {len(target)} target batches")
    if exact is None:
        exact = max(_rows_in(source, pooling), _rows_in(target, pooling)) <= EXACT_MAX_SAMPLES
    stats_kwargs = {**stats_kwargs, "exact": exact}
    model_type, fingerprint = model_fingerprint(model)
    maps: dict[str, AffineMap] = {}

    def gather(names: Sequence[str], batches: list) -> dict[str, ChannelStats]:
        return collect(model, names, batches, pooling, progress=progress, stop_early=True, **stats_kwargs)

    if not incremental:
        src_stats, tgt_stats = gather(site_names, source), gather(site_names, target)
        for name in site_names:
            maps[name] = fit_map(src_stats[name], tgt_stats[name], method, support, std_eps)
    else:
        ordered = forward_order(model, site_names, source[0])
        handles = []
        try:
            for name in tqdm(ordered, desc="fit (incremental)", disable=not progress, leave=False):
                src_stats, tgt_stats = gather([name], source), gather([name], target)
                maps[name] = fit_map(src_stats[name], tgt_stats[name], method, support, std_eps)
                # Later sites are fitted on activations transported by this map at λ = 1.
                handles.append(steer(model, {name: maps[name]}, 1.0, mode="op"))
        finally:
            for h in handles:
                h.remove()
        maps = {name: maps[name] for name in ordered}
    return SteeringMaps(
        maps,
        method=method,
        support=support_name(support),
        pooling=pooling,
        model_type=model_type,
        model_fingerprint=fingerprint,
    )
