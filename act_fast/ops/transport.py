"""Affine transport op: ``y = x + λ (w ⊙ x + b − x)`` inside the support ``lo < x < hi``.

Two Triton kernels, each reading ``x`` once and writing ``y`` once:

- :func:`_transport_rows_kernel` for channels-last ``[..., C]`` (viewed as ``[R, C]`` with any
  row/column stride), one program per ``[BLOCK_R, BLOCK_C]`` tile;
- :func:`_transport_planes_kernel` for conv features ``[B, C, *spatial]`` (``channel_dim=1``),
  one program per ``(b, c)`` plane: it reduces the plane's mean (for the support test and the
  pooled map) and writes the plane. Planes up to ``PLANE_SINGLE_TILE`` elements are held in
  registers (one read); larger planes are read a second time, from L2 in practice. With
  ``NORM`` it transports GroupNorm(x) instead (:mod:`.group_norm_transport`).

Several maps per site: with ``map_index`` the map tensors are ``[K, C]`` and the kernels read
row ``map_index[b]`` (or the one 0-d index) for batch row ``b`` (``MAP_MODE``); without it they
are ``[C]``.

Registered as ``torch.ops.act_fast.affine_transport`` (a new output) and
``torch.ops.act_fast.affine_transport_out`` (writes a given output, which may be ``x`` itself)
with fake (meta) kernels; the functional op has an autograd formula (gradients for ``x``,
``weight``, ``bias`` and a strength tensor), so it traces under torch.compile as one opaque node
and maps can be trained end to end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from act_fast.ops import checks, cpu_kernels
from act_fast.ops.backend import HAS_TRITON, implementation
from act_fast.ops.backward import transport_backward
from act_fast.ops.reference import Strength, affine_transport_ref, compute_dtype
from act_fast.ops.triton_helpers import (
    chain_length,
    map_kernel_args,
    output_like,
    rows_per_batch,
    strength_kernel_args,
    support_kernel_args,
)

_TILE_ELEMENTS = 4096
_MAX_BLOCK_C = 1024
# Planes of up to this many positions are transported from registers (one read of x).
PLANE_SINGLE_TILE = 16384
_PLANE_BLOCK = 4096

if HAS_TRITON:
    import triton
    import triton.language as tl

    from act_fast.ops.triton_helpers import (
        STRENGTH_PER_ROW,
        cast_out,
        chain_tile,
        compute_rsqrt,
        load_strength,
        map_row_offset,
        map_tile_offsets,
        round_to,
        to_compute,
        transport_tile,
    )

    @triton.jit
    def _transport_rows_kernel(
        x_ptr, w_ptr, b_ptr, s_ptr, s_scalar, lo_ptr, hi_ptr, idx_ptr, y_ptr,
        R, C, stride_xr, stride_xc, rows_per_batch,
        HAS_SUPPORT: tl.constexpr, STRENGTH_MODE: tl.constexpr, MAP_MODE: tl.constexpr, IS_F64: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, NUM_MAPS: tl.constexpr = 0,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        ok = (rows < R)[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        # Clamped: rows past R (tile padding) must not index past the end of a [B] strength or map_index.
        batch = tl.minimum(rows, R - 1) // rows_per_batch
        x = to_compute(tl.load(x_ptr + rows64[:, None] * stride_xr + cols[None, :] * stride_xc, mask=ok, other=0.0), IS_F64)
        if NUM_MAPS > 0:  # a chain per row ([B, S] map_index)
            y = chain_tile(x, s_ptr, s_scalar, idx_ptr, batch, cols, col_ok, C, w_ptr, b_ptr, lo_ptr, hi_ptr,
                           STRENGTH_MODE, HAS_SUPPORT, IS_F64, NUM_MAPS)
        else:
            map_offs = map_tile_offsets(map_row_offset(idx_ptr, batch, C, MAP_MODE), cols, MAP_MODE)
            lam = load_strength(s_ptr, s_scalar, batch, STRENGTH_MODE, IS_F64)
            if STRENGTH_MODE == STRENGTH_PER_ROW:
                lam = lam[:, None]
            y = transport_tile(x, lam, w_ptr, b_ptr, lo_ptr, hi_ptr, map_offs, col_ok[None, :], HAS_SUPPORT)
        tl.store(y_ptr + rows64[:, None] * C + cols[None, :], cast_out(y, y_ptr.dtype.element_ty), mask=ok)

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
            nw = to_compute(tl.load(nw_ptr + ci), IS_F64)
        if HAS_NB:
            nb = to_compute(tl.load(nb_ptr + ci), IS_F64)
        m = _group_norm_apply(tl.load(st_ptr + (bi.to(tl.int64) * C + ci) * 2), gmean, rstd, nw, nb, HAS_NW, HAS_NB)
        return gmean, rstd, nw, nb, m

    @triton.jit
    def _group_norm_apply(x, mean, rstd, nw, nb, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr):
        """``x · a + c`` with ``a = rstd · γ`` and ``c = β − mean · a``: GroupNorm in ATen's order
        (its CPU and CUDA kernels fold the affine into one scale and shift per plane)."""
        a = rstd
        if HAS_NW:
            a = rstd * nw
        c = -(mean * a)
        if HAS_NB:
            c = nb - mean * a
        return x * a + c

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

    @triton.jit
    def _load_plane(x_base, offs, ok, stride_xp, gmean, rstd, nw, nb, NORM: tl.constexpr, HAS_NW: tl.constexpr,
                    HAS_NB: tl.constexpr, IS_F64: tl.constexpr, OUT_DTYPE: tl.constexpr):
        """Plane positions ``offs`` in the compute dtype: ``x`` itself, or with ``NORM`` its GroupNorm
        rounded to the output dtype (what ``torch.nn.GroupNorm`` returns)."""
        x = to_compute(tl.load(x_base + offs * stride_xp, mask=ok, other=0.0), IS_F64)
        if NORM:
            x = round_to(_group_norm_apply(x, gmean, rstd, nw, nb, HAS_NW, HAS_NB), OUT_DTYPE, IS_F64)
        return x

    @triton.jit
    def _transport_planes_kernel(
        x_ptr, w_ptr, b_ptr, s_ptr, s_scalar, lo_ptr, hi_ptr, idx_ptr, y_ptr,
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
        w = to_compute(tl.load(w_ptr + map_off + ci), IS_F64)
        b = to_compute(tl.load(b_ptr + map_off + ci), IS_F64)
        lam = load_strength(s_ptr, s_scalar, bi, STRENGTH_MODE, IS_F64)
        acc = tl.zeros([BLOCK], dtype=w.dtype)
        # With NORM the plane is GroupNorm(x) (statistics from st_ptr); its mean comes with the statistics.
        gmean, rstd, nw, nb, m = w, w, w, w, w  # placeholders unless NORM
        if NORM:
            gmean, rstd, nw, nb, m = _group_norm_stats(
                st_ptr, nw_ptr, nb_ptr, p_ptr, eps, bi, ci, C, HW, group_size, HAS_NW, HAS_NB, IS_F64, BLOCK_G
            )
        if SINGLE_TILE:
            ok = offs < HW
            x = _load_plane(x_base, offs, ok, stride_xp, gmean, rstd, nw, nb, NORM, HAS_NW, HAS_NB, IS_F64, y_ptr.dtype.element_ty)
            if not NORM:
                acc += x
        elif not NORM:
            for start in range(0, HW, BLOCK):
                ok = start + offs < HW
                acc += to_compute(tl.load(x_base + (start + offs) * stride_xp, mask=ok, other=0.0), IS_F64)
        if not NORM:
            m = tl.sum(acc, axis=0) / HW
        inside = m == m  # only read when HAS_SUPPORT
        if HAS_SUPPORT:
            lo = to_compute(tl.load(lo_ptr + map_off + ci), IS_F64)
            hi = to_compute(tl.load(hi_ptr + map_off + ci), IS_F64)
            inside = (m > lo) & (m < hi)
        delta = lam  # the pooled shift λ(T(m) − m) when POOL; unused otherwise
        if POOL:
            delta = lam * ((w - 1.0) * m + b)
        if SINGLE_TILE:
            y = _plane_map(x, w, b, lam, delta, inside, HAS_SUPPORT, POOL)
            tl.store(y_base + offs, cast_out(y, y_ptr.dtype.element_ty), mask=ok)
        else:
            for start in range(0, HW, BLOCK):
                ok = start + offs < HW
                x = _load_plane(x_base, start + offs, ok, stride_xp, gmean, rstd, nw, nb, NORM, HAS_NW, HAS_NB, IS_F64, y_ptr.dtype.element_ty)
                y = _plane_map(x, w, b, lam, delta, inside, HAS_SUPPORT, POOL)
                tl.store(y_base + start + offs, cast_out(y, y_ptr.dtype.element_ty), mask=ok)


def rows_config(num_rows: int, num_channels: int, is_f64: bool = False) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_C, num_warps)`` for a ``[R, C]`` elementwise tile of ~4096 elements (a quarter
    as many for float64, whose per-row map gathers otherwise exceed sm_80's register budget)."""
    block_c = min(triton.next_power_of_2(num_channels), _MAX_BLOCK_C)
    elements = _TILE_ELEMENTS // 4 if is_f64 else _TILE_ELEMENTS
    block_r = max(1, min(triton.next_power_of_2(num_rows), elements // block_c))
    return block_r, block_c, 4


def transport_rows_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    out: Tensor,
) -> None:
    """Launches the rows kernel on channels-last ``x: [..., C]`` (non-empty), writing ``out``."""
    is_f64 = x.dtype == torch.float64
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight, is_f64)
    lo_arg, hi_arg, has_support = support_kernel_args(lo, hi, weight)
    idx_arg, map_mode = map_kernel_args(map_index, weight)
    C = weight.shape[-1]
    x2 = x.reshape(-1, C)  # a view whenever the leading dims collapse; non-unit strides kept
    R = x2.shape[0]
    block_r, block_c, warps = rows_config(R, C, is_f64)
    num_maps = chain_length(map_index)
    if num_maps > 2:  # a long chain holds more map values per element: spread the tile over 8 warps (no spills)
        warps = 8
    grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
    _transport_rows_kernel[grid](
        x2, weight, bias, s_arg, s_scalar, lo_arg, hi_arg, idx_arg, out,
        R, C, x2.stride(0), x2.stride(1), rows_per_batch(x, R),
        HAS_SUPPORT=has_support, STRENGTH_MODE=s_mode, MAP_MODE=map_mode, IS_F64=is_f64,
        BLOCK_R=block_r, BLOCK_C=block_c, NUM_MAPS=num_maps, num_warps=warps,
    )


