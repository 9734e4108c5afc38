"""Pure-torch ground truth of the streaming statistics update (docs/design.md §2).

One update folds a ``[rows, C]`` tile into per-channel master state:

- ``count`` (int64): finite values seen; ``nan`` / ``pos_inf`` / ``neg_inf`` (int64): the
  non-finite values, which never enter any other statistic;
- ``mean``, ``m2`` (float64): Chan merge of the tile's mean and centred sum of squares
  (never ``Σx² − n·mean²``);
- ``vmin``, ``vmax`` (float64): exact extremes of the finite values (+inf / -inf while empty);
- ``hist`` (int32 pending counts, ``[C, B]``): the centred log-bucket histogram below;
- ``centre`` (float32 ``[C]``) and ``exp_offset`` (int32 ``[C]``): the per-channel calibration
  the histogram is bucketed with (read, never written, by an update).

**Histogram.** Each channel has a calibration: a centre ``c`` (float32) and an exponent offset
``k`` (int32), so the channel's scale is ``2^k``. A finite value ``x`` is bucketed from the float32
bit pattern of its offset from the centre, ``d = float32(x) − c`` (one IEEE float32 subtraction,
round to nearest even). With ``m`` mantissa bits and exponent window ``[E_lo, E_hi)``::

    bits = bitcast_int32(d)
    key  = ((bits & 0x7FFFFFFF) >> (23 − m)) − ((E_lo + k + 127) << m)
    key  = clamp(key, −1, K) + 1
    bucket = ZERO + (−key if bits < 0 else key)

with ``K = (E_hi − E_lo) · 2^m`` magnitude buckets per sign, ``ZERO = K + 1`` and ``B = 2K + 3``
buckets in all. The magnitude edges are ``a_j = 2^(E_lo+k) · 2^(j >> m) · (1 + (j mod 2^m) / 2^m)``
for ``j = 0 .. K``: ``2^m`` buckets per binade, each ``[a_j, a_{j+1})`` with
``a_{j+1} − a_j ≤ 2^-m · a_j``. Buckets in increasing value order::

    0             underflow   d ≤ −2^(E_hi+k)
    1 .. K        negative    −a_{j+1} < d ≤ −a_j   (j = K−1 .. 0)
    K + 1         zero        |d| < 2^(E_lo+k)     (x within 2^(E_lo+k) of c, ±0, subnormals)
    K + 2 .. 2K+1 positive    a_j ≤ d < a_{j+1}     (j = 0 .. K−1)
    2K + 2        overflow    d ≥ 2^(E_hi+k)

So resolution is relative to ``|x − c|``, and ``2^k`` sets the window to the channel's spread:
``k`` is clamped to ``[−126 − E_lo, 127 − E_hi]`` (:attr:`HistogramParams.exp_offset_range`), so
the window stays in float32's normal exponent range (subnormal ``d`` always falls in the zero
bucket, also on hardware that flushes them), and ``c`` is never subnormal (flushed to 0).
``c = 0, k = 0`` is the uncentred layout of earlier versions. All arithmetic but the one float32
subtraction is integer, the same in the kernel and here, so histograms agree bit for bit.

**Calibration** (:func:`calibrate_ref`): ``c`` = the lower median of the channel's finite values
(float32, a data value), ``k = floor(log2(s))`` with ``s`` the mean absolute deviation from ``c``;
fallbacks: ``s = |c|`` when the values have no spread (one value, a constant channel), ``s = 1``
when moreover ``c = 0``; ``c = 0, k = 0`` for a channel without any finite value (a placeholder:
:class:`act_fast.ChannelStats` calibrates such a channel later, from the first rows that have finite
values for it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

FLOAT32_MANTISSA_BITS = 23
FLOAT32_EXP_BIAS = 127


class HistogramParams(NamedTuple):
    """Resolution of the centred log-bucket histogram (layout in the module docstring).

    Attributes:
        mantissa_bits: ``m``, buckets per binade ``2^m``; relative bucket width ≤ ``2^-m``.
        exp_min: ``E_lo``; ``|x − c| < 2^(E_lo+k)`` goes to the zero bucket.
        exp_max: ``E_hi``; ``|x − c| ≥ 2^(E_hi+k)`` goes to the under/overflow buckets.

    The window is relative to each channel's scale ``2^k`` (its calibration), so the defaults
    cover ``|x − c|`` from ``2^-16`` to ``2^16`` times the channel's spread.
    """

    mantissa_bits: int = 5
    exp_min: int = -16
    exp_max: int = 16

    @property
    def buckets_per_sign(self) -> int:
        """``K``: magnitude buckets per sign."""
        return (self.exp_max - self.exp_min) << self.mantissa_bits

    @property
    def num_buckets(self) -> int:
        """``B = 2K + 3``: underflow, negative, zero, positive, overflow."""
        return 2 * self.buckets_per_sign + 3

    @property
    def zero_bucket(self) -> int:
        """Index of the zero bucket, ``K + 1``."""
        return self.buckets_per_sign + 1

    @property
    def key_base(self) -> int:
        """``(E_lo + 127) << m``: the key base at ``k = 0``; a channel's is ``(E_lo + k + 127) << m``."""
        return (self.exp_min + FLOAT32_EXP_BIAS) << self.mantissa_bits

    @property
    def shift(self) -> int:
        return FLOAT32_MANTISSA_BITS - self.mantissa_bits

    @property
    def exp_offset_range(self) -> tuple[int, int]:
        """``(k_lo, k_hi)``: exponent offsets keeping the window ``[E_lo + k, E_hi + k)`` inside
        float32's normal exponents ``[-126, 127]``."""
        return -126 - self.exp_min, 127 - self.exp_max

    @property
    def relative_error(self) -> float:
        """``2^-m``: bucket width relative to the bucket's distance from the centre."""
        return 2.0 ** -self.mantissa_bits

    def validate(self) -> "HistogramParams":
        """Raises ValueError on an impossible resolution; returns ``self``."""
        m, lo, hi = self.mantissa_bits, self.exp_min, self.exp_max
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in self):
            raise TypeError(f"histogram parameters must be ints, got {tuple(self)}")
        if not 0 <= m <= FLOAT32_MANTISSA_BITS:
            raise ValueError(f"mantissa_bits must be in [0, 23], got {m}")
        if not -126 <= lo < hi <= 127:
            raise ValueError(f"exponent window must satisfy -126 <= exp_min < exp_max <= 127, got [{lo}, {hi})")
        return self


