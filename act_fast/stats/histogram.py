"""Queries on the log-bucket histogram (DESIGN.md §2): quantiles, quantile functions on a grid,
the cross moment ``E[Q_s(U) Q_t(U)]`` and AUROC between two histograms.

The bucket layout and its parameters are defined in :mod:`act_fast.ops.stats_reference`.

**Quantile.** The generalised inverse of the CDF, ``Q(u) = inf{x : F(x) ≥ u}``, read off the
histogram: the bucket ``i`` whose cumulative count first reaches ``r = u·N``, then a linear
interpolation inside it, ``lo_i + (r - N_{<i}) / n_i · (hi_i - lo_i)``, with the bucket's edges
clipped to the exact ``[min, max]`` (so ``Q(0) = min`` and ``Q(1) = max`` exactly). The zero
bucket reports 0. The true order statistic of rank ``⌈u·N⌉`` lies in the reported bucket, so for
``|Q(u)|`` in ``[2^E_lo, 2^E_hi)`` the relative error is at most ``2^-m``
(:attr:`HistogramParams.relative_error`); in the zero bucket the absolute error is below ``2^E_lo``.
Without interpolation the bucket's edge nearest zero is reported: exact when every value is
representable at the histogram's resolution (bfloat16 data with ``m ≥ 7``).

The quantile function is piecewise linear in ``u`` between the cumulative fractions, so the
cross moment of two histograms is integrated exactly (two-point Gauss-Legendre per piece).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from act_fast.ops.stats_reference import HistogramParams, bucket_index_ref, bucket_magnitude_edges

__all__ = [
    "HistogramParams",
    "HistogramQuantiles",
    "QuantileFunction",
    "bucket_bounds",
    "bucket_index_ref",
    "cross_moment",
    "histogram_auroc",
    "midpoint_grid",
]

_GAUSS = 0.5 / math.sqrt(3.0)


def bucket_bounds(params: HistogramParams, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Value interval ``[lo_i, hi_i]`` of every bucket, float64 ``[B]`` each, increasing.

    The underflow bucket starts at -inf, the overflow bucket ends at +inf; the zero bucket is
    ``[-2^E_lo, 2^E_lo]``.
    """
    a = bucket_magnitude_edges(params).to(device)
    inf = torch.tensor([math.inf], dtype=torch.float64, device=a.device)
    edges = torch.cat([-inf, -a.flip(0), a, inf])
    return edges[:-1].contiguous(), edges[1:].contiguous()


def midpoint_grid(num_points: int, device: torch.device | str | None = None) -> Tensor:
    """``u_j = (j + 0.5) / n`` for ``j < n``: float64 ``[n]``, the grid of quantile functions."""
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise ValueError(f"num_points must be a positive int, got {num_points!r}")
    return (torch.arange(num_points, dtype=torch.float64, device=device) + 0.5) / num_points


class QuantileFunction(Protocol):
    """A per-channel quantile function ``u ↦ Q_c(u)``, piecewise linear between breakpoints."""

    num_channels: int

    def at(self, u: Tensor) -> Tensor:
        """``Q_c(u_{c,p})`` for ``u`` float64 ``[C, P]`` in ``[0, 1]``; returns float64 ``[C, P]``."""

    def breakpoints(self) -> Tensor:
        """Levels in ``[0, 1]`` (float64 ``[C, M]``) between which ``Q`` is linear in ``u``."""

    def narrow(self, start: int, length: int) -> "QuantileFunction":
        """The same function restricted to channels ``[start, start + length)``."""


