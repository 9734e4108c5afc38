"""Pure-torch ground truth of the streaming statistics update (DESIGN.md §2).

One update folds a ``[rows, C]`` tile into per-channel master state:

- ``count`` (int64): finite values seen; ``nan`` / ``pos_inf`` / ``neg_inf`` (int64): the
  non-finite values, which never enter any other statistic;
- ``mean``, ``m2`` (float64): Chan merge of the tile's mean and centred sum of squares
  (never ``Σx² − n·mean²``);
- ``vmin``, ``vmax`` (float64): exact extremes of the finite values (+inf / -inf while empty);
- ``hist`` (int32 pending counts, ``[C, B]``): the log-bucket histogram below.

**Histogram.** A value is bucketed from its float32 bit pattern. With ``m`` mantissa bits and
exponent window ``[E_lo, E_hi)``, the magnitude key is
``k = (bits(|x|) >> (23 - m)) - ((E_lo + 127) << m)``: ``2^m`` buckets per binade, each
``[a_k, a_{k+1})`` with ``a_{k+1} / a_k ≤ 1 + 2^-m``. Buckets in increasing value order::

    0            underflow   x ≤ -2^E_hi
    1 .. K       negative    -a_{k+1} < x ≤ -a_k   (k = K-1 .. 0)
    K + 1        zero        |x| < 2^E_lo          (±0, subnormals, tiny values)
    K + 2 .. 2K+1 positive   a_k ≤ x < a_{k+1}     (k = 0 .. K-1)
    2K + 2       overflow    x ≥ 2^E_hi

with ``K = (E_hi - E_lo) · 2^m`` magnitude buckets per sign, ``B = 2K + 3`` in all.
Arithmetic is integer and the same in the kernel and here, so histograms agree bit for bit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

FLOAT32_MANTISSA_BITS = 23
FLOAT32_EXP_BIAS = 127


class HistogramParams(NamedTuple):
    """Resolution of the log-bucket histogram.

    Attributes:
        mantissa_bits: ``m``, buckets per binade ``2^m``; relative bucket width ≤ ``2^-m``.
            ``m = 7`` resolves every bfloat16 value (one value per bucket), ``m = 10`` every float16
            normal value.
        exp_min: ``E_lo``; ``|x| < 2^E_lo`` goes to the zero bucket.
        exp_max: ``E_hi``; ``|x| ≥ 2^E_hi`` goes to the under/overflow buckets.
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
        """Subtracted from ``bits(|x|) >> (23 - m)`` so that ``a_0 = 2^E_lo`` has key 0."""
        return (self.exp_min + FLOAT32_EXP_BIAS) << self.mantissa_bits

    @property
    def shift(self) -> int:
        return FLOAT32_MANTISSA_BITS - self.mantissa_bits

    @property
    def relative_error(self) -> float:
        """Bound on the relative error of a quantile in ``[2^E_lo, 2^E_hi)`` magnitude: ``2^-m``."""
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


def bucket_index_ref(x: Tensor, params: HistogramParams) -> Tensor:
    """Histogram bucket of every element, from its float32 bit pattern.

    Args:
        x: any shape, floating. Non-finite values get an index too (their sign's end bucket);
            callers mask them out.

    Returns:
        int64 tensor shaped like ``x``, values in ``[0, B)``.
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    negative = bits < 0
    key = ((bits & 0x7FFFFFFF) >> params.shift) - params.key_base
    key = key.clamp(-1, params.buckets_per_sign) + 1
    return (params.zero_bucket + torch.where(negative, -key, key)).to(torch.int64)


def bucket_magnitude_edges(params: HistogramParams) -> Tensor:
    """``a_0 .. a_K`` (float64 ``[K + 1]``): magnitude bucket edges, exact powers-of-two steps."""
    keys = torch.arange(params.buckets_per_sign + 1, dtype=torch.int64) + params.key_base
    return (keys << params.shift).to(torch.int32).view(torch.float32).to(torch.float64)


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
    int64 ``count, nan, pos_inf, neg_inf`` and float64 ``mean, m2, vmin, vmax`` (``[C]``), and
    the int32 pending histogram ``hist`` (``[C, B]``)."""
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
    }


def stats_update_ref(
    x: Tensor,
    state: dict[str, Tensor],
    params: HistogramParams,
    row_mask: Tensor | None = None,
) -> None:
    """Folds ``x [rows, C]`` into ``state`` in place (no host synchronisation).

    ``state`` holds ``count, nan, pos_inf, neg_inf`` (int64 ``[C]``), ``mean, m2, vmin, vmax``
    (float64 ``[C]``) and ``hist`` (int32 or int64 ``[C, B]``, row-major per channel).
    """
    finite = finite_mask(x, row_mask)
    t = tile_stats_ref(x, row_mask, finite)
    merge_moments_(state, t)
    hist = state["hist"]
    num_channels, num_buckets = hist.shape
    offsets = torch.arange(num_channels, device=x.device, dtype=torch.int64) * num_buckets
    flat = (bucket_index_ref(x, params) + offsets).reshape(-1)
    hist.view(-1).scatter_add_(0, flat, finite.reshape(-1).to(hist.dtype))
