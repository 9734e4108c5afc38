"""Queries on the centred log-bucket histogram (docs/design.md §2): quantiles, quantile functions on a
grid, the cross moment ``E[Q_s(U) Q_t(U)]``, the coupled covariance
``E[(Q_s(U) − m_s)(Q_t(U) − m_t)]`` and AUROC between two histograms.

The bucket layout, its parameters and the per-channel calibration (centre ``c``, exponent offset
``k``) are defined in :mod:`act_fast.ops.stats_reference`. Everything here works on ``d = x − c``
(float64) and adds the centre last, so a channel with mean 1e4 and spread 1e-2 keeps its digits.

**Quantile.** The generalised inverse of the CDF, ``Q(u) = inf{x : F(x) ≥ u}``, read off the
histogram: the bucket ``i`` whose cumulative count first reaches ``r = u·N``, then a linear
interpolation inside it, ``lo_i + (r − N_{<i}) / n_i · (hi_i − lo_i)``, with the bucket's edges
clipped to the exact ``[min, max]`` (so ``Q(0) = min`` and ``Q(1) = max`` exactly). The zero
bucket is the interval ``[c − 2^(E_lo+k), c + 2^(E_lo+k)]``. The float32 value of rank ``⌈u·N⌉``
lies in the reported bucket (:meth:`HistogramQuantiles.bucket` widens it by the float32 rounding of
``x − c``, ``≤ 2^-24·|x − c|`` and zero when ``x`` is within a factor 2 of ``c``), so for
``|Q(u) − c| < 2^(E_hi+k)``::

    |Q̂(u) − Q(u)| ≤ 2^-m·|Q(u) − c| + 2^(E_lo+k+1) + 2^-22·|Q(u) − c|

(bucket width ``≤ 2^-m`` of its distance from ``c``; the zero bucket is ``2^(E_lo+k+1)`` wide;
the last term is that rounding). Beyond the window (under/overflow buckets) the error is at most
the distance from ``c ± 2^(E_hi+k)`` to the exact min / max. :func:`quantile_error_bound`
evaluates this. Without interpolation the bucket's edge nearest the centre is reported (the
centre itself for the zero bucket).

**Value grid.** Inputs of one floating dtype only take that dtype's values (float32 and the
float16 / bfloat16 grids; bucketing rounds to float32, so float64 input has no grid). Each bucket's
interval is shrunk to the grid values it can hold, ``[g_lo, g_hi]`` = its first and last grid
value (the interval itself when it holds none): a bucket narrower than the grid spacing holds a
single value, a point mass, exactly. This removes the bias of spreading quantised data (float32
at mean 1e4, bfloat16 activations) over buckets it only touches at one edge.

The quantile function is piecewise linear in ``u`` between the cumulative fractions, so the
cross moment and the coupled covariance of two quantile functions are integrated exactly (two-point
Gauss-Legendre per piece), and AUROC between two histograms (each a mixture of uniform densities
on its clipped buckets, the distribution whose quantile function that is) exactly over the merged
bucket edges, whatever the two calibrations.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from act_fast.ops.stats_reference import HistogramParams, bucket_index_ref, bucket_intervals_ref, bucket_magnitude_edges

__all__ = [
    "HistogramParams",
    "HistogramQuantiles",
    "QuantileFunction",
    "bucket_bounds",
    "bucket_index_ref",
    "coupled_covariance",
    "cross_moment",
    "histogram_auroc",
    "midpoint_grid",
    "quantile_error_bound",
]

_GAUSS = 0.5 / math.sqrt(3.0)
# Float32 rounding of d = x − c, relative to |d| (round to nearest).
_SUB_ROUNDING = 2.0**-24


def bucket_bounds(params: HistogramParams, exp_offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Interval ``[lo_i, hi_i]`` of ``d = x − c`` for every bucket, increasing: float64 ``[B]``
    each at ``k = 0`` (``exp_offset`` None), or ``[C, B]`` for int ``[C]`` offsets.

    The underflow bucket starts at -inf, the overflow bucket ends at +inf; the zero bucket is
    ``[−2^(E_lo+k), 2^(E_lo+k)]``.
    """
    if exp_offset is None:
        a = bucket_magnitude_edges(params)
        inf = torch.tensor([math.inf], dtype=torch.float64)
        edges = torch.cat([-inf, -a.flip(0), a, inf])
        return edges[:-1].contiguous(), edges[1:].contiguous()
    idx = torch.arange(params.num_buckets, device=exp_offset.device).expand(exp_offset.shape[0], -1)
    return bucket_intervals_ref(idx, exp_offset, params)


