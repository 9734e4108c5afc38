"""Gradients of the transport ops, shared by their autograd formulas.

Forward roundings (the normed value rounded to the input dtype before the transport) are treated
as the identity; the support mask is not differentiated (outside it ``y = h``). Everything is
computed in the compute dtype from the reference's normalisation helpers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from act_fast.ops.reference import (
    chain_compute,
    compute_dtype,
    group_normalize,
    layer_normalize,
    map_views,
    rms_normalize,
    strength_tensor,
    support_mask,
)


def sum_to(t: Tensor, like: Tensor, keep_dim: int | None) -> Tensor:
    """Sums ``t`` over every dim but ``keep_dim`` (all dims when None) into ``like``'s shape/dtype."""
    dims = [d for d in range(t.ndim) if d != keep_dim]
    return (t.sum(dim=dims) if dims else t).reshape(like.shape).to(like.dtype)


def map_grad(t: Tensor, like: Tensor, map_index: Tensor | None, channel_dim: int) -> Tensor:
    """Gradient of a map tensor ``like`` from its per-element contributions ``t`` (channels on
    ``channel_dim``, batch rows on dim 0): summed over positions into ``[C]``, or, with
    ``map_index``, summed per batch row and added into the rows of ``[K, C]`` the batch used."""
    if map_index is None:
        return sum_to(t, like, channel_dim % t.ndim)
    tc = t.movedim(channel_dim, -1)
    C = tc.shape[-1]
    if map_index.ndim == 0:
        per_row, index = tc.reshape(-1, C).sum(0, keepdim=True), map_index.reshape(1)
    else:
        per_row, index = tc.reshape(tc.shape[0], -1, C).sum(1), map_index
    return torch.zeros(like.shape, dtype=per_row.dtype, device=per_row.device).index_add_(0, index, per_row).to(like.dtype)


