"""``steer()`` on the GPU, for :mod:`gpu_check`: the unit tests steer on CPU only (where the ops
run their pure-torch path), so this module checks steered models on CUDA; without one it skips.

Two model types from the tests' tiny configs: a Llama (RMSNorm sites fused, ``o_proj`` through the
transport op) and a diffusers UNet (GroupNorm sites on conv features, attention outputs). For each:
the Triton kernels against the pure-torch reference on the same device (``fused`` and ``op``),
per-row λ with two map sets selected per row against separate single-set runs, and
``torch.compile(fullgraph=True)`` (inductor on CUDA) matching eager without recompiling when λ
changes. Tolerances from ``tests/tolerances.py``.

    python -m pytest benchmarks/gpu_check_steer.py -q
"""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "steering")]

from random_maps import random_maps  # noqa: E402
from tiny_models import tiny_inputs, tiny_llama, tiny_unet  # noqa: E402
from tolerances import assert_close  # noqa: E402

import act_fast as af  # noqa: E402
from act_fast.ops import set_backend  # noqa: E402

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="steering on CUDA; tests/steering covers the CPU paths")
BUILD = {"llama": tiny_llama, "unet": tiny_unet}


def output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.sample


def sites(model) -> list[str]:
    """Every norm (fused) and every attention output projection (transport op)."""
    return af.sites(model, "layernorm") + af.sites(model, "o_proj")


@pytest.fixture(scope="module", params=list(BUILD))
def case(request):
    model = BUILD[request.param]().to(DEVICE)
    inputs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in tiny_inputs(model, batch=3, generator=torch.Generator().manual_seed(0)).items()}
    return request.param, model, inputs


def _with_backend(name: str, fn):
    previous = set_backend(name)
    try:
        return fn()
    finally:
        set_backend(previous)


@pytest.mark.parametrize("mode", ["fused", "op"])
def test_kernels_match_the_reference(case, mode):
    kind, model, inputs = case
    base = output(model, inputs)
    maps = random_maps(model, sites(model) if mode == "op" else af.sites(model, "layernorm"), support=True)
    with af.steer(model, maps, 0.8, mode="auto" if mode == "fused" else mode) as h:
        if mode == "fused":
            assert "fused" in set(h.modes.values()), f"{kind}: no site fused ({h.modes})"
        kernels = _with_backend("triton", lambda: output(model, inputs))
        reference = _with_backend("torch", lambda: output(model, inputs))
    assert (kernels - base).abs().max() > 1e-3, f"{kind}: steering had no effect"
    assert_close(kernels, reference)


def test_per_row_strength_and_map_sets(case):
    kind, model, inputs = case
    s = sites(model)
    a, b = random_maps(model, s, seed=1, support=True), random_maps(model, s, seed=2, support=True)
    with af.steer(model, {"a": a, "b": b}) as h:
        h.select(["a", None, "b"])
        h.set_strength(torch.tensor([0.8, 1.0, 0.5]))
        together = output(model, inputs)
    with af.steer(model, a, 0.8):
        assert_close(together[0], output(model, inputs)[0])
    assert_close(together[1], output(model, inputs)[1])
    with af.steer(model, b, 0.5):
        assert_close(together[2], output(model, inputs)[2])


def test_compile_matches_eager_without_recompiles(case):
    from torch._dynamo.testing import CompileCounterWithBackend

    kind, model, inputs = case
    maps = random_maps(model, sites(model), support=True)
    with af.steer(model, maps, 0.5) as h:
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("inductor")
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        for strength in (0.5, 1.0, 0.0):
            h.set_strength(strength)
            assert_close(output(compiled, inputs), output(model, inputs))
        assert counter.frame_count == 1, f"{kind}: a strength change recompiled ({counter.frame_count} frames)"
    torch._dynamo.reset()
