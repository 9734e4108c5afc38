"""``collect``: run a model over batches and gather per-site :class:`ChannelStats` with hooks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from act_fast.stats.channel_stats import ChannelStats
from act_fast.stats.pooling import POOLINGS, as_tokens, pool


def first_tensor(output: Any) -> Tensor | None:
    """The activation of a module output: the tensor itself, or the first tensor of a tuple / list /
    mapping (HF blocks return ``(hidden_states, ...)``, diffusers blocks sometimes dataclasses)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    elif hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    return None


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def resolve_sites(model: nn.Module, site_names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    resolved = {}
    for name in site_names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(f"unknown site {name!r}: no module of that name in {type(model).__name__}{hint}")
        resolved[name] = modules[name]
    return resolved


def site_rows(output: Any, mask: Tensor | None, pooling: str, site: str, module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """Pools a site's module output into statistics rows (see :func:`pool`).

    ``mask`` is the batch's ``[B, T]`` padding mask (True = real token), applied to ``[B, T, C]``
    outputs only. Returns ``(rows [R, C], row_mask [R] or None)``.
    """
    out = first_tensor(output)
    if out is None or not out.is_floating_point():
        raise ValueError(f"site {site!r}: module {type(module).__name__} returned no floating-point tensor")
    tokens = as_tokens(out, site)
    if mask is not None and out.ndim != 3:
        mask = None
    if mask is not None and tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(
            f"site {site!r}: output of shape {list(out.shape)} does not line up with attention_mask "
            f"{list(mask.shape)} ([B, T] expected); padding cannot be excluded"
        )
    return pool(tokens, mask, pooling)


class StopForward(Exception):
    """Raised by a hook once every site has produced its output, to skip the rest of the model."""


def _stop_when_all_ran(site_names: Sequence[str]):
    """A hook factory and a reset: the hooks raise :class:`StopForward` once every site ran."""
    ran: set[str] = set()

    def make(site: str):
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            ran.add(site)
            if len(ran) == len(site_names):
                raise StopForward

        return fn

    return make, ran.clear


class _Collector:
    """Forward hooks feeding one ChannelStats per site; the padding mask of the running batch is
    set before each forward."""

    def __init__(self, pooling: str, stats_kwargs: dict[str, Any]) -> None:
        self.pooling = pooling
        self.stats_kwargs = stats_kwargs
        self.stats: dict[str, ChannelStats] = {}
        self.mask: Tensor | None = None

    def hook(self, site: str):
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            rows, row_mask = site_rows(output, self.mask, self.pooling, site, module)
            if site not in self.stats:
                self.stats[site] = ChannelStats(rows.shape[1], device=rows.device, **self.stats_kwargs)
            self.stats[site].update(rows, row_mask)

        return fn


def collect(
    model: nn.Module,
    sites: str | Sequence[str],
    batches: Iterable[Mapping[str, Any]],
    pooling: str = "mean",
    *,
    progress: bool = True,
    stop_early: bool = False,
    **stats_kwargs: Any,
) -> dict[str, ChannelStats]:
    """Runs ``model(**batch)`` for every batch and returns per-site statistics.

    Args:
        model: any ``nn.Module``; run under ``torch.no_grad()``.
        sites: module names (see :func:`act_fast.sites`).
        batches: dicts of model keyword inputs, as a tokenizer returns them; tensors are moved to
            the model's device. ``attention_mask`` ``[B, T]`` marks padding (left or right).
        pooling: ``mean`` (default), ``last``, ``max``, ``min`` over real tokens, or ``none``
            (every real token is a row). Conv outputs ``[B, C, H, W]`` are pooled over space.
        progress: show a progress bar over batches.
        stop_early: end each forward pass as soon as every site has produced its output, skipping
            the layers after the last site (for sites that run once per forward).
        **stats_kwargs: passed to :class:`ChannelStats` (``mantissa_bits``, ``exact``, ...).

    Returns:
        ``{site: ChannelStats}`` in the order of ``sites``. The hooks do no host synchronisation and
        are removed even when a forward raises.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    site_names = [sites] if isinstance(sites, str) else list(sites)
    if not site_names:
        raise ValueError("collect needs at least one site")
    modules = resolve_sites(model, site_names)
    collector = _Collector(pooling, stats_kwargs)
    device = model_device(model)
    handles = [module.register_forward_hook(collector.hook(name)) for name, module in modules.items()]
    if stop_early:
        make_stop, reset_stop = _stop_when_all_ran(site_names)
        handles += [module.register_forward_hook(make_stop(name)) for name, module in modules.items()]
    seen = 0
    try:
        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        with torch.no_grad():
            for batch in tqdm(batches, desc="collect", total=total, disable=not progress, leave=False):
                if not isinstance(batch, Mapping):
                    raise TypeError(f"each batch must be a dict of model inputs, got {type(batch).__name__}")
                inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                mask = inputs.get("attention_mask")
                collector.mask = None if mask is None else mask.to(torch.bool)
                try:
                    model(**inputs)
                except StopForward:
                    pass
                if stop_early:
                    reset_stop()
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        collector.mask = None
    if seen == 0:
        raise ValueError("collect got no batches")
    missing = [name for name in site_names if name not in collector.stats]
    if missing:
        raise ValueError(f"sites {missing} produced no output during the forward passes")
    return {name: collector.stats[name] for name in site_names}
