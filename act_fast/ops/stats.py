"""Fused Triton kernel of the streaming statistics update (math: :mod:`.stats_reference`).

Two launches per update, no host synchronisation:

1. ``_stats_partial_kernel``, grid ``(P, cdiv(C, BLOCK_C))``: each program reads a chunk of rows
   of a channel block once, tile by tile. Per ``[BLOCK_R, BLOCK_C]`` tile, in float32 registers,
   it takes the tile mean, centres on it (a second centred sum corrects the rounding of that
   mean, so a ``1e4 + N(0, 1e-2)`` channel keeps its digits), and Chan-merges the tile's
   (count, mean, M2) into float64 running values. It tracks min / max and NaN / ±Inf counts
   (int32) and adds every finite value to the int32 histogram with one atomic each, bucketing
   ``float32(x) − c`` with the column's exponent offset ``k`` (layout: :mod:`.stats_reference`,
   loaded once per program from the state's ``centre`` / ``exp_offset``). It writes
   one partial per channel: ``[P, C]`` buffers, every entry written.
2. ``_stats_fold_kernel``, grid ``cdiv(C, BLOCK_C)``: Chan-merges the ``P`` partials and the
   master state in float64 and folds the int32 counters into the int64 master counters.

The histogram stays in an int32 buffer owned by the caller, which folds it into int64 before
2^31 rows could have been added (:class:`act_fast.stats.ChannelStats` does this from shapes).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from act_fast.ops.stats_reference import HistogramParams

BLOCK_R = 32
BLOCK_C = 64
PARTIAL_FIELDS = ("count", "mean", "m2", "vmin", "vmax", "nan", "pos_inf", "neg_inf")
PARTIAL_DTYPES = {
    "count": torch.int32,
    "mean": torch.float64,
    "m2": torch.float64,
    "vmin": torch.float32,
    "vmax": torch.float32,
    "nan": torch.int32,
    "pos_inf": torch.int32,
    "neg_inf": torch.int32,
}


@triton.jit
def _stats_partial_kernel(
    x_ptr,
    mask_ptr,
    hist_ptr,
    centre_ptr,
    exp_offset_ptr,
    p_count_ptr,
    p_mean_ptr,
    p_m2_ptr,
    p_min_ptr,
    p_max_ptr,
    p_nan_ptr,
    p_pinf_ptr,
    p_ninf_ptr,
    rows,
    C,
    stride_row,
    rows_per_program,
    HAS_MASK: tl.constexpr,
    SHIFT: tl.constexpr,
    MANTISSA_BITS: tl.constexpr,
    KEY_BASE: tl.constexpr,
    K: tl.constexpr,
    ZERO: tl.constexpr,
    NB: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    row_start = pid_r * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    centre = tl.load(centre_ptr + cols, mask=cmask, other=0.0)
    # Per-column key base (E_lo + k + 127) << m; KEY_BASE is its value at k = 0.
    key_base = KEY_BASE + (tl.load(exp_offset_ptr + cols, mask=cmask, other=0) << MANTISSA_BITS)

    n = tl.zeros([BLOCK_C], dtype=tl.int32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    vmin = tl.full([BLOCK_C], float("inf"), tl.float32)
    vmax = tl.full([BLOCK_C], float("-inf"), tl.float32)
    nan = tl.zeros([BLOCK_C], dtype=tl.int32)
    pinf = tl.zeros([BLOCK_C], dtype=tl.int32)
    ninf = tl.zeros([BLOCK_C], dtype=tl.int32)
    ones = tl.full([BLOCK_R, BLOCK_C], 1, tl.int32)

    for r0 in range(row_start, row_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < row_end
        if HAS_MASK:
            rmask = rmask & (tl.load(mask_ptr + r, mask=rmask, other=0) != 0)
        valid = rmask[:, None] & cmask[None, :]
        offs = r[:, None].to(tl.int64) * stride_row + cols[None, :]
        x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        is_nan = x != x
        is_pinf = x == float("inf")
        is_ninf = x == float("-inf")
        fin = valid & ~is_nan & ~is_pinf & ~is_ninf

        # Tile mean, then a centred pass; the second sum corrects the first mean's rounding.
        n_t = tl.sum(fin.to(tl.int32), axis=0)
        nf = tl.maximum(n_t, 1).to(tl.float32)
        mt = tl.sum(tl.where(fin, x, 0.0), axis=0) / nf
        d = tl.where(fin, x - mt[None, :], 0.0)
        cd = tl.sum(d, axis=0) / nf
        e = tl.where(fin, d - cd[None, :], 0.0)
        m2_t = tl.sum(e * e, axis=0)
        mean_t = mt.to(tl.float64) + cd.to(tl.float64)

        na = n.to(tl.float64)
        nb = n_t.to(tl.float64)
        ntot = tl.maximum(na + nb, 1.0)
        delta = mean_t - mean
        mean = mean + delta * (nb / ntot)
        m2 = m2 + m2_t.to(tl.float64) + delta * delta * (na * nb / ntot)
        n = n + n_t

        vmin = tl.minimum(vmin, tl.min(tl.where(fin, x, float("inf")), axis=0))
        vmax = tl.maximum(vmax, tl.max(tl.where(fin, x, float("-inf")), axis=0))
        nan += tl.sum((valid & is_nan).to(tl.int32), axis=0)
        pinf += tl.sum((valid & is_pinf).to(tl.int32), axis=0)
        ninf += tl.sum((valid & is_ninf).to(tl.int32), axis=0)

        bits = (x - centre[None, :]).to(tl.int32, bitcast=True)
        key = ((bits & 0x7FFFFFFF) >> SHIFT) - key_base[None, :]
        key = tl.minimum(tl.maximum(key, -1), K) + 1
        bucket = ZERO + tl.where(bits < 0, -key, key)
        hist_offs = cols[None, :].to(tl.int64) * NB + bucket
        tl.atomic_add(hist_ptr + hist_offs, ones, mask=fin, sem="relaxed")

    out = pid_r * C + cols
    tl.store(p_count_ptr + out, n, mask=cmask)
    tl.store(p_mean_ptr + out, mean, mask=cmask)
    tl.store(p_m2_ptr + out, m2, mask=cmask)
    tl.store(p_min_ptr + out, vmin, mask=cmask)
    tl.store(p_max_ptr + out, vmax, mask=cmask)
    tl.store(p_nan_ptr + out, nan, mask=cmask)
    tl.store(p_pinf_ptr + out, pinf, mask=cmask)
    tl.store(p_ninf_ptr + out, ninf, mask=cmask)


@triton.jit
def _stats_fold_kernel(
    p_count_ptr,
    p_mean_ptr,
    p_m2_ptr,
    p_min_ptr,
    p_max_ptr,
    p_nan_ptr,
    p_pinf_ptr,
    p_ninf_ptr,
    count_ptr,
    mean_ptr,
    m2_ptr,
    min_ptr,
    max_ptr,
    nan_ptr,
    pinf_ptr,
    ninf_ptr,
    num_partials,
    C,
    BLOCK_C: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    n = tl.load(count_ptr + cols, mask=cmask, other=0)
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    m2 = tl.load(m2_ptr + cols, mask=cmask, other=0.0)
    vmin = tl.load(min_ptr + cols, mask=cmask, other=0.0)
    vmax = tl.load(max_ptr + cols, mask=cmask, other=0.0)
    nan = tl.load(nan_ptr + cols, mask=cmask, other=0)
    pinf = tl.load(pinf_ptr + cols, mask=cmask, other=0)
    ninf = tl.load(ninf_ptr + cols, mask=cmask, other=0)
    for p in range(0, num_partials):
        offs = p * C + cols
        n_p = tl.load(p_count_ptr + offs, mask=cmask, other=0).to(tl.int64)
        mean_p = tl.load(p_mean_ptr + offs, mask=cmask, other=0.0)
        m2_p = tl.load(p_m2_ptr + offs, mask=cmask, other=0.0)
        na = n.to(tl.float64)
        nb = n_p.to(tl.float64)
        ntot = tl.maximum(na + nb, 1.0)
        delta = mean_p - mean
        mean = mean + delta * (nb / ntot)
        m2 = m2 + m2_p + delta * delta * (na * nb / ntot)
        n = n + n_p
        vmin = tl.minimum(vmin, tl.load(p_min_ptr + offs, mask=cmask, other=0.0).to(tl.float64))
        vmax = tl.maximum(vmax, tl.load(p_max_ptr + offs, mask=cmask, other=0.0).to(tl.float64))
        nan += tl.load(p_nan_ptr + offs, mask=cmask, other=0).to(tl.int64)
        pinf += tl.load(p_pinf_ptr + offs, mask=cmask, other=0).to(tl.int64)
        ninf += tl.load(p_ninf_ptr + offs, mask=cmask, other=0).to(tl.int64)
    tl.store(count_ptr + cols, n, mask=cmask)
    tl.store(mean_ptr + cols, mean, mask=cmask)
    tl.store(m2_ptr + cols, m2, mask=cmask)
    tl.store(min_ptr + cols, vmin, mask=cmask)
    tl.store(max_ptr + cols, vmax, mask=cmask)
    tl.store(nan_ptr + cols, nan, mask=cmask)
    tl.store(pinf_ptr + cols, pinf, mask=cmask)
    tl.store(ninf_ptr + cols, ninf, mask=cmask)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_rows_per_program(rows: int, num_channels: int, device: torch.device) -> int:
    """Rows each program reads: enough programs to fill a GPU, one row chunk in the interpreter."""
    if device.type != "cuda":
        return max(rows, 1)
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    row_programs = max(1, (8 * sms) // triton.cdiv(num_channels, BLOCK_C))
    per_program = triton.cdiv(rows, row_programs)
    return max(BLOCK_R, triton.cdiv(per_program, BLOCK_R) * BLOCK_R)


def allocate_partials(num_partials: int, num_channels: int, device: torch.device) -> dict[str, Tensor]:
    """Uninitialised ``[P, C]`` partial buffers (the kernel writes every entry)."""
    return {k: torch.empty((num_partials, num_channels), dtype=PARTIAL_DTYPES[k], device=device) for k in PARTIAL_FIELDS}


def stats_partials_triton(
    x: Tensor,
    hist: Tensor,
    centre: Tensor,
    exp_offset: Tensor,
    params: HistogramParams,
    row_mask: Tensor | None = None,
    *,
    rows_per_program: int | None = None,
    out: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Launches the partial kernel: adds ``x`` to ``hist`` and returns the per-chunk partials.

    Args:
        x: ``[rows, C]`` float32 / bfloat16 / float16, last dim contiguous, ``rows ≥ 1``.
        hist: int32 ``[C, B]`` contiguous, ``B = params.num_buckets``; counts are added to it.
        centre, exp_offset: the calibration, float32 / int32 ``[C]`` contiguous.
        row_mask: ``[rows]`` bool or None; masked-out rows are skipped entirely.
        rows_per_program: rows per program (the partial count is ``P = cdiv(rows, this)``).
        out: preallocated partial buffers (``[P, C]`` each, dtypes :data:`PARTIAL_DTYPES`).

    Returns:
        dict of ``[P, C]`` partials: count, mean (float64), m2 (float64), vmin, vmax (float32),
        nan, pos_inf, neg_inf (int32).
    """
    rows, num_channels = x.shape
    if rows_per_program is None:
        rows_per_program = default_rows_per_program(rows, num_channels, x.device)
    num_partials = triton.cdiv(rows, rows_per_program)
    if out is None:
        out = allocate_partials(num_partials, num_channels, x.device)
    mask = row_mask.to(torch.int8) if row_mask is not None else x
    grid = (num_partials, triton.cdiv(num_channels, BLOCK_C))
    _stats_partial_kernel[grid](
        x,
        mask,
        hist,
        centre,
        exp_offset,
        *(out[k] for k in PARTIAL_FIELDS),
        rows,
        num_channels,
        x.stride(0),
        rows_per_program,
        HAS_MASK=row_mask is not None,
        SHIFT=params.shift,
        MANTISSA_BITS=params.mantissa_bits,
        KEY_BASE=params.key_base,
        K=params.buckets_per_sign,
        ZERO=params.zero_bucket,
        NB=params.num_buckets,
        BLOCK_R=BLOCK_R,
        BLOCK_C=BLOCK_C,
        num_warps=4,
    )
    return out


