"""``collect``: run a model over batches and gather per-site :class:`ChannelStats` with hooks."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.modeling import Batch, first_tensor, output_channel_dim, progress_bar, run_batches
from act_fast.integrations import SiteSpec, site_names
from act_fast.stats.channel_stats import ChannelStats
from act_fast.stats.pooling import POOLINGS, as_tokens, pool


def site_rows(output: Any, mask: Tensor | None, pooling: str, site: str, module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """Pools a site's module output into statistics rows (see :func:`pool`).

    ``mask`` is the batch's ``[B, T]`` padding mask (True = real token), applied to ``[B, T, C]``
    outputs only. Returns ``(rows [R, C], row_mask [R] or None)``.
    """
    out = first_tensor(output)
    if out is None or not out.is_floating_point():
        raise ValueError(f"site {site!r}: module {type(module).__name__} returned no floating-point tensor")
    channel_dim = output_channel_dim(module, out)
    tokens = as_tokens(out, site, channel_dim)
    if mask is not None and (out.ndim != 3 or channel_dim == 1):
        mask = None
    if mask is not None and tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(
            f"site {site!r}: output of shape {list(out.shape)} does not line up with attention_mask "
            f"{list(mask.shape)} ([B, T] expected); padding cannot be excluded"
        )
    return pool(tokens, mask, pooling)


class PaddingMask:
    """The ``[B, T]`` padding mask (True = real token) of the batch running now, read by hooks."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None

    def __call__(self, inputs: dict[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        self.mask = None if mask is None else mask.to(torch.bool)


class _Collector:
    """Forward hooks feeding one ChannelStats per site. With a process ``group``, a site's new
    statistics are calibrated on its first rows and rank 0's calibration is broadcast (a collective
    inside the first forward pass of every rank), so the ranks' histograms merge exactly."""

    def __init__(self, pooling: str, stats: dict[str, ChannelStats], stats_kwargs: dict[str, Any], group: Any = None) -> None:
        self.pooling = pooling
        self.stats = stats
        self.stats_kwargs = stats_kwargs
        self.group = group
        self.padding = PaddingMask()

    def hook(self, site: str):
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            rows, row_mask = site_rows(output, self.padding.mask, self.pooling, site, module)
            if site not in self.stats:
                stats = ChannelStats(rows.shape[1], device=rows.device, **self.stats_kwargs)
                if self.group is not None:
                    stats.calibrate(rows, row_mask, group=self.group)
                self.stats[site] = stats
            self.stats[site].update(rows, row_mask)

        return fn


def _legacy_order(batches: Any, sites: Any, args: tuple) -> tuple[Any, Any, dict[str, Any]]:
    """``collect(model, sites, batches[, pooling])``, the first release's order: warns and returns
    ``(batches, sites, keyword options)``; the new order passes through."""
    names_first = isinstance(batches, str) or (isinstance(batches, Sequence) and bool(batches) and all(isinstance(s, str) for s in batches))
    options: dict[str, Any] = {}
    if names_first:
        warnings.warn(
            "collect(model, sites, batches) is deprecated; call collect(model, batches, sites, pooling=...) "
            "(one grammar: model, batches, sites, then keyword options)",
            DeprecationWarning,
            stacklevel=3,
        )
        batches, sites = sites, batches
    if args:
        if len(args) > 1:
            raise TypeError(f"collect takes at most one extra positional argument (pooling), got {len(args)}")
        warnings.warn("passing pooling positionally to collect is deprecated; use pooling=...", DeprecationWarning, stacklevel=3)
        options["pooling"] = args[0]
    return batches, sites, options


def collect(
    model: nn.Module,
    batches: Iterable[Batch],
    sites: SiteSpec,
    *args: Any,
    pooling: str = "mean",
    stats: dict[str, ChannelStats] | None = None,
    group: Any = None,
    progress: bool | None = None,
    stop_early: bool = False,
    **stats_kwargs: Any,
) -> dict[str, ChannelStats]:
    """Runs ``model(**batch)`` for every batch and returns per-site statistics.

    Args:
        model: any ``nn.Module``; run under ``torch.no_grad()``.
        batches: dicts of model keyword inputs, as a tokenizer returns them; tensors are moved to
            the model's device. ``attention_mask`` ``[B, T]`` marks padding (left or right).
        sites: a preset name for :func:`act_fast.sites` (``"post_layernorm"``, …) or a list of
            module names.
        pooling: ``mean`` (default), ``last``, ``max``, ``min`` over real tokens, or ``none``
            (every real token is a row). Conv outputs ``[B, C, H, W]`` are pooled over space.
        stats: ``{site: ChannelStats}`` to keep adding to (e.g. from an earlier call, to collect in
            chunks); sites missing from it get new statistics. Returned updated in place.
        group: a ``torch.distributed`` process group (``True``: the default group) when every rank
            collects its own shard: each site's new statistics are calibrated on rank 0's first
            batch (broadcast), so that ``ChannelStats.all_reduce(group)`` merges them exactly. The
            statistics returned are the rank's own; merge them with ``all_reduce``.
        progress: a progress bar over batches (None: only when stderr is a terminal).
        stop_early: end each forward pass as soon as every site has produced its output, skipping
            the layers after the last site (for sites that run once per forward).
        **stats_kwargs: passed to new :class:`ChannelStats` (``mantissa_bits``, ``exact``, ...).

    Returns:
        ``{site: ChannelStats}`` in the order of ``sites``. The hooks do no host synchronisation and
        are removed even when a forward raises.

    The first release's order ``collect(model, sites, batches, pooling)`` still works, with a
    DeprecationWarning.
    """
    batches, sites, legacy = _legacy_order(batches, sites, args)
    pooling = legacy.get("pooling", pooling)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    names = site_names(model, sites)
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict of site -> ChannelStats, got {type(stats).__name__}")
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    with progress_bar(total, "collect", progress) as bar:
        return collect_into(
            model, batches, names, pooling=pooling, stats=stats, group=group, stop_early=stop_early, bar=bar, stats_kwargs=stats_kwargs
        )


def collect_into(
    model: nn.Module,
    batches: Iterable[Batch],
    names: Sequence[str],
    *,
    pooling: str,
    stats: dict[str, ChannelStats] | None = None,
    group: Any = None,
    stop_early: bool = False,
    bar: Any = None,
    stats_kwargs: dict[str, Any] | None = None,
) -> dict[str, ChannelStats]:
    """:func:`collect` on resolved site ``names`` with a validated ``pooling``, advancing an
    existing progress ``bar`` (the building block of :func:`collect` and :func:`act_fast.fit`)."""
    collector = _Collector(pooling, {} if stats is None else stats, dict(stats_kwargs or {}), group)
    seen = run_batches(
        model, batches, {name: collector.hook(name) for name in names},
        stop_after=names if stop_early else None, on_batch=collector.padding, bar=bar,
    )
    if seen == 0:
        raise ValueError("collect got no batches")
    missing = [name for name in names if name not in collector.stats]
    if missing:
        raise ValueError(f"sites {missing} produced no output during the forward passes")
    return {name: collector.stats[name] for name in names}