class HistogramQuantiles:
    """Quantile function of per-channel histograms.

    Args:
        hist: int64 ``[C, B]`` bucket counts.
        vmin, vmax: float64 ``[C]`` exact extremes of the counted values.
        params: the histogram's resolution.
    """

    def __init__(self, hist: Tensor, vmin: Tensor, vmax: Tensor, params: HistogramParams) -> None:
        self.hist = hist
        self.vmin = vmin.to(torch.float64)
        self.vmax = vmax.to(torch.float64)
        self.params = params
        self.num_channels = hist.shape[0]
        self.cum = hist.cumsum(1).to(torch.float64)
        self.total = self.cum[:, -1]
        self.lo, self.hi = bucket_bounds(params, hist.device)
        zero = params.zero_bucket
        self.value_lo, self.value_hi = self.lo.clone(), self.hi.clone()
        self.value_lo[zero] = 0.0
        self.value_hi[zero] = 0.0

    def narrow(self, start: int, length: int) -> "HistogramQuantiles":
        return HistogramQuantiles(
            self.hist.narrow(0, start, length), self.vmin.narrow(0, start, length), self.vmax.narrow(0, start, length), self.params
        )

    def _locate(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Bucket index and in-bucket fraction (both ``[C, P]``) of levels ``u [C, P]``."""
        rank = u * self.total[:, None]
        # Counts are integers: searching max(rank, 0.5) finds the first non-empty bucket at rank 0.
        idx = torch.searchsorted(self.cum, rank.clamp_min(0.5)).clamp_max(self.hist.shape[1] - 1)
        count = self.hist.gather(1, idx).to(torch.float64)
        before = self.cum.gather(1, idx) - count
        frac = ((rank - before) / count.clamp_min(1.0)).clamp(0.0, 1.0)
        return idx, frac

    def _clip(self, v: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(v, self.vmin[:, None]), self.vmax[:, None])

    def _empty_to_nan(self, v: Tensor) -> Tensor:
        return torch.where(self.total[:, None] > 0, v, math.nan)

    def at(self, u: Tensor, interpolate: bool = True) -> Tensor:
        idx, frac = self._locate(u)
        lo = self._clip(self.value_lo[idx])
        hi = self._clip(self.value_hi[idx])
        if interpolate:
            v = lo + frac * (hi - lo)
        else:
            v = torch.where(self.value_lo[idx] >= 0, lo, hi)
        return self._empty_to_nan(self._clip(v))

    def bucket(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Interval ``[lo, hi]`` (float64 ``[C, P]`` each) of the bucket holding ``Q(u)``, clipped to
        ``[min, max]``; the order statistic of rank ``⌈u·N⌉`` lies inside it."""
        idx, _ = self._locate(u)
        return self._empty_to_nan(self._clip(self.lo[idx])), self._empty_to_nan(self._clip(self.hi[idx]))

    def breakpoints(self) -> Tensor:
        return self.cum / self.total.clamp_min(1.0)[:, None]


def cross_moment(a: QuantileFunction, b: QuantileFunction, max_elements: int = 1 << 24) -> Tensor:
    """``E[Q_a(U) Q_b(U)]`` for ``U ~ Uniform(0, 1)``, per channel: float64 ``[C]``.

    Both quantile functions are linear between their breakpoints, so the integral over the merged
    breakpoints is exact with two Gauss-Legendre nodes per piece. Channels are processed in chunks
    so that no intermediate holds more than about ``max_elements`` values.
    """
    if a.num_channels != b.num_channels:
        raise ValueError(f"cross moment needs the same channel count on both sides, got {a.num_channels} and {b.num_channels}")
    num_channels = a.num_channels
    if num_channels == 0:
        return torch.zeros(0, dtype=torch.float64)
    width = a.narrow(0, 1).breakpoints().shape[1] + b.narrow(0, 1).breakpoints().shape[1] + 2
    step = max(1, max_elements // (4 * width))
    out = []
    for start in range(0, num_channels, step):
        length = min(step, num_channels - start)
        qa, qb = a.narrow(start, length), b.narrow(start, length)
        pa, pb = qa.breakpoints(), qb.breakpoints()
        ends = torch.zeros((length, 1), dtype=torch.float64, device=pa.device)
        u = torch.cat([ends, pa, pb, ends + 1.0], dim=1).clamp(0.0, 1.0).sort(dim=1).values
        left, width_u = u[:, :-1], u[:, 1:] - u[:, :-1]
        nodes = torch.cat([left + width_u * (0.5 - _GAUSS), left + width_u * (0.5 + _GAUSS)], dim=1)
        prod = qa.at(nodes) * qb.at(nodes)
        out.append((prod * torch.cat([width_u, width_u], dim=1)).sum(1) * 0.5)
    return torch.cat(out)


def histogram_auroc(hist_pos: Tensor, hist_neg: Tensor) -> Tensor:
    """Per-channel AUROC ``P(X_pos > X_neg) + ½ P(same bucket)`` from two histograms with the same
    parameters (int64 ``[C, B]`` each); float64 ``[C]``. Values in one bucket count as ties."""
    pos = hist_pos.to(torch.float64)
    neg = hist_neg.to(torch.float64)
    n_pos = pos.sum(1, keepdim=True).clamp_min(1.0)
    n_neg = neg.sum(1, keepdim=True).clamp_min(1.0)
    below = (neg.cumsum(1) - neg) / n_neg
    return ((pos / n_pos) * (below + 0.5 * neg / n_neg)).sum(1)