def _grid_floor(y: Tensor, grid: torch.dtype, strict: Tensor) -> Tensor:
    """Largest ``grid`` value ``≤ y`` (``< y`` where ``strict``), for finite float64 ``y`` inside
    the grid's range; float64, same shape."""
    r = y.to(grid)
    rd = r.to(torch.float64)
    step = torch.where(strict, rd >= y, rd > y)
    # Rounding to the grid lands on one of y's two grid neighbours, so one step down suffices.
    return torch.where(step, torch.nextafter(r, torch.full_like(r, -math.inf)), r).to(torch.float64)


def _grid_ceil(y: Tensor, grid: torch.dtype, strict: Tensor) -> Tensor:
    """Smallest ``grid`` value ``≥ y`` (``> y`` where ``strict``); as :func:`_grid_floor`."""
    return -_grid_floor(-y, grid, strict)


def midpoint_grid(num_points: int, device: torch.device | str | None = None) -> Tensor:
    """``u_j = (j + 0.5) / n`` for ``j < n``: float64 ``[n]``, the grid of quantile functions."""
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise ValueError(f"num_points must be a positive int, got {num_points!r}")
    return (torch.arange(num_points, dtype=torch.float64, device=device) + 0.5) / num_points


def quantile_error_bound(
    values: Tensor, centre: Tensor, exp_offset: Tensor, vmin: Tensor, vmax: Tensor, params: HistogramParams,
    merge_rel: Tensor | None = None, merge_abs: Tensor | None = None,
) -> Tensor:
    """The documented bound on ``|Q̂(u) − Q(u)|`` (module docstring) for true quantile values.

    Args:
        values: float64 ``[..., C]``: true quantiles ``Q(u)`` of each channel.
        centre, exp_offset: the calibration, ``[C]``.
        vmin, vmax: float64 ``[C]``: exact extremes.
        merge_rel, merge_abs: float64 ``[C]``: the re-bucketing envelope of merges across
            calibrations (:mod:`act_fast.stats.rebucket`); ``(1 + 2^(1-m))·(rel·|Q − c| + abs)``
            is added. None: nothing was re-bucketed.

    Returns:
        float64 shaped like ``values``.
    """
    d = (values.to(torch.float64) - centre.to(torch.float64)).abs()
    k = exp_offset.to(torch.float64)
    zero = torch.ldexp(torch.ones_like(k), k + params.exp_min + 1)
    inside = (params.relative_error + 4 * _SUB_ROUNDING) * d + zero
    top = torch.ldexp(torch.ones_like(k), k + params.exp_max)
    c = centre.to(torch.float64)
    beyond = torch.maximum(vmax.to(torch.float64) - (c + top), (c - top) - vmin.to(torch.float64)).clamp_min(0.0)
    bound = torch.where(d < top, inside, torch.maximum(inside, beyond))
    if merge_rel is not None and merge_abs is not None:
        bound = bound + (1.0 + 2.0 * params.relative_error) * (merge_rel.to(torch.float64) * d + merge_abs.to(torch.float64))
    return bound


