"""Closed-form per-channel estimators (docs/design.md §1): Linear-AcT, Mean-AcT, Gaussian-AcT, AURA
and the mean-difference vector, from exact samples or streaming :class:`ChannelStats`.

Both input kinds go through the same code: an ``[N, C]`` tensor becomes an exact-mode
ChannelStats (raw rows kept, exact order statistics), so every estimator reads counts, moments,
quantiles, the quantile-coupling covariance and AUROC through one interface. All arithmetic is
float64 (:mod:`.formulas`); the returned map is float32.

**Default support per method** (``support=None``, in :func:`fit_map` and :func:`act_fast.fit`
alike): the AcT reference implementation's defaults for the AcT estimators — ``q_0_100`` (the
source's [min, max]) for ``linear_act``, no support (``q_all``) for ``mean_act``,
``gaussian_act`` and ``aura`` — and never a support for ``mean_diff``: a vector add (CAA, ActAdd,
ITI-c) is applied to every value.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from act_fast.estimators import formulas
from act_fast.estimators.support import Support, support_levels
from act_fast.maps import AffineMap
from act_fast.ops.checks import check_number
from act_fast.stats import ChannelStats

# Bounds given to a channel whose fitted support is empty (lo == hi): no support there.
OPEN_BOUND = torch.finfo(torch.float32).max


def _linear_act(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    # The covariance in centred form (no E[Q_s Q_t] − m_s m_t cancellation on large-mean channels).
    return formulas.linear_act(src.coupled_covariance(tgt), src.var(unbiased=False), src.mean, tgt.mean)


def _mean_act(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    keep = formulas.std_mask(src.std(unbiased=True), tgt.std(unbiased=True), std_eps)
    return formulas.mean_act(src.mean, tgt.mean, keep)


def _gaussian_act(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    std_s, std_t = src.std(unbiased=True), tgt.std(unbiased=True)
    spread = formulas.has_spread(src.var(unbiased=False), src.mean)
    return formulas.gaussian_act(src.mean, std_s, tgt.mean, std_t, formulas.std_mask(std_s, std_t, std_eps), spread)


def _aura(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    return formulas.aura(src.auroc(tgt))


def _mean_diff(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    return formulas.mean_diff(src.mean, tgt.mean)


@dataclass(frozen=True)
class Estimator:
    """One method of :func:`fit_map`: ``fit(source, target, std_eps) -> (w, b)`` (float64 ``[C]``)
    and the support used when none is asked for."""

    fit: Callable[[ChannelStats, ChannelStats, float], tuple[Tensor, Tensor]]
    default_support: str


ESTIMATORS: dict[str, Estimator] = {
    "linear_act": Estimator(_linear_act, "q_0_100"),
    "mean_act": Estimator(_mean_act, "q_all"),
    "gaussian_act": Estimator(_gaussian_act, "q_all"),
    "aura": Estimator(_aura, "q_all"),
    "mean_diff": Estimator(_mean_diff, "q_all"),
}
METHODS = tuple(ESTIMATORS)


def estimator(method: str) -> Estimator:
    """The :class:`Estimator` of ``method``; ValueError listing the methods otherwise."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    return ESTIMATORS[method]


def resolve_support(method: str, support: Support | None) -> Support:
    """``support``, or the method's default when None (see the module docstring). ``mean_diff``
    takes none: a support other than ``q_all`` is refused rather than silently applied."""
    how = estimator(method)
    if method == "mean_diff" and support not in (None, "q_all"):
        raise ValueError(
            f"method='mean_diff' is a vector add applied to every value and takes no support (got support={support!r}); "
            "drop the support, or use method='mean_act' (the same shift, masked) with it"
        )
    return how.default_support if support is None else support


def check_std_eps(std_eps: object) -> float:
    """``std_eps`` as a float: a finite number ≥ 0 (NaN would unmask nothing and mask nothing, a
    negative one would keep zero-spread channels); ValueError / TypeError otherwise."""
    try:
        return check_number(std_eps, "std_eps", non_negative=True)
    except TypeError:
        raise TypeError(f"std_eps must be a finite number >= 0, got {type(std_eps).__name__}") from None
    except ValueError:
        raise ValueError(f"std_eps must be a finite number >= 0, got {std_eps!r}") from None