def bucket_index_ref(
    x: Tensor, params: HistogramParams, centre: Tensor | None = None, exp_offset: Tensor | None = None
) -> Tensor:
    """Histogram bucket of every element, from the float32 bit pattern of ``float32(x) − c``.

    Args:
        x: ``[..., C]`` floating. Non-finite values get an index too (their sign's end bucket);
            callers mask them out.
        centre: float32 ``[C]`` (broadcast over the last dim), or None for ``c = 0``.
        exp_offset: int32 ``[C]``, or None for ``k = 0``.

    Returns:
        int64 tensor shaped like ``x``, values in ``[0, B)``.
    """
    xf = x.to(torch.float32)
    d = xf if centre is None else xf - centre.to(torch.float32)
    bits = d.contiguous().view(torch.int32)
    base = params.key_base
    if exp_offset is not None:
        base = (params.exp_min + FLOAT32_EXP_BIAS + exp_offset.to(torch.int32)) << params.mantissa_bits
    key = ((bits & 0x7FFFFFFF) >> params.shift) - base
    key = key.clamp(-1, params.buckets_per_sign) + 1
    return (params.zero_bucket + torch.where(bits < 0, -key, key)).to(torch.int64)


def bucket_magnitude_edges(params: HistogramParams, exp_offset: Tensor | None = None) -> Tensor:
    """Magnitude edges ``a_0 .. a_K`` of ``d = x − c``: float64 ``[K + 1]`` at ``k = 0`` (None), or
    ``[C, K + 1]`` for int ``[C]`` offsets. Exact (powers of two times ``1 + i / 2^m``)."""
    j = torch.arange(params.buckets_per_sign + 1, dtype=torch.int64)
    device = None if exp_offset is None else exp_offset.device
    j = j.to(device)
    mant = 1.0 + (j & ((1 << params.mantissa_bits) - 1)).to(torch.float64) / (1 << params.mantissa_bits)
    exp = (j >> params.mantissa_bits) + params.exp_min
    if exp_offset is not None:
        exp = exp[None, :] + exp_offset.to(torch.int64)[:, None]
        mant = mant.expand_as(exp)
    return torch.ldexp(mant, exp.to(torch.float64))