def transport_planes_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    pool_spatial: bool,
    out: Tensor,
    group_norm: tuple[Tensor, int, Tensor | None, Tensor | None, float] | None = None,
) -> None:
    """Launches the planes kernel on ``x: [B, C, *spatial]`` (non-empty), writing ``out``.

    ``group_norm``: None, or ``(stats, group_size, norm_weight, norm_bias, eps)`` to transport
    GroupNorm(x) (rounded to ``x``'s dtype) instead of ``x``; ``stats`` is ``[B·C, 2]`` per-plane
    mean and M2 of ``x`` in the compute dtype.
    """
    B, C = x.shape[:2]
    x3 = x.reshape(B, C, -1)
    HW = x3.shape[2]
    is_f64 = x.dtype == torch.float64
    s_arg, s_scalar, s_mode = strength_kernel_args(strength, scalar_strength, weight, is_f64)
    lo_arg, hi_arg, has_support = support_kernel_args(lo, hi, weight)
    idx_arg, map_mode = map_kernel_args(map_index, weight)
    stats, group_size, nw, nb, eps = group_norm if group_norm is not None else (weight, 1, None, None, 0.0)
    params = weight
    if group_norm is not None and is_f64:
        params = torch.tensor([eps], dtype=torch.float64, device=x.device)
    single = HW <= PLANE_SINGLE_TILE
    block = triton.next_power_of_2(HW) if single else _PLANE_BLOCK
    _transport_planes_kernel[(B * C,)](
        x3, weight, bias, s_arg, s_scalar, lo_arg, hi_arg, idx_arg, out,
        stats, weight if nw is None else nw, weight if nb is None else nb, params, float(eps),
        C, HW, x3.stride(0), x3.stride(1), x3.stride(2), group_size,
        HAS_SUPPORT=has_support, STRENGTH_MODE=s_mode, MAP_MODE=map_mode, IS_F64=is_f64,
        POOL=pool_spatial, SINGLE_TILE=single, BLOCK=block,
        NORM=group_norm is not None, HAS_NW=nw is not None, HAS_NB=nb is not None,
        BLOCK_G=triton.next_power_of_2(group_size), num_warps=8 if block >= 4096 else 4,
    )


