"""Triton kernels of the streaming statistics update (math: :mod:`.stats_reference`).

Two launches per update, no host synchronisation:

1. ``_stats_partial_kernel``, grid ``(cdiv(C, block_c), P)``: each program reads a chunk of rows
   of a block of ``block_c`` channels (8 at the default resolution) once, tile by tile
   (``[BLOCK_R, 8]``: one 16-byte load per row for 16-bit input, two for float32; the loads run
   two tiles ahead of the counting). Nothing crosses threads inside the loop (no barrier).

   - **Moments in float32, no division, no float64**: per element it adds ``e = (x − s)·2^-q`` and
     ``e²`` into per-thread accumulators, with ``s`` a per-channel shift (the mean of the chunk's
     first tile, so the sums do not cancel for a ``1e4 + N(0, 1e-2)`` channel, centred or not) and
     ``2^q`` the power of two of that tile's largest deviation (exact scaling: ``e`` is O(1), so
     channels at 1e-32 or 1e25 neither underflow nor overflow in float32). Min / max likewise. The accumulators are reduced across threads once per program.
   - **Histogram privatised per program**: 16-bit counters (two channels share a 32-bit word), one
     per (channel, bucket) of the block plus, per channel, NaN, +Inf, -Inf and a trash bin that
     takes unkept entries (masked rows and channels ≥ C load as NaN), so the atomics need no
     predicate. In static shared memory (``HIST_SHARED``: NVIDIA GPUs, declared and updated with
     inline PTX because Triton has no shared-memory atomics and ``tl.histogram`` costs O(bins) per
     value) or in a per-program region of a global scratch buffer (``HIST_SCRATCH``: the
     interpreter, other GPUs; otherwise the same code). One shared-memory atomic per value; at the
     end the program adds its non-zero counts to the int32 pending histogram, one global atomic
     each (coalesced: consecutive buckets of a channel). 16-bit counters bound a program to
     65,535 rows. Buckets of 8 channels fit :data:`SHARED_HIST_BYTES` up to ``B = 2,556``; finer
     resolutions use 4 or 2 channels per program, and beyond ``B = 10,236`` one global atomic per
     value (``PRIVATE_BUCKETS = False``; NaN / ±Inf stay private). See :class:`HistogramLayout`.
   - Non-finite values never enter a statistic but their own count; the finite count is the
     kept rows minus the three non-finite counts, so no per-element counter is needed.

   It writes one partial per channel and program: ``[P, C]`` buffers, every entry written:
   count, shift, q (int32), Σe, Σe² (float32), min / max (float32), NaN / +Inf / -Inf (int32).
2. ``_stats_fold_kernel``, grid ``cdiv(C, FOLD_BLOCK_C)``, one thread per channel: turns each
   partial into (count, mean, M2) in float64 and Chan-merges the ``P`` of them into the float64
   master state (one merge per channel and partial); folds the int32 counters into int64.

The histogram stays in an int32 buffer owned by the caller, which folds it into int64 before
2^31 rows could have been added (:class:`act_fast.stats.ChannelStats` does this from shapes).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from act_fast.ops.backend import interpreting
from act_fast.ops.stats_reference import HistogramParams, calibrate_ref, empty_state, stats_update_ref

BLOCK_R = 128  # rows per tile at BLOCK_C: one (16-bit) or two (float32) 16-byte loads per thread at 4 warps
BLOCK_C = 8  # channels per program: 16 bytes of a 16-bit row, 32 bytes (a sector) of a float32 row
NUM_WARPS = 4
FOLD_BLOCK_C = 128  # fold kernel: one channel per thread at 4 warps
FLUSH_BLOCK = 1024  # private-histogram words a program zeroes / flushes per step
SPECIAL_BINS = 4  # per channel, after the B buckets: NaN, +Inf, -Inf, unkept entries
MAX_ROWS_PER_PROGRAM = 65535  # 16-bit private counters: at most one count per row and channel
MIN_ROWS_PER_PROGRAM = 2048  # keeps the once-per-program flush small against the counted values
PROGRAMS_PER_SM = 4
# Static shared memory for the private histogram (ptxas allows 48 KiB of static shared memory; the
# rest is left to Triton's own reduction scratch). Defaults: 4 channel pairs × 2,055 words = 32,880 bytes.
SHARED_HIST_BYTES = 40 * 1024

# HIST_STORE: where a program's private counters live.
HIST_SHARED = tl.constexpr(0)
HIST_SCRATCH = tl.constexpr(1)

PARTIAL_FIELDS = ("count", "shift", "scale", "sum", "sumsq", "vmin", "vmax", "nan", "pos_inf", "neg_inf")
PARTIAL_DTYPES = {
    "count": torch.int32,
    "shift": torch.float32,
    "scale": torch.int32,
    "sum": torch.float32,
    "sumsq": torch.float32,
    "vmin": torch.float32,
    "vmax": torch.float32,
    "nan": torch.int32,
    "pos_inf": torch.int32,
    "neg_inf": torch.int32,
}
STATE_FIELDS = ("count", "mean", "m2", "vmin", "vmax", "nan", "pos_inf", "neg_inf")


@triton.constexpr_function
def _shared_hist_decl(num_words):
    """PTX declaring the private histogram (function-scope static shared memory) and moving its
    address into the asm's output."""
    return f".shared .align 16 .b32 act_fast_stats_hist[{num_words}];\n\tmov.u32 $0, act_fast_stats_hist;"


