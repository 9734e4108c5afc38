"""Merging histograms of different calibrations (docs/design.md §2): the common calibration, the
re-bucketing of a histogram onto it, and the error envelope it adds.

**Common calibration.** Per channel, of two calibrations ``(c, k)`` the coarser one: the larger
exponent offset ``k`` (wider buckets, wider window), ties broken by the smaller centre. This is a
maximum under a total order, so the calibration a set of statistics ends up on does not depend on
the order in which they are merged.

**Re-bucketing.** Each bucket's count moves, whole, to the target bucket holding the midpoint of
the bucket's support (its interval clipped to the exact ``[min, max]`` and shrunk to the grid
values it can hold, :class:`~act_fast.stats.histogram.HistogramQuantiles`), except that one count
of the lowest non-empty bucket goes to the target bucket of the exact minimum and one of the
highest to that of the exact maximum (both are data values), so the histogram's first and last
buckets still hold the extremes. Counts stay integers and their totals are exact; a bucket whose
support is one value (a point mass narrower than the grid spacing) lands in that value's bucket.

**Error envelope.** Moving a value inside its source bucket moves it by at most that bucket's width,
``(2^-m + 2^-22)·|x − c_s| + 2^(E_lo+k_s+1)`` (plus the distance from the window's edge to the
exact min / max for under/overflow buckets). Each channel keeps an envelope ``rel·|x − c| + abs``
(float64, relative to its current centre ``c``) that bounds how far re-bucketing has moved any
value it holds; re-bucketing a side from ``c_s`` onto ``c_t`` turns the side's ``(rel, abs)`` into::

    rel' = (rel + 2^-m + 2^-22)·(1 + 2^-m)
    abs' = ((rel + 2^-m + 2^-22)·|c_t − c_s| + abs + 2^(E_lo+k_s+1) + beyond_s)·(1 + 2^-m)

(the factor ``1 + 2^-m`` covers evaluating the width at the moved value), and a merge keeps the
larger envelope of its two sides. Quantiles then satisfy the histogram bound of the final
calibration plus ``(1 + 2^(1-m))·(rel·|Q − c| + abs)`` (:func:`act_fast.stats.histogram.quantile_error_bound`):
the rank-``r`` value of the moved data is within the envelope of the rank-``r`` value of the data.
Every re-bucketing adds one source bucket width; merging in another order gives another path of
re-bucketings, each within its own stated bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

from act_fast.ops.stats_reference import HistogramParams, bucket_index_ref, bucket_magnitude_edges
from act_fast.stats.histogram import HistogramQuantiles

_SUB_ROUNDING = 2.0**-22
_CHANNEL_CHUNK = 256


def coarser(centre_a: Tensor, exp_a: Tensor, centre_b: Tensor, exp_b: Tensor) -> Tensor:
    """bool ``[C]``: where calibration ``b`` is the coarser one (larger ``k``; equal ``k``: smaller
    centre). Equal calibrations give False."""
    return (exp_b > exp_a) | ((exp_b == exp_a) & (centre_b < centre_a))


def bucket_of_offset(d: Tensor, exp_offset: Tensor, params: HistogramParams) -> Tensor:
    """Bucket (int64, shaped like ``d``) of float64 offsets ``d = x − c`` (``[C, P]``) for offsets
    ``exp_offset`` (int ``[C]``), computed in float64 on the exact edges (the layout of
    :mod:`act_fast.ops.stats_reference`); NaN gives the zero bucket."""
    edges = bucket_magnitude_edges(params, exp_offset).contiguous()
    j = torch.searchsorted(edges, d.abs().nan_to_num(0.0).contiguous(), right=True) - 1
    key = j + 1  # 0: zero bucket, K + 1: beyond the window
    return torch.where(d < 0, params.zero_bucket - key, params.zero_bucket + key)


def rebucket(q: HistogramQuantiles, centre: Tensor, exp_offset: Tensor) -> Tensor:
    """``q``'s histogram moved onto calibration ``(centre, exp_offset)`` (float32 / int32 ``[C]``):
    int64 ``[C, B]`` with the same per-channel totals (module docstring)."""
    out = []
    for start in range(0, q.num_channels, _CHANNEL_CHUNK):
        length = min(_CHANNEL_CHUNK, q.num_channels - start)
        out.append(_rebucket_chunk(q.narrow(start, length), centre[start : start + length], exp_offset[start : start + length]))
    return torch.cat(out) if out else q.hist.clone()


def _rebucket_chunk(q: HistogramQuantiles, centre: Tensor, exp_offset: Tensor) -> Tensor:
    params = q.params
    hist = q.hist
    channels, num_buckets = hist.shape
    idx = torch.arange(num_buckets, device=hist.device).expand(channels, -1)
    nonempty = hist > 0
    has = nonempty.any(1)
    lo, hi = q._support(idx)
    point = q.centre[:, None] + 0.5 * (lo + hi)
    target = bucket_of_offset(point - centre.to(torch.float64)[:, None], exp_offset, params)
    # The extremes' buckets as an update would compute them (float32 subtraction).
    vmin = torch.where(has, q.vmin, 0.0)
    vmax = torch.where(has, q.vmax, 0.0)
    first = bucket_index_ref(vmin, params, centre, exp_offset)
    last = bucket_index_ref(vmax, params, centre, exp_offset)
    target = torch.minimum(torch.maximum(target, first[:, None]), last[:, None])
    target = torch.where(nonempty, target, 0)
    out = torch.zeros_like(hist).scatter_add_(1, target, hist)
    # One count of the lowest / highest non-empty bucket goes to the min's / max's bucket.
    low = torch.argmax(nonempty.to(torch.int8), dim=1)
    high = num_buckets - 1 - torch.argmax(nonempty.flip(1).to(torch.int8), dim=1)
    one = has.to(torch.int64)[:, None]
    out.scatter_add_(1, target.gather(1, low[:, None]), -one)
    out.scatter_add_(1, first[:, None], one)
    out.scatter_add_(1, target.gather(1, high[:, None]), -one)
    out.scatter_add_(1, last[:, None], one)
    return out


def moved_envelope(
    rel: Tensor, abs_: Tensor, centre: Tensor, exp_offset: Tensor, vmin: Tensor, vmax: Tensor,
    target_centre: Tensor, params: HistogramParams,
) -> tuple[Tensor, Tensor]:
    """The envelope ``(rel', abs')`` (float64 ``[C]``) of a side with envelope ``(rel, abs_)`` and
    calibration ``(centre, exp_offset)`` after re-bucketing onto a calibration with centre
    ``target_centre`` (module docstring). ``vmin``, ``vmax``: the side's exact extremes."""
    slack = 1.0 + params.relative_error
    k = exp_offset.to(torch.float64)
    c = centre.to(torch.float64)
    zero = torch.ldexp(torch.ones_like(k), k + params.exp_min + 1)
    top = torch.ldexp(torch.ones_like(k), k + params.exp_max)
    beyond = torch.maximum(vmax - (c + top), (c - top) - vmin).clamp_min(0.0).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    r = rel + params.relative_error + _SUB_ROUNDING
    shift = (target_centre.to(torch.float64) - c).abs()
    return r * slack, (r * shift + abs_ + zero + beyond) * slack