def bucket_intervals_ref(idx: Tensor, exp_offset: Tensor, params: HistogramParams) -> tuple[Tensor, Tensor]:
    """Interval ``[lo, hi]`` of ``d = x − c`` covered by buckets ``idx`` (int ``[C, P]``), for
    channels with offsets ``exp_offset`` (int ``[C]``): float64 ``[C, P]`` each.

    Underflow starts at -inf, overflow ends at +inf, the zero bucket is
    ``[−2^(E_lo+k), 2^(E_lo+k)]``; an edge value belongs to the bucket nearer the centre (see
    the module docstring for the half-open sides).
    """
    k_count, zero, m = params.buckets_per_sign, params.zero_bucket, params.mantissa_bits
    offset = exp_offset.to(torch.int64)[:, None]

    def edge(j: Tensor) -> Tensor:
        mant = 1.0 + (j & ((1 << m) - 1)).to(torch.float64) / (1 << m)
        return torch.ldexp(mant, ((j >> m) + params.exp_min + offset).to(torch.float64))

    j = (idx - zero).abs() - 1  # magnitude key of a signed bucket; -1 for the zero bucket
    inner = edge(j.clamp(0, k_count))
    outer = edge((j + 1).clamp(0, k_count))
    inf = torch.full_like(inner, math.inf)
    outer = torch.where(j >= k_count, inf, outer)
    inner = torch.where(j < 0, -edge(torch.zeros_like(j)), inner)  # zero bucket: [-a_0, a_0]
    positive = idx >= zero
    lo = torch.where(positive, inner, -outer)
    hi = torch.where(positive, outer, -inner)
    return lo, hi


def clamp_exp_offset(exp_offset: Tensor, params: HistogramParams) -> Tensor:
    """``exp_offset`` clamped to :attr:`HistogramParams.exp_offset_range`, as int32."""
    lo, hi = params.exp_offset_range
    return exp_offset.clamp(lo, hi).to(torch.int32)