@triton.jit
def _private_base(NUM_WORDS: tl.constexpr, HIST_STORE: tl.constexpr):
    """Start of this program's private counters: a shared-memory byte address (``HIST_SHARED``;
    emitted once per kernel, so the declaration is too) or a word offset into the scratch buffer."""
    pid = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)
    if HIST_STORE == HIST_SHARED:
        base = tl.inline_asm_elementwise(_shared_hist_decl(NUM_WORDS), "=r,r", [pid], dtype=tl.int32, is_pure=False, pack=1)
    else:
        base = pid.to(tl.int64) * NUM_WORDS
    return base


@triton.jit
def _private_zero(scratch_ptr, base, NUM_WORDS: tl.constexpr, HIST_STORE: tl.constexpr, FLUSH: tl.constexpr):
    """Zeroes the program's ``NUM_WORDS`` private counters (shared memory is not initialised and
    the scratch buffer is reused)."""
    for w0 in range(0, NUM_WORDS, FLUSH):
        w = w0 + tl.arange(0, FLUSH)
        ok = w < NUM_WORDS
        if HIST_STORE == HIST_SHARED:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p st.shared.u32 [$1], 0; mov.u32 $0, 0; }",
                "=r,r,r",
                [base + w * 4, ok.to(tl.int32)],
                dtype=tl.int32,
                is_pure=False,
                pack=1,
            )
        else:
            tl.store(scratch_ptr + base + w, tl.zeros_like(w), mask=ok)


