"""Fused norm + affine transport: RMSNorm / LayerNorm over the last dim, then the map of
docs/design.md §1 applied to the normed value ``h``, in one Triton kernel (one read of ``x``, one
write of ``y``)::

    h = rms_norm(x) | layer_norm(x)        (the norm's own weight/bias/eps, rounded as the module rounds)
    y = h + λ (w ⊙ h + b − h)    where lo < h < hi (strict), else y = h

``h`` is the module's output: computed in float32, with the module's rounding order
(``CAST_BEFORE_SCALE``: Llama-style RMSNorms round the normalised value to the input dtype before
multiplying by the weight), then rounded to the input dtype; the transport reads that rounded
value. So λ = 0 returns the module's output and any λ equals the norm followed by the transport op
(bit for bit on the reference; within the dtype table in the kernels, whose row reductions differ).

:func:`_norm_transport_kernel` views ``x`` as ``[R, C]`` (any row/column stride) and runs one
program per ``BLOCK_R`` rows. Rows whose ``next_power_of_2(C)`` is at most ``MAX_SINGLE_TILE_C``
are held in registers: one read. Wider rows are walked in chunks of ``_CHUNK_C`` channels twice
(statistics, then output): a second read of the row, from L2 in practice. LayerNorm statistics over
chunks merge per-chunk mean and centred sum of squares (Chan), never ``Σx² − C·mean²``.

With ``map_index`` the map tensors are ``[K, C]`` and row ``b`` of the batch uses map
``map_index[b]`` (or the one 0-d index), as in :mod:`.transport`.

Registered as ``torch.ops.act_fast.rms_norm_transport`` and ``torch.ops.act_fast.
layer_norm_transport`` with fake (meta) kernels and autograd formulas (:mod:`.backward`):
gradients for ``x``, the norm's weight and bias, the map's weight and bias and a strength tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from act_fast.ops import checks, cpu_kernels
from act_fast.ops.backend import HAS_TRITON, implementation
from act_fast.ops.backward import norm_transport_backward
from act_fast.ops.reference import Strength, layer_norm_transport_ref, rms_norm_transport_ref
from act_fast.ops.triton_helpers import (
    chain_length,
    map_kernel_args,
    output_like,
    rows_per_batch,
    strength_kernel_args,
    support_kernel_args,
)

# Rows with next_power_of_2(C) up to this are normed from registers (one read of x).
MAX_SINGLE_TILE_C = 16384
# Channels per chunk for wider rows (read twice).
_CHUNK_C = 4096
# Target elements per program for narrow rows (several rows per program).
_TILE_ELEMENTS = 4096

if HAS_TRITON:
    import triton
    import triton.language as tl

    from act_fast.ops.triton_helpers import (
        STRENGTH_PER_ROW,
        cast_out,
        chain_tile,
        chan_merge_chunk,
        compute_rsqrt,
        load_strength,
        map_row_offset,
        map_tile_offsets,
        round_to,
        to_compute,
        transport_tile,
    )

    @triton.jit
    def _norm_map(
        x, mean, rstd, cols, col_ok, lam, map_off, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr, weight_offset,
        s_ptr, s_scalar, idx_ptr, batch, C,
        RMS: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, HAS_SUPPORT: tl.constexpr,
        MAP_MODE: tl.constexpr, CAST_BEFORE_SCALE: tl.constexpr, IS_F64: tl.constexpr, OUT_DTYPE: tl.constexpr,
        STRENGTH_MODE: tl.constexpr, NUM_MAPS: tl.constexpr,
    ):
        """The module's output ``h`` of a ``[BLOCK_R, BLOCK_C]`` tile (rounded to ``OUT_DTYPE``) and
        its transport; ``mean`` unused for RMS; ``map_off`` the map row offset(s); with
        ``NUM_MAPS > 0`` each row's chain (:func:`chain_tile`; ``lam`` and ``map_off`` unused)."""
        if RMS:
            h = x * rstd[:, None]
        else:
            h = (x - mean[:, None]) * rstd[:, None]
        if HAS_NW:
            if CAST_BEFORE_SCALE:
                h = round_to(h, OUT_DTYPE, IS_F64)
            nw = to_compute(tl.load(nw_ptr + cols, mask=col_ok, other=0.0), IS_F64)
            h = h * (nw + weight_offset)[None, :]
        if HAS_NB:
            h = h + to_compute(tl.load(nb_ptr + cols, mask=col_ok, other=0.0), IS_F64)[None, :]
        h = round_to(h, OUT_DTYPE, IS_F64)
        if NUM_MAPS > 0:
            return chain_tile(h, s_ptr, s_scalar, idx_ptr, batch, cols, col_ok, C, w_ptr, b_ptr, lo_ptr, hi_ptr,
                              STRENGTH_MODE, HAS_SUPPORT, IS_F64, NUM_MAPS)
        return transport_tile(h, lam, w_ptr, b_ptr, lo_ptr, hi_ptr, map_tile_offsets(map_off, cols, MAP_MODE), col_ok[None, :], HAS_SUPPORT)

    @triton.jit
    def _norm_transport_kernel(
        x_ptr, nw_ptr, nb_ptr, w_ptr, b_ptr, s_ptr, s_scalar, lo_ptr, hi_ptr, idx_ptr, y_ptr, p_ptr,
        R, C, stride_xr, stride_xc, rows_per_batch, eps, weight_offset,
        RMS: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, HAS_SUPPORT: tl.constexpr,
        STRENGTH_MODE: tl.constexpr, MAP_MODE: tl.constexpr, IS_F64: tl.constexpr, CAST_BEFORE_SCALE: tl.constexpr,
        SINGLE_TILE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, NUM_MAPS: tl.constexpr = 0,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        rows64 = rows.to(tl.int64)
        x_rows = x_ptr + rows64[:, None] * stride_xr
        y_rows = y_ptr + rows64[:, None] * C
        offs = tl.arange(0, BLOCK_C)
        # padded rows (rows >= R) read the last row's λ and map rather than past the end of a [B] tensor
        batch = tl.minimum(rows, R - 1) // rows_per_batch
        lam = load_strength(s_ptr, s_scalar, batch, STRENGTH_MODE, IS_F64)  # a chain loads its own (NUM_MAPS > 0)
        map_off = map_row_offset(idx_ptr, batch, C, MAP_MODE)
        if STRENGTH_MODE == STRENGTH_PER_ROW:
            lam = lam[:, None]
        if IS_F64:  # Triton passes Python floats as float32; the launcher sends them as float64 here
            eps = tl.load(p_ptr)
            weight_offset = tl.load(p_ptr + 1)
        if SINGLE_TILE:
            col_ok = offs < C
            ok = row_ok[:, None] & col_ok[None, :]
            x = to_compute(tl.load(x_rows + offs[None, :] * stride_xc, mask=ok, other=0.0), IS_F64)
            if RMS:
                rstd = compute_rsqrt(tl.sum(x * x, axis=1) / C + eps, IS_F64)
                mean = rstd  # unused by RMS
            else:
                mean = tl.sum(x, axis=1) / C
                xc = tl.where(ok, x - mean[:, None], 0.0)
                rstd = compute_rsqrt(tl.sum(xc * xc, axis=1) / C + eps, IS_F64)
            y = _norm_map(x, mean, rstd, offs, col_ok, lam, map_off, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr,
                          weight_offset, s_ptr, s_scalar, idx_ptr, batch, C, RMS, HAS_NW, HAS_NB, HAS_SUPPORT, MAP_MODE,
                          CAST_BEFORE_SCALE, IS_F64, y_ptr.dtype.element_ty, STRENGTH_MODE, NUM_MAPS)
            tl.store(y_rows + offs[None, :], cast_out(y, y_ptr.dtype.element_ty), mask=ok)
        else:
            if RMS:
                acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float64 if IS_F64 else tl.float32)
                for start in range(0, C, BLOCK_C):
                    cols = start + offs
                    ok = row_ok[:, None] & (cols < C)[None, :]
                    x = to_compute(tl.load(x_rows + cols[None, :] * stride_xc, mask=ok, other=0.0), IS_F64)
                    acc += x * x
                rstd = compute_rsqrt(tl.sum(acc, axis=1) / C + eps, IS_F64)
                mean = rstd  # unused by RMS
            else:
                mean = tl.zeros([BLOCK_R], dtype=tl.float64 if IS_F64 else tl.float32)
                m2 = tl.zeros([BLOCK_R], dtype=tl.float64 if IS_F64 else tl.float32)
                for start in range(0, C, BLOCK_C):
                    cols = start + offs
                    ok = row_ok[:, None] & (cols < C)[None, :]
                    x = to_compute(tl.load(x_rows + cols[None, :] * stride_xc, mask=ok, other=0.0), IS_F64)
                    mean, m2 = chan_merge_chunk(mean, m2, x, ok, start, C, BLOCK_C)
                rstd = compute_rsqrt(m2 / C + eps, IS_F64)
            for start in range(0, C, BLOCK_C):
                cols = start + offs
                col_ok = cols < C
                ok = row_ok[:, None] & col_ok[None, :]
                x = to_compute(tl.load(x_rows + cols[None, :] * stride_xc, mask=ok, other=0.0), IS_F64)
                y = _norm_map(x, mean, rstd, cols, col_ok, lam, map_off, nw_ptr, nb_ptr, w_ptr, b_ptr, lo_ptr, hi_ptr,
                              weight_offset, s_ptr, s_scalar, idx_ptr, batch, C, RMS, HAS_NW, HAS_NB, HAS_SUPPORT,
                              MAP_MODE, CAST_BEFORE_SCALE, IS_F64, y_ptr.dtype.element_ty, STRENGTH_MODE, NUM_MAPS)
                tl.store(y_rows + cols[None, :], cast_out(y, y_ptr.dtype.element_ty), mask=ok)


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
    map_index: Tensor | None,
    *,
    rms: bool,
    eps: float,
    weight_offset: float = 0.0,
    cast_before_scale: bool = False,
    out: Tensor | None = None,
    max_single_tile_c: int = MAX_SINGLE_TILE_C,
) -> Tensor:
    """Launches the fused kernel; arguments already validated.

    Args:
        x: ``[..., C]``, normalised over the last dim (any strides).
        norm_weight, norm_bias: ``[C]`` or None (``norm_bias`` must be None when ``rms``).
        weight, bias, strength, scalar_strength, lo, hi, map_index: the transport, as in
            :func:`act_fast.ops.transport.affine_transport_triton`.
        rms: RMSNorm (``weight_offset`` added to ``norm_weight``) if True, else LayerNorm.
        cast_before_scale: RMSNorm rounds the normalised value to ``x``'s dtype before scaling.
        out: contiguous tensor shaped and typed like ``x`` to write into (a fresh one if None).
        max_single_tile_c: widest row normed from registers; wider rows take the chunked path.

    Returns:
        ``out`` (contiguous, ``x``'s shape and dtype).
    """
    out = output_like(x, out)
    if x.numel() == 0:
        return out
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # a view whenever the leading dims collapse; non-unit strides kept
    R = x2.shape[0]
    is_f64 = x.dtype == torch.float64
    params = weight
    if is_f64:
        params = torch.tensor([eps, weight_offset], dtype=torch.float64, device=x.device)
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight, is_f64)
    lo_arg, hi_arg, has_support = support_kernel_args(lo, hi, weight)
    idx_arg, map_mode = map_kernel_args(map_index, weight)
    block_r, block_c, single, warps = norm_config(R, C, max_single_tile_c)
    _norm_transport_kernel[(triton.cdiv(R, block_r),)](
        x2, weight if norm_weight is None else norm_weight, weight if norm_bias is None else norm_bias,
        weight, bias, s_arg, s_scalar, lo_arg, hi_arg, idx_arg, out, params,
        R, C, x2.stride(0), x2.stride(1), rows_per_batch(x, R), float(eps), float(weight_offset),
        RMS=rms, HAS_NW=norm_weight is not None, HAS_NB=norm_bias is not None, HAS_SUPPORT=has_support,
        STRENGTH_MODE=s_mode, MAP_MODE=map_mode, IS_F64=is_f64, CAST_BEFORE_SCALE=cast_before_scale,
        SINGLE_TILE=single, BLOCK_R=block_r, BLOCK_C=block_c, NUM_MAPS=chain_length(map_index), num_warps=warps,
    )
    return out