def calibrate_ref(x: Tensor, params: HistogramParams, row_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel calibration ``(centre, exp_offset)`` from ``x [rows, C]`` (finite values of the
    rows kept by ``row_mask``), on ``x``'s device and without host synchronisation.

    ``centre`` (float32 ``[C]``): the lower median of the channel's values rounded to float32 (a
    data value; ``-0`` and subnormal medians become ``+0``). ``exp_offset`` (int32 ``[C]``):
    ``floor(log2(s))`` clamped to :attr:`HistogramParams.exp_offset_range`, with ``s`` the mean
    absolute deviation from the centre. Fallbacks: ``s = |c|`` when ``s = 0`` (one value, a
    constant channel), ``s = 1`` when also ``c = 0``; a channel without finite values (or ``x``
    without rows) gets ``c = 0, k = 0`` (:func:`calibrate_channels_ref` says which channels).
    """
    centre, exp_offset, _, _ = calibrate_channels_ref(x, params, row_mask)
    return centre, exp_offset


def calibrate_channels_ref(
    x: Tensor, params: HistogramParams, row_mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`calibrate_ref` plus which channels it could calibrate: ``(centre, exp_offset, usable,
    flat)`` with ``usable`` (bool ``[C]``) the channels with at least one finite value (the others
    get ``c = 0, k = 0``, a placeholder) and ``flat`` (bool ``[C]``) the channels calibrated from a
    single finite value, whose spread is unknown (the ``s = |c|`` / ``s = 1`` fallbacks; a constant
    channel with several values uses them too, but its values all sit at the centre). No host
    synchronisation."""
    if x.shape[0] == 0:
        zeros = torch.zeros(x.shape[1], device=x.device)
        none = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        return zeros, zeros.to(torch.int32), none, none
    xf = x.detach().to(torch.float32)
    valid = finite_mask(xf, row_mask)
    n = valid.sum(0)
    median = torch.nanmedian(torch.where(valid, xf, math.nan), dim=0).values
    tiny = torch.finfo(torch.float32).tiny
    centre = torch.where((n > 0) & (median.abs() >= tiny), median, 0.0).to(torch.float32)
    dev = torch.where(valid, (xf.to(torch.float64) - centre.to(torch.float64)).abs(), 0.0)
    spread = dev.sum(0) / n.clamp_min(1).to(torch.float64)
    flat = n == 1
    spread = torch.where(spread > 0, spread, centre.abs().to(torch.float64))
    spread = torch.where(spread > 0, spread, 1.0)
    exp_offset = torch.frexp(spread).exponent.to(torch.int64) - 1
    return centre, clamp_exp_offset(exp_offset, params), n > 0, flat