@triton.jit
def _private_add(scratch_ptr, base, word, inc, HIST_STORE: tl.constexpr):
    """Adds ``inc`` (1 or 1 << 16: a channel's half of the word) to private word ``word``."""
    if HIST_STORE == HIST_SHARED:
        tl.inline_asm_elementwise(
            "red.shared.add.u32 [$1], $2;\n\tmov.u32 $0, 0;",
            "=r,r,r",
            [base + word * 4, inc],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    else:
        tl.atomic_add(scratch_ptr + base + word, inc, sem="relaxed")


@triton.jit
def _global_increment(ptr, ok, HIST_STORE: tl.constexpr):
    """Adds 1 at ``ptr`` where ``ok``. On NVIDIA (``HIST_SHARED``) as inline PTX, which keeps the
    tile's register layout (``tl.atomic_add`` would move the pointers through shared memory)."""
    if HIST_STORE == HIST_SHARED:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p red.global.add.u32 [$1], 1; mov.u32 $0, 0; }",
            "=r,l,r",
            [ptr, ok.to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    else:
        tl.atomic_add(ptr, tl.full(ptr.shape, 1, tl.int32), mask=ok, sem="relaxed")


@triton.jit
def _private_read(scratch_ptr, base, word, ok, HIST_STORE: tl.constexpr):
    """Private word ``word`` where ``ok``, else 0."""
    if HIST_STORE == HIST_SHARED:
        v = tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.s32 p, $2, 0; mov.u32 $0, 0; @p ld.shared.u32 $0, [$1]; }",
            "=r,r,r",
            [base + word * 4, ok.to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    else:
        v = tl.load(scratch_ptr + base + word, mask=ok, other=0)
    return v


@triton.jit
def _load_tile(x_ptr, mask_ptr, rows_in, row_end, cols, cmask, stride_row, HAS_MASK: tl.constexpr):
    """``(x [BLOCK_R, BLOCK_C] as loaded, NaN where not kept; kept rows [BLOCK_R] bool)``."""
    keep = rows_in < row_end
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + rows_in, mask=keep, other=0) != 0)
    offs = rows_in[:, None].to(tl.int64) * stride_row + cols[None, :]
    x = tl.load(x_ptr + offs, mask=keep[:, None] & cmask[None, :], other=float("nan"))
    return x, keep


