"""``fit``: maps for many sites of a model, from two prompt sets, independently or incrementally."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from act_fast.estimators.closed_form import check_std_eps, estimator, fit_map, resolve_support
from act_fast.estimators.support import Support, support_levels, support_name
from act_fast.integrations import SiteSpec, site_names
from act_fast.maps import AffineMap, SteeringMaps, model_fingerprint
from act_fast.estimators import layerwise as _layerwise
from act_fast.modeling import Batch, Hook, StopForward, module_device, progress_bar, resolve_sites, run_batches
from act_fast.stats.collection import _Collector, collect_into
from act_fast.stats.pooling import POOLINGS
from act_fast.steering import steer

# Up to this many pooled samples per side, exact order statistics are cheap: keep the raw rows.
EXACT_MAX_SAMPLES = 4096
_LEGACY_POSITIONAL = ("method", "support", "incremental", "pooling")


def _rows_in(batches: Sequence[Mapping[str, Any]], pooling: str) -> int:
    """Pooled rows the batches will give (an upper bound when padding is masked)."""
    total = 0
    for batch in batches:
        t = batch.get("attention_mask", next((v for v in batch.values() if isinstance(v, Tensor)), None))
        if t is None:
            return EXACT_MAX_SAMPLES + 1
        total += t.numel() if pooling == "none" and t.ndim >= 2 else t.shape[0]
    return total


def forward_order(model: nn.Module, sites: Sequence[str], batch: Batch) -> list[str]:
    """``sites`` sorted by when each module first runs in ``model(**batch)`` (registration order
    differs from forward order in many models, e.g. Llama's post-attention norm)."""
    order: list[str] = []

    def record(name: str) -> Hook:
        return lambda module, args, output: order.append(name) if name not in order else None

    run_batches(model, [batch], {name: record(name) for name in sites})
    missing = [name for name in sites if name not in order]
    if missing:
        raise ValueError(f"sites {missing} did not run in a forward pass of {type(model).__name__}")
    return order


def _legacy_options(args: tuple) -> dict[str, Any]:
    """``fit(model, source, target, sites, method, support, incremental, pooling)`` positionally (the
    first release): the options with a DeprecationWarning."""
    if not args:
        return {}
    if len(args) > len(_LEGACY_POSITIONAL):
        raise TypeError(f"fit takes at most {4 + len(_LEGACY_POSITIONAL)} positional arguments, got {4 + len(args)}")
    names = _LEGACY_POSITIONAL[: len(args)]
    warnings.warn(
        f"passing {', '.join(names)} positionally to fit is deprecated; use keywords ({', '.join(f'{n}=...' for n in names)})",
        DeprecationWarning,
        stacklevel=3,
    )
    return dict(zip(names, args))


def _fit_independent(model, names, source, target, method, support, std_eps, collect_kw) -> dict[str, AffineMap]:
    """Every site fitted on the unsteered model: one collection pass per side."""
    src = collect_into(model, source, names, **collect_kw)
    tgt = collect_into(model, target, names, **collect_kw)
    return {name: fit_map(src[name], tgt[name], method, support, std_eps) for name in names}


def _fit_incremental(model, names, source, target, method, support, std_eps, collect_kw) -> dict[str, AffineMap]:
    """Sites in forward order; site ``l`` fitted on activations already transported by the maps
    of the sites before it (λ = 1), each forward stopped at the site being fitted."""
    ordered = forward_order(model, names, source[0])
    maps: dict[str, AffineMap] = {}
    handles = []
    try:
        for name in ordered:
            src = collect_into(model, source, [name], **collect_kw)
            tgt = collect_into(model, target, [name], **collect_kw)
            maps[name] = fit_map(src[name], tgt[name], method, support, std_eps)
            handles.append(steer(model, {name: maps[name]}, 1.0, mode="op"))
    finally:
        for h in handles:
            h.remove()
    return maps


def _fit_layerwise(
    model, blocks: _layerwise.BlockPlan, source, target, method, support, std_eps, collect_kw, cache_budget: int | None
) -> dict[str, AffineMap]:
    """Sites fitted block by block from kept block inputs (:mod:`act_fast.estimators.layerwise`);
    the same maps as :func:`_fit_incremental`."""
    device = module_device(model)
    bar = collect_kw["bar"]
    half = None if cache_budget is None else cache_budget // 2
    modules = resolve_sites(model, [s for names in blocks.sites.values() for s in names])
    sides: list[_layerwise.SideInputs] = []
    maps: dict[str, AffineMap] = {}
    handles = []
    try:
        for batches in (source, target):
            sides.append(_layerwise.capture(model, blocks.blocks[0][1], batches, half, bar))
        per_token = sum(_layerwise.bytes_per_token(side) * side.tokens for side in sides) / max(sum(side.tokens for side in sides), 1)
        spilled = sum(side.hidden.spilled for side in sides)
        _layerwise.log.info(
            "fit layer by layer over %d blocks of %s: %.0f bytes kept per prompt token (%s on disk)",
            len(blocks.blocks), blocks.stack, per_token, f"{spilled:,} bytes" if spilled else "nothing",
        )
        last = blocks.blocks[-1][0]
        for index, block in blocks.blocks:
            for name in blocks.sites.get(index, []):
                pair = []
                for side in sides:
                    collector = _Collector(collect_kw["pooling"], {}, dict(collect_kw["stats_kwargs"]))
                    hooks = [modules[name].register_forward_hook(collector.hook(name)),
                             modules[name].register_forward_hook(_stop)]
                    try:
                        for i, mask in enumerate(side.masks):
                            collector.padding.mask = mask
                            _layerwise.run_block(block, side, i, device)
                            bar.update(1)
                    finally:
                        for h in hooks:
                            h.remove()
                    if name not in collector.stats:
                        raise ValueError(f"site {name!r} produced no output when its block ran")
                    pair.append(collector.stats[name])
                maps[name] = fit_map(pair[0], pair[1], method, support, std_eps)
                handles.append(steer(model, {name: maps[name]}, 1.0, mode="op"))
            if index == last:
                break
            for side in sides:
                for i in range(len(side.masks)):
                    out = _layerwise.run_block(block, side, i, device)
                    hidden = first_tensor_or_raise(out, blocks.stack, index)
                    side.hidden.put(i, hidden)
                    bar.update(1)
    finally:
        for h in handles:
            h.remove()
        for side in sides:
            side.hidden.close()
    return maps


def forward_order_of(blocks: _layerwise.BlockPlan) -> list[str]:
    return [name for index, _ in blocks.blocks for name in blocks.sites.get(index, [])]


def _stop(module: nn.Module, args: Any, output: Any) -> None:
    raise StopForward


def first_tensor_or_raise(output: Any, stack: str, index: int) -> Tensor:
    from act_fast.modeling import first_tensor

    out = first_tensor(output)
    if out is None:
        raise ValueError(f"block {index} of {stack} returned no tensor")
    return out


def fit(
    model: nn.Module,
    source_batches: Iterable[Batch],
    target_batches: Iterable[Batch],
    sites: SiteSpec,
    *args: Any,
    method: str = "linear_act",
    support: Support | None = None,
    incremental: bool = True,
    pooling: str = "mean",
    std_eps: float = 1e-4,
    exact: bool | None = None,
    progress: bool | None = None,
    layerwise: bool | None = None,
    cache_budget: int | None = None,
    **stats_kwargs: Any,
) -> SteeringMaps:
    """Fits one map per site from source (has the concept) and target prompt sets.

    Args:
        model: a transformers / diffusers model or any ``nn.Module`` taking ``model(**batch)``.
        source_batches, target_batches: iterables of dicts of model inputs (as a tokenizer returns
            them; ``attention_mask`` marks padding). Iterated once per site when incremental.
        sites: a preset name for :func:`act_fast.sites` or a list of module names.
        method, support, std_eps: as :func:`act_fast.fit_map` (``support=None``: the method's
            default — ``q_0_100`` for Linear-AcT, none for the others).
        incremental: the AcT reference default: sites in forward order, site ``l`` fitted on
            activations already transported by the maps of the sites before it (λ = 1) on both
            prompt sets. False: one pass, every site fitted on the unsteered model.
        pooling: ``mean`` / ``last`` / ``max`` / ``min`` per prompt, or ``none`` (every token).
        exact: keep raw pooled rows and use exact order statistics. None: exact when each side
            has at most ``EXACT_MAX_SAMPLES`` rows, else streaming histograms (memory independent
            of the number of prompts).
        progress: one progress bar for the whole fit (None: only when stderr is a terminal).
        layerwise: incremental fits only. None (default): layer by layer when the sites lie in
            one stack of blocks (:mod:`act_fast.estimators.layerwise`: the model runs once up to the
            first block, then each block runs from the kept activations entering it), else whole-model
            forwards, one per site and side, with the reason logged (logger ``act_fast.fit``).
            False: always whole-model forwards. True: layer by layer or ValueError saying why not.
            Both give the same maps (bit for bit in fp32 on CPU).
        cache_budget: bytes of kept activations (both sides together) held in memory when fitting
            layer by layer; beyond it they go to files in a temporary folder. None: all in memory.
        **stats_kwargs: histogram parameters for :class:`act_fast.ChannelStats`.

    Returns:
        :class:`act_fast.SteeringMaps` in forward order, with the fit's metadata.

    The first release's positional options (``method, support, incremental, pooling`` after
    ``sites``) still work, with a DeprecationWarning.
    """
    options = {"method": method, "support": support, "incremental": incremental, "pooling": pooling, **_legacy_options(args)}
    method, incremental, pooling = options["method"], options["incremental"], options["pooling"]
    estimator(method)
    std_eps = check_std_eps(std_eps)
    support = resolve_support(method, options["support"])
    support_levels(support)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    names = site_names(model, sites)
    source, target = list(source_batches), list(target_batches)
    if not source or not target:
        raise ValueError(f"fit needs batches on both sides, got {len(source)} source and {len(target)} target batches")
    if exact is None:
        exact = max(_rows_in(source, pooling), _rows_in(target, pooling)) <= EXACT_MAX_SAMPLES
    if cache_budget is not None and (not isinstance(cache_budget, int) or isinstance(cache_budget, bool) or cache_budget < 0):
        raise ValueError(f"cache_budget must be a non-negative number of bytes or None, got {cache_budget!r}")
    blocks = None
    if incremental and layerwise is not False:
        blocks, why = _layerwise.plan(model, forward_order(model, names, source[0]))
        if blocks is not None:
            why = _layerwise.check_stack(model, blocks, source[0])
            blocks = None if why else blocks
        if blocks is None:
            if layerwise:
                raise ValueError(f"fit(layerwise=True): {why}")
            _layerwise.log.info("fit: incremental fit by whole-model forwards, not layer by layer: %s", why)
    if blocks is not None:
        sites_in = sum(len(v) for v in blocks.sites.values())
        passes = 1 + sites_in + len(blocks.blocks) - 1
    else:
        passes = len(names) if incremental else 1
    with progress_bar(passes * (len(source) + len(target)), "fit", progress) as bar:
        collect_kw = {"pooling": pooling, "stop_early": True, "bar": bar, "stats_kwargs": {**stats_kwargs, "exact": exact}}
        if blocks is not None:
            maps = _fit_layerwise(model, blocks, source, target, method, support, std_eps, collect_kw, cache_budget)
            maps = {name: maps[name] for name in forward_order_of(blocks)}
        else:
            run = _fit_incremental if incremental else _fit_independent
            maps = run(model, names, source, target, method, support, std_eps, collect_kw)
    model_type, fingerprint = model_fingerprint(model)
    return SteeringMaps(
        maps, method=method, support=support_name(support), pooling=pooling, model_type=model_type, model_fingerprint=fingerprint
    )