def chan_merge(
    n_a: Tensor, mean_a: Tensor, m2_a: Tensor, n_b: Tensor, mean_b: Tensor, m2_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al. pairwise merge of two (count, mean, M2) summaries, per channel.

    Counts may be integer; means and M2 float64. An empty side leaves the other unchanged.
    Returns ``(n, mean, m2)`` with ``n`` in ``n_a``'s dtype.
    """
    n = n_a + n_b
    na, nb = n_a.to(torch.float64), n_b.to(torch.float64)
    nf = (na + nb).clamp_min(1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / nf)
    m2 = m2_a + m2_b + delta * delta * (na * nb / nf)
    return n, mean, m2


def merge_moments_(state: dict[str, Tensor], other: dict[str, Tensor]) -> None:
    """Merges ``other``'s count/mean/M2 (Chan), min/max and NaN/±Inf counts into ``state`` in
    place; both hold ``[C]`` tensors under the keys of :func:`stats_update_ref`'s state."""
    n, mean, m2 = chan_merge(state["count"], state["mean"], state["m2"], other["count"], other["mean"], other["m2"])
    state["count"].copy_(n)
    state["mean"].copy_(mean)
    state["m2"].copy_(m2)
    torch.minimum(state["vmin"], other["vmin"], out=state["vmin"])
    torch.maximum(state["vmax"], other["vmax"], out=state["vmax"])
    for key in ("nan", "pos_inf", "neg_inf"):
        state[key].add_(other[key])


def finite_mask(x: Tensor, row_mask: Tensor | None = None) -> Tensor:
    """``[rows, C]`` bool: finite values of the rows kept by ``row_mask`` (``[rows]`` bool or None)."""
    finite = torch.isfinite(x)
    if row_mask is not None:
        finite &= row_mask.to(torch.bool)[:, None]
    return finite


def tile_stats_ref(x: Tensor, row_mask: Tensor | None = None, finite: Tensor | None = None) -> dict[str, Tensor]:
    """Statistics of one ``[rows, C]`` tile, in float64.

    Args:
        x: ``[rows, C]`` floating.
        row_mask: ``[rows]`` bool or None; rows where it is False are ignored entirely.
        finite: :func:`finite_mask` of ``x`` if already computed.

    Returns:
        dict of ``[C]`` tensors: ``count`` (int64), ``mean``, ``m2``, ``vmin``, ``vmax`` (float64),
        ``nan``, ``pos_inf``, ``neg_inf`` (int64). An empty channel has mean 0, m2 0,
        vmin +inf, vmax -inf.
    """
    xf = x if x.dtype == torch.float64 else x.to(torch.float32)
    if finite is None:
        finite = finite_mask(xf, row_mask)
    n = finite.sum(0)
    xd = torch.where(finite, xf, 0.0).to(torch.float64)
    mean = xd.sum(0) / n.clamp_min(1)
    m2 = torch.where(finite, xd - mean, 0.0).square().sum(0)
    is_nan, is_pinf = torch.isnan(xf), xf == math.inf
    if row_mask is None:
        kept = torch.full_like(n, x.shape[0])
    else:
        valid = row_mask.to(torch.bool)[:, None]
        is_nan, is_pinf = is_nan & valid, is_pinf & valid
        kept = valid.sum(0).expand_as(n)
    nan, pos_inf = is_nan.sum(0), is_pinf.sum(0)
    return {
        "count": n.to(torch.int64),
        "mean": mean,
        "m2": m2,
        "vmin": torch.where(finite, xf, math.inf).amin(0).to(torch.float64),
        "vmax": torch.where(finite, xf, -math.inf).amax(0).to(torch.float64),
        "nan": nan.to(torch.int64),
        "pos_inf": pos_inf.to(torch.int64),
        # Every kept value is finite, NaN, +Inf or -Inf.
        "neg_inf": (kept - n - nan - pos_inf).to(torch.int64),
    }


def empty_state(num_channels: int, params: HistogramParams, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The state :func:`stats_update_ref` and the Triton update fold into, with nothing seen:
    int64 ``count, nan, pos_inf, neg_inf`` and float64 ``mean, m2, vmin, vmax`` (``[C]``), the
    int32 pending histogram ``hist`` (``[C, B]``) and the calibration ``centre`` (float32 ``[C]``,
    zeros) and ``exp_offset`` (int32 ``[C]``, zeros): the uncentred layout until set."""
    c = num_channels
    return {
        "count": torch.zeros(c, dtype=torch.int64, device=device),
        "mean": torch.zeros(c, dtype=torch.float64, device=device),
        "m2": torch.zeros(c, dtype=torch.float64, device=device),
        "vmin": torch.full((c,), math.inf, dtype=torch.float64, device=device),
        "vmax": torch.full((c,), -math.inf, dtype=torch.float64, device=device),
        "nan": torch.zeros(c, dtype=torch.int64, device=device),
        "pos_inf": torch.zeros(c, dtype=torch.int64, device=device),
        "neg_inf": torch.zeros(c, dtype=torch.int64, device=device),
        "hist": torch.zeros((c, params.num_buckets), dtype=torch.int32, device=device),
        "centre": torch.zeros(c, dtype=torch.float32, device=device),
        "exp_offset": torch.zeros(c, dtype=torch.int32, device=device),
    }


def stats_update_ref(
    x: Tensor,
    state: dict[str, Tensor],
    params: HistogramParams,
    row_mask: Tensor | None = None,
) -> None:
    """Folds ``x [rows, C]`` into ``state`` in place (no host synchronisation).

    ``state`` holds ``count, nan, pos_inf, neg_inf`` (int64 ``[C]``), ``mean, m2, vmin, vmax``
    (float64 ``[C]``), ``hist`` (int32 or int64 ``[C, B]``, row-major per channel) and the
    calibration ``centre`` (float32 ``[C]``) and ``exp_offset`` (int32 ``[C]``), which bucket ``x``.
    """
    finite = finite_mask(x, row_mask)
    t = tile_stats_ref(x, row_mask, finite)
    merge_moments_(state, t)
    hist = state["hist"]
    num_channels, num_buckets = hist.shape
    offsets = torch.arange(num_channels, device=x.device, dtype=torch.int64) * num_buckets
    flat = (bucket_index_ref(x, params, state["centre"], state["exp_offset"]) + offsets).reshape(-1)
    hist.view(-1).scatter_add_(0, flat, finite.reshape(-1).to(hist.dtype))
