"""Affine transport op: ``y = x + λ (w ⊙ x + b − x)`` inside the support ``lo < x < hi``.

Two Triton kernels, each reading ``x`` once and writing ``y`` once:

- :func:`_transport_rows_kernel` for channels-last ``[..., C]`` (viewed as ``[R, C]`` with any
  row/column stride), one program per ``[BLOCK_R, BLOCK_C]`` tile;
- :func:`_transport_planes_kernel` for conv features ``[B, C, *spatial]`` (``channel_dim=1``),
  one program per ``(b, c)`` plane: it reduces the plane's mean (for the support test and the
  pooled map) and writes the plane. Planes up to ``_PLANE_SINGLE_TILE`` elements are held in
  registers (one read); larger planes are read a second time, from L2 in practice.

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
    channel_view_shape,
    compute_dtype,
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
    def _transport_rows_kernel(
        x_ptr, y_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, s_ptr, s_scalar,
        R, C, stride_xr, stride_xc, rows_per_batch,
        HAS_SUPPORT: tl.constexpr, STRENGTH_MODE: tl.constexpr, IS_F64: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < R
        col_ok = cols < C
        ok = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(x_ptr + rows64[:, None] * stride_xr + cols[None, :] * stride_xc, mask=ok, other=0.0)
        w = tl.load(w_ptr + cols, mask=col_ok, other=1.0)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0)
        # Clamped: rows past R (tile padding) must not index past the end of a [B] strength.
        lam = load_strength(s_ptr, s_scalar, tl.minimum(rows, R - 1) // rows_per_batch, STRENGTH_MODE, IS_F64)
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
        y = x + lam * ((w[None, :] * x + b[None, :]) - x)
        if HAS_SUPPORT:
            lo = tl.load(lo_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)
            hi = tl.load(hi_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)
            y = tl.where((x > lo[None, :]) & (x < hi[None, :]), y, x)
        tl.store(y_ptr + rows64[:, None] * C + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _transport_planes_kernel(
        x_ptr, y_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, s_ptr, s_scalar,
        C, HW, stride_xb, stride_xc, stride_xp,
        HAS_SUPPORT: tl.constexpr, STRENGTH_MODE: tl.constexpr, IS_F64: tl.constexpr,
        POOL: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bi = pid // C
        ci = pid % C
        x_base = x_ptr + bi.to(tl.int64) * stride_xb + ci.to(tl.int64) * stride_xc
        y_base = y_ptr + pid.to(tl.int64) * HW
        offs = tl.arange(0, BLOCK)
        w = tl.load(w_ptr + ci)
        b = tl.load(b_ptr + ci)
        lam = load_strength(s_ptr, s_scalar, bi, STRENGTH_MODE, IS_F64)
        if IS_F64:
            w = w.to(tl.float64)
            b = b.to(tl.float64)
            acc = tl.zeros([BLOCK], dtype=tl.float64)
        else:
            w = w.to(tl.float32)
            b = b.to(tl.float32)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        if SINGLE_TILE:
            ok = offs < HW
            x = tl.load(x_base + offs * stride_xp, mask=ok, other=0.0).to(acc.dtype)
            acc += x
        else:
            for start in range(0, HW, BLOCK):
                ok = start + offs < HW
                acc += tl.load(x_base + (start + offs) * stride_xp, mask=ok, other=0.0).to(acc.dtype)
        m = tl.sum(acc, axis=0) / HW
        inside = m == m  # only read when HAS_SUPPORT
        if HAS_SUPPORT:
            lo = tl.load(lo_ptr + ci).to(acc.dtype)
            hi = tl.load(hi_ptr + ci).to(acc.dtype)
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


def rows_config(num_rows: int, num_channels: int) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_C, num_warps)`` for a ``[R, C]`` elementwise tile of ~4096 elements."""
    block_c = min(triton.next_power_of_2(num_channels), _MAX_BLOCK_C)
    block_r = max(1, min(triton.next_power_of_2(num_rows), _TILE_ELEMENTS // block_c))
    return block_r, block_c, 4


def strength_kernel_args(strength: Tensor | None, scalar: float, placeholder: Tensor) -> tuple[Tensor, float, int]:
    """``(s_ptr, s_scalar, STRENGTH_MODE)`` kernel arguments; ``placeholder`` fills an unused pointer."""
    if strength is None:
        return placeholder, scalar, STRENGTH_SCALAR
    return strength, 0.0, STRENGTH_PER_ROW if strength.ndim == 1 else STRENGTH_TENSOR


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
) -> Tensor:
    """Launches the Triton kernel; arguments already validated (``channel_dim`` non-negative).

    ``strength`` is None (use ``scalar_strength``), 0-d, or ``[B]``. Writes into ``out`` (a
    contiguous tensor shaped and typed like ``x``) when given, else into a new one; returns it.
    """
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if x.numel() == 0:
        return y
    has_support = lo is not None
    lo_arg = lo if has_support else weight
    hi_arg = hi if has_support else weight
    is_f64 = x.dtype == torch.float64
    if strength is None and is_f64:  # Triton passes Python floats as float32; keep λ in float64
        strength = torch.tensor(scalar_strength, dtype=torch.float64, device=x.device)
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight)
    C = weight.numel()
    if channel_dim == x.ndim - 1 or x.ndim <= 2:
        x2 = x.reshape(-1, C)  # a view whenever the leading dims collapse; non-unit strides kept
        R = x2.shape[0]
        rows_per_batch = max(1, R // x.shape[0]) if x.ndim >= 2 else 1
        block_r, block_c, warps = rows_config(R, C)
        grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
        _transport_rows_kernel[grid](
            x2, y, weight, bias, lo_arg, hi_arg, s_arg, s_scalar,
            R, C, x2.stride(0), x2.stride(1), rows_per_batch,
            HAS_SUPPORT=has_support, STRENGTH_MODE=s_mode, IS_F64=is_f64,
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
        )
        return y
    B = x.shape[0]
    x3 = x.reshape(B, C, -1)
    HW = x3.shape[2]
    single = HW <= _PLANE_SINGLE_TILE
    block = triton.next_power_of_2(HW) if single else _PLANE_BLOCK
    warps = 8 if block >= 4096 else 4
    _transport_planes_kernel[(B * C,)](
        x3, y, weight, bias, lo_arg, hi_arg, s_arg, s_scalar,
        C, HW, x3.stride(0), x3.stride(1), x3.stride(2),
        HAS_SUPPORT=has_support, STRENGTH_MODE=s_mode, IS_F64=is_f64,
        POOL=pool_spatial, SINGLE_TILE=single, BLOCK=block, num_warps=warps,
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
) -> Tensor:
    if use_triton(x):
        return affine_transport_triton(x, weight, bias, strength, scalar_strength, lo, hi, channel_dim, pool_spatial)
    s: Strength = scalar_strength if strength is None else strength
    return affine_transport_ref(x, weight, bias, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool_spatial).contiguous()


@_affine_transport_op.register_fake
def _(x, weight, bias, strength, scalar_strength, lo, hi, channel_dim, pool_spatial):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    x, weight, bias, strength, scalar_strength, lo, hi, channel_dim, pool_spatial = inputs
    ctx.save_for_backward(x, weight, bias, strength, lo, hi)
    ctx.scalar_strength = scalar_strength
    ctx.channel_dim = channel_dim
    ctx.pool_spatial = pool_spatial


def _sum_to(t: Tensor, like: Tensor, keep_dim: int | None) -> Tensor:
    """Sums ``t`` over every dim but ``keep_dim`` (all dims when None) into ``like``'s shape/dtype."""
    dims = [d for d in range(t.ndim) if d != keep_dim]
    return t.sum(dim=dims).reshape(like.shape).to(like.dtype)


def _backward(ctx, grad: Tensor):
    x, weight, bias, strength, lo, hi = ctx.saved_tensors
    cdt = compute_dtype(x.dtype)
    cd = ctx.channel_dim
    g = grad.to(cdt)
    xf = x.to(cdt)
    shape = channel_view_shape(x.ndim, cd, weight.numel())
    w = weight.to(cdt).reshape(shape)
    b = bias.to(cdt).reshape(shape)
    lam = strength_tensor(ctx.scalar_strength if strength is None else strength, x, cdt)
    planes = cd == 1 and x.ndim >= 3
    spatial = tuple(range(2, x.ndim))
    m = xf.mean(dim=spatial, keepdim=True) if planes else None
    tested = m if planes else xf
    inside = support_mask(tested, None if lo is None else lo.to(cdt).reshape(shape), None if hi is None else hi.to(cdt).reshape(shape))
    lam_in = lam if inside is None else lam * inside
    if planes and ctx.pool_spatial:
        g_plane = g.sum(dim=spatial, keepdim=True)  # [B, C, 1, ...]
        gx = g + lam_in * (w - 1.0) * g_plane / math.prod(x.shape[2:])
        gw = _sum_to(lam_in * m * g_plane, weight, cd)
        gb = _sum_to(lam_in * g_plane, bias, cd)
        delta_unit = (w - 1.0) * m + b  # T(m) - m, per plane
        gs_full = g_plane * delta_unit
    else:
        gx = g * (1.0 + lam_in * (w - 1.0))
        gw = _sum_to(g * lam_in * xf, weight, cd)
        gb = _sum_to(g * lam_in, bias, cd)
        gs_full = g * ((w * xf + b) - xf)
    gs = None
    if strength is not None and strength.requires_grad:
        if inside is not None:
            gs_full = gs_full * inside
        gs = _sum_to(gs_full, strength, 0 if strength.ndim == 1 else None)
    return gx.to(x.dtype), gw, gb, gs, None, None, None, None, None


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
) -> Tensor:
    """Applies the per-channel affine transport map with strength λ (DESIGN.md §1).

    ``y = x + λ (weight ⊙ x + bias − x)`` where ``lo < x < hi`` (strict), else ``y = x``.

    Args:
        x: ``[..., C]`` channels last (any leading dims, any strides), or ``[B, C, *spatial]``
            with ``channel_dim=1``. float32 / bfloat16 / float16 (computed in float32) or
            float64 (computed in float64); the output has ``x``'s dtype and shape, contiguous.
        weight, bias: ``[C]`` floating tensors on ``x``'s device.
        strength: λ as a Python float, a 0-d tensor, or ``[B]`` with one value per batch row
            (``B = x.shape[0]``). A tensor λ can be changed in place without recompiling.
        lo, hi: ``[C]`` support bounds, both or neither (None: transport everywhere).
        channel_dim: -1 (channels last) or 1 (conv features).
        pool_spatial: only with ``channel_dim=1``: evaluate support and map on the spatial mean
            ``m`` of each ``(b, c)`` plane and add ``λ((w − 1) m + b)`` to every position. When
            False (and ``channel_dim=1``) the map is per position; the support is still tested
            on the plane's mean.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        TypeError: non-float ``x``/maps/strength.
        ValueError: channel-count, strength-rows, support-shape or device mismatch; NaN/Inf in
            ``weight``, ``bias``, ``lo`` or ``hi``.
    """
    checks.check_input(x)
    cd = checks.normalize_channel_dim(x, channel_dim, pool_spatial)
    C = x.shape[cd]
    checks.check_channel_vector(weight, "weight", C, x)
    checks.check_channel_vector(bias, "bias", C, x)
    checks.check_support(lo, hi, C, x)
    s_tensor, s_scalar = checks.normalize_strength(strength, x)
    checks.check_finite(weight=weight, bias=bias, lo=lo, hi=hi)
    return _affine_transport_op(x, weight, bias, s_tensor, s_scalar, lo, hi, cd, pool_spatial)
