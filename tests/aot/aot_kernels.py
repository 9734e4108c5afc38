"""A tiny Triton kernel for the recorder's tests (``@triton.jit`` functions must live in a file)."""

import triton
import triton.language as tl


@triton.jit
def scale_kernel(x_ptr, y_ptr, n, stride, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs * stride, mask=ok)
    tl.store(y_ptr + offs, x * scale, mask=ok)