def as_stats(x: Tensor | ChannelStats, name: str) -> ChannelStats:
    """An ``[N, C]`` tensor as exact-mode ChannelStats; ChannelStats pass through."""
    if isinstance(x, ChannelStats):
        return x
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a [N, C] tensor or a ChannelStats, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, C] samples (one row per pooled prompt or token), got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating-point, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {list(x.shape)})")
    return ChannelStats(x.shape[1], device=x.device, exact=True).update(x.detach())


def _check_finite_values(stats: ChannelStats, name: str) -> None:
    empty = stats.count == 0
    if bool(empty.any()):
        channels = empty.nonzero().flatten()[:8].tolist()
        raise ValueError(
            f"{name} has channels with no finite value (all NaN/Inf or no data): {channels} "
            f"({int(empty.sum())} of {stats.num_channels}); no map can be fitted there"
        )


def _support_bounds(src: ChannelStats, levels: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Source quantiles at ``levels`` as float32 bounds; an empty interval (lo == hi: one value, or
    a constant source channel) gets no support on that channel, with a warning counting them."""
    bounds = src.quantile(list(levels))
    lo, hi = bounds[0].float(), bounds[1].float()
    empty = lo >= hi
    if bool(empty.any()):
        warnings.warn(
            f"{int(empty.sum())} of {src.num_channels} channels have an empty support interval (the source "
            f"quantiles at {levels} coincide: one value or a constant channel); those channels get no support "
            f"(the map applies to every value)",
            stacklevel=3,
        )
        lo = torch.where(empty, -OPEN_BOUND, lo)
        hi = torch.where(empty, OPEN_BOUND, hi)
    return lo, hi


def fit_map(
    source: Tensor | ChannelStats,
    target: Tensor | ChannelStats,
    method: str = "linear_act",
    support: Support | None = None,
    std_eps: float = 1e-4,
) -> AffineMap:
    """Fits a per-channel affine map transporting ``source`` activations onto ``target`` ones.

    Args:
        source: ``[N_s, C]`` samples (exact order statistics) or streaming ChannelStats of the
            activations that have the concept.
        target: ``[N_t, C]`` samples or ChannelStats of those that do not. ``N_s != N_t`` is
            fine: Linear-AcT then uses the quantile coupling ``E[Q_s(U) Q_t(U)]``.
        method: ``linear_act`` (least squares of sorted target on sorted source, population
            moments: ``w = Cov(Q_s, Q_t) / Var(s)``, ``b = m_t − w m_s``), ``mean_act``
            (``w = 1, b = m_t − m_s``), ``gaussian_act`` (``w = σ_t / σ_s``, ``b = m_t − w m_s``),
            ``aura`` (``w = 1 − 2(AUROC − 0.5)`` where the AUROC of source vs target exceeds 0.5,
            else 1; ``b = 0``) or ``mean_diff`` (``w = 1, b = m_t − m_s``, no mask, no support).
        support: a preset (``q_all``, ``q_0_100``, …, ``q_40_60``) or ``(lo_level, hi_level)``:
            the map acts where ``Q_s(lo) < x < Q_s(hi)``. Exact samples follow ``torch.quantile``.
            None: the method's default (module docstring). A channel whose interval is empty
            (one sample, a constant channel) gets no support, with a warning.
        std_eps: Mean/Gaussian-AcT leave a channel as identity when either unbiased std is
            ``≤ std_eps``; a finite number ≥ 0 (0 masks constant channels only).

    Returns:
        An :class:`AffineMap` with float32 ``[C]`` tensors. A source channel with zero spread
        gets ``w = 1, b = m_t − m_s`` under Linear-AcT; no estimator returns NaN or Inf.

    Raises:
        ValueError: unknown method or support, a support with ``mean_diff``, ``std_eps`` NaN,
            infinite or negative, channel counts that differ, a channel without any finite value on
            either side (named).
    """
    how = estimator(method)
    std_eps = check_std_eps(std_eps)
    levels = support_levels(resolve_support(method, support))
    src, tgt = as_stats(source, "source"), as_stats(target, "target")
    if src.num_channels != tgt.num_channels:
        raise ValueError(f"source has {src.num_channels} channels but target has {tgt.num_channels}")
    _check_finite_values(src, "source")
    _check_finite_values(tgt, "target")
    w, b = how.fit(src, tgt, std_eps)
    lo = hi = None
    if levels is not None:
        lo, hi = _support_bounds(src, levels)
    return AffineMap(w.float(), b.float(), lo, hi)