class QuantileFunction(Protocol):
    """A per-channel quantile function ``u ↦ Q_c(u)``, piecewise linear between breakpoints."""

    num_channels: int

    def at(self, u: Tensor) -> Tensor:
        """``Q_c(u_{c,p})`` for ``u`` float64 ``[C, P]`` in ``[0, 1]``; returns float64 ``[C, P]``."""

    def offset_at(self, u: Tensor, shift: Tensor) -> Tensor:
        """``Q_c(u_{c,p}) − shift_c`` (``shift`` float64 ``[C]``), computed without cancellation
        when ``shift`` is close to the values: float64 ``[C, P]``."""

    def breakpoints(self) -> Tensor:
        """Levels in ``[0, 1]`` (float64 ``[C, M]``) between which ``Q`` is linear in ``u``."""

    def narrow(self, start: int, length: int) -> "QuantileFunction":
        """The same function restricted to channels ``[start, start + length)``."""


class HistogramQuantiles:
    """Quantile function of per-channel centred histograms.

    Args:
        hist: int64 ``[C, B]`` bucket counts.
        vmin, vmax: float64 ``[C]`` exact extremes of the counted values.
        params: the histogram's resolution.
        centre: float32 ``[C]``: each channel's centre ``c``.
        exp_offset: int ``[C]``: each channel's exponent offset ``k``.
        grid: the dtype whose values every counted value is (``torch.float32``, ``bfloat16``,
            ``float16``), or None; see "Value grid" in the module docstring.
    """

    def __init__(
        self,
        hist: Tensor,
        vmin: Tensor,
        vmax: Tensor,
        params: HistogramParams,
        centre: Tensor,
        exp_offset: Tensor,
        grid: torch.dtype | None = None,
    ) -> None:
        self.hist = hist
        self.vmin = vmin.to(torch.float64)
        self.vmax = vmax.to(torch.float64)
        self.params = params
        self.centre = centre.to(torch.float64)
        self.exp_offset = exp_offset
        self.grid = grid
        self.num_channels = hist.shape[0]
        cum = hist.cumsum(1)
        self.total = cum[:, -1].to(torch.float64)
        # Extremes relative to the centre; +inf / -inf for an empty channel.
        self.dmin = self.vmin - self.centre
        self.dmax = self.vmax - self.centre
        # Queries only walk the non-empty buckets (``[C, M]``, M the most any channel has, padded
        # by repeating the last): empty ones add no breakpoint to the quantile function and no
        # knot to the CDF. Their cumulative counts, counts and supports are computed once here.
        self.buckets = self._nonempty_buckets()
        self.cum = cum.gather(1, self.buckets).to(torch.float64)
        self.counts = hist.gather(1, self.buckets).to(torch.float64)
        self.lo, self.hi = self._support(self.buckets)

    def narrow(self, start: int, length: int) -> "HistogramQuantiles":
        out = HistogramQuantiles.__new__(HistogramQuantiles)
        out.params, out.grid, out.num_channels = self.params, self.grid, length
        for name in ("hist", "vmin", "vmax", "centre", "exp_offset", "total", "dmin", "dmax", "buckets", "cum", "counts", "lo", "hi"):
            setattr(out, name, getattr(self, name).narrow(0, start, length))
        return out

    def _nonempty_buckets(self) -> Tensor:
        """Indices (int64 ``[C, M]``, increasing) of each channel's non-empty buckets, padded by
        repeating the last one."""
        nonempty = self.hist > 0
        counts = nonempty.sum(1)
        width = max(int(counts.max()), 1) if self.num_channels else 1
        order = torch.sort((~nonempty).to(torch.int8), dim=1, stable=True).indices[:, :width]
        last = order.gather(1, (counts - 1).clamp_min(0)[:, None])
        j = torch.arange(width, device=order.device)[None, :]
        return torch.where(j < counts[:, None], order, last)

    def _locate(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Position among the non-empty buckets and in-bucket fraction (both ``[C, P]``) of levels
        ``u [C, P]``."""
        rank = u * self.total[:, None]
        # Counts are integers: searching max(rank, 0.5) finds the first non-empty bucket at rank 0.
        j = torch.searchsorted(self.cum, rank.clamp_min(0.5)).clamp_max(self.cum.shape[1] - 1)
        count = self.counts.gather(1, j)
        before = self.cum.gather(1, j) - count
        frac = ((rank - before) / count.clamp_min(1.0)).clamp(0.0, 1.0)
        return j, frac

    def _clip(self, d: Tensor) -> Tensor:
        """``d [C, P]`` clipped to the channel's ``[min, max] − c``."""
        return torch.minimum(torch.maximum(d, self.dmin[:, None]), self.dmax[:, None])

    def _empty_to_nan(self, v: Tensor) -> Tensor:
        return torch.where(self.total[:, None] > 0, v, math.nan)

    def _support(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Where the values of buckets ``idx [C, P]`` can lie, relative to the centre: the bucket's
        ``d`` interval clipped to ``[min, max] − c`` and shrunk to its grid values (module
        docstring); float64 ``[C, P]`` each, ``lo ≤ hi``."""
        lo, hi = bucket_intervals_ref(idx, self.exp_offset, self.params)
        if self.grid is None:
            return self._clip(lo), self._clip(hi)
        c, vmin, vmax = self.centre[:, None], self.vmin[:, None], self.vmax[:, None]
        x_lo, x_hi = c + lo, c + hi
        lo_c = torch.minimum(torch.maximum(x_lo, vmin), vmax)
        hi_c = torch.minimum(torch.maximum(x_hi, vmin), vmax)
        finite = torch.isfinite(lo_c) & torch.isfinite(hi_c)  # False only on empty channels
        lo_c, hi_c = torch.where(finite, lo_c, 0.0), torch.where(finite, hi_c, 0.0)
        zero = self.params.zero_bucket
        # Open sides (module docstring of stats_reference): below for the zero and negative
        # buckets, above for the zero and positive ones; a side clipped to min / max is closed.
        g_lo = _grid_ceil(lo_c, self.grid, (idx <= zero) & (x_lo >= vmin))
        g_hi = _grid_floor(hi_c, self.grid, (idx >= zero) & (x_hi <= vmax))
        holds = (g_lo <= g_hi) & finite
        lo_x, hi_x = torch.where(holds, g_lo, lo_c), torch.where(holds, g_hi, hi_c)
        return self._clip(lo_x - c), self._clip(hi_x - c)

    def _offset(self, u: Tensor, interpolate: bool) -> Tensor:
        """``Q(u) − c``: float64 ``[C, P]``."""
        j, frac = self._locate(u)
        lo, hi = self.lo.gather(1, j), self.hi.gather(1, j)
        if interpolate:
            return lo + frac * (hi - lo)
        idx = self.buckets.gather(1, j)
        d = torch.where(idx > self.params.zero_bucket, lo, hi)
        return torch.where(idx == self.params.zero_bucket, torch.minimum(torch.maximum(torch.zeros_like(lo), lo), hi), d)

    def offset_at(self, u: Tensor, shift: Tensor, interpolate: bool = True) -> Tensor:
        d = self._offset(u, interpolate)
        return self._empty_to_nan((self.centre - shift.to(torch.float64))[:, None] + d)

    def at(self, u: Tensor, interpolate: bool = True) -> Tensor:
        v = self.centre[:, None] + self._offset(u, interpolate)
        return self._empty_to_nan(torch.minimum(torch.maximum(v, self.vmin[:, None]), self.vmax[:, None]))

    def bucket(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Interval ``[lo, hi]`` (float64 ``[C, P]`` each) of the bucket holding ``Q(u)``, widened by
        the float32 rounding of ``x − c`` and clipped to ``[min, max]``: the float32 value of rank
        ``⌈u·N⌉`` lies inside it."""
        j, _ = self._locate(u)
        lo, hi = bucket_intervals_ref(self.buckets.gather(1, j), self.exp_offset, self.params)
        lo = self._clip(lo - _SUB_ROUNDING * lo.abs())
        hi = self._clip(hi + _SUB_ROUNDING * hi.abs())
        c = self.centre[:, None]
        return self._empty_to_nan(c + lo), self._empty_to_nan(c + hi)


    def breakpoints(self) -> Tensor:
        return self.cum / self.total.clamp_min(1.0)[:, None]

    def cdf_knots(self, reference: Tensor) -> tuple[Tensor, Tensor]:
        """The CDF of the histogram's distribution (uniform on each bucket's support) as knots:
        positions ``x − reference`` (float64 ``[C, 2B]``, non-decreasing) and CDF values (float64
        ``[C, 2B]``, non-decreasing, from 0 to 1), linear between knots at distinct positions and
        jumping where positions repeat; only non-empty buckets give knots (``[C, 2M]``, the CDF is
        flat across empty ones). ``reference`` float64 ``[C]``."""
        shift = (self.centre - reference.to(torch.float64))[:, None]
        lo, hi = shift + self.lo, shift + self.hi
        total = self.total.clamp_min(1.0)[:, None]
        before, after = (self.cum - self.counts) / total, self.cum / total
        positions = torch.stack([lo, hi], dim=2).reshape(self.num_channels, -1)
        values = torch.stack([before, after], dim=2).reshape(self.num_channels, -1)
        return positions, values


def _coupled_integral(
    a: QuantileFunction, b: QuantileFunction, shift_a: Tensor | None, shift_b: Tensor | None, max_elements: int
) -> Tensor:
    """``E[(Q_a(U) − shift_a)(Q_b(U) − shift_b)]`` per channel (zero shifts when None)."""
    if a.num_channels != b.num_channels:
        raise ValueError(f"the quantile coupling needs the same channel count on both sides, got {a.num_channels} and {b.num_channels}")
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
        if shift_a is None:
            va = qa.at(nodes)
        else:
            va = qa.offset_at(nodes, shift_a.narrow(0, start, length))
        if shift_b is None:
            vb = qb.at(nodes)
        else:
            vb = qb.offset_at(nodes, shift_b.narrow(0, start, length))
        out.append((va * vb * torch.cat([width_u, width_u], dim=1)).sum(1) * 0.5)
    return torch.cat(out)


def cross_moment(a: QuantileFunction, b: QuantileFunction, max_elements: int = 1 << 24) -> Tensor:
    """``E[Q_a(U) Q_b(U)]`` for ``U ~ Uniform(0, 1)``, per channel: float64 ``[C]``.

    Both quantile functions are linear between their breakpoints, so the integral over the merged
    breakpoints is exact with two Gauss-Legendre nodes per piece. Channels are processed in chunks
    so that no intermediate holds more than about ``max_elements`` values. Prefer
    :func:`coupled_covariance` for centred moments: ``E[Q_a Q_b] − m_a m_b`` cancels
    catastrophically on channels whose mean is large against their spread.
    """
    return _coupled_integral(a, b, None, None, max_elements)


def coupled_covariance(
    a: QuantileFunction, b: QuantileFunction, mean_a: Tensor, mean_b: Tensor, max_elements: int = 1 << 24
) -> Tensor:
    """``E[(Q_a(U) − mean_a)(Q_b(U) − mean_b)]`` for ``U ~ Uniform(0, 1)`` (the quantile coupling),
    per channel: float64 ``[C]``; ``mean_a``, ``mean_b`` float64 ``[C]``.

    Integrated exactly like :func:`cross_moment`, on the centred values directly (each quantile
    function subtracts its mean before any product), never as ``E[Q_a Q_b] − m_a m_b``.
    """
    return _coupled_integral(a, b, mean_a.to(torch.float64), mean_b.to(torch.float64), max_elements)


def _cdf_limits(positions: Tensor, values: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Left and right limits ``F(z−)``, ``F(z+)`` (float64 ``[C, Q]``) of the piecewise-linear CDF
    given by knots ``(positions, values)`` (``[C, M]``, see :meth:`HistogramQuantiles.cdf_knots`)."""
    last = positions.shape[1] - 1

    def interpolate(right: Tensor) -> Tensor:
        # Linear between knot right-1 (left of z) and knot right; 0 before the first, 1 after the last.
        r = right.clamp(1, last)
        x0, x1 = positions.gather(1, r - 1), positions.gather(1, r)
        f0, f1 = values.gather(1, r - 1), values.gather(1, r)
        step = torch.where(x1 > x0, (z - x0) / torch.where(x1 > x0, x1 - x0, 1.0), 1.0)
        f = f0 + step.clamp(0.0, 1.0) * (f1 - f0)
        f = torch.where(right <= 0, 0.0, f)
        return torch.where(right > last, values[:, -1:].expand_as(f), f)

    below = torch.searchsorted(positions, z, side="left")
    not_above = torch.searchsorted(positions, z, side="right")
    return interpolate(below), interpolate(not_above)


def histogram_auroc(pos: HistogramQuantiles, neg: HistogramQuantiles, max_elements: int = 1 << 23) -> Tensor:
    """Per-channel AUROC ``P(X > Y) + ½ P(X = Y)``, ``X ~ pos``, ``Y ~ neg``: float64 ``[C]``.

    Each histogram stands for the distribution uniform on each bucket's support (the bucket clipped
    to the exact ``[min, max]`` and shrunk to its grid values), the one whose quantile function
    :meth:`HistogramQuantiles.at` is; a support that is a point is a point mass. With ``F``, ``G`` the two CDFs (piecewise linear),
    ``AUROC = ∫ ½(G(x−) + G(x+)) dF(x)``, integrated exactly over the merged knots: on each piece
    between knots ``∫ G dF = ΔF · (G_left + G_right) / 2``, at each knot the jump of ``F`` times
    the midpoint of ``G``. The two calibrations and resolutions may differ; with equal ones,
    values sharing a bucket count as ties. A channel empty on either side gives 0.
    """
    if pos.num_channels != neg.num_channels:
        raise ValueError(f"AUROC needs the same channel count on both sides, got {pos.num_channels} and {neg.num_channels}")
    num_channels = pos.num_channels
    width = 2 * (pos.cum.shape[1] + neg.cum.shape[1])
    step = max(1, max_elements // (8 * width))
    out = []
    for start in range(0, num_channels, step):
        length = min(step, num_channels - start)
        p, n = pos.narrow(start, length), neg.narrow(start, length)
        reference = p.centre  # positions relative to the positive side's centre keep their digits
        fx, fv = p.cdf_knots(reference)
        gx, gv = n.cdf_knots(reference)
        nonempty = (p.total > 0) & (n.total > 0)
        # Empty channels have infinite knots; park them at 0 (their result is replaced below).
        fx = torch.where(nonempty[:, None], fx, 0.0)
        gx = torch.where(nonempty[:, None], gx, 0.0)
        z = torch.cat([fx, gx], dim=1).sort(dim=1).values
        f_lo, f_hi = _cdf_limits(fx, fv, z)
        g_lo, g_hi = _cdf_limits(gx, gv, z)
        first = torch.ones_like(z, dtype=torch.bool)
        first[:, 1:] = z[:, 1:] > z[:, :-1]
        jumps = torch.where(first, (f_hi - f_lo) * (g_lo + g_hi) * 0.5, 0.0).sum(1)
        distinct = z[:, 1:] > z[:, :-1]
        pieces = (f_lo[:, 1:] - f_hi[:, :-1]) * (g_hi[:, :-1] + g_lo[:, 1:]) * 0.5
        total = jumps + torch.where(distinct, pieces, 0.0).sum(1)
        out.append(torch.where(nonempty, total, 0.0))
    if not out:
        return torch.zeros(0, dtype=torch.float64, device=pos.hist.device)
    return torch.cat(out)