def affine_transport_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    out: Tensor | None = None,
) -> Tensor:
    """Launches the rows or the planes kernel; arguments already validated (``channel_dim``
    non-negative). ``strength`` is None (use ``scalar_strength``), 0-d, or ``[B]``; ``map_index``
    None (``[C]`` maps) or a 0-d / ``[B]`` index into ``[K, C]`` maps. Writes into ``out`` (a
    contiguous tensor shaped and typed like ``x``; may be ``x`` itself) or a new one; returns it."""
    y = output_like(x, out)
    if x.numel() == 0:
        return y
    if channel_dim == x.ndim - 1 or x.ndim <= 2:
        transport_rows_triton(x, weight, bias, strength, scalar_strength, lo, hi, map_index, y)
    else:
        transport_planes_triton(x, weight, bias, strength, scalar_strength, lo, hi, map_index, pool_spatial, y)
    return y


def _transport_impl(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    out: Tensor | None,
) -> Tensor:
    """The transport on the implementation :func:`act_fast.ops.backend.implementation` picks."""
    checks.check_row_buffers(x, strength, map_index, "affine_transport")
    checks.check_chain_layout(x, map_index, channel_dim, "affine_transport")
    impl = implementation(x)
    if impl == "triton":
        return affine_transport_triton(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial, out)
    if impl == "cpu":
        y = cpu_kernels.affine_transport(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial, out)
        if y is not None:  # None: an input the compiled kernel does not take
            return y
    s: Strength = scalar_strength if strength is None else strength
    y = affine_transport_ref(x, weight, bias, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool_spatial, map_index=map_index)
    return y.contiguous() if out is None else out.copy_(y)


