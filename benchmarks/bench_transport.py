"""affine_transport vs the eager reference and a hook written the reference way.

Bytes moved = one read of x + one write of y (the map vectors are negligible). On CUDA the op
runs the Triton kernel; on CPU it runs the pure-torch reference, so the CPU figures compare
eager code paths only.
"""

import pytest
import torch
from baselines import hook_style_transport

import act_fast as af
from act_fast.ops.reference import affine_transport_ref

SHAPES = {"cpu": [(64, 1024), (2048, 2304)], "cuda": [(1, 4096), (4096, 4096), (65536, 4096)]}
DTYPES = [torch.bfloat16, torch.float32]


def _case(device, tokens, C, dtype):
    x = torch.randn(tokens, C, device=device, dtype=dtype)
    w = 1.0 + 0.1 * torch.randn(C, device=device)
    b = 0.1 * torch.randn(C, device=device)
    lo, hi = torch.full((C,), -2.0, device=device), torch.full((C,), 2.0, device=device)
    return x, w, b, lo, hi


def _shapes():
    return SHAPES["cuda" if torch.cuda.is_available() else "cpu"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", ["act_fast", "eager_reference", "hook_style"])
def bench_transport_rows(impl, shape, dtype, device, timed, benchmark):
    benchmark.group = f"transport {shape[0]}x{shape[1]} {dtype}"
    x, w, b, lo, hi = _case(device, *shape, dtype)
    fn = {
        "act_fast": lambda: af.ops.affine_transport(x, w, b, 0.8, lo, hi),
        "eager_reference": lambda: affine_transport_ref(x, w, b, 0.8, lo, hi),
        "hook_style": lambda: hook_style_transport(x, w, b, 0.8, lo, hi),
    }[impl]
    timed(fn, bytes_moved=2 * x.numel() * x.element_size())


@pytest.mark.parametrize("impl", ["act_fast", "eager_reference"])
def bench_transport_pooled_planes(impl, device, timed, benchmark):
    """SDXL-shaped conv features (batch 2, 320 channels, 64x64 latents at 512 px on CPU)."""
    benchmark.group = "transport planes pooled"
    side = 128 if device == "cuda" else 32
    x = torch.randn(2, 320, side, side, device=device, dtype=torch.bfloat16)
    w, b = 1.0 + 0.1 * torch.randn(320, device=device), 0.1 * torch.randn(320, device=device)
    fn = {
        "act_fast": lambda: af.ops.affine_transport(x, w, b, 0.8, channel_dim=1, pool_spatial=True),
        "eager_reference": lambda: affine_transport_ref(x, w, b, 0.8, channel_dim=1, pool_spatial=True),
    }[impl]
    timed(fn, bytes_moved=2 * x.numel() * x.element_size())
