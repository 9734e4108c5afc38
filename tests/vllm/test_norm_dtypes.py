"""A steered vLLM norm computes what vLLM's own norm computes, bit for bit, in float16 / bfloat16.

vLLM's fused add + norm (``RMSNorm`` and ``GemmaRMSNorm`` with a residual) adds ``x + residual``
in float32, normalises that unrounded sum and returns the residual rounded to ``x``'s dtype (also
when the residual arrives in float32): the sum of two large float16 values can be inf in float16
while vLLM's normed output stays finite. The steered module must return exactly vLLM's normed value
(transported) and vLLM's residual. Runs vLLM's norm classes on CPU tensors (no engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import act_fast as af
from engine_support import require_vllm

require_vllm()

from act_fast.ops.reference import affine_transport_ref  # noqa: E402
from act_fast.vllm.buffers import TokenControl  # noqa: E402
from act_fast.vllm.sites import install_sites, plan_sites  # noqa: E402

C, ROWS = 64, 6


def _norms(dtype: torch.dtype, kind: str) -> tuple[nn.Module, nn.Module]:
    """Two identical vLLM norms of ``kind`` with weights in ``dtype`` (as vLLM builds them in a
    ``dtype`` model): one left alone, one to steer."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

    cls = {"gemma": GemmaRMSNorm, "rms": RMSNorm}[kind]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(C, generator=g) * 0.5 + (0.0 if kind == "gemma" else 1.0)
    previous = torch.get_default_dtype()
    with set_current_vllm_config(VllmConfig()):
        torch.set_default_dtype(dtype)
        try:
            pair = cls(C, eps=1e-6), cls(C, eps=1e-6)
        finally:
            torch.set_default_dtype(previous)
    for norm in pair:
        with torch.no_grad():
            norm.weight.copy_(weight)
    return pair


def _steer(norm: nn.Module, strengths: list[float]) -> TokenControl:
    model = nn.Module()
    model.norm = norm
    g = torch.Generator().manual_seed(1)
    lo = -(1.0 + torch.rand(C, generator=g))
    maps = {"s": af.SteeringMaps({"norm": af.AffineMap(1 + 0.5 * torch.rand(C, generator=g), torch.randn(C, generator=g), lo, -lo)})}
    control = TokenControl(16, torch.device("cpu"))
    install_sites(model, plan_sites(model, maps, {"s": "s.safetensors"}, C), maps, control)
    n = len(strengths)
    control.fill(np.ones(n, dtype=np.int32), np.asarray(strengths, dtype=np.float32), np.ones(n, dtype=np.int64))
    return control


def _inputs(dtype: torch.dtype, residual_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(ROWS, C, generator=g) * 3).to(dtype)
    residual = (torch.randn(ROWS, C, generator=g) * 3).to(residual_dtype)
    if dtype == torch.float16:  # a row whose float16 sum overflows while vLLM's float32 sum does not
        x[0], residual[0] = 40000.0, 40000.0
    return x, residual


@pytest.mark.parametrize("kind", ["gemma", "rms"])
@pytest.mark.parametrize("dtype, residual_dtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
def test_fused_add_norm_reproduces_vllm_dtypes(kind, dtype, residual_dtype):
    plain, steered = _norms(dtype, kind)
    strengths = [0.0, 1.0, 0.0, -0.5, 0.7, 0.0]
    control = _steer(steered, strengths)
    x, residual = _inputs(dtype, residual_dtype)
    with torch.no_grad():
        want, want_residual = plain(x.clone(), residual.clone())
        got, got_residual = steered(x.clone(), residual.clone())
    assert got.dtype == want.dtype == dtype and got_residual.dtype == want_residual.dtype
    assert torch.equal(got_residual, want_residual)
    bank = steered
    expected = affine_transport_ref(
        want, bank.act_fast_weight, bank.act_fast_bias, control.strength[:ROWS], bank.act_fast_lo, bank.act_fast_hi,
        map_index=control.map_index[:ROWS],
    )
    assert torch.equal(got, expected)
    unsteered = [i for i, s in enumerate(strengths) if s == 0.0]
    assert torch.equal(got[unsteered], want[unsteered])  # λ = 0: vLLM's own output, bit for bit
    if dtype == torch.float16:
        assert torch.isfinite(want[0]).all() and torch.isfinite(got[0]).all()


@pytest.mark.parametrize("kind", ["gemma", "rms"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_norm_without_residual_is_vllm_exact(kind, dtype):
    plain, steered = _norms(dtype, kind)
    control = _steer(steered, [0.0, 1.0, 0.0, -0.5, 0.7, 0.0])
    x, _ = _inputs(dtype, dtype)
    x[0] = x[1]  # no overflow row: a lone norm sees no sum
    with torch.no_grad():
        want, got = plain(x.clone()), steered(x.clone())
    expected = affine_transport_ref(
        want, steered.act_fast_weight, steered.act_fast_bias, control.strength[:ROWS], steered.act_fast_lo, steered.act_fast_hi,
        map_index=control.map_index[:ROWS],
    )
    assert got.dtype == dtype and torch.equal(got, expected)
