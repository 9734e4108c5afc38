"""Pure-torch ground truth for every kernel in :mod:`act_fast.ops`.

These functions define the math (docs/design.md §1). They are the CPU fallback of the custom ops
and the reference the Triton and C++ kernels are tested against. They do no input validation: the
public wrappers validate once, before dispatch.

Map with strength λ on one channel::

    T(x) = w * x + b
    y    = x + λ (T(x) - x)      where lo < x < hi (strict), else y = x

With ``map_index`` the map tensors are ``[K, C]`` (K maps) and batch row ``b`` uses map
``map_index[b]`` (a 0-d index: the same map for every row).

Arithmetic runs in float32 for float32/bfloat16/float16 input and in float64 for float64 input;
the result is written in the input dtype.

**Fused norm + transport** is, by definition, the norm module's own output (in the input dtype,
rounded exactly as the module rounds it) followed by the transport of that output. So a fused site
at λ = 0 returns the module's output bit for bit, and at any λ the same as the norm followed by
:func:`affine_transport_ref`. The norms (:func:`rms_norm_ref`, :func:`layer_norm_ref`,
:func:`group_norm_ref`) use the same torch operations in the same order as the modules they stand
for (Hugging Face RMSNorms, ``torch.nn.LayerNorm`` / ``GroupNorm`` / ``RMSNorm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


MAX_CHAIN = 4
"""The most maps one row may compose (``map_index [B, S]`` with ``S ≤ MAX_CHAIN``): a compile-time
constant of the kernels."""


def chain_strength(strength: Strength, k: int, x: Tensor, cdt: torch.dtype) -> Tensor:
    """λ of the ``k``-th map of a chain, broadcastable against ``x``: column ``k`` of a ``[B, S]``
    strength, else the strength itself (one λ per row, or one for all)."""
    if isinstance(strength, Tensor) and strength.ndim == 2:
        strength = strength[:, k]
    return strength_tensor(strength, x, cdt)


def chain_compute(
    xf: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor,
    channel_dim: int,
    drop_zero: bool = True,
) -> Tensor:
    """The chain ``T_S(… T_1(xf))`` of a ``[B, S]`` ``map_index`` in ``xf``'s (compute) dtype, each
    map's support tested on its own input; ``channel_dim`` non-negative. With ``drop_zero`` a map
    whose λ is 0 is skipped (exactly the identity); without it (for gradients, which must see
    ``∂y/∂λ`` at λ = 0) it is evaluated."""
    for k in range(map_index.shape[1]):
        w, b, lo_v, hi_v = map_views(weight, bias, lo, hi, map_index[:, k], xf.ndim, channel_dim, xf.dtype)
        lam = chain_strength(strength, k, xf, xf.dtype)
        y = transport_compute(xf, w, b, lam, lo_v, hi_v)
        xf = torch.where(lam != 0, y, xf) if drop_zero else y
    return xf


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
        strength: float, 0-d tensor, or ``[B]`` (one value per batch row ``x.shape[0]``); with a
            ``[B, S]`` ``map_index`` also ``[B, S]`` (one λ per map of the chain).
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds or None (no support).
        channel_dim: -1 (channels last) or 1 (conv features).
        pool_spatial: with ``channel_dim=1``: evaluate support and map on the spatial mean ``m``
            and add ``λ((w - 1) m + b)`` to every position. Without it (``channel_dim=1``) the map
            is per position and only the support is tested on the spatial mean.
        map_index: None, or an int32/int64 index into the K maps: 0-d (one map for every row),
            ``[B]`` (map ``map_index[b]`` for batch row ``b``) or ``[B, S]`` (the chain
            ``map_index[b, 0], …`` for row ``b``; channels last only).

    Returns:
        Tensor shaped and typed like ``x``.
    """
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    cd = channel_dim % x.ndim
    if map_index is not None and map_index.ndim == 2:
        return chain_compute(xf, weight, bias, strength, lo, hi, map_index, cd).to(x.dtype)
    lam = strength_tensor(strength, x, cdt)
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


# -- norms: the modules' own formulas --------------------------------------------------------------


def rms_normalize(xf: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x̂, rstd)`` of ``xf: [..., C]`` in its dtype: ``rstd = rsqrt(mean(x², -1) + eps)``
    (``[..., 1]``) and ``x̂ = x · rstd``, in the Hugging Face modules' operation order."""
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf * rstd, rstd


