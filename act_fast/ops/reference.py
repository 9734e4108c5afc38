"""Pure-torch ground truth for every kernel in :mod:`act_fast.ops`.

These functions define the math (DESIGN.md §1). They are the CPU path of the custom ops and
the reference the Triton kernels are tested against. They do no input validation: the public
wrappers validate once, before dispatch.

Map with strength λ on one channel::

    T(x) = w * x + b
    y    = x + λ (T(x) - x)      where lo < x < hi (strict), else y = x

With ``map_index`` the map tensors are ``[K, C]`` (K maps) and batch row ``b`` uses map
``map_index[b]`` (a 0-d index: the same map for every row).

Arithmetic runs in float32 for float32/bfloat16/float16 input and in float64 for float64 input;
the result is written in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

Strength = float | Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the maps are evaluated in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def strength_tensor(strength: Strength, x: Tensor, cdt: torch.dtype) -> Tensor:
    """λ as a tensor that broadcasts against ``x``.

    Returns a 0-d tensor for a float or a 0-d tensor, and ``[B, 1, ..., 1]`` (``x.ndim`` dims)
    for one value per batch row ``[B]`` (``B = x.shape[0]``).
    """
    if not isinstance(strength, Tensor):
        return torch.tensor(float(strength), dtype=cdt, device=x.device)
    if strength.ndim == 0:
        return strength.to(cdt)
    return strength.to(cdt).reshape((-1,) + (1,) * (x.ndim - 1))


def channel_view_shape(ndim: int, channel_dim: int, num_channels: int) -> tuple[int, ...]:
    """Shape that broadcasts a ``[C]`` vector along ``channel_dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[channel_dim] = num_channels
    return tuple(shape)


