"""Fused GroupNorm + affine transport for conv features ``x: [B, C, *spatial]``::

    h = group_norm(x, num_groups, norm_weight, norm_bias, eps)      (rounded to x's dtype, as the module)
    y = affine_transport(h, weight, bias, λ, lo, hi, channel_dim=1, pool_spatial=...)

Two Triton kernels:

- :func:`_plane_stats_kernel`, one program per ``(b, c)`` plane: the plane's mean and centred
  sum of squares (M2), chunked with Chan's merge (:func:`chan_merge_chunk`), into a small
  ``[B·C, 2]`` buffer in the compute dtype;
- the planes kernel of :mod:`.transport` with ``NORM``: each ``(b, c)`` program merges the
  statistics of its group's planes (equal counts, so ``M2 = Σ M2_c + HW Σ (mean_c − mean)²``),
  normalises its plane on the fly (rounding to ``x``'s dtype) and transports it. GroupNorm is
  affine per plane, so the normed plane's mean (support test, pooled map) comes from the
  statistics (before rounding: within the dtype table of the reference, which averages the
  rounded plane): ``x`` is read once by each kernel and ``y`` written once.

Registered as ``torch.ops.act_fast.group_norm_transport`` with a fake (meta) kernel and an
autograd formula (:func:`act_fast.ops.backward.norm_transport_backward`): gradients for ``x``,
the norm's weight and bias, the map's weight and bias and a strength tensor; the support mask is
not differentiated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from act_fast.ops import checks, cpu_kernels
from act_fast.ops.backend import HAS_TRITON, implementation
from act_fast.ops.backward import norm_transport_backward
from act_fast.ops.reference import Strength, compute_dtype, group_norm_transport_ref
from act_fast.ops.transport import transport_planes_triton
from act_fast.ops.triton_helpers import output_like

# Positions per chunk of the statistics kernel.
_STATS_BLOCK = 4096

if HAS_TRITON:
    import triton
    import triton.language as tl

    from act_fast.ops.triton_helpers import chan_merge_chunk

    @triton.jit
    def _plane_stats_kernel(
        x_ptr, st_ptr, C, HW, stride_xb, stride_xc, stride_xp,
        IS_F64: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bi = pid // C
        ci = pid % C
        x_base = x_ptr + bi.to(tl.int64) * stride_xb + ci.to(tl.int64) * stride_xc
        offs = tl.arange(0, BLOCK)
        mean = tl.zeros([1], dtype=tl.float64 if IS_F64 else tl.float32)
        m2 = tl.zeros([1], dtype=tl.float64 if IS_F64 else tl.float32)
        for start in range(0, HW, BLOCK):
            ok = (start + offs < HW)[None, :]
            x = tl.load(x_base + (start + offs)[None, :] * stride_xp, mask=ok, other=0.0).to(mean.dtype)
            mean, m2 = chan_merge_chunk(mean, m2, x, ok, start, HW, BLOCK)
        tl.store(st_ptr + pid.to(tl.int64) * 2, tl.sum(mean, axis=0))
        tl.store(st_ptr + pid.to(tl.int64) * 2 + 1, tl.sum(m2, axis=0))


def group_norm_transport_triton(
    x: Tensor,
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
    pool_spatial: bool,
    out: Tensor | None = None,
) -> Tensor:
    """Launches the statistics and the planes kernels; arguments already validated.

    ``x: [B, C, *spatial]`` (any strides), the rest as in :func:`group_norm_transport` with
    ``strength`` None (use ``scalar_strength``), 0-d or ``[B]``. Writes into ``out`` (contiguous,
    ``x``'s shape and dtype) when given, else a new tensor; returns it.
    """
    y = output_like(x, out)
    if x.numel() == 0:
        return y
    B, C = x.shape[:2]
    x3 = x.reshape(B, C, -1)
    HW = x3.shape[2]
    stats = torch.empty(B * C, 2, dtype=compute_dtype(x.dtype), device=x.device)
    _plane_stats_kernel[(B * C,)](
        x3, stats, C, HW, x3.stride(0), x3.stride(1), x3.stride(2),
        IS_F64=x.dtype == torch.float64, BLOCK=min(triton.next_power_of_2(HW), _STATS_BLOCK), num_warps=4,
    )
    transport_planes_triton(
        x3, weight, bias, strength, scalar_strength, lo, hi, map_index, pool_spatial, y,
        group_norm=(stats, C // num_groups, norm_weight, norm_bias, eps),
    )
    return y


def group_norm_transport_impl(
    x: Tensor,
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
    pool_spatial: bool,
) -> Tensor:
    """The body of ``act_fast::group_norm_transport`` (arguments validated; see :mod:`.eager`)."""
    checks.check_row_buffers(x, strength, map_index, "group_norm_transport")
    checks.check_chain_layout(x, map_index, 1, "group_norm_transport")
    impl = implementation(x)
    if impl == "triton":
        return group_norm_transport_triton(
            x, num_groups, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, pool_spatial
        )
    if impl == "cpu":
        y = cpu_kernels.group_norm_transport(x, num_groups, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, pool_spatial)
        if y is not None:  # None: an input the compiled kernel does not take
            return y
    s: Strength = scalar_strength if strength is None else strength
    return group_norm_transport_ref(
        x, num_groups, norm_weight, norm_bias, weight, bias, s, lo, hi,
        eps=eps, pool_spatial=pool_spatial, map_index=map_index,
    ).contiguous()


_group_norm_transport_op = torch.library.custom_op(
    "act_fast::group_norm_transport", group_norm_transport_impl, mutates_args=()
)


@_group_norm_transport_op.register_fake
def _(x, num_groups, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, pool_spatial):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    x, num_groups, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, pool_spatial = inputs
    ctx.save_for_backward(x, norm_weight, norm_bias, weight, bias, strength, lo, hi, map_index)
    ctx.num_groups, ctx.scalar_strength, ctx.eps, ctx.pool_spatial = num_groups, scalar_strength, eps, pool_spatial


def _backward(ctx, grad: Tensor):
    x, norm_weight, norm_bias, weight, bias, strength, lo, hi, map_index = ctx.saved_tensors
    n = ctx.needs_input_grad
    gx, gnw, gnb, gw, gb, gs = norm_transport_backward(
        grad, x, "group", ctx.num_groups, norm_weight, norm_bias, weight, bias, strength, ctx.scalar_strength, lo, hi,
        map_index, ctx.eps, 0.0, ctx.pool_spatial, (n[0], n[2], n[3], n[4], n[5], n[6]),
    )
    return gx, None, gnw, gnb, gw, gb, gs, None, None, None, None, None, None


_group_norm_transport_op.register_autograd(_backward, setup_context=_setup_context)


def group_norm_transport(
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
    """GroupNorm of conv features, then the affine transport of its output, in one pass.

    ``h = group_norm(x, num_groups, norm_weight, norm_bias, eps)`` (biased variance over each
    group of ``C / num_groups`` channels and all positions), computed in float32 (float64 for
    float64 input) and rounded to ``x``'s dtype as ``torch.nn.GroupNorm`` returns it, then
    ``y = affine_transport(h, weight, bias, strength, lo, hi, channel_dim=1,
    pool_spatial=pool_spatial, map_index=map_index)``, written in ``x``'s dtype.

    Args:
        x: ``[B, C, *spatial]`` (at least one spatial dim, any strides), float32 / bfloat16 /
            float16 or float64.
        num_groups: number of groups; must divide ``C``.
        norm_weight, norm_bias: ``[C]`` GroupNorm affine, each or both None.
        weight, bias: ``[C]`` map applied to the normed value; ``[K, C]`` with ``map_index``.
        strength: λ as a Python float, a 0-d tensor, or ``[B]`` with one value per batch row.
        lo, hi: ``[C]`` (``[K, C]`` with ``map_index``) support bounds, tested on each normed
            plane's spatial mean; both or neither.
        eps: added to the variance (non-negative).
        pool_spatial: True (Linear-AcT on diffusion): the map is evaluated on each plane's mean
            ``m`` and ``λ((w − 1) m + b)`` is added to every position; False: the map is per
            position (support still tested on the plane's mean).
        map_index: None, or a 0-d / ``[B]`` int32/int64 index into the K maps (values in
            ``[0, K)``, not checked; see :func:`act_fast.ops.affine_transport`).

    Returns:
        ``y`` with ``x``'s shape and dtype, contiguous.

    Raises:
        TypeError: non-float ``x``/weights/strength, non-integer ``map_index`` or ``num_groups``,
            non-number ``eps``, non-bool ``pool_spatial``.
        ValueError: ``x`` without a spatial dim, ``num_groups`` not dividing ``C``; channel-count,
            strength-rows, map_index-rows, map-count, support-shape or device mismatch; NaN/Inf in
            the norm's or the map's tensors; negative ``eps``.
    """
    checks.check_input(x)
    if x.ndim < 3:
        raise ValueError(f"x must be conv features [B, C, *spatial] with at least one spatial dim, got shape {list(x.shape)}")
    C = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups < 1 or C % num_groups != 0:
        raise ValueError(f"num_groups must be a positive divisor of the {C} channels of x {list(x.shape)}, got {num_groups}")
    if not isinstance(pool_spatial, bool):
        raise TypeError(f"pool_spatial must be a bool, got {type(pool_spatial).__name__}")
    s_tensor, s_scalar = checks.check_norm_inputs(x, 1, norm_weight, norm_bias, weight, bias, strength, lo, hi, map_index)
    checks.check_chain_layout(x, map_index, 1, "group_norm_transport")
    eps = checks.check_number(eps, "eps", non_negative=True)
    return _group_norm_transport_op(
        x, num_groups, norm_weight, norm_bias, weight, bias, s_tensor, s_scalar, lo, hi, map_index, eps, pool_spatial
    )