def rms_norm_ref(
    x: Tensor,
    norm_weight: Tensor | None,
    eps: float,
    weight_offset: float = 0.0,
    cast_before_scale: bool = False,
) -> Tensor:
    """RMSNorm over the last dim as the modules compute it, returned in ``x``'s dtype.

    ``x̂ = x · rsqrt(mean(x²) + eps)`` in the compute dtype; then with ``cast_before_scale``
    (Llama, Mistral, Qwen, Phi-3: ``weight * x̂.to(input_dtype)``) ``x̂`` is rounded to ``x``'s
    dtype before it is multiplied by ``norm_weight + weight_offset``; without it (Gemma's
    ``x̂ * (1 + w.float())``, ``torch.nn.RMSNorm``) the product is taken in the compute dtype. One
    final rounding to ``x``'s dtype. ``x: [..., C]``, ``norm_weight: [C]`` or None.
    """
    cdt = compute_dtype(x.dtype)
    n, _ = rms_normalize(x.to(cdt), eps)
    if norm_weight is None:
        return n.to(x.dtype)
    if cast_before_scale:
        n = n.to(x.dtype).to(cdt)
    return (n * (norm_weight.to(cdt) + weight_offset)).to(x.dtype)


def layer_normalize(xf: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x̂, rstd)`` of ``xf: [..., C]`` over the last dim (biased variance), in its dtype."""
    xc = xf - xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    return xc * rstd, rstd


def _affine_params(x: Tensor, *params: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
    """``x`` and a norm's affine parameters as the module sees them when their dtypes agree (the
    module's own computation); otherwise all in the compute dtype (one rounding at the end)."""
    if all(p is None or p.dtype == x.dtype for p in params):
        return x, list(params)
    cdt = compute_dtype(x.dtype)
    return x.to(cdt), [None if p is None else p.to(cdt) for p in params]


def layer_norm_ref(x: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm over the last dim, as ``torch.nn.LayerNorm`` computes it, in ``x``'s dtype."""
    xs, (nw, nb) = _affine_params(x, norm_weight, norm_bias)
    return F.layer_norm(xs, (x.shape[-1],), nw, nb, eps).to(x.dtype)


def group_normalize(xf: Tensor, num_groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """``(x̂, rstd)`` of conv features ``xf: [B, C, *spatial]`` over each group of channels and all
    positions (biased variance); ``x̂`` shaped like ``xf``, ``rstd`` ``[B, G, 1]``."""
    xg = xf.reshape(xf.shape[0], num_groups, -1)
    xc = xg - xg.mean(-1, keepdim=True)
    rstd = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    return (xc * rstd).reshape(xf.shape), rstd


def group_norm_ref(
    x: Tensor, num_groups: int, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float
) -> Tensor:
    """GroupNorm of ``x: [B, C, *spatial]`` as ``torch.nn.GroupNorm`` computes it, in ``x``'s dtype
    (the ATen op itself: ``F.group_norm`` also refuses groups of one value, a training-time check)."""
    xs, (nw, nb) = _affine_params(x, norm_weight, norm_bias)
    return torch.group_norm(xs, num_groups, nw, nb, eps, torch.backends.cudnn.enabled).to(x.dtype)


# -- fused norm + transport -------------------------------------------------------------------------


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
    cast_before_scale: bool = False,
    map_index: Tensor | None = None,
) -> Tensor:
    """:func:`rms_norm_ref`, then :func:`affine_transport_ref` of its output (channels last).

    ``x: [..., C]``; ``norm_weight`` ``[C]``; the map tensors, strength and ``map_index`` as in
    :func:`affine_transport_ref`. Returns ``x``'s shape and dtype.
    """
    h = rms_norm_ref(x, norm_weight, eps, weight_offset, cast_before_scale)
    return affine_transport_ref(h, weight, bias, strength, lo, hi, map_index=map_index)


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
    """:func:`layer_norm_ref`, then :func:`affine_transport_ref` of its output (channels last)."""
    h = layer_norm_ref(x, norm_weight, norm_bias, eps)
    return affine_transport_ref(h, weight, bias, strength, lo, hi, map_index=map_index)


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
    """:func:`group_norm_ref` of conv features ``x: [B, C, *spatial]``, then
    :func:`affine_transport_ref` of its output with ``channel_dim=1`` (support tested on each
    plane's mean); the result has ``x``'s dtype."""
    h = group_norm_ref(x, num_groups, norm_weight, norm_bias, eps)
    return affine_transport_ref(h, weight, bias, strength, lo, hi, channel_dim=1, pool_spatial=pool_spatial, map_index=map_index)