def chain_backward(
    g: Tensor,
    xf: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor,
    channel_dim: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`transport_backward` of a chain (``[B, S]`` ``map_index``): autograd through the
    reference chain (:func:`act_fast.ops.reference.chain_compute`), whose maps and strengths are
    gathered per position of the chain, so each map gets the sum of its uses."""
    with torch.enable_grad():
        xr = xf.detach().requires_grad_()
        wr, br = weight.detach().requires_grad_(), bias.detach().requires_grad_()
        sr = None if strength is None else strength.detach().requires_grad_()
        y = chain_compute(xr, wr, br, scalar_strength if sr is None else sr, lo, hi, map_index, channel_dim, drop_zero=False)
        grads = torch.autograd.grad(y, [xr, wr, br] + ([] if sr is None else [sr]), g)
    return grads[0], grads[1], grads[2], None if sr is None else grads[3]


def transport_backward(
    g: Tensor,
    xf: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients ``(x, weight, bias, strength)`` of the transport of ``xf`` given the output's
    gradient ``g``, both in the compute dtype; ``channel_dim`` non-negative.

    ``x``'s gradient stays in the compute dtype; the others come in their tensor's dtype (the
    strength's is None when ``strength`` is None).
    """
    if map_index is not None and map_index.ndim == 2:
        return chain_backward(g, xf, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim)
    cdt = xf.dtype
    cd = channel_dim
    w, b, lo_v, hi_v = map_views(weight, bias, lo, hi, map_index, xf.ndim, cd, cdt)
    lam = strength_tensor(scalar_strength if strength is None else strength, xf, cdt)
    planes = cd == 1 and xf.ndim >= 3
    spatial = tuple(range(2, xf.ndim))
    m = xf.mean(dim=spatial, keepdim=True) if planes else None
    inside = support_mask(m if planes else xf, lo_v, hi_v)
    lam_in = lam if inside is None else lam * inside
    if planes and pool_spatial:
        g_plane = g.sum(dim=spatial, keepdim=True)  # [B, C, 1, ...]
        gx = g + lam_in * (w - 1.0) * g_plane / math.prod(xf.shape[2:])
        gw = map_grad(lam_in * m * g_plane, weight, map_index, cd)
        gb = map_grad(lam_in * g_plane, bias, map_index, cd)
        gs_full = g_plane * ((w - 1.0) * m + b)  # T(m) - m, per plane
    else:
        gx = g * (1.0 + lam_in * (w - 1.0))
        gw = map_grad(g * lam_in * xf, weight, map_index, cd)
        gb = map_grad(g * lam_in, bias, map_index, cd)
        gs_full = g * ((w * xf + b) - xf)
    gs = None
    if strength is not None:
        if inside is not None:
            gs_full = gs_full * inside
        gs = sum_to(gs_full, strength, 0 if strength.ndim == 1 else None)
    return gx, gw, gb, gs


def _affine_of_normed(xhat: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, offset: float, channel_dim: int) -> tuple[Tensor, Tensor | None]:
    """``(h, scale)``: ``h = x̂ ⊙ (norm_weight + offset) + norm_bias`` (channels on ``channel_dim``)."""
    shape = [1] * xhat.ndim
    shape[channel_dim] = xhat.shape[channel_dim]
    scale = None if norm_weight is None else (norm_weight.to(xhat.dtype) + offset).reshape(shape)
    h = xhat if scale is None else xhat * scale
    if norm_bias is not None:
        h = h + norm_bias.to(xhat.dtype).reshape(shape)
    return h, scale


def norm_transport_backward(
    grad: Tensor,
    x: Tensor,
    kind: str,
    num_groups: int,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    eps: float,
    weight_offset: float,
    pool_spatial: bool,
    needs: tuple[bool, bool, bool, bool, bool, bool],
) -> tuple[Tensor | None, ...]:
    """Gradients ``(x, norm_weight, norm_bias, weight, bias, strength)`` of a fused norm + transport
    (``kind``: ``"rms"`` / ``"layer"`` over the last dim, ``"group"`` over channel groups of
    ``[B, C, *spatial]``); None where ``needs`` says it is not needed.

    With ``x̂`` the unit-normed input (``rstd`` its scale) and ``h = x̂ ⊙ s + nb`` (``s = nw +
    offset``), the transport of ``h`` gives the gradients of the map, the strength and ``h``
    (:func:`transport_backward`); then, with ``g = s ⊙ ∂h``, RMS ``∂x = rstd (g − x̂ mean(g x̂))``,
    LayerNorm / GroupNorm ``∂x = rstd (g − mean(g) − x̂ mean(g x̂))`` over the normalised elements.
    """
    need_x, need_nw, need_nb, need_w, need_b, need_s = needs
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    cd = 1 if kind == "group" else x.ndim - 1
    if kind == "rms":
        xhat, rstd = rms_normalize(xf, eps)
    elif kind == "layer":
        xhat, rstd = layer_normalize(xf, eps)
    else:
        xhat, rstd = group_normalize(xf, num_groups, eps)
    h, scale = _affine_of_normed(xhat, norm_weight, norm_bias, weight_offset, cd)
    gh, gw, gb, gs = transport_backward(
        grad.to(cdt), h, weight, bias, strength, scalar_strength, lo, hi, map_index, cd, pool_spatial and kind == "group"
    )
    gx = gnw = gnb = None
    if need_nw and norm_weight is not None:
        gnw = map_grad(gh * xhat, norm_weight, None, cd)
    if need_nb and norm_bias is not None:
        gnb = map_grad(gh, norm_bias, None, cd)
    if need_x:
        g = gh if scale is None else gh * scale
        if kind == "group":
            g, xh = g.reshape(rstd.shape[0], rstd.shape[1], -1), xhat.reshape(rstd.shape[0], rstd.shape[1], -1)
        else:
            xh = xhat
        proj = xh * (g * xh).mean(-1, keepdim=True)
        centred = g - proj if kind == "rms" else g - g.mean(-1, keepdim=True) - proj
        gx = (rstd * centred).reshape(x.shape).to(x.dtype)
    return gx, gnw, gnb, gw if need_w else None, gb if need_b else None, gs if need_s else None
