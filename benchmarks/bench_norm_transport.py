"""Fused RMSNorm / LayerNorm + transport vs the unfused eager code and the plain HF norm.

Bytes moved = one read of x + one write of y. On CUDA the op runs the Triton kernel; on CPU it
runs the pure-torch reference (through the custom op), so CPU figures compare eager paths only:

- ``act_fast``: ``af.ops.rms_norm_transport`` / ``layer_norm_transport``;
- ``eager_unfused``: the norm in the input dtype, then the transport reference (two ops);
- ``hf_norm``: the unsteered ``LlamaRMSNorm`` / ``nn.LayerNorm`` forward (the target's peer);
- ``hf_norm_hook``: that norm followed by a transport hook written the reference way.
"""

import pytest
import torch
from baselines import hook_style_transport

import act_fast as af
from act_fast.ops.reference import affine_transport_ref, layer_norm_ref, rms_norm_ref

SHAPES = {"cpu": [(64, 1024), (512, 2048)], "cuda": [(1, 4096), (4096, 4096), (65536, 4096)]}
DTYPES = [torch.bfloat16, torch.float32]
IMPLS = ["act_fast", "eager_unfused", "hf_norm", "hf_norm_hook"]


def _shapes():
    return SHAPES["cuda" if torch.cuda.is_available() else "cpu"]


def _map(C: int, device: str):
    w = 1.0 + 0.1 * torch.randn(C, device=device)
    b = 0.1 * torch.randn(C, device=device)
    lo, hi = torch.full((C,), -2.0, device=device), torch.full((C,), 2.0, device=device)
    return w, b, lo, hi


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", _shapes(), ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def bench_rms_norm_transport(impl, shape, dtype, device, timed, benchmark):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    benchmark.group = f"rms_norm_transport {shape[0]}x{shape[1]} {dtype}"
    tokens, C = shape
    x = torch.randn(tokens, C, device=device, dtype=dtype)
    norm = LlamaRMSNorm(C, eps=1e-6).to(device=device, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(C))
    nw = norm.weight.detach()
    w, b, lo, hi = _map(C, device)
    fn = {
        "act_fast": lambda: af.ops.rms_norm_transport(x, nw, w, b, 0.8, lo, hi, eps=1e-6),
        "eager_unfused": lambda: affine_transport_ref(rms_norm_ref(x, nw, 1e-6).to(dtype), w, b, 0.8, lo, hi),
        "hf_norm": lambda: norm(x),
        "hf_norm_hook": lambda: hook_style_transport(norm(x), w, b, 0.8, lo, hi),
    }[impl]
    with torch.no_grad():
        timed(fn, bytes_moved=2 * x.numel() * x.element_size())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def bench_layer_norm_transport(impl, dtype, device, timed, benchmark):
    tokens, C = _shapes()[-1]
    benchmark.group = f"layer_norm_transport {tokens}x{C} {dtype}"
    x = torch.randn(tokens, C, device=device, dtype=dtype)
    norm = torch.nn.LayerNorm(C, eps=1e-5).to(device=device, dtype=dtype)
    nw, nb = norm.weight.detach(), norm.bias.detach()
    w, b, lo, hi = _map(C, device)
    fn = {
        "act_fast": lambda: af.ops.layer_norm_transport(x, nw, nb, w, b, 0.8, lo, hi, eps=1e-5),
        "eager_unfused": lambda: affine_transport_ref(layer_norm_ref(x, nw, nb, 1e-5).to(dtype), w, b, 0.8, lo, hi),
        "hf_norm": lambda: norm(x),
        "hf_norm_hook": lambda: hook_style_transport(norm(x), w, b, 0.8, lo, hi),
    }[impl]
    with torch.no_grad():
        timed(fn, bytes_moved=2 * x.numel() * x.element_size())
