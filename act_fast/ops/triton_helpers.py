"""What every Triton kernel of :mod:`act_fast.ops` shares: the named constexpr modes, small
``@triton.jit`` helpers (λ and map-row lookup, casts, rsqrt, Chan merge of chunks, the affine map
itself) and the launch helpers that turn op arguments into kernel arguments.

Kernel files (:mod:`.transport`, :mod:`.norm_transport`, :mod:`.group_norm_transport`) are siblings
that import from here; none imports another's kernels except the planes kernel, which the GroupNorm
op launches with ``NORM``.

Canonical argument order, used by every launcher, custom-op schema and CPU kernel::

    (x, [norm parameters], weight, bias, strength, scalar_strength, lo, hi, map_index, [options], out)
"""

from __future__ import annotations

from torch import Tensor

from act_fast.ops.backend import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    # STRENGTH_MODE: λ as the scalar kernel argument, as a 0-d tensor, or one value per batch row.
    STRENGTH_SCALAR = tl.constexpr(0)
    STRENGTH_TENSOR = tl.constexpr(1)
    STRENGTH_PER_ROW = tl.constexpr(2)
    # One λ per map of each row's chain ([B, S] strength with a [B, S] map_index).
    STRENGTH_PER_MAP = tl.constexpr(3)
    # MAP_MODE: one [C] map, one of K maps for every row (0-d map_index), one map per batch row.
    MAP_NONE = tl.constexpr(0)
    MAP_ONE = tl.constexpr(1)
    MAP_PER_ROW = tl.constexpr(2)

    @triton.jit
    def to_compute(v, IS_F64: tl.constexpr):
        """``v`` in the compute dtype: float64 for float64 input, else float32."""
        if IS_F64:
            r = v.to(tl.float64)
        else:
            r = v.to(tl.float32)
        return r

    @triton.jit
    def rne_bf16(v):
        """float32 ``v`` rounded to the nearest bfloat16 (ties to even), as a float32. Written out
        because Triton's interpreter truncates in its own cast; on a GPU this compiles to the same
        ``cvt.rn`` result."""
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return tl.where(v != v, v, rounded.to(tl.float32, bitcast=True))

    @triton.jit
    def cast_out(v, dtype: tl.constexpr):
        """``v`` (compute dtype) rounded to nearest-even into ``dtype``, for a store."""
        if dtype == tl.bfloat16:
            r = rne_bf16(v).to(tl.bfloat16)
        else:
            r = v.to(dtype)
        return r

    @triton.jit
    def round_to(v, dtype: tl.constexpr, IS_F64: tl.constexpr):
        """``v`` rounded to ``dtype`` (the output's) and back to the compute dtype: the value a
        module that returns ``dtype`` hands to the next operation."""
        if dtype == tl.bfloat16:
            r = rne_bf16(v)
        else:
            r = to_compute(v.to(dtype), IS_F64)
        return r

    @triton.jit
    def load_strength(s_ptr, s_scalar, batch_idx, STRENGTH_MODE: tl.constexpr, IS_F64: tl.constexpr):
        """λ for the given batch indices (per row, one tensor value, or the scalar argument)."""
        if STRENGTH_MODE == STRENGTH_PER_ROW:
            lam = tl.load(s_ptr + batch_idx)
        elif STRENGTH_MODE == STRENGTH_TENSOR:
            lam = tl.load(s_ptr)
        else:
            lam = s_scalar
        return to_compute(lam, IS_F64)

    @triton.jit
    def map_row_offset(idx_ptr, batch_idx, C, MAP_MODE: tl.constexpr):
        """Element offset of the map row used by the given batch indices: 0 for a ``[C]`` map, else
        ``map_index[·] · C`` into the ``[K, C]`` map (per batch index, or the one 0-d index)."""
        if MAP_MODE == MAP_PER_ROW:
            off = tl.load(idx_ptr + batch_idx).to(tl.int64) * C
        elif MAP_MODE == MAP_ONE:
            off = tl.load(idx_ptr).to(tl.int64) * C
        else:
            off = 0
        return off

    @triton.jit
    def map_tile_offsets(row_off, cols, MAP_MODE: tl.constexpr):
        """Offsets of a map tile: ``[BLOCK_R, BLOCK_C]`` for per-row maps, else ``[1, BLOCK_C]``."""
        if MAP_MODE == MAP_PER_ROW:
            offs = row_off[:, None] + cols[None, :]
        else:
            offs = (row_off + cols)[None, :]
        return offs

    @triton.jit
    def compute_rsqrt(v, IS_F64: tl.constexpr):
        """``1 / sqrt(v)``: IEEE in float64 (the float64 rsqrt instruction is approximate)."""
        if IS_F64:
            r = 1.0 / tl.sqrt(v)
        else:
            r = tl.rsqrt(v)
        return r

    @triton.jit
    def transport_tile(h, lam, w_ptr, b_ptr, lo_ptr, hi_ptr, map_offs, map_ok, HAS_SUPPORT: tl.constexpr):
        """``h + λ (w ⊙ h + b − h)`` where ``lo < h < hi`` (else ``h``) for a tile ``h`` in the
        compute dtype, the map read at ``map_offs`` (masked by ``map_ok``)."""
        w = tl.load(w_ptr + map_offs, mask=map_ok, other=1.0).to(h.dtype)
        b = tl.load(b_ptr + map_offs, mask=map_ok, other=0.0).to(h.dtype)
        y = h + lam * ((w * h + b) - h)
        if HAS_SUPPORT:
            lo = tl.load(lo_ptr + map_offs, mask=map_ok, other=0.0).to(h.dtype)
            hi = tl.load(hi_ptr + map_offs, mask=map_ok, other=0.0).to(h.dtype)
            y = tl.where((h > lo) & (h < hi), y, h)
        return y

    @triton.jit
    def chain_tile(h, s_ptr, s_scalar, idx_ptr, batch, cols, col_ok, C, w_ptr, b_ptr, lo_ptr, hi_ptr,
                   STRENGTH_MODE: tl.constexpr, HAS_SUPPORT: tl.constexpr, IS_F64: tl.constexpr,
                   NUM_MAPS: tl.constexpr):
        """The chain ``T_S(… T_1(h))`` of a ``[BLOCK_R, BLOCK_C]`` tile ``h`` (compute dtype), row
        ``r`` using maps ``map_index[batch[r], 0 .. NUM_MAPS − 1]`` (``[B, S]`` index, ``batch``:
        ``[BLOCK_R]``) with λ per map (``STRENGTH_PER_MAP``), per row or one for all; each map's
        support is tested on its own input; a map at λ = 0 is dropped. Evaluated in registers: ``h``
        is read and written once."""
        lam = load_strength(s_ptr, s_scalar, batch, STRENGTH_MODE, IS_F64)  # the scalar when PER_MAP
        if STRENGTH_MODE == STRENGTH_PER_ROW:
            lam = lam[:, None]
        for k in tl.static_range(NUM_MAPS):
            lam_k = lam
            if STRENGTH_MODE == STRENGTH_PER_MAP:
                lam_k = to_compute(tl.load(s_ptr + batch * NUM_MAPS + k), IS_F64)[:, None]
            off = tl.load(idx_ptr + batch * NUM_MAPS + k).to(tl.int64) * C
            y = transport_tile(h, lam_k, w_ptr, b_ptr, lo_ptr, hi_ptr, off[:, None] + cols[None, :], col_ok[None, :],
                               HAS_SUPPORT)
            h = tl.where(lam_k != 0, y, h)  # λ = 0 drops the map exactly (also for non-finite h)
        return h

    @triton.jit
    def chan_merge_chunk(mean, m2, x, ok, start, n, BLOCK: tl.constexpr):
        """Merges the chunk of ``n`` values per row that starts at ``start`` (``x: [ROWS, BLOCK]``,
        0 where not ``ok``) into per-row ``(mean, M2)`` (``[ROWS]``): Chan's merge of the chunk's
        mean and centred sum of squares, never ``Σx² − n·mean²``. Every earlier chunk is full."""
        n_before = tl.zeros_like(mean) + start
        n_chunk = tl.minimum(n - n_before, BLOCK)
        chunk_mean = tl.sum(x, axis=1) / n_chunk
        d = tl.where(ok, x - chunk_mean[:, None], 0.0)
        delta = chunk_mean - mean
        frac = n_chunk / (n_before + n_chunk)
        return mean + delta * frac, m2 + tl.sum(d * d, axis=1) + delta * delta * n_before * frac