@triton.jit
def _stats_partial_kernel(
    x_ptr,
    mask_ptr,
    hist_ptr,
    centre_ptr,
    exp_offset_ptr,
    scratch_ptr,
    p_count_ptr,
    p_shift_ptr,
    p_scale_ptr,
    p_sum_ptr,
    p_sumsq_ptr,
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
    HIST_STORE: tl.constexpr,
    PRIVATE_BUCKETS: tl.constexpr,
    SHIFT: tl.constexpr,
    MANTISSA_BITS: tl.constexpr,
    KEY_BASE: tl.constexpr,
    K: tl.constexpr,
    ZERO: tl.constexpr,
    NB: tl.constexpr,
    NB_PRIVATE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FLUSH: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    j = tl.arange(0, BLOCK_C)
    cols = pid_c * BLOCK_C + j
    cmask = cols < C
    row_start = pid_r * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    centre = tl.load(centre_ptr + cols, mask=cmask, other=0.0)
    exp_offset = tl.load(exp_offset_ptr + cols, mask=cmask, other=0)
    # Key of bucket 1 (the first negative bucket) minus one: (E_lo + k + 127) << m, less 1.
    key_base = KEY_BASE - 1 + (exp_offset << MANTISSA_BITS)
    if HIST_STORE == HIST_SHARED:
        # Opaque to LLVM, which would otherwise split it into a shift and a constant again in every
        # element's key (one more instruction per value).
        key_base = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [key_base], dtype=tl.int32, is_pure=True, pack=1)

    # Private counters: channel j's bin b is half (j & 1) of word (j >> 1) · NB_PRIVATE + b, with the
    # buckets first (when PRIVATE_BUCKETS), then NaN, +Inf, -Inf and a bin for unkept entries.
    NUM_WORDS: tl.constexpr = (BLOCK_C // 2) * NB_PRIVATE
    NAN_BIN: tl.constexpr = NB_PRIVATE - 4
    TRASH_BIN: tl.constexpr = NB_PRIVATE - 1
    pair_word = (j >> 1) * NB_PRIVATE
    half_shift = (j & 1) * 16
    inc = (1 << half_shift)[None, :]
    base = _private_base(NUM_WORDS, HIST_STORE)
    _private_zero(scratch_ptr, base, NUM_WORDS, HIST_STORE, FLUSH)
    tl.debug_barrier()

    # The chunk's first two tiles (loads run two tiles ahead of the counting), and from the first
    # the per-channel shift of the moment sums (the centre if it has no finite value, e.g. all rows
    # masked).
    r_tile = tl.arange(0, BLOCK_R)
    x_next, keep_next = _load_tile(x_ptr, mask_ptr, row_start + r_tile, row_end, cols, cmask, stride_row, HAS_MASK)
    x_after, keep_after = _load_tile(x_ptr, mask_ptr, row_start + BLOCK_R + r_tile, row_end, cols, cmask, stride_row, HAS_MASK)
    x0 = x_next.to(tl.float32)
    fin0 = tl.abs(x0) < float("inf")
    n0 = tl.sum(fin0.to(tl.int32), axis=0)
    mean0 = tl.sum(tl.where(fin0, x0, 0.0), axis=0) / tl.maximum(n0, 1).to(tl.float32)
    shift = tl.where((n0 > 0) & (tl.abs(mean0) < float("inf")), mean0, centre)
    # The moment sums are of e = (x − shift)·2^-s, with 2^s the first tile's largest deviation
    # (a power of two built from its exponent bits, so the scaling is exact): e is O(1) for a
    # channel at 1e-32 as for one at 1e25, and only a value 2^64 times beyond that deviation
    # could overflow e² in float32.
    spread0 = tl.max(tl.where(fin0, tl.abs(x0 - shift[None, :]), 0.0), axis=0)
    level = tl.where(spread0 > 0, spread0, tl.abs(shift))
    biased = (level.to(tl.int32, bitcast=True) >> 23) & 0xFF  # 0: zero or subnormal
    scale_exp = tl.where(biased > 0, biased - 127, tl.where(level > 0, -126, 0))
    scale_exp = tl.minimum(scale_exp, 126)
    unit = ((127 - scale_exp) << 23).to(tl.float32, bitcast=True)  # 2^-s

    acc_sum = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    acc_sumsq = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    acc_min = tl.full([BLOCK_R, BLOCK_C], float("inf"), tl.float32)
    acc_max = tl.full([BLOCK_R, BLOCK_C], float("-inf"), tl.float32)
    kept = tl.zeros([BLOCK_R], dtype=tl.int32)

    for r0 in range(row_start, row_end, BLOCK_R):
        x = x_next.to(tl.float32)
        keep = keep_next
        x_next, keep_next = x_after, keep_after
        x_after, keep_after = _load_tile(x_ptr, mask_ptr, r0 + 2 * BLOCK_R + r_tile, row_end, cols, cmask, stride_row, HAS_MASK)
        kept += keep.to(tl.int32)
        fin = tl.abs(x) < float("inf")  # false for NaN, ±Inf and unkept (NaN-filled) entries

        dev = tl.where(fin, (x - shift[None, :]) * unit[None, :], 0.0)
        acc_sum += dev
        acc_sumsq += dev * dev
        acc_min = tl.minimum(acc_min, tl.where(fin, x, float("inf")))
        acc_max = tl.maximum(acc_max, tl.where(fin, x, float("-inf")))

        # Bucket of d = x − c (stats_reference.bucket_index_ref) relative to the zero bucket.
        bits = (x - centre[None, :]).to(tl.int32, bitcast=True)
        key = ((bits & 0x7FFFFFFF) >> SHIFT) - key_base[None, :]
        key = tl.minimum(tl.maximum(key, 0), K + 1)
        sign = bits >> 31  # 0 or -1; x = ±Inf gives d = ±Inf (the centre is finite)
        rel = (key ^ sign) - sign
        # Not finite: NaN, +Inf, -Inf, or (NaN-filled) unkept entries to the trash bin. Every entry
        # is counted somewhere, so the shared-memory atomics need no predicate.
        nan_bin = tl.where(keep, NAN_BIN, TRASH_BIN)[:, None]
        if PRIVATE_BUCKETS:
            special = tl.where(x != x, nan_bin - ZERO, NAN_BIN + 1 - ZERO - sign)
            word = (pair_word + ZERO)[None, :] + tl.where(fin, rel, special)
        else:
            valid = keep[:, None] & cmask[None, :]
            zero_bucket = hist_ptr + (cols.to(tl.int64) * NB + ZERO)  # hoisted: one pointer per channel
            _global_increment(zero_bucket[None, :] + rel, valid & fin, HIST_STORE)
            special = tl.where(x != x, nan_bin, NAN_BIN + 1 - sign)
            word = pair_word[None, :] + tl.where(fin, TRASH_BIN, special)
        _private_add(scratch_ptr, base, word, inc, HIST_STORE)

    tl.debug_barrier()
    nan = (_private_read(scratch_ptr, base, pair_word + NAN_BIN, cmask, HIST_STORE) >> half_shift) & 0xFFFF
    pinf = (_private_read(scratch_ptr, base, pair_word + NAN_BIN + 1, cmask, HIST_STORE) >> half_shift) & 0xFFFF
    ninf = (_private_read(scratch_ptr, base, pair_word + NAN_BIN + 2, cmask, HIST_STORE) >> half_shift) & 0xFFFF
    if PRIVATE_BUCKETS:
        # Flush: one global atomic per non-zero (channel, bucket); consecutive words are
        # consecutive buckets of a channel pair.
        for w0 in range(0, NUM_WORDS, FLUSH):
            w = w0 + tl.arange(0, FLUSH)
            pair = w // NB_PRIVATE
            b = w - pair * NB_PRIVATE
            col = pid_c * BLOCK_C + 2 * pair
            ok = (w < NUM_WORDS) & (b < NB) & (col < C)
            v = _private_read(scratch_ptr, base, w, ok, HIST_STORE)  # 0 where not ok
            offs = col.to(tl.int64) * NB + b
            lo = v & 0xFFFF
            hi = (v >> 16) & 0xFFFF
            tl.atomic_add(hist_ptr + offs, lo, mask=lo != 0, sem="relaxed")
            tl.atomic_add(hist_ptr + offs + NB, hi, mask=hi != 0, sem="relaxed")

    n = tl.sum(kept, axis=0) - nan - pinf - ninf
    out = pid_r * C + cols
    tl.store(p_count_ptr + out, n, mask=cmask)
    tl.store(p_shift_ptr + out, shift, mask=cmask)
    tl.store(p_scale_ptr + out, scale_exp, mask=cmask)
    tl.store(p_sum_ptr + out, tl.sum(acc_sum, axis=0), mask=cmask)
    tl.store(p_sumsq_ptr + out, tl.sum(acc_sumsq, axis=0), mask=cmask)
    tl.store(p_min_ptr + out, tl.min(acc_min, axis=0), mask=cmask)
    tl.store(p_max_ptr + out, tl.max(acc_max, axis=0), mask=cmask)
    tl.store(p_nan_ptr + out, nan, mask=cmask)
    tl.store(p_pinf_ptr + out, pinf, mask=cmask)
    tl.store(p_ninf_ptr + out, ninf, mask=cmask)


@triton.jit
def _stats_fold_kernel(
    p_count_ptr,
    p_shift_ptr,
    p_scale_ptr,
    p_sum_ptr,
    p_sumsq_ptr,
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
        shift = tl.load(p_shift_ptr + offs, mask=cmask, other=0.0).to(tl.float64)
        # 2^s (exact, from its bits): the partial's sums are of (x − shift)·2^-s.
        scale = ((1023 + tl.load(p_scale_ptr + offs, mask=cmask, other=0).to(tl.int64)) << 52).to(tl.float64, bitcast=True)
        s1 = tl.load(p_sum_ptr + offs, mask=cmask, other=0.0).to(tl.float64) * scale
        s2 = tl.load(p_sumsq_ptr + offs, mask=cmask, other=0.0).to(tl.float64) * scale * scale
        # The partial's (mean, M2) from its shifted sums: s2 − s1²/n, with the shift near the mean.
        nb = n_p.to(tl.float64)
        dmean = s1 / tl.maximum(nb, 1.0)
        mean_p = shift + dmean
        m2_p = tl.maximum(s2 - s1 * dmean, 0.0)
        # Chan merge into the master state.
        na = n.to(tl.float64)
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


class HistogramLayout(NamedTuple):
    """How the partial kernel counts.

    Attributes:
        store: ``"shared"`` (static shared memory, NVIDIA GPUs) or ``"scratch"`` (a per-program
            region of a global int32 buffer).
        private_buckets: whether the buckets are counted there too (else one global atomic per
            value); NaN, ±Inf and unkept entries always are.
        block_c: channels per program (8, 4 or 2): fewer when the buckets of 8 do not fit.
    """

    store: str
    private_buckets: bool
    block_c: int = BLOCK_C

    @property
    def block_r(self) -> int:
        """Rows per tile: 8 values per thread at 4 warps."""
        return BLOCK_R * BLOCK_C // self.block_c

    def words_per_program(self, params: HistogramParams) -> int:
        return (self.block_c // 2) * private_bins(params, self.private_buckets)


def private_bins(params: HistogramParams, private_buckets: bool) -> int:
    """Private counters per channel: the ``B`` buckets (if private), NaN, +Inf, -Inf and unkept entries."""
    return (params.num_buckets if private_buckets else 0) + SPECIAL_BINS


def nvidia_layout(params: HistogramParams) -> HistogramLayout:
    """The layout on NVIDIA GPUs: shared memory, with the buckets of 8 channels per program when
    they fit in :data:`SHARED_HIST_BYTES` (up to ``B = 2,556``: the defaults' 2,051 do), else of 4
    or 2 channels (narrower loads), else one global atomic per value (``B > 10,236``)."""
    for block_c in (8, 4, 2):
        if HistogramLayout("shared", True, block_c).words_per_program(params) * 4 <= SHARED_HIST_BYTES:
            return HistogramLayout("shared", True, block_c)
    return HistogramLayout("shared", False)


_forced_layout: HistogramLayout | None = None


@contextlib.contextmanager
def forced_layout(layout: HistogramLayout) -> Iterator[None]:
    """Launches inside the block use ``layout`` whatever the device: for recording the NVIDIA
    specialization on a CPU (``forced_layout(nvidia_layout(params))`` around launches that are
    recorded, not run; the interpreter cannot run ``"shared"``)."""
    global _forced_layout
    previous, _forced_layout = _forced_layout, layout
    try:
        yield
    finally:
        _forced_layout = previous


def histogram_layout(params: HistogramParams, device: torch.device) -> HistogramLayout:
    """The fastest layout available: :func:`nvidia_layout` on NVIDIA GPUs (once it has matched the
    reference on this device, :func:`shared_layout_verified`); in the interpreter the same private
    buckets with a scratch buffer in place of shared memory (the same code path, testable on a
    CPU); on other GPUs (no inline PTX) one global atomic per value."""
    if _forced_layout is not None:
        return _forced_layout
    if device.type == "cuda" and not interpreting():
        if torch.version.hip is not None:
            return HistogramLayout("scratch", False)
        layout = nvidia_layout(params)
        if shared_layout_verified(device.index if device.index is not None else torch.cuda.current_device(), params):
            return layout
        return HistogramLayout("scratch", True, layout.block_c)
    return HistogramLayout("scratch", True)


@functools.lru_cache(maxsize=None)
def shared_layout_verified(device_index: int, params: HistogramParams) -> bool:
    """Whether the shared-memory (inline PTX) layout gives the reference's histogram and counts on
    this GPU (:func:`layout_matches_reference`), checked once per device and resolution: the one
    host synchronisation of collection, on its first update. A mismatch warns once and the
    portable scratch layout is used instead."""
    device = torch.device("cuda", device_index)
    same = layout_matches_reference(nvidia_layout(params), params, device)
    if not same:
        warnings.warn(
            f"act_fast: the shared-memory statistics kernel does not match the reference on {torch.cuda.get_device_name(device)}; "
            "using the portable scratch-buffer layout (slower, exact). Please report this.",
            stacklevel=2,
        )
    return same


def layout_matches_reference(layout: HistogramLayout, params: HistogramParams, device: torch.device) -> bool:
    """Runs ``layout`` on a small fixed bf16 input (NaN, ±Inf, masked rows, channels with means
    from −50 to 50 and spreads from 1e-3 to 1e3) and compares histogram and counts with
    :func:`stats_update_ref` exactly."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(300, 24, generator=g) * torch.logspace(-3, 3, 24) + torch.linspace(-50, 50, 24)).to(torch.bfloat16)
    x[7, 3], x[11, 5], x[13, 7] = float("nan"), float("inf"), float("-inf")
    mask = torch.rand(300, generator=g) > 0.2
    state = empty_state(24, params, "cpu")
    centre, exp_offset = calibrate_ref(x[:64].float(), params)
    state["centre"].copy_(centre)
    state["exp_offset"].copy_(exp_offset)
    expected = {k: v.clone() for k, v in state.items()}
    stats_update_ref(x, expected, params, mask)
    got = {k: v.to(device) for k, v in state.items()}
    stats_update_triton(x.to(device), got, params, mask.to(device), layout=layout)
    return all(torch.equal(got[k].cpu(), expected[k]) for k in ("hist", "count", "nan", "pos_inf", "neg_inf"))


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_rows_per_program(rows: int, num_channels: int, device: torch.device, layout: HistogramLayout | None = None) -> int:
    """Rows each program reads (a multiple of the tile height, at most
    :data:`MAX_ROWS_PER_PROGRAM`): about :data:`PROGRAMS_PER_SM` programs per SM in one wave, each
    with at least :data:`MIN_ROWS_PER_PROGRAM` rows (its flush is per program); one chunk in the
    interpreter."""
    layout = layout or HistogramLayout("shared", True)
    block_r = layout.block_r
    if device.type != "cuda":
        chunks = 1
    else:
        sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        column_blocks = triton.cdiv(num_channels, layout.block_c)
        chunks = max(1, round(PROGRAMS_PER_SM * sms / column_blocks))
        chunks = min(chunks, max(1, rows // MIN_ROWS_PER_PROGRAM))
    chunks = max(chunks, triton.cdiv(rows, MAX_ROWS_PER_PROGRAM))
    per_program = triton.cdiv(triton.cdiv(rows, chunks), block_r) * block_r
    return max(block_r, min(per_program, MAX_ROWS_PER_PROGRAM // block_r * block_r))


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
    layout: HistogramLayout | None = None,
    scratch: Tensor | None = None,
) -> dict[str, Tensor]:
    """Launches the partial kernel: adds ``x`` to ``hist`` and returns the per-chunk partials.

    Args:
        x: ``[rows, C]`` float32 / bfloat16 / float16, last dim contiguous, ``rows ≥ 1``.
        hist: int32 ``[C, B]`` contiguous, ``B = params.num_buckets``; counts are added to it.
        centre, exp_offset: the calibration, float32 / int32 ``[C]`` contiguous; centres finite.
        row_mask: ``[rows]`` bool or None; masked-out rows are skipped entirely.
        rows_per_program: rows per program, at most 65,535 (the partial count is
            ``P = cdiv(rows, this)``).
        out: preallocated partial buffers (``[P, C]`` each, dtypes :data:`PARTIAL_DTYPES`).
        layout: where to count (default :func:`histogram_layout`).
        scratch: int32 buffer of at least ``P · cdiv(C, layout.block_c) · words`` elements for the
            ``"scratch"`` layout (any content; each program zeroes its region), or None.

    Returns:
        dict of ``[P, C]`` partials: count, shift, scale, sum, sumsq, vmin, vmax (float32 but the
        int32 counts nan, pos_inf, neg_inf, count and the exponent ``scale``), with ``sum`` and
        ``sumsq`` of ``e = (x − shift)·2^-scale``; the partial's mean is
        ``shift + 2^scale·sum / count`` and its M2 ``4^scale·(sumsq − sum² / count)``.
    """
    rows, num_channels = x.shape
    layout = layout or histogram_layout(params, x.device)
    if rows_per_program is None:
        rows_per_program = default_rows_per_program(rows, num_channels, x.device, layout)
    if not 1 <= rows_per_program <= MAX_ROWS_PER_PROGRAM:
        raise ValueError(f"rows_per_program must be in [1, {MAX_ROWS_PER_PROGRAM}] (16-bit private counters), got {rows_per_program}")
    num_partials = triton.cdiv(rows, rows_per_program)
    column_blocks = triton.cdiv(num_channels, layout.block_c)
    if out is None:
        out = allocate_partials(num_partials, num_channels, x.device)
    words = layout.words_per_program(params)
    if layout.store == "scratch" and scratch is None:
        scratch = torch.empty(num_partials * column_blocks * words, dtype=torch.int32, device=x.device)
    mask = row_mask.contiguous().view(torch.uint8) if row_mask is not None else x
    _stats_partial_kernel[(column_blocks, num_partials)](
        x,
        mask,
        hist,
        centre,
        exp_offset,
        scratch if layout.store == "scratch" else hist,
        *(out[k] for k in PARTIAL_FIELDS),
        rows,
        num_channels,
        x.stride(0),
        rows_per_program,
        HAS_MASK=row_mask is not None,
        HIST_STORE=(HIST_SHARED if layout.store == "shared" else HIST_SCRATCH).value,
        PRIVATE_BUCKETS=layout.private_buckets,
        SHIFT=params.shift,
        MANTISSA_BITS=params.mantissa_bits,
        KEY_BASE=params.key_base,
        K=params.buckets_per_sign,
        ZERO=params.zero_bucket,
        NB=params.num_buckets,
        NB_PRIVATE=private_bins(params, layout.private_buckets),
        BLOCK_R=layout.block_r,
        BLOCK_C=layout.block_c,
        FLUSH=FLUSH_BLOCK,
        num_warps=NUM_WARPS,
        num_stages=1,
    )
    return out


def stats_fold_triton(partials: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Folds ``[P, C]`` partials into the master ``state`` in place (see :func:`stats_update_triton`)."""
    num_partials, num_channels = partials["count"].shape
    _stats_fold_kernel[(triton.cdiv(num_channels, FOLD_BLOCK_C),)](
        *(partials[k] for k in PARTIAL_FIELDS),
        *(state[k] for k in STATE_FIELDS),
        num_partials,
        num_channels,
        BLOCK_C=FOLD_BLOCK_C,
        num_warps=FOLD_BLOCK_C // 32,
    )


def stats_update_triton(
    x: Tensor,
    state: dict[str, Tensor],
    params: HistogramParams,
    row_mask: Tensor | None = None,
    *,
    rows_per_program: int | None = None,
    layout: HistogramLayout | None = None,
) -> None:
    """Folds ``x [rows, C]`` into ``state`` in place: the Triton twin of ``stats_update_ref``.

    ``state``: ``count, nan, pos_inf, neg_inf`` int64 ``[C]``; ``mean, m2, vmin, vmax`` float64
    ``[C]``; ``hist`` int32 ``[C, B]`` (pending counts); ``centre`` float32 (finite) and
    ``exp_offset`` int32 ``[C]`` (the calibration, read only). All contiguous on ``x``'s device.
    """
    if x.shape[0] == 0:
        return
    if x.stride(-1) != 1:
        x = x.contiguous()
    partials = stats_partials_triton(
        x, state["hist"], state["centre"], state["exp_offset"], params, row_mask, rows_per_program=rows_per_program, layout=layout
    )
    stats_fold_triton(partials, state)
