"""Closed-form per-channel estimators (DESIGN.md §1): Linear-AcT, Mean-AcT, Gaussian-AcT, AURA
and the mean-difference vector, from exact samples or streaming :class:`ChannelStats`.

Both input kinds go through the same code: an ``[N, C]`` tensor becomes an exact-mode
ChannelStats (raw rows kept, exact order statistics), so every estimator reads counts, moments,
quantiles, the quantile-coupling cross moment and AUROC through one interface. All arithmetic
is float64; the returned map is float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from act_fast.estimators.support import Support, support_levels
from act_fast.maps import AffineMap
from act_fast.stats import ChannelStats

METHODS = ("linear_act", "mean_act", "gaussian_act", "aura", "mean_diff")
# A source channel whose std is below this fraction of |mean| has no spread left after float64
# rounding; regressing on it would divide by rounding noise.
_ZERO_SPREAD_REL = 64 * torch.finfo(torch.float64).eps


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


def _std_mask(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> Tensor:
    """Channels where both unbiased stds exceed ``std_eps`` (a NaN std, from one sample, fails)."""
    return (src.std(unbiased=True) > std_eps) & (tgt.std(unbiased=True) > std_eps)


def _has_spread(src: ChannelStats) -> Tensor:
    """Source channels whose variance is more than float64 rounding of their mean."""
    var_s = src.var(unbiased=False)
    return var_s > (_ZERO_SPREAD_REL * src.mean.abs()).square()


def _linear_act(src: ChannelStats, tgt: ChannelStats) -> tuple[Tensor, Tensor]:
    m_s, m_t = src.mean, tgt.mean
    var_s = src.var(unbiased=False)
    cov = src.cross_moment(tgt) - m_s * m_t
    spread = _has_spread(src)
    w = torch.where(spread, cov / torch.where(spread, var_s, 1.0), 1.0)
    return w, m_t - w * m_s


def _mean_act(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    keep = _std_mask(src, tgt, std_eps)
    return torch.ones_like(src.mean), torch.where(keep, tgt.mean - src.mean, 0.0)


def _gaussian_act(src: ChannelStats, tgt: ChannelStats, std_eps: float) -> tuple[Tensor, Tensor]:
    keep = _std_mask(src, tgt, std_eps)
    spread = _has_spread(src)
    std_s = torch.where(spread, src.std(unbiased=True), 1.0)
    w = torch.where(keep & spread, tgt.std(unbiased=True) / std_s, 1.0)
    return w, torch.where(keep, tgt.mean - w * src.mean, 0.0)


def _aura(src: ChannelStats, tgt: ChannelStats) -> tuple[Tensor, Tensor]:
    auroc = src.auroc(tgt)
    w = torch.where(auroc > 0.5, 1.0 - 2.0 * (auroc - 0.5), 1.0)
    return w, torch.zeros_like(w)


def fit_map(
    source: Tensor | ChannelStats,
    target: Tensor | ChannelStats,
    method: str = "linear_act",
    support: Support = "q_all",
    std_eps: float = 1e-4,
) -> AffineMap:
    """Fits a per-channel affine map transporting ``source`` activations onto ``target`` ones.

    Args:
        source: ``[N_s, C]`` samples (exact order statistics) or streaming ChannelStats of the
            activations that have the concept.
        target: ``[N_t, C]`` samples or ChannelStats of those that do not. ``N_s != N_t`` is
            fine: Linear-AcT then uses the quantile coupling ``E[Q_s(U) Q_t(U)]``.
        method: ``linear_act`` (least squares of sorted target on sorted source, population
            moments: ``w = (E[Q_s Q_t] − m_s m_t) / Var(s)``, ``b = m_t − w m_s``), ``mean_act``
            (``w = 1, b = m_t − m_s``), ``gaussian_act`` (``w = σ_t / σ_s``, ``b = m_t − w m_s``),
            ``aura`` (``w = 1 − 2(AUROC − 0.5)`` where the AUROC of source vs target exceeds 0.5,
            else 1; ``b = 0``) or ``mean_diff`` (``w = 1, b = m_t − m_s``, no mask).
        support: a preset (``q_all``, ``q_0_100``, …, ``q_40_60``) or ``(lo_level, hi_level)``:
            the map acts where ``Q_s(lo) < x < Q_s(hi)``. Exact samples follow ``torch.quantile``.
        std_eps: Mean/Gaussian-AcT leave a channel as identity when either unbiased std is
            ``≤ std_eps``.

    Returns:
        An :class:`AffineMap` with float32 ``[C]`` tensors. A source channel with zero spread
        gets ``w = 1, b = m_t − m_s`` under Linear-AcT; no estimator returns NaN or Inf.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    levels = support_levels(support)
    src, tgt = as_stats(source, "source"), as_stats(target, "target")
    if src.num_channels != tgt.num_channels:
        raise ValueError(f"source has {src.num_channels} channels but target has {tgt.num_channels}")
    if method == "linear_act":
        w, b = _linear_act(src, tgt)
    elif method == "mean_act":
        w, b = _mean_act(src, tgt, std_eps)
    elif method == "gaussian_act":
        w, b = _gaussian_act(src, tgt, std_eps)
    elif method == "aura":
        w, b = _aura(src, tgt)
    else:
        w, b = torch.ones_like(src.mean), tgt.mean - src.mean
    lo = hi = None
    if levels is not None:
        bounds = src.quantile(list(levels))
        lo, hi = bounds[0].float(), bounds[1].float()
    return AffineMap(w.float(), b.float(), lo, hi)