def strength_kernel_args(
    strength: Tensor | None, scalar: float, placeholder: Tensor, is_f64: bool = False
) -> tuple[Tensor, float, int]:
    """``(s_ptr, s_scalar, STRENGTH_MODE)`` kernel arguments; ``placeholder`` fills an unused pointer.

    For float64 input (``is_f64``) a scalar λ is sent as a float64 tensor: Triton passes Python
    floats as float32.
    """
    import torch

    if strength is None and is_f64:
        strength = torch.tensor(scalar, dtype=torch.float64, device=placeholder.device)
    if strength is None:
        return placeholder, scalar, STRENGTH_SCALAR.value
    mode = {0: STRENGTH_TENSOR, 1: STRENGTH_PER_ROW, 2: STRENGTH_PER_MAP}[strength.ndim]
    # the kernels index λ as a dense array (a column of a [B, S] tensor is strided)
    return strength.contiguous(), 0.0, mode.value


def map_kernel_args(map_index: Tensor | None, placeholder: Tensor) -> tuple[Tensor, int]:
    """``(idx_ptr, MAP_MODE)`` kernel arguments; ``placeholder`` fills an unused pointer. A chain
    (``[B, S]`` index) is ``MAP_PER_ROW`` with ``NUM_MAPS = S`` (:func:`chain_length`)."""
    if map_index is None:
        return placeholder, MAP_NONE.value
    return map_index.contiguous(), (MAP_ONE if map_index.ndim == 0 else MAP_PER_ROW).value


def chain_length(map_index: Tensor | None) -> int:
    """``NUM_MAPS``: the maps each row composes (``S`` of a ``[B, S]`` index), 0 without a chain."""
    return map_index.shape[1] if map_index is not None and map_index.ndim == 2 else 0


def support_kernel_args(lo: Tensor | None, hi: Tensor | None, placeholder: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``(lo_ptr, hi_ptr, HAS_SUPPORT)`` kernel arguments; ``placeholder`` fills unused pointers."""
    if lo is None:
        return placeholder, placeholder, False
    return lo, hi, True


def rows_per_batch(x: Tensor, num_rows: int) -> int:
    """Rows of the ``[R, C]`` view of ``x`` that belong to one batch row ``x[b]`` (per-row λ and maps)."""
    return max(1, num_rows // x.shape[0]) if x.ndim >= 2 else 1


def output_like(x: Tensor, out: Tensor | None) -> Tensor:
    """``out`` checked to be a contiguous tensor of ``x``'s shape and dtype, or a new one."""
    import torch

    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous() or out.device != x.device:
        raise ValueError(
            f"out must be a contiguous {x.dtype} tensor of shape {list(x.shape)} on {x.device}, "
            f"got {out.dtype} {list(out.shape)} on {out.device}{'' if out.is_contiguous() else ' (not contiguous)'}"
        )
    return out