def stats_fold_triton(partials: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Folds ``[P, C]`` partials into the master ``state`` in place (see :func:`stats_update_triton`)."""
    num_partials, num_channels = partials["count"].shape
    _stats_fold_kernel[(triton.cdiv(num_channels, BLOCK_C),)](
        *(partials[k] for k in PARTIAL_FIELDS),
        *(state[k] for k in PARTIAL_FIELDS),
        num_partials,
        num_channels,
        BLOCK_C=BLOCK_C,
        num_warps=2,
    )


def stats_update_triton(
    x: Tensor,
    state: dict[str, Tensor],
    params: HistogramParams,
    row_mask: Tensor | None = None,
    *,
    rows_per_program: int | None = None,
) -> None:
    """Folds ``x [rows, C]`` into ``state`` in place: the Triton twin of ``stats_update_ref``.

    ``state``: ``count, nan, pos_inf, neg_inf`` int64 ``[C]``; ``mean, m2, vmin, vmax`` float64
    ``[C]``; ``hist`` int32 ``[C, B]`` (pending counts); ``centre`` float32 and ``exp_offset``
    int32 ``[C]`` (the calibration, read only). All contiguous on ``x``'s device.
    """
    if x.shape[0] == 0:
        return
    if x.stride(-1) != 1:
        x = x.contiguous()
    partials = stats_partials_triton(
        x, state["hist"], state["centre"], state["exp_offset"], params, row_mask, rows_per_program=rows_per_program
    )
    stats_fold_triton(partials, state)