def affine_transport_impl(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
) -> Tensor:
    """The body of ``act_fast::affine_transport`` (arguments validated; see :mod:`.eager`)."""
    return _transport_impl(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial, None)


_affine_transport_op = torch.library.custom_op("act_fast::affine_transport", affine_transport_impl, mutates_args=())


@_affine_transport_op.register_fake
def _(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def affine_transport_out_impl(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    out: Tensor,
) -> None:
    """The body of ``act_fast::affine_transport_out``: writes into ``out`` (may be ``x``)."""
    _transport_impl(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial, out)


_affine_transport_out_op = torch.library.custom_op(
    "act_fast::affine_transport_out", affine_transport_out_impl, mutates_args=("out",)
)


@_affine_transport_out_op.register_fake
def _(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial, out):
    return None


def _setup_context(ctx, inputs, output):
    x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial = inputs
    ctx.save_for_backward(x, weight, bias, strength, lo, hi, map_index)
    ctx.scalar_strength = scalar_strength
    ctx.channel_dim = channel_dim
    ctx.pool_spatial = pool_spatial


def _backward(ctx, grad: Tensor):
    x, weight, bias, strength, lo, hi, map_index = ctx.saved_tensors
    cdt = compute_dtype(x.dtype)
    gx, gw, gb, gs = transport_backward(
        grad.to(cdt), x.to(cdt), weight, bias, strength, ctx.scalar_strength, lo, hi, map_index, ctx.channel_dim,
        ctx.pool_spatial,
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
    out: Tensor | None = None,
) -> Tensor:
    """Applies the per-channel affine transport map with strength λ (docs/design.md §1).

    ``y = x + λ (weight ⊙ x + bias − x)`` where ``lo < x < hi`` (strict), else ``y = x``.

    Args:
        x: ``[..., C]`` channels last (any leading dims, any strides), or ``[B, C, *spatial]``
            with ``channel_dim=1``. float32 / bfloat16 / float16 (computed in float32) or
            float64 (computed in float64); the output has ``x``'s dtype and shape, contiguous.
        weight, bias: ``[C]`` floating tensors on ``x``'s device; ``[K, C]`` (K maps) with
            ``map_index``.
        strength: λ as a finite number (Python or NumPy), a 0-d tensor, or ``[B]`` with one value
            per batch row (``B = x.shape[0]``); with a ``[B, S]`` ``map_index`` also ``[B, S]``
            (one λ per map of each row's chain). A tensor λ can be changed in place without
            recompiling; its values are checked (finite) once per in-place version.
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds, both or neither (None:
            transport everywhere); ``lo ≤ hi`` (``lo == hi``: the map never applies there).
        channel_dim: -1 (channels last) or 1 (conv features).
        pool_spatial: only with ``channel_dim=1``: evaluate support and map on the spatial mean
            ``m`` of each ``(b, c)`` plane and add ``λ((w − 1) m + b)`` to every position. When
            False (and ``channel_dim=1``) the map is per position; the support is still tested
            on the plane's mean.
        map_index: None (one ``[C]`` map), or an int32/int64 tensor on ``x``'s device selecting
            among K maps: 0-d (map ``map_index`` for every row) or ``[B]`` (map ``map_index[b]``
            for batch row ``b``, i.e. for ``x[b]``; combines with a per-row λ), or ``[B, S]``
            (``S ≤ 4``, channels last only): row ``b`` composes the chain ``y = T_S(… T_1(x))`` of
            maps ``map_index[b, 0], …, map_index[b, S − 1]``, each map's support tested on its
            own input, in one read of ``x`` and one write of ``y``. Its values must
            lie in ``[0, K)``; they are not checked (that would sync the host): on the Triton path
            an index out of range reads out of bounds, the torch path raises IndexError. Changing
            its values in place never recompiles. ``weight``/``bias`` get ``[K, C]`` gradients.
        out: a contiguous tensor shaped and typed like ``x`` to write into (it may be ``x``
            itself: the transport is then in place). Not differentiable: use it under
            ``torch.no_grad()`` or on tensors that do not require grad.

    Returns:
        ``y`` with ``x``'s shape and dtype (``out`` when given).

    Raises:
        TypeError: non-float ``x``/maps/strength, non-integer ``map_index``.
        ValueError: channel-count, strength-rows, map_index-rows, map-count, support-shape or
            device mismatch; NaN/Inf in ``weight``, ``bias``, ``lo``, ``hi`` or a strength;
            ``lo > hi``; a bad ``out``.
    """
    checks.check_input(x)
    cd = checks.normalize_channel_dim(x, channel_dim, pool_spatial)
    checks.check_maps(weight, bias, lo, hi, map_index, x.shape[cd], x)
    checks.check_chain_layout(x, map_index, cd, "affine_transport")
    s_tensor, s_scalar = checks.normalize_strength(strength, x, map_index)
    checks.check_values(weight=weight, bias=bias, lo=lo, hi=hi)
    if out is None:
        return _affine_transport_op(x, weight, bias, s_tensor, s_scalar, lo, hi, map_index, cd, pool_spatial)
    output_like(x, out)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, s_tensor, out)):
        raise ValueError("affine_transport(out=...) is not differentiable; call it under torch.no_grad() or without out=")
    _affine_transport_out_op(x, weight, bias, s_tensor, s_scalar, lo, hi, map_index, cd, pool_spatial, out)
    return out