def rms_norm_transport_impl(
    x: Tensor,
    norm_weight: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    eps: float,
    weight_offset: float,
    cast_before_scale: bool,
) -> Tensor:
    """The body of ``act_fast::rms_norm_transport`` (arguments validated; see :mod:`.eager`)."""
    checks.check_row_buffers(x, strength, map_index, "rms_norm_transport")
    impl = implementation(x)
    if impl == "triton":
        return norm_transport_triton(
            x, norm_weight, None, weight, bias, strength, scalar_strength, lo, hi, map_index,
            rms=True, eps=eps, weight_offset=weight_offset, cast_before_scale=cast_before_scale,
        )
    if impl == "cpu":
        y = cpu_kernels.rms_norm_transport(x, norm_weight, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, weight_offset, cast_before_scale)
        if y is not None:  # None: an input the compiled kernel does not take
            return y
    s: Strength = scalar_strength if strength is None else strength
    return rms_norm_transport_ref(
        x, norm_weight, weight, bias, s, lo, hi, eps=eps, weight_offset=weight_offset,
        cast_before_scale=cast_before_scale, map_index=map_index,
    ).contiguous()


def layer_norm_transport_impl(
    x: Tensor,
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
) -> Tensor:
    """The body of ``act_fast::layer_norm_transport`` (arguments validated; see :mod:`.eager`)."""
    checks.check_row_buffers(x, strength, map_index, "layer_norm_transport")
    impl = implementation(x)
    if impl == "triton":
        return norm_transport_triton(
            x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, rms=False, eps=eps
        )
    if impl == "cpu":
        y = cpu_kernels.layer_norm_transport(x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps)
        if y is not None:  # None: float64, which the compiled kernel does not take
            return y
    s: Strength = scalar_strength if strength is None else strength
    return layer_norm_transport_ref(x, norm_weight, norm_bias, weight, bias, s, lo, hi, eps=eps, map_index=map_index).contiguous()


