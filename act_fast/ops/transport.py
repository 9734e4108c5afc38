"""Affine transport op: ``y = x + λ (w ⊙ x + b − x)`` inside the support ``lo < x < hi``.

Two Triton kernels, each reading ``x`` once and writing ``y`` once:

- :func:`_transport_rows_kernel` for channels-last ``[..., C]`` (viewed as ``[R, C]`` with any
  row/column stride), one program per ``[BLOCK_R, BLOCK_C]`` tile;
- :func:`_transport_planes_kernel` for conv features ``[B, C, *spatial]`` (``channel_dim=1``),
  one program per ``(b, c)`` plane: it reduces the plane's mean (for the support test and the
  pooled map) and writes the plane. Planes up to ``_PLANE_SINGLE_TILE`` elements are held in
  registers (one read); larger planes are read a second time, from L2 in practice. With
  ``NORM`` it transports GroupNorm(x) instead (:mod:`.group_norm_transport`).

Several maps per site: with ``map_index`` the map tensors are ``[K, C]`` and the kernels read
row ``map_index[b]`` (or the one 0-d index) for batch row ``b`` (``MAP_MODE``); without it they
are ``[C]``.

Registered as ``torch.ops.act_fast.affine_transport`` with a fake (meta) kernel and an autograd
formula (gradients for ``x``, ``weight``, ``bias`` and a strength tensor), so the op traces under
torch.compile as one opaque node and maps can be trained end to end.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from act_fast.ops import checks
from act_fast.ops.backend import HAS_TRITON, use_triton
from act_fast.ops.reference import (
    Strength,
    affine_transport_ref,
    compute_dtype,
    map_views,
    strength_tensor,
    support_mask,
)

# STRENGTH_MODE values shared by the kernels of this package.
STRENGTH_SCALAR, STRENGTH_TENSOR, STRENGTH_PER_ROW = 0, 1, 2

_TILE_ELEMENTS = 4096
_MAX_BLOCK_C = 1024
_PLANE_SINGLE_TILE = 16384
_PLANE_BLOCK = 4096

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def load_strength(s_ptr, s_scalar, batch_idx, STRENGTH_MODE: tl.constexpr, IS_F64: tl.constexpr):
        """λ for the given batch indices (per row, one tensor value, or the scalar argument)."""
        if STRENGTH_MODE == 2:
            lam = tl.load(s_ptr + batch_idx)
        elif STRENGTH_MODE == 1:
            lam = tl.load(s_ptr)
        else:
            lam = s_scalar
        if IS_F64:
            lam = lam.to(tl.float64)
        else:
            lam = lam.to(tl.float32)
        return lam

    @triton.jit
    def map_row_offset(idx_ptr, batch_idx, C, MAP_MODE: tl.constexpr):
        """Element offset of the map row used by the given batch indices: 0 for a ``[C]`` map, else
        ``map_index[·] · C`` into the ``[K, C]`` map (per batch index, or the one 0-d index)."""
        if MAP_MODE == 2:
            off = tl.load(idx_ptr + batch_idx).to(tl.int64) * C
        elif MAP_MODE == 1:
            off = tl.load(idx_ptr).to(tl.int64) * C
        else:
            off = 0
        return off

    @triton.jit
    def map_tile_offsets(row_off, cols, MAP_MODE: tl.constexpr):
        """Offsets of a map tile: ``[BLOCK_R, BLOCK_C]`` for per-row maps, else ``[1, BLOCK_C]``."""
        if MAP_MODE == 2:
            offs = row_off[:, None] + cols[None, :]
        else:
            offs = (row_off + cols)[None, :]
        return offs

    @triton.jit
    def compute_rsqrt(v, IS_F64: tl.constexpr):
        if IS_F64:
            r = 1.0 / tl.sqrt(v)  # IEEE float64 sqrt; the float64 rsqrt instruction is approximate
        else:
            r = tl.rsqrt(v)
        return r

    @triton.jit
    def _transport_rows_kernel(
        x_ptr, y_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, s_ptr, s_scalar, idx_ptr,
        R, C, stride_xr, stride_xc, rows_per_batch,
        HAS_SUPPORT: tl.constexpr, STRENGTH_MODE: tl.constexpr, MAP_MODE: tl.constexpr, IS_F64: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < R
        col_ok = cols < C
        ok = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        # Clamped: rows past R (tile padding) must not index past the end of a [B] strength or map_index.
        batch = tl.minimum(rows, R - 1) // rows_per_batch
        x = tl.load(x_ptr + rows64[:, None] * stride_xr + cols[None, :] * stride_xc, mask=ok, other=0.0)
        map_offs = map_tile_offsets(map_row_offset(idx_ptr, batch, C, MAP_MODE), cols, MAP_MODE)
        map_ok = col_ok[None, :]
        w = tl.load(w_ptr + map_offs, mask=map_ok, other=1.0)
        b = tl.load(b_ptr + map_offs, mask=map_ok, other=0.0)
        lam = load_strength(s_ptr, s_scalar, batch, STRENGTH_MODE, IS_F64)
        if IS_F64:
            x = x.to(tl.float64)
            w = w.to(tl.float64)
            b = b.to(tl.float64)
        else:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
            b = b.to(tl.float32)
        if STRENGTH_MODE == 2:
            lam = lam[:, None]
        y = x + lam * ((w * x + b) - x)
        if HAS_SUPPORT:
            lo = tl.load(lo_ptr + map_offs, mask=map_ok, other=0.0).to(x.dtype)
            hi = tl.load(hi_ptr + map_offs, mask=map_ok, other=0.0).to(x.dtype)
            y = tl.where((x > lo) & (x < hi), y, x)
        tl.store(y_ptr + rows64[:, None] * C + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _group_norm_stats(st_ptr, nw_ptr, nb_ptr, p_ptr, eps, bi, ci, C, HW, group_size,
                          HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, IS_F64: tl.constexpr, BLOCK_G: tl.constexpr):
        """GroupNorm of plane ``(bi, ci)`` from the per-plane ``(mean, M2)`` of ``x`` in ``st_ptr``
        (``[B·C, 2]``): returns the group's mean and rstd, the plane's affine ``(γ, β)`` (1 and 0
        when absent) and the mean of the normed plane (GroupNorm is affine per plane)."""
        g_offs = tl.arange(0, BLOCK_G)
        g_ok = g_offs < group_size
        plane0 = bi.to(tl.int64) * C + (ci // group_size) * group_size
        pmean = tl.load(st_ptr + (plane0 + g_offs) * 2, mask=g_ok, other=0.0)
        pm2 = tl.load(st_ptr + (plane0 + g_offs) * 2 + 1, mask=g_ok, other=0.0)
        gmean = tl.sum(pmean, axis=0) / group_size
        dm = tl.where(g_ok, pmean - gmean, 0.0)
        # Chan merge of equal-count planes: M2 = Σ M2_c + HW Σ (mean_c − mean)², divided by group_size·HW
        if IS_F64:  # Triton passes Python floats as float32; the launcher sends eps as float64 here
            eps = tl.load(p_ptr)
        rstd = compute_rsqrt((tl.sum(pm2, axis=0) / HW + tl.sum(dm * dm, axis=0)) / group_size + eps, IS_F64)
        nw = gmean  # placeholders, read only when HAS_NW / HAS_NB
        nb = gmean
        if HAS_NW:
            nw = tl.load(nw_ptr + ci).to(gmean.dtype)
        if HAS_NB:
            nb = tl.load(nb_ptr + ci).to(gmean.dtype)
        m = _group_norm_apply(tl.load(st_ptr + (bi.to(tl.int64) * C + ci) * 2), gmean, rstd, nw, nb, HAS_NW, HAS_NB)
        return gmean, rstd, nw, nb, m

    @triton.jit
    def _group_norm_apply(x, mean, rstd, nw, nb, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr):
        """``((x − mean) · rstd) · γ + β`` in the reference's order."""
        h = (x - mean) * rstd
        if HAS_NW:
            h = h * nw
        if HAS_NB:
            h = h + nb
        return h

    @triton.jit
    def _transport_planes_kernel(
        x_ptr, y_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, s_ptr, s_scalar, idx_ptr,
        st_ptr, nw_ptr, nb_ptr, p_ptr, eps,
        C, HW, stride_xb, stride_xc, stride_xp, group_size,
        HAS_SUPPORT: tl.constexpr, STRENGTH_MODE: tl.constexpr, MAP_MODE: tl.constexpr, IS_F64: tl.constexpr,
        POOL: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK: tl.constexpr,
        NORM: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bi = pid // C
        ci = pid % C
        x_base = x_ptr + bi.to(tl.int64) * stride_xb + ci.to(tl.int64) * stride_xc
        y_base = y_ptr + pid.to(tl.int64) * HW
        offs = tl.arange(0, BLOCK)
        map_off = map_row_offset(idx_ptr, bi, C, MAP_MODE)
        w = tl.load(w_ptr + map_off + ci)
        b = tl.load(b_ptr + map_off + ci)
        lam = load_strength(s_ptr, s_scalar, bi, STRENGTH_MODE, IS_F64)
        if IS_F64:
            w = w.to(tl.float64)
            b = b.to(tl.float64)
            acc = tl.zeros([BLOCK], dtype=tl.float64)
        else:
            w = w.to(tl.float32)
            b = b.to(tl.float32)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        # With NORM the plane is GroupNorm(x) (statistics from st_ptr); its mean comes with the statistics.
        gmean, rstd, nw, nb, m = w, w, w, w, w  # placeholders unless NORM
        if NORM:
            gmean, rstd, nw, nb, m = _group_norm_stats(
                st_ptr, nw_ptr, nb_ptr, p_ptr, eps, bi, ci, C, HW, group_size, HAS_NW, HAS_NB, IS_F64, BLOCK_G
            )
        if SINGLE_TILE:
            ok = offs < HW
            x = tl.load(x_base + offs * stride_xp, mask=ok, other=0.0).to(acc.dtype)
            if NORM:
                x = _group_norm_apply(x, gmean, rstd, nw, nb, HAS_NW, HAS_NB)
            else:
                acc += x
        elif not NORM:
            for start in range(0, HW, BLOCK):
                ok = start + offs < HW
                acc += tl.load(x_base + (start + offs) * stride_xp, mask=ok, other=0.0).to(acc.dtype)
        if not NORM:
            m = tl.sum(acc, axis=0) / HW
        inside = m == m  # only read when HAS_SUPPORT
        if HAS_SUPPORT:
            lo = tl.load(lo_ptr + map_off + ci).to(acc.dtype)
            hi = tl.load(hi_ptr + map_off + ci).to(acc.dtype)
            inside = (m > lo) & (m < hi)
        delta = lam  # the pooled shift λ(T(m) − m) when POOL; unused otherwise
        if POOL:
            delta = lam * ((w - 1.0) * m + b)
        if SINGLE_TILE:
            y = _plane_map(x, w, b, lam, delta, inside, HAS_SUPPORT, POOL)
            tl.store(y_base + offs, y.to(y_ptr.dtype.element_ty), mask=ok)
        else:
            for start in range(0, HW, BLOCK):
                ok = start + offs < HW
                x = tl.load(x_base + (start + offs) * stride_xp, mask=ok, other=0.0).to(acc.dtype)
                if NORM:
                    x = _group_norm_apply(x, gmean, rstd, nw, nb, HAS_NW, HAS_NB)
                y = _plane_map(x, w, b, lam, delta, inside, HAS_SUPPORT, POOL)
                tl.store(y_base + start + offs, y.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _plane_map(x, w, b, lam, delta, inside, HAS_SUPPORT: tl.constexpr, POOL: tl.constexpr):
        """Per-position output of one plane; ``delta`` is the pooled shift (used when POOL)."""
        if POOL:
            y = x + delta
        else:
            y = x + lam * ((w * x + b) - x)
        if HAS_SUPPORT:
            y = tl.where(inside, y, x)
        return y


# MAP_MODE values: a [C] map, one of K maps for every row (0-d map_index), one map per batch row.
MAP_NONE, MAP_ONE, MAP_PER_ROW = 0, 1, 2


def rows_config(num_rows: int, num_channels: int) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_C, num_warps)`` for a ``[R, C]`` elementwise tile of ~4096 elements."""
    block_c = min(triton.next_power_of_2(num_channels), _MAX_BLOCK_C)
    block_r = max(1, min(triton.next_power_of_2(num_rows), _TILE_ELEMENTS // block_c))
    return block_r, block_c, 4


def strength_kernel_args(
    strength: Tensor | None, scalar: float, placeholder: Tensor, is_f64: bool = False
) -> tuple[Tensor, float, int]:
    """``(s_ptr, s_scalar, STRENGTH_MODE)`` kernel arguments; ``placeholder`` fills an unused pointer.

    For float64 input (``is_f64``) a scalar λ is sent as a float64 tensor: Triton passes Python
    floats as float32.
    """
    if strength is None and is_f64:
        strength = torch.tensor(scalar, dtype=torch.float64, device=placeholder.device)
    if strength is None:
        return placeholder, scalar, STRENGTH_SCALAR
    return strength, 0.0, STRENGTH_PER_ROW if strength.ndim == 1 else STRENGTH_TENSOR


def map_kernel_args(map_index: Tensor | None, placeholder: Tensor) -> tuple[Tensor, int]:
    """``(idx_ptr, MAP_MODE)`` kernel arguments; ``placeholder`` fills an unused pointer."""
    if map_index is None:
        return placeholder, MAP_NONE
    return map_index, MAP_PER_ROW if map_index.ndim == 1 else MAP_ONE


def transport_planes_triton(
    x: Tensor,
    out: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    pool_spatial: bool,
    map_index: Tensor | None,
    group_norm: tuple[Tensor, int, Tensor | None, Tensor | None, float] | None = None,
) -> None:
    """Launches the planes kernel on ``x: [B, C, *spatial]`` (non-empty), writing ``out``.

    ``group_norm``: None, or ``(stats, group_size, norm_weight, norm_bias, eps)`` to transport
    GroupNorm(x) instead of ``x``; ``stats`` is ``[B·C, 2]`` per-plane mean and M2 of ``x`` in the
    compute dtype.
    """
    B, C = x.shape[:2]
    x3 = x.reshape(B, C, -1)
    HW = x3.shape[2]
    is_f64 = x.dtype == torch.float64
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight, is_f64)
    idx_arg, map_mode = map_kernel_args(map_index, weight)
    has_support = lo is not None
    stats, group_size, nw, nb, eps = group_norm if group_norm is not None else (weight, 1, None, None, 0.0)
    params = weight
    if group_norm is not None and is_f64:
        params = torch.tensor([eps], dtype=torch.float64, device=x.device)
    single = HW <= _PLANE_SINGLE_TILE
    block = triton.next_power_of_2(HW) if single else _PLANE_BLOCK
    warps = 8 if block >= 4096 else 4
    _transport_planes_kernel[(B * C,)](
        x3, out, weight, bias, lo if has_support else weight, hi if has_support else weight, s_arg, s_scalar, idx_arg,
        stats, weight if nw is None else nw, weight if nb is None else nb, params, float(eps),
        C, HW, x3.stride(0), x3.stride(1), x3.stride(2), group_size,
        HAS_SUPPORT=has_support, STRENGTH_MODE=s_mode, MAP_MODE=map_mode, IS_F64=is_f64,
        POOL=pool_spatial, SINGLE_TILE=single, BLOCK=block,
        NORM=group_norm is not None, HAS_NW=nw is not None, HAS_NB=nb is not None,
        BLOCK_G=triton.next_power_of_2(group_size), num_warps=warps,
    )


def affine_transport_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    out: Tensor | None = None,
    map_index: Tensor | None = None,
) -> Tensor:
    """Launches the Triton kernel; arguments already validated (``channel_dim`` non-negative).

    ``strength`` is None (use ``scalar_strength``), 0-d, or ``[B]``. ``map_index`` is None
    (``[C]`` map tensors) or a 0-d / ``[B]`` index into ``[K, C]`` map tensors. Writes into ``out``
    (a contiguous tensor shaped and typed like ``x``) when given, else into a new one; returns it.
    """
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if x.numel() == 0:
        return y
    if not (channel_dim == x.ndim - 1 or x.ndim <= 2):
        transport_planes_triton(x, y, weight, bias, strength, scalar_strength, lo, hi, pool_spatial, map_index)
        return y
    has_support = lo is not None
    is_f64 = x.dtype == torch.float64
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight, is_f64)
    idx_arg, map_mode = map_kernel_args(map_index, weight)
    C = weight.shape[-1]
    x2 = x.reshape(-1, C)  # a view whenever the leading dims collapse; non-unit strides kept
    R = x2.shape[0]
    rows_per_batch = max(1, R // x.shape[0]) if x.ndim >= 2 else 1
    block_r, block_c, warps = rows_config(R, C)
    grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
    _transport_rows_kernel[grid](
        x2, y, weight, bias, lo if has_support else weight, hi if has_support else weight, s_arg, s_scalar, idx_arg,
        R, C, x2.stride(0), x2.stride(1), rows_per_batch,
        HAS_SUPPORT=has_support, STRENGTH_MODE=s_mode, MAP_MODE=map_mode, IS_F64=is_f64,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )
    return y


@torch.library.custom_op("act_fast::affine_transport", mutates_args=())
def _affine_transport_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    map_index: Tensor | None,
) -> Tensor:
    if use_triton(x):
        return affine_transport_triton(
            x, weight, bias, strength, scalar_strength, lo, hi, channel_dim, pool_spatial, map_index=map_index
        )
    s: Strength = scalar_strength if strength is None else strength
    return affine_transport_ref(
        x, weight, bias, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool_spatial, map_index=map_index
    ).contiguous()


@_affine_transport_op.register_fake
def _(x, weight, bias, strength, scalar_strength, lo, hi, channel_dim, pool_spatial, map_index):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    x, weight, bias, strength, scalar_strength, lo, hi, channel_dim, pool_spatial, map_index = inputs
    ctx.save_for_backward(x, weight, bias, strength, lo, hi, map_index)
    ctx.scalar_strength = scalar_strength
    ctx.channel_dim = channel_dim
    ctx.pool_spatial = pool_spatial


def _sum_to(t: Tensor, like: Tensor, keep_dim: int | None) -> Tensor:
    """Sums ``t`` over every dim but ``keep_dim`` (all dims when None) into ``like``'s shape/dtype."""
    dims = [d for d in range(t.ndim) if d != keep_dim]
    return (t.sum(dim=dims) if dims else t).reshape(like.shape).to(like.dtype)


def map_grad(t: Tensor, like: Tensor, map_index: Tensor | None, channel_dim: int) -> Tensor:
    """Gradient of a map tensor ``like`` from its per-element contributions ``t`` (channels on
    ``channel_dim``, batch rows on dim 0): summed over positions into ``[C]``, or, with
    ``map_index``, summed per batch row and added into the rows of ``[K, C]`` the batch used."""
    if map_index is None:
        return _sum_to(t, like, channel_dim % t.ndim)
    tc = t.movedim(channel_dim, -1)
    C = tc.shape[-1]
    if map_index.ndim == 0:
        per_row, index = tc.reshape(-1, C).sum(0, keepdim=True), map_index.reshape(1)
    else:
        per_row, index = tc.reshape(tc.shape[0], -1, C).sum(1), map_index
    return torch.zeros(like.shape, dtype=per_row.dtype, device=per_row.device).index_add_(0, index, per_row).to(like.dtype)


def transport_backward(
    g: Tensor,
    xf: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    map_index: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients ``(x, weight, bias, strength)`` of the transport of ``xf`` given the output's
    gradient ``g``, both in the compute dtype; ``channel_dim`` non-negative.

    ``x``'s gradient stays in the compute dtype; the others come in their tensor's dtype (the
    strength's is None when ``strength`` is None). The support mask is not differentiated.
    """
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
        gs = _sum_to(gs_full, strength, 0 if strength.ndim == 1 else None)
    return gx, gw, gb, gs


def _backward(ctx, grad: Tensor):
    x, weight, bias, strength, lo, hi, map_index = ctx.saved_tensors
    cdt = compute_dtype(x.dtype)
    gx, gw, gb, gs = transport_backward(
        grad.to(cdt), x.to(cdt), weight, bias, strength, ctx.scalar_strength, lo, hi, ctx.channel_dim,
        ctx.pool_spatial, map_index,
    )
    if not ctx.needs_input_grad[3]:
        gs = None
    return gx.to(x.dtype), gw, gb, gs, None, None, None, None, None, None


_affine_transport_op.register_autograd(_backward, setup_context=_setup_context)


def affine_transport(
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
    """Applies the per-channel affine transport map with strength λ (DESIGN.md §1).

    ``y = x + λ (weight ⊙ x + bias − x)`` where ``lo < x < hi`` (strict), else ``y = x``.

    Args:
        x: ``[..., C]`` channels last (any leading dims, any strides), or ``[B, C, *spatial]``
            with ``channel_dim=1``. float32 / bfloat16 / float16 (computed in float32) or
            float64 (computed in float64); the output has ``x``'s dtype and shape, contiguous.
        weight, bias: ``[C]`` floating tensors on ``x``'s device; ``[K, C]`` (K maps) with
            ``map_index``.
        strength: λ as a Python float, a 0-d tensor, or ``[B]`` with one value per batch row
            (``B = x.shape[0]``). A tensor λ can be changed in place without recompiling.
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds, both or neither (None:
            transport everywhere).
        channel_dim: -1 (channels last) or 1 (conv features).
        pool_spatial: only with ``channel_dim=1``: evaluate support and map on the spatial mean
            ``m`` of each ``(b, c)`` plane and add ``λ((w − 1) m + b)`` to every position. When
            False (and ``channel_dim=1``) the map is per position; the support is still tested
            on the plane's mean.
        map_index: None (one ``[C]`` map), or an int32/int64 tensor on ``x``'s device selecting
            among K maps: 0-d (map ``map_index`` for every row) or ``[B]`` (map ``map_index[b]``
            for batch row ``b``, i.e. for ``x[b]``; combines with a per-row λ). Its values must
            lie in ``[0, K)``; they are not checked (that would sync the host): on the Triton path
            an index out of range reads out of bounds, the torch path raises IndexError. Changing
            its values in place never recompiles. ``weight``/``bias`` get ``[K, C]`` gradients.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        TypeError: non-float ``x``/maps/strength, non-integer ``map_index``.
        ValueError: channel-count, strength-rows, map_index-rows, map-count, support-shape or
            device mismatch; NaN/Inf in ``weight``, ``bias``, ``lo`` or ``hi``.
    """
    checks.check_input(x)
    cd = checks.normalize_channel_dim(x, channel_dim, pool_spatial)
    checks.check_maps(weight, bias, lo, hi, map_index, x.shape[cd], x)
    s_tensor, s_scalar = checks.normalize_strength(strength, x)
    checks.check_finite(weight=weight, bias=bias, lo=lo, hi=hi)
    return _affine_transport_op(x, weight, bias, s_tensor, s_scalar, lo, hi, cd, pool_spatial, map_index)
