"""Fused norm + affine transport: RMSNorm / LayerNorm over the last dim, then the map of
DESIGN.md §1 applied to the normed value ``h``, in one Triton kernel (one read of ``x``, one
write of ``y``)::

    h = rms_norm(x) | layer_norm(x)                 (the norm's own weight/bias, eps)
    y = h + λ (w ⊙ h + b − h)    where lo < h < hi (strict), else y = h

:func:`_norm_transport_kernel` views ``x`` as ``[R, C]`` (any row/column stride) and runs one
program per ``BLOCK_R`` rows. Rows whose ``next_power_of_2(C)`` is at most
``MAX_SINGLE_TILE_C`` are held in registers: one read. Wider rows are walked in chunks of
``_CHUNK_C`` channels twice (statistics, then output): a second read of the row, from L2 in
practice. LayerNorm statistics over chunks merge per-chunk mean and centred sum of squares
(Chan), never ``Σx² − C·mean²``.

Registered as ``torch.ops.act_fast.rms_norm_transport`` and ``torch.ops.act_fast.
layer_norm_transport`` with fake (meta) kernels and autograd formulas: gradients for ``x``, the
norm's weight and bias, the map's weight and bias and a strength tensor. The support mask is
not differentiated; outside it ``y = h``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from act_fast.ops import checks
from act_fast.ops.backend import HAS_TRITON, use_triton
from act_fast.ops.reference import (
    Strength,
    compute_dtype,
    layer_norm_transport_ref,
    rms_norm_transport_ref,
    strength_tensor,
    support_mask,
)
from act_fast.ops.transport import strength_kernel_args

# Rows with next_power_of_2(C) up to this are normed from registers (one read of x).
MAX_SINGLE_TILE_C = 16384
# Channels per chunk for wider rows (read twice).
_CHUNK_C = 4096
# Target elements per program for narrow rows (several rows per program).
_TILE_ELEMENTS = 4096

if HAS_TRITON:
    import triton
    import triton.language as tl

    from act_fast.ops.transport import load_strength

    @triton.jit
    def _load_row_tile(ptrs, ok, IS_F64: tl.constexpr):
        """Loads ``x`` (0 where masked) in the compute dtype."""
        x = tl.load(ptrs, mask=ok, other=0.0)
        if IS_F64:
            x = x.to(tl.float64)
        else:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _rsqrt(v, IS_F64: tl.constexpr):
        if IS_F64:
            r = 1.0 / tl.sqrt(v)  # IEEE float64 sqrt; the float64 rsqrt instruction is approximate
        else:
            r = tl.rsqrt(v)
        return r

    @triton.jit
    def _norm_map(
        x, mean, rstd, cols, col_ok, lam, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, weight_offset,
        RMS: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, HAS_SUPPORT: tl.constexpr,
    ):
        """Normed value ``h`` of a ``[BLOCK_R, BLOCK_C]`` tile and its transport; ``mean`` unused for RMS."""
        if RMS:
            h = x * rstd[:, None]
        else:
            h = (x - mean[:, None]) * rstd[:, None]
        if HAS_NW:
            nw = tl.load(nw_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)
            h = h * (nw + weight_offset)[None, :]
        if HAS_NB:
            h = h + tl.load(nb_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)[None, :]
        w = tl.load(w_ptr + cols, mask=col_ok, other=1.0).to(x.dtype)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)
        y = h + lam * ((w[None, :] * h + b[None, :]) - h)
        if HAS_SUPPORT:
            lo = tl.load(lo_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)
            hi = tl.load(hi_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)
            y = tl.where((h > lo[None, :]) & (h < hi[None, :]), y, h)
        return y

    @triton.jit
    def _norm_transport_kernel(
        x_ptr, y_ptr, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, s_ptr, s_scalar, p_ptr,
        R, C, stride_xr, stride_xc, rows_per_batch, eps, weight_offset,
        RMS: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, HAS_SUPPORT: tl.constexpr,
        STRENGTH_MODE: tl.constexpr, IS_F64: tl.constexpr, SINGLE_TILE: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        rows64 = rows.to(tl.int64)
        x_rows = x_ptr + rows64[:, None] * stride_xr
        y_rows = y_ptr + rows64[:, None] * C
        offs = tl.arange(0, BLOCK_C)
        # padded rows (rows >= R) read the last row's λ rather than past the end of a [B] strength
        lam = load_strength(s_ptr, s_scalar, tl.minimum(rows, R - 1) // rows_per_batch, STRENGTH_MODE, IS_F64)
        if STRENGTH_MODE == 2:
            lam = lam[:, None]
        if IS_F64:  # Triton passes Python floats as float32; the launcher sends them as float64 here
            eps = tl.load(p_ptr)
            weight_offset = tl.load(p_ptr + 1)
        if SINGLE_TILE:
            col_ok = offs < C
            ok = row_ok[:, None] & col_ok[None, :]
            x = _load_row_tile(x_rows + offs[None, :] * stride_xc, ok, IS_F64)
            if RMS:
                rstd = _rsqrt(tl.sum(x * x, axis=1) / C + eps, IS_F64)
                mean = rstd  # unused by RMS
            else:
                mean = tl.sum(x, axis=1) / C
                xc = tl.where(ok, x - mean[:, None], 0.0)
                rstd = _rsqrt(tl.sum(xc * xc, axis=1) / C + eps, IS_F64)
            y = _norm_map(x, mean, rstd, offs, col_ok, lam, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr,
                          weight_offset, RMS, HAS_NW, HAS_NB, HAS_SUPPORT)
            tl.store(y_rows + offs[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)
        else:
            if RMS:
                acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float64 if IS_F64 else tl.float32)
                for start in range(0, C, BLOCK_C):
                    cols = start + offs
                    ok = row_ok[:, None] & (cols < C)[None, :]
                    x = _load_row_tile(x_rows + cols[None, :] * stride_xc, ok, IS_F64)
                    acc += x * x
                rstd = _rsqrt(tl.sum(acc, axis=1) / C + eps, IS_F64)
                mean = rstd  # unused by RMS
            else:
                # Chan merge of each chunk's (mean, centred sum of squares); every earlier chunk is full,
                # so `start` channels are merged before the chunk at `start`.
                mean = tl.zeros([BLOCK_R], dtype=tl.float64 if IS_F64 else tl.float32)
                m2 = tl.zeros([BLOCK_R], dtype=tl.float64 if IS_F64 else tl.float32)
                for start in range(0, C, BLOCK_C):
                    cols = start + offs
                    ok = row_ok[:, None] & (cols < C)[None, :]
                    x = _load_row_tile(x_rows + cols[None, :] * stride_xc, ok, IS_F64)
                    n_before = tl.zeros([BLOCK_R], dtype=mean.dtype) + start
                    n_chunk = tl.minimum(C - n_before, BLOCK_C)
                    chunk_mean = tl.sum(x, axis=1) / n_chunk
                    d = tl.where(ok, x - chunk_mean[:, None], 0.0)
                    delta = chunk_mean - mean
                    frac = n_chunk / (n_before + n_chunk)
                    mean += delta * frac
                    m2 += tl.sum(d * d, axis=1) + delta * delta * n_before * frac
                rstd = _rsqrt(m2 / C + eps, IS_F64)
            for start in range(0, C, BLOCK_C):
                cols = start + offs
                col_ok = cols < C
                ok = row_ok[:, None] & col_ok[None, :]
                x = _load_row_tile(x_rows + cols[None, :] * stride_xc, ok, IS_F64)
                y = _norm_map(x, mean, rstd, cols, col_ok, lam, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr,
                              weight_offset, RMS, HAS_NW, HAS_NB, HAS_SUPPORT)
                tl.store(y_rows + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


def norm_config(num_rows: int, num_channels: int, max_single_tile_c: int = MAX_SINGLE_TILE_C) -> tuple[int, int, bool, int]:
    """``(BLOCK_R, BLOCK_C, SINGLE_TILE, num_warps)`` for normalising ``[R, C]`` rows.

    Narrow rows are packed several per program (about ``_TILE_ELEMENTS`` elements); a row wider
    than ``max_single_tile_c`` channels gets one program and is walked in chunks.
    """
    block_c = triton.next_power_of_2(num_channels)
    if block_c <= max_single_tile_c:
        block_r = max(1, min(triton.next_power_of_2(num_rows), _TILE_ELEMENTS // block_c))
        single = True
    else:
        block_c = min(_CHUNK_C, triton.next_power_of_2(max_single_tile_c))
        block_r = 1
        single = False
    warps = min(16, max(4, block_r * block_c // 512))
    return block_r, block_c, single, warps


def norm_transport_triton(
    x: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    *,
    rms: bool,
    eps: float,
    weight_offset: float = 0.0,
    out: Tensor | None = None,
    max_single_tile_c: int = MAX_SINGLE_TILE_C,
) -> Tensor:
    """Launches the fused kernel; arguments already validated.

    Args:
        x: ``[..., C]``, normalised over the last dim (any strides).
        norm_weight, norm_bias: ``[C]`` or None (``norm_bias`` must be None when ``rms``).
        weight, bias, lo, hi: ``[C]`` map and support (``lo``/``hi`` both or neither).
        strength: None (use ``scalar_strength``), 0-d, or ``[B]`` with ``B = x.shape[0]``.
        rms: RMSNorm (``weight_offset`` added to ``norm_weight``) if True, else LayerNorm.
        out: contiguous tensor shaped and typed like ``x`` to write into (a fresh one if None).
        max_single_tile_c: widest row normed from registers; wider rows take the chunked path.

    Returns:
        ``out`` (contiguous, ``x``'s shape and dtype).
    """
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {list(x.shape)}, got {out.dtype} {list(out.shape)}")
    if x.numel() == 0:
        return out
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # a view whenever the leading dims collapse; non-unit strides kept
    R = x2.shape[0]
    rows_per_batch = max(1, R // x.shape[0]) if x.ndim >= 2 else 1
    has_support = lo is not None
    is_f64 = x.dtype == torch.float64
    params = weight
    if is_f64:
        params = torch.tensor([eps, weight_offset], dtype=torch.float64, device=x.device)
        if strength is None:
            strength = torch.tensor(scalar_strength, dtype=torch.float64, device=x.device)
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight)
    block_r, block_c, single, warps = norm_config(R, C, max_single_tile_c)
    _norm_transport_kernel[(triton.cdiv(R, block_r),)](
        x2, out, weight if norm_weight is None else norm_weight, weight if norm_bias is None else norm_bias,
        weight, bias, lo if has_support else weight, hi if has_support else weight, s_arg, s_scalar, params,
        R, C, x2.stride(0), x2.stride(1), rows_per_batch, float(eps), float(weight_offset),
        RMS=rms, HAS_NW=norm_weight is not None, HAS_NB=norm_bias is not None, HAS_SUPPORT=has_support,
        STRENGTH_MODE=s_mode, IS_F64=is_f64, SINGLE_TILE=single,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )
    return out


@torch.library.custom_op("act_fast::rms_norm_transport", mutates_args=())
def _rms_norm_transport_op(
    x: Tensor,
    norm_weight: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    eps: float,
    weight_offset: float,
) -> Tensor:
    if use_triton(x):
        return norm_transport_triton(
            x, norm_weight, None, weight, bias, strength, scalar_strength, lo, hi,
            rms=True, eps=eps, weight_offset=weight_offset,
        )
    s: Strength = scalar_strength if strength is None else strength
    return rms_norm_transport_ref(x, norm_weight, weight, bias, s, lo, hi, eps=eps, weight_offset=weight_offset).contiguous()


@torch.library.custom_op("act_fast::layer_norm_transport", mutates_args=())
def _layer_norm_transport_op(
    x: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    eps: float,
) -> Tensor:
    if use_triton(x):
        return norm_transport_triton(
            x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, rms=False, eps=eps,
        )
    s: Strength = scalar_strength if strength is None else strength
    return layer_norm_transport_ref(x, norm_weight, norm_bias, weight, bias, s, lo, hi, eps=eps).contiguous()


@_rms_norm_transport_op.register_fake
def _(x, norm_weight, weight, bias, strength, scalar_strength, lo, hi, eps, weight_offset):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@_layer_norm_transport_op.register_fake
def _(x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _channel_sum(t: Tensor, like: Tensor) -> Tensor:
    """Sums ``[..., C]`` over every dim but the last into ``like``'s (``[C]``) dtype."""
    return t.reshape(-1, t.shape[-1]).sum(0).to(like.dtype)


def _norm_transport_backward(
    grad: Tensor,
    x: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    eps: float,
    weight_offset: float,
    rms: bool,
    needs: tuple[bool, bool, bool, bool, bool, bool],
) -> tuple[Tensor | None, ...]:
    """Gradients ``(x, norm_weight, norm_bias, weight, bias, strength)``; None where not needed.

    With ``x̂`` the unit-normed row (``rstd`` its scale), ``h = x̂ ⊙ s + nb`` (``s = nw + offset``)
    and ``y = h + λ_in ((w − 1) h + b)`` (``λ_in = λ`` inside the support, 0 outside):
    ``∂y/∂h = 1 + λ_in (w − 1)``; RMS ``∂x = rstd (g − x̂ mean(g x̂))``, LayerNorm
    ``∂x = rstd (g − mean(g) − x̂ mean(g x̂))`` with ``g`` the gradient w.r.t. ``x̂``.
    """
    need_x, need_nw, need_nb, need_w, need_b, need_s = needs
    cdt = compute_dtype(x.dtype)
    g = grad.to(cdt)
    xf = x.to(cdt)
    if rms:
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xhat = xf * rstd
    else:
        xc = xf - xf.mean(-1, keepdim=True)
        rstd = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
        xhat = xc * rstd
    scale = None if norm_weight is None else norm_weight.to(cdt) + weight_offset
    h = xhat if scale is None else xhat * scale
    if norm_bias is not None:
        h = h + norm_bias.to(cdt)
    w = weight.to(cdt)
    b = bias.to(cdt)
    lam = strength_tensor(scalar_strength if strength is None else strength, x, cdt)
    inside = support_mask(h, None if lo is None else lo.to(cdt), None if hi is None else hi.to(cdt))
    lam_in = lam if inside is None else lam * inside
    gh = g * (1.0 + lam_in * (w - 1.0))
    gx = gnw = gnb = gw = gb = gs = None
    if need_w:
        gw = _channel_sum(g * lam_in * h, weight)
    if need_b:
        gb = _channel_sum(g * lam_in, bias)
    if need_s and strength is not None:
        delta = g * ((w * h + b) - h)
        if inside is not None:
            delta = delta * inside
        gs = (delta.reshape(delta.shape[0], -1).sum(1) if strength.ndim == 1 else delta.sum()).to(strength.dtype)
    if need_nw and norm_weight is not None:
        gnw = _channel_sum(gh * xhat, norm_weight)
    if need_nb and norm_bias is not None:
        gnb = _channel_sum(gh, norm_bias)
    if need_x:
        gxhat = gh if scale is None else gh * scale
        proj = xhat * (gxhat * xhat).mean(-1, keepdim=True)
        if rms:
            gx = rstd * (gxhat - proj)
        else:
            gx = rstd * (gxhat - gxhat.mean(-1, keepdim=True) - proj)
        gx = gx.to(x.dtype)
    return gx, gnw, gnb, gw, gb, gs


def _rms_setup_context(ctx, inputs, output):
    x, norm_weight, weight, bias, strength, scalar_strength, lo, hi, eps, weight_offset = inputs
    ctx.save_for_backward(x, norm_weight, weight, bias, strength, lo, hi)
    ctx.scalar_strength = scalar_strength
    ctx.eps = eps
    ctx.weight_offset = weight_offset


def _rms_backward(ctx, grad: Tensor):
    x, norm_weight, weight, bias, strength, lo, hi = ctx.saved_tensors
    n = ctx.needs_input_grad
    gx, gnw, _, gw, gb, gs = _norm_transport_backward(
        grad, x, norm_weight, None, weight, bias, strength, ctx.scalar_strength, lo, hi, ctx.eps,
        ctx.weight_offset, True, (n[0], n[1], False, n[2], n[3], n[4]),
    )
    return gx, gnw, gw, gb, gs, None, None, None, None, None


def _layer_setup_context(ctx, inputs, output):
    x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, eps = inputs
    ctx.save_for_backward(x, norm_weight, norm_bias, weight, bias, strength, lo, hi)
    ctx.scalar_strength = scalar_strength
    ctx.eps = eps


def _layer_backward(ctx, grad: Tensor):
    x, norm_weight, norm_bias, weight, bias, strength, lo, hi = ctx.saved_tensors
    n = ctx.needs_input_grad
    gx, gnw, gnb, gw, gb, gs = _norm_transport_backward(
        grad, x, norm_weight, norm_bias, weight, bias, strength, ctx.scalar_strength, lo, hi, ctx.eps,
        0.0, False, (n[0], n[1], n[2], n[3], n[4], n[5]),
    )
    return gx, gnw, gnb, gw, gb, gs, None, None, None, None


_rms_norm_transport_op.register_autograd(_rms_backward, setup_context=_rms_setup_context)
_layer_norm_transport_op.register_autograd(_layer_backward, setup_context=_layer_setup_context)


def _check_number(value: object, name: str, *, non_negative: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (non_negative and v < 0):
        raise ValueError(f"{name} must be a finite{' non-negative' if non_negative else ''} float, got {value!r}")
    return v


def _check_common(
    x: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, weight: Tensor, bias: Tensor,
    strength: Strength, lo: Tensor | None, hi: Tensor | None,
) -> tuple[Tensor | None, float]:
    checks.check_input(x)
    C = x.shape[-1]
    if norm_weight is not None:
        checks.check_channel_vector(norm_weight, "norm_weight", C, x)
    if norm_bias is not None:
        checks.check_channel_vector(norm_bias, "norm_bias", C, x)
    checks.check_channel_vector(weight, "weight", C, x)
    checks.check_channel_vector(bias, "bias", C, x)
    checks.check_support(lo, hi, C, x)
    s_tensor, s_scalar = checks.normalize_strength(strength, x)
    checks.check_finite(norm_weight=norm_weight, norm_bias=norm_bias, weight=weight, bias=bias, lo=lo, hi=hi)
    return s_tensor, s_scalar


def rms_norm_transport(
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
) -> Tensor:
    """RMSNorm over the last dim, then the affine transport of its output, in one pass.

    ``h = x · rsqrt(mean(x²) + eps) ⊙ (norm_weight + weight_offset)`` and
    ``y = h + λ (weight ⊙ h + bias − h)`` where ``lo < h < hi`` (strict), else ``y = h``.

    Args:
        x: ``[..., C]`` channels last, any leading dims and strides. float32 / bfloat16 / float16
            (computed in float32) or float64 (computed in float64).
        norm_weight: ``[C]`` RMSNorm weight, or None (no weight).
        weight, bias: ``[C]`` map applied to the normed value.
        strength: λ as a Python float, a 0-d tensor, or ``[B]`` with one value per batch row
            (``B = x.shape[0]``). A tensor λ can be changed in place without recompiling.
        lo, hi: ``[C]`` support bounds on the normed value, both or neither.
        eps: added to ``mean(x²)`` (non-negative).
        weight_offset: added to ``norm_weight``; 1.0 is Gemma's ``(1 + weight)`` RMSNorm.

    Returns:
        ``y`` with ``x``'s shape and dtype, contiguous.

    Raises:
        TypeError: non-float ``x``/weights/strength, non-number ``eps``/``weight_offset``.
        ValueError: channel-count, strength-rows, support-shape or device mismatch; NaN/Inf in
            ``norm_weight``, ``weight``, ``bias``, ``lo`` or ``hi``; negative ``eps``.
    """
    s_tensor, s_scalar = _check_common(x, norm_weight, None, weight, bias, strength, lo, hi)
    eps = _check_number(eps, "eps", non_negative=True)
    weight_offset = _check_number(weight_offset, "weight_offset", non_negative=False)
    return _rms_norm_transport_op(x, norm_weight, weight, bias, s_tensor, s_scalar, lo, hi, eps, weight_offset)


def layer_norm_transport(
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
) -> Tensor:
    """LayerNorm over the last dim, then the affine transport of its output, in one pass.

    ``h = (x − mean) · rsqrt(var + eps) ⊙ norm_weight + norm_bias`` (biased variance) and
    ``y = h + λ (weight ⊙ h + bias − h)`` where ``lo < h < hi`` (strict), else ``y = h``.

    Args:
        x: ``[..., C]`` channels last, any leading dims and strides. float32 / bfloat16 / float16
            (computed in float32) or float64 (computed in float64).
        norm_weight, norm_bias: ``[C]`` LayerNorm affine, each or both None.
        weight, bias: ``[C]`` map applied to the normed value.
        strength: λ as a Python float, a 0-d tensor, or ``[B]`` (``B = x.shape[0]``).
        lo, hi: ``[C]`` support bounds on the normed value, both or neither.
        eps: added to the variance (non-negative).

    Returns:
        ``y`` with ``x``'s shape and dtype, contiguous.

    Raises:
        TypeError: non-float ``x``/weights/strength, non-number ``eps``.
        ValueError: channel-count, strength-rows, support-shape or device mismatch; NaN/Inf in
            the norm's or the map's tensors; negative ``eps``.
    """
    s_tensor, s_scalar = _check_common(x, norm_weight, norm_bias, weight, bias, strength, lo, hi)
    eps = _check_number(eps, "eps", non_negative=True)
    return _layer_norm_transport_op(x, norm_weight, norm_bias, weight, bias, s_tensor, s_scalar, lo, hi, eps)