_rms_norm_transport_op = torch.library.custom_op("act_fast::rms_norm_transport", rms_norm_transport_impl, mutates_args=())
_layer_norm_transport_op = torch.library.custom_op(
    "act_fast::layer_norm_transport", layer_norm_transport_impl, mutates_args=()
)


@_rms_norm_transport_op.register_fake
def _(x, norm_weight, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, weight_offset, cast_before_scale):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@_layer_norm_transport_op.register_fake
def _(x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _rms_setup_context(ctx, inputs, output):
    x, norm_weight, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, weight_offset, _ = inputs
    ctx.save_for_backward(x, norm_weight, weight, bias, strength, lo, hi, map_index)
    ctx.scalar_strength, ctx.eps, ctx.weight_offset = scalar_strength, eps, weight_offset


def _rms_backward(ctx, grad: Tensor):
    x, norm_weight, weight, bias, strength, lo, hi, map_index = ctx.saved_tensors
    n = ctx.needs_input_grad
    gx, gnw, _, gw, gb, gs = norm_transport_backward(
        grad, x, "rms", 1, norm_weight, None, weight, bias, strength, ctx.scalar_strength, lo, hi, map_index,
        ctx.eps, ctx.weight_offset, False, (n[0], n[1], False, n[2], n[3], n[4]),
    )
    return gx, gnw, gw, gb, gs, None, None, None, None, None, None, None


def _layer_setup_context(ctx, inputs, output):
    x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps = inputs
    ctx.save_for_backward(x, norm_weight, norm_bias, weight, bias, strength, lo, hi, map_index)
    ctx.scalar_strength, ctx.eps = scalar_strength, eps


def _layer_backward(ctx, grad: Tensor):
    x, norm_weight, norm_bias, weight, bias, strength, lo, hi, map_index = ctx.saved_tensors
    n = ctx.needs_input_grad
    grads = norm_transport_backward(
        grad, x, "layer", 1, norm_weight, norm_bias, weight, bias, strength, ctx.scalar_strength, lo, hi, map_index,
        ctx.eps, 0.0, False, (n[0], n[1], n[2], n[3], n[4], n[5]),
    )
    return (*grads, None, None, None, None, None)


_rms_norm_transport_op.register_autograd(_rms_backward, setup_context=_rms_setup_context)
_layer_norm_transport_op.register_autograd(_layer_backward, setup_context=_layer_setup_context)


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
    cast_before_scale: bool = False,
    map_index: Tensor | None = None,
) -> Tensor:
    """RMSNorm over the last dim, then the affine transport of its output, in one pass.

    ``h = x · rsqrt(mean(x²) + eps) ⊙ (norm_weight + weight_offset)``, rounded to ``x``'s dtype, and
    ``y = h + λ (weight ⊙ h + bias − h)`` where ``lo < h < hi`` (strict), else ``y = h``.

    Args:
        x: ``[..., C]`` channels last, any leading dims and strides. float32 / bfloat16 / float16
            (computed in float32) or float64 (computed in float64).
        norm_weight: ``[C]`` RMSNorm weight, or None (no weight).
        weight, bias: ``[C]`` map applied to the normed value; ``[K, C]`` with ``map_index``.
        strength: λ as a finite number, a 0-d tensor, or ``[B]`` with one value per batch row
            (``B = x.shape[0]``); ``[B, S]`` with a chain ``map_index``. A tensor λ can be
            changed in place without recompiling.
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds on the normed value, both
            or neither.
        eps: added to ``mean(x²)`` (non-negative).
        weight_offset: added to ``norm_weight``; 1.0 is Gemma's ``(1 + weight)`` RMSNorm.
        cast_before_scale: round the normalised value to ``x``'s dtype before multiplying by the
            weight, as Llama, Mistral, Qwen and Phi-3 do (``weight * x̂.to(input_dtype)``); False
            (Gemma, ``torch.nn.RMSNorm``): scale in float32, round once.
        map_index: None, or an int32/int64 index into the K maps on ``x``'s device: 0-d (one map
            for every row), ``[B]`` (map ``map_index[b]`` for ``x[b]``) or ``[B, S]`` (``S ≤ 4``:
            the chain ``T_S(… T_1(h))`` of the normed value, as in
            :func:`act_fast.ops.affine_transport`). Values must lie in
            ``[0, K)`` and are not checked (see :func:`act_fast.ops.affine_transport`).

    Returns:
        ``y`` with ``x``'s shape and dtype, contiguous.

    Raises:
        TypeError: non-float ``x``/weights/strength, non-integer ``map_index``, non-number
            ``eps``/``weight_offset``.
        ValueError: channel-count, strength-rows, map_index-rows, map-count, support-shape or
            device mismatch; NaN/Inf in ``norm_weight``, ``weight``, ``bias``, ``lo``, ``hi`` or a
            strength; ``lo > hi``; negative ``eps``.
    """
    s_tensor, s_scalar = checks.check_norm_inputs(x, -1, norm_weight, None, weight, bias, strength, lo, hi, map_index)
    eps = checks.check_number(eps, "eps", non_negative=True)
    weight_offset = checks.check_number(weight_offset, "weight_offset")
    return _rms_norm_transport_op(
        x, norm_weight, weight, bias, s_tensor, s_scalar, lo, hi, map_index, eps, weight_offset, bool(cast_before_scale)
    )


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
    map_index: Tensor | None = None,
) -> Tensor:
    """LayerNorm over the last dim, then the affine transport of its output, in one pass.

    ``h = (x − mean) · rsqrt(var + eps) ⊙ norm_weight + norm_bias`` (biased variance), rounded to
    ``x``'s dtype, and ``y = h + λ (weight ⊙ h + bias − h)`` where ``lo < h < hi`` (strict), else
    ``y = h``.

    Args:
        x: ``[..., C]`` channels last, any leading dims and strides. float32 / bfloat16 / float16
            (computed in float32) or float64 (computed in float64).
        norm_weight, norm_bias: ``[C]`` LayerNorm affine, each or both None.
        weight, bias: ``[C]`` map applied to the normed value; ``[K, C]`` with ``map_index``.
        strength: λ as a finite number, a 0-d tensor, or ``[B]`` (``B = x.shape[0]``).
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds on the normed value, both
            or neither.
        eps: added to the variance (non-negative).
        map_index: None, or a 0-d / ``[B]`` / ``[B, S]`` (chain) int32/int64 index into the K
            maps, as in :func:`rms_norm_transport`.

    Returns:
        ``y`` with ``x``'s shape and dtype, contiguous.

    Raises:
        TypeError: non-float ``x``/weights/strength, non-integer ``map_index``, non-number ``eps``.
        ValueError: channel-count, strength-rows, map_index-rows, map-count, support-shape or
            device mismatch; NaN/Inf in the norm's or the map's tensors or a strength; ``lo > hi``;
            negative ``eps``.
    """
    s_tensor, s_scalar = checks.check_norm_inputs(x, -1, norm_weight, norm_bias, weight, bias, strength, lo, hi, map_index)
    eps = checks.check_number(eps, "eps", non_negative=True)
    return _layer_norm_transport_op(x, norm_weight, norm_bias, weight, bias, s_tensor, s_scalar, lo, hi, map_index, eps)