def support_mask(v: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor | None:
    """``lo < v < hi`` (strict), or None when there is no support (everything inside)."""
    if lo is None:
        return None
    return (v > lo) & (v < hi)


def transport_compute(
    xf: Tensor,
    weight: Tensor,
    bias: Tensor,
    lam: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
) -> Tensor:
    """The per-element map in the compute dtype; all arguments already broadcast to ``xf``."""
    y = xf + lam * ((weight * xf + bias) - xf)
    inside = support_mask(xf, lo, hi)
    return y if inside is None else torch.where(inside, y, xf)


def map_views(
    weight: Tensor,
    bias: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    ndim: int,
    channel_dim: int,
    cdt: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The map tensors in ``cdt``, shaped to broadcast against an ``ndim`` tensor whose channels
    are on ``channel_dim`` (non-negative).

    Without ``map_index`` the tensors are ``[C]`` and become ``[1, .., C, .., 1]``. With it they
    are ``[K, C]``: a 0-d index picks one map for every row (same view), a ``[B]`` index one map
    per batch row (``[B, 1, .., C, .., 1]``).
    """
    per_row = map_index is not None and map_index.ndim == 1
    shape = list(channel_view_shape(ndim, channel_dim, weight.shape[-1]))
    if per_row:
        shape[0] = map_index.shape[0]

    def view(v: Tensor | None) -> Tensor | None:
        if v is None:
            return None
        if map_index is not None:
            # index_select, not v[map_index]: a 0-d tensor index would be read as a Python int
            # (a host sync, and a data-dependent value under torch.compile). IndexError outside [0, K).
            v = v.index_select(0, map_index.reshape(-1))
        return v.to(cdt).reshape(shape)

    return view(weight), view(bias), view(lo), view(hi)  # type: ignore[return-value]


def affine_transport_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    *,
    channel_dim: int = -1,
    pool_spatial: bool = False,
    map_index: Tensor | None = None,
) -> Tensor:
    """Reference affine transport.

    Args:
        x: ``[..., C]`` (``channel_dim=-1``) or ``[B, C, *spatial]`` (``channel_dim=1``).
        weight, bias: ``[C]``, or ``[K, C]`` (K maps) with ``map_index``.
        strength: float, 0-d tensor, or ``[B]`` (one value per batch row ``x.shape[0]``).
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds or None (no support).
        channel_dim: -1 (channels last) or 1 (conv features).
        pool_spatial: with ``channel_dim=1``: evaluate support and map on the spatial mean ``m``
            and add ``λ((w - 1) m + b)`` to every position. Without it (``channel_dim=1``) the map
            is per position and only the support is tested on the spatial mean.
        map_index: None, or an int32/int64 index into the K maps: 0-d (one map for every row) or
            ``[B]`` (map ``map_index[b]`` for batch row ``b``).

    Returns:
        Tensor shaped and typed like ``x``.
    """
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    lam = strength_tensor(strength, x, cdt)
    cd = channel_dim % x.ndim
    w, b, lo_v, hi_v = map_views(weight, bias, lo, hi, map_index, x.ndim, cd, cdt)
    if cd == x.ndim - 1 or x.ndim <= 2:
        return transport_compute(xf, w, b, lam, lo_v, hi_v).to(x.dtype)
    m = xf.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    inside = support_mask(m, lo_v, hi_v)
    if pool_spatial:
        y = xf + lam * ((w - 1.0) * m + b)
    else:
        y = xf + lam * ((w * xf + b) - xf)
    return (y if inside is None else torch.where(inside, y, xf)).to(x.dtype)


def rms_norm_ref(x: Tensor, norm_weight: Tensor | None, eps: float, weight_offset: float = 0.0) -> Tensor:
    """RMSNorm over the last dim, in the compute dtype (not cast back).

    ``x * rsqrt(mean(x²) + eps) * (norm_weight + weight_offset)``; ``weight_offset=1`` is the
    Gemma variant. ``x: [..., C]``, ``norm_weight: [C]`` or None.
    """
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if norm_weight is not None:
        n = n * (norm_weight.to(cdt) + weight_offset)
    return n


def layer_norm_ref(x: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm over the last dim (biased variance), in the compute dtype (not cast back)."""
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    mu = xf.mean(-1, keepdim=True)
    xc = xf - mu
    n = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    if norm_weight is not None:
        n = n * norm_weight.to(cdt)
    if norm_bias is not None:
        n = n + norm_bias.to(cdt)
    return n


def _transport_normed(
    h: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
) -> Tensor:
    lam = strength_tensor(strength, x, h.dtype)
    w, b, lo_v, hi_v = map_views(weight, bias, lo, hi, map_index, h.ndim, h.ndim - 1, h.dtype)
    return transport_compute(h, w, b, lam, lo_v, hi_v).to(x.dtype)


def rms_norm_transport_ref(
    x: Tensor,
    norm_weight: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    *,
    eps: float = 1e-6,
    weight_offset: float = 0.0,
    map_index: Tensor | None = None,
) -> Tensor:
    """RMSNorm then affine transport of its output, with no rounding in between.

    ``x: [..., C]``; ``norm_weight`` ``[C]``; the map tensors, strength and ``map_index`` as in
    :func:`affine_transport_ref`.
    """
    h = rms_norm_ref(x, norm_weight, eps, weight_offset)
    return _transport_normed(h, x, weight, bias, strength, lo, hi, map_index)


def layer_norm_transport_ref(
    x: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    *,
    eps: float = 1e-5,
    map_index: Tensor | None = None,
) -> Tensor:
    """LayerNorm then affine transport of its output, with no rounding in between."""
    h = layer_norm_ref(x, norm_weight, norm_bias, eps)
    return _transport_normed(h, x, weight, bias, strength, lo, hi, map_index)


def group_norm_ref(
    x: Tensor, num_groups: int, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float
) -> Tensor:
    """GroupNorm of ``x: [B, C, *spatial]`` (biased variance over each group of ``C / num_groups``
    channels and all positions), in the compute dtype (not cast back); affine ``[C]`` or None."""
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    xg = xf.reshape(x.shape[0], num_groups, x.numel() // max(1, x.shape[0] * num_groups))
    mu = xg.mean(-1, keepdim=True)
    xc = xg - mu
    n = (xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)).reshape(x.shape)
    shape = channel_view_shape(x.ndim, 1, x.shape[1])
    if norm_weight is not None:
        n = n * norm_weight.to(cdt).reshape(shape)
    if norm_bias is not None:
        n = n + norm_bias.to(cdt).reshape(shape)
    return n


def group_norm_transport_ref(
    x: Tensor,
    num_groups: int,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    *,
    eps: float = 1e-5,
    pool_spatial: bool = True,
    map_index: Tensor | None = None,
) -> Tensor:
    """GroupNorm of conv features ``x: [B, C, *spatial]``, then the affine transport of its output
    with ``channel_dim=1`` (support tested on each plane's mean, see :func:`affine_transport_ref`),
    with no rounding in between; the result has ``x``'s dtype."""
    h = group_norm_ref(x, num_groups, norm_weight, norm_bias, eps)
    y = affine_transport_ref(h, weight, bias, strength, lo, hi, channel_dim=1, pool_spatial=pool_spatial, map_index=map_index)
    return y.to(x.dtype)
