"""The compiled CPU kernels (csrc/, act_fast.ops.cpu_kernels) against the pure-torch reference,
bit for bit: every op through its public function on both CPU implementations ("cpu": the
compiled kernels, "torch": the reference), odd shapes, all dtypes, λ scalar / 0-d / per row,
with and without support, map indices, strided inputs, out= and in place; the custom-op contract
with the CPU implementation active; the switch, the build cache and the fallback when a build
fails."""

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
import torch

import act_fast as af
from act_fast.ops import cpu_kernels, set_backend
from act_fast.ops.backend import implementation
from act_fast.ops.reference import (
    affine_transport_ref,
    group_norm_transport_ref,
    layer_norm_ref,
    layer_norm_transport_ref,
    rms_norm_ref,
    rms_norm_transport_ref,
)
from tolerances import ALL_DTYPES

IMPLS = ["cpu", "torch"]
ROW_SHAPES = [(1, 1), (1, 7), (5, 1), (3, 13), (2, 5, 67), (2, 3, 4, 17), (2, 1031), (3, 4133)]
PLANE_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 5, 1, 13), (2, 4, 9), (2, 3, 131, 131)]
# Rows of 40000 values: one row alone is reduced by ATen across threads (two-pass), several rows
# one row at a time; the kernels must follow the reference in both.
WIDE = [(1, 40000), (3, 40000)]
STRENGTHS = ["float", "0d", "per_row"]


def _kernels_or_skip() -> None:
    """Loads the compiled kernels. Without a compiler or ninja this machine cannot build them
    (skip, with the reason); with both, a failed build is a test failure."""
    try:
        cpu_kernels.load()
    except cpu_kernels.CpuKernelsUnavailable as error:
        missing = cpu_kernels.missing_tools()
        if missing is not None:
            pytest.skip(f"compiled CPU kernels cannot be built here: {missing}")
        pytest.fail(f"a compiler and ninja are here but the CPU kernels are unavailable: {error}")


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """Runs the test on one CPU implementation: the compiled kernels or the reference."""
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH, raising=False)
    if request.param == "cpu":
        _kernels_or_skip()
    previous = set_backend(request.param)
    yield request.param
    set_backend(previous)


def _expect_impl(impl: str, x: torch.Tensor) -> None:
    assert implementation(x) == impl


def make_map(C: int, support: bool, k: int | None = None, dtype=torch.float32):
    shape = (C,) if k is None else (k, C)
    w = 1.0 + 0.5 * torch.randn(shape, dtype=dtype)
    b = torch.randn(shape, dtype=dtype)
    if not support:
        return w, b, None, None
    lo = -0.5 + 0.1 * torch.randn(shape, dtype=dtype)
    hi = 0.7 + 0.1 * torch.randn(shape, dtype=dtype)
    return w, b, lo, hi


def make_strength(kind: str, batch: int):
    if kind == "float":
        return 0.7
    if kind == "0d":
        return torch.tensor(-0.3)
    return 2.0 * torch.rand(batch) - 0.5


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if not torch.equal(actual, expected):
        diff = (actual.double() - expected.double()).abs()
        raise AssertionError(f"not bit-identical: {int((diff > 0).sum())} of {diff.numel()} elements differ, max {diff.max().item():.3g}")


# -- transport ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_rows(shape, dtype, strength, support, impl):
    x = (1.5 * torch.randn(shape)).to(dtype)
    w, b, lo, hi = make_map(shape[-1], support)
    s = make_strength(strength, shape[0])
    if dtype != torch.float64:
        _expect_impl(impl, x)
    assert_equal(af.ops.affine_transport(x, w, b, s, lo, hi), affine_transport_ref(x, w, b, s, lo, hi))


@pytest.mark.parametrize("map_dtype", [torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_maps_and_strength_in_other_dtypes(dtype, map_dtype, impl):
    """Maps and λ tensors in another dtype are rounded to float32 first, as the reference does."""
    x = torch.randn(4, 3, 29).to(dtype)
    w, b, lo, hi = make_map(29, True, dtype=map_dtype)
    s = torch.rand(4, dtype=map_dtype)
    assert_equal(af.ops.affine_transport(x, w, b, s, lo, hi), affine_transport_ref(x, w, b, s, lo, hi))


@pytest.mark.parametrize("index", ["0d-int32", "per_row-int64", "per_row-int32"])
@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 37), (3, 4, 29), (1, 1)], ids=str)
def test_rows_map_index(shape, dtype, support, index, impl):
    kind, idx_dtype = index.split("-")
    K = 3
    x = torch.randn(shape).to(dtype)
    w, b, lo, hi = make_map(shape[-1], support, k=K)
    w = w + torch.arange(K)[:, None]  # maps far apart: a row given the wrong map cannot pass
    idx = torch.tensor(K - 1) if kind == "0d" else (torch.arange(shape[0]) * 2 + 1) % K
    idx = idx.to(getattr(torch, idx_dtype))
    s = make_strength("per_row", shape[0])
    expected = affine_transport_ref(x, w, b, s, lo, hi, map_index=idx)
    assert_equal(af.ops.affine_transport(x, w, b, s, lo, hi, map_index=idx), expected)


def test_map_index_out_of_range_raises(impl):
    x, (w, b, _, _) = torch.randn(3, 6), make_map(6, False, k=2)
    with pytest.raises(IndexError, match="out of range"):
        af.ops.affine_transport(x, w, b, 1.0, map_index=torch.tensor([0, 2, 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_rows_strided_inputs(dtype, impl):
    base = torch.randn(9, 6, 11).to(dtype)
    views = [
        base[:, :, 3],  # channel stride 11
        base[::2].transpose(1, 2),  # leading dims that do not collapse
        base.transpose(0, 2)[::3],
        base[:, 1:5, :7],  # row stride 11, channel stride 1
    ]
    for x in views:
        assert not x.is_contiguous()
        w, b, lo, hi = make_map(x.shape[-1], True)
        s = torch.rand(x.shape[0])
        assert_equal(af.ops.affine_transport(x, w, b, s, lo, hi), affine_transport_ref(x, w, b, s, lo, hi))


@pytest.mark.parametrize("layout", ["rows", "planes_pool", "planes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_out_and_in_place(dtype, layout, impl):
    shape, cd, pool = {"rows": ((3, 5, 41), -1, False), "planes_pool": ((2, 5, 6, 7), 1, True), "planes": ((2, 5, 6, 7), 1, False)}[layout]
    x = torch.randn(shape).to(dtype)
    w, b, lo, hi = make_map(shape[cd], True)
    s = torch.rand(shape[0])
    expected = affine_transport_ref(x, w, b, s, lo, hi, channel_dim=cd, pool_spatial=pool)
    with torch.no_grad():
        out = torch.full_like(x, float("nan"))
        assert af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=cd, pool_spatial=pool, out=out) is out
        assert_equal(out, expected)
        inplace = x.clone()
        assert af.ops.affine_transport(inplace, w, b, s, lo, hi, channel_dim=cd, pool_spatial=pool, out=inplace) is inplace
        assert_equal(inplace, expected)
        # out overlapping x shifted by one element: the result must still be the reference's
        buf = torch.cat([x.reshape(-1), torch.zeros(1, dtype=dtype)])
        xs, shifted = buf[:-1].view(shape), buf[1:].view(shape)
        expected_shifted = affine_transport_ref(xs, w, b, s, lo, hi, channel_dim=cd, pool_spatial=pool)
        af.ops.affine_transport(xs, w, b, s, lo, hi, channel_dim=cd, pool_spatial=pool, out=shifted)
        assert_equal(shifted, expected_shifted)


def plane_input(shape, dtype):
    """Conv features whose plane means spread around the support bounds."""
    return (torch.randn(shape) + 0.5 * torch.randn(shape[:2] + (1,) * (len(shape) - 2))).to(dtype)


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", PLANE_SHAPES, ids=str)
def test_planes(shape, dtype, strength, pool, support, impl):
    x = plane_input(shape, dtype)
    w, b, lo, hi = make_map(shape[1], support)
    s = make_strength(strength, shape[0])
    got = af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool)
    assert_equal(got, affine_transport_ref(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_planes_strided_and_channels_last(dtype, pool, impl):
    """Planes of a batch slice are contiguous (kernel); channels-last planes are not (reference)."""
    base = plane_input((4, 6, 5, 7), dtype)
    for x in (base[::2], base[:, 1:4], base.to(memory_format=torch.channels_last), base.transpose(2, 3)):
        w, b, lo, hi = make_map(x.shape[1], True)
        s = torch.rand(x.shape[0])
        got = af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool)
        assert_equal(got, affine_transport_ref(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("index", ["0d", "per_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_planes_map_index(dtype, index, pool, impl):
    x = plane_input((3, 5, 4, 6), dtype)
    w, b, lo, hi = make_map(5, True, k=4)
    idx = torch.tensor(2) if index == "0d" else torch.tensor([3, 0, 3])
    s = torch.rand(3)
    got = af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool, map_index=idx)
    assert_equal(got, affine_transport_ref(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool, map_index=idx))


# -- fused norms -----------------------------------------------------------------------------------

# (norm weight given, weight_offset, cast_before_scale): Llama-style, Gemma-style, torch.nn.RMSNorm, none
RMS_CASES = {"llama": (True, 0.0, True), "gemma": (True, 1.0, False), "torch": (True, 0.0, False), "no_weight": (False, 0.0, False)}


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("case", list(RMS_CASES))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROW_SHAPES + [(4, 4096)], ids=str)
def test_rms_norm_transport(shape, dtype, case, support, impl):
    has_nw, offset, cast = RMS_CASES[case]
    C = shape[-1]
    x = (3.0 * torch.randn(shape)).to(dtype)
    nw = (0.5 + torch.rand(C) * 4).to(dtype) if has_nw else None  # far from 1: roundings show
    w, b, lo, hi = make_map(C, support)
    s = make_strength("per_row", shape[0])
    kw = dict(eps=1e-6, weight_offset=offset, cast_before_scale=cast)
    expected = rms_norm_transport_ref(x, nw, w, b, s, lo, hi, **kw)
    assert_equal(af.ops.rms_norm_transport(x, nw, w, b, s, lo, hi, **kw), expected)
    # λ = 0 is the module's output, bit for bit
    zero = af.ops.rms_norm_transport(x, nw, w, b, 0.0, lo, hi, **kw)
    assert_equal(zero, rms_norm_ref(x, nw, 1e-6, offset, cast))


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_rms_norm_transport_eps_and_map_index(dtype, eps, impl):
    x = torch.randn(4, 3, 53).to(dtype)
    nw = torch.randn(53).to(dtype)
    w, b, lo, hi = make_map(53, True, k=3)
    idx = torch.tensor([2, 0, 1, 2])
    s = torch.rand(4)
    kw = dict(eps=eps, cast_before_scale=True, map_index=idx)
    assert_equal(af.ops.rms_norm_transport(x, nw, w, b, s, lo, hi, **kw), rms_norm_transport_ref(x, nw, w, b, s, lo, hi, **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rms_norm_transport_strided(dtype, impl):
    base = torch.randn(6, 8, 40).to(dtype)
    for x in (base[:, 2:7, :33], base[::2].transpose(0, 1), base.transpose(1, 2)):
        C = x.shape[-1]
        nw = torch.randn(C).to(dtype)
        w, b, lo, hi = make_map(C, True)
        got = af.ops.rms_norm_transport(x, nw, w, b, 0.6, lo, hi, cast_before_scale=True)
        assert_equal(got, rms_norm_transport_ref(x, nw, w, b, 0.6, lo, hi, cast_before_scale=True))


# (norm weight, norm bias): none, weight only, bias only, both in x's dtype, both float32 (mixed)
LAYER_CASES = ["none", "weight", "bias", "both", "float32_params"]


def layer_params(case: str, C: int, dtype: torch.dtype):
    pdt = torch.float32 if case == "float32_params" else dtype
    nw = (1.0 + torch.randn(C)).to(pdt) if case in ("weight", "both", "float32_params") else None
    nb = torch.randn(C).to(pdt) if case in ("bias", "both", "float32_params") else None
    return nw, nb


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("case", LAYER_CASES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_layer_norm_transport(shape, dtype, case, support, impl):
    C = shape[-1]
    x = (2.0 * torch.randn(shape) + 1.0).to(dtype)
    nw, nb = layer_params(case, C, dtype)
    w, b, lo, hi = make_map(C, support)
    s = make_strength("per_row", shape[0])
    expected = layer_norm_transport_ref(x, nw, nb, w, b, s, lo, hi, eps=1e-5)
    assert_equal(af.ops.layer_norm_transport(x, nw, nb, w, b, s, lo, hi, eps=1e-5), expected)
    assert_equal(af.ops.layer_norm_transport(x, nw, nb, w, b, 0.0, lo, hi, eps=1e-5), layer_norm_ref(x, nw, nb, 1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_norm_transport_strided_and_map_index(dtype, impl):
    base = torch.randn(6, 8, 40).to(dtype)
    w, b, lo, hi = make_map(33, True, k=2)
    for x in (base[:, 2:7, :33], base[::2, :, 1:34].transpose(0, 1)):
        nw, nb = layer_params("both", 33, dtype)
        idx = torch.arange(x.shape[0]) % 2
        got = af.ops.layer_norm_transport(x, nw, nb, w, b, 0.8, lo, hi, map_index=idx)
        assert_equal(got, layer_norm_transport_ref(x, nw, nb, w, b, 0.8, lo, hi, map_index=idx))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 7), 3), ((1, 4, 1, 1), 2), ((3, 8, 11), 8)], ids=str)
def test_group_norm_transport(shape, groups, dtype, affine, pool, impl):
    x = plane_input(shape, dtype)
    C = shape[1]
    nw, nb = (torch.randn(C).to(dtype), torch.randn(C).to(dtype)) if affine else (None, None)
    w, b, lo, hi = make_map(C, True)
    s = torch.rand(shape[0])
    got = af.ops.group_norm_transport(x, groups, nw, nb, w, b, s, lo, hi, pool_spatial=pool)
    assert_equal(got, group_norm_transport_ref(x, groups, nw, nb, w, b, s, lo, hi, pool_spatial=pool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", WIDE, ids=str)
def test_wide_rows_reduce_like_the_reference(shape, dtype, impl):
    """Rows (and planes) of 40000 values: the plane means and the RMS statistics are reduced in the
    reference's order whether ATen splits one row across threads or not."""
    C = shape[-1]
    x = (2.0 * torch.randn(shape) + 0.5).to(dtype)
    nw = (0.5 + 4 * torch.rand(C)).to(dtype)
    w, b, lo, hi = make_map(C, True)
    s = torch.rand(shape[0])
    kw = dict(cast_before_scale=True)
    assert_equal(af.ops.rms_norm_transport(x, nw, w, b, s, lo, hi, **kw), rms_norm_transport_ref(x, nw, w, b, s, lo, hi, **kw))
    assert_equal(af.ops.layer_norm_transport(x, nw, nw, w, b, s, lo, hi), layer_norm_transport_ref(x, nw, nw, w, b, s, lo, hi))
    planes = x.reshape(shape[0], 1, 200, 200)  # one plane per batch row
    pw, pb, plo, phi = make_map(1, True)
    plo, phi = plo - 1.0, phi + 1.0
    for pool in (False, True):
        got = af.ops.affine_transport(planes, pw, pb, s, plo, phi, channel_dim=1, pool_spatial=pool)
        assert_equal(got, affine_transport_ref(planes, pw, pb, s, plo, phi, channel_dim=1, pool_spatial=pool))


# -- the custom-op contract with the CPU implementation active ------------------------------------


OPCHECK_CASES = {
    "rows": lambda: (torch.ops.act_fast.affine_transport.default, (torch.randn(3, 4, 7), *make_map(7, True)[:2], torch.rand(3), 0.0, *make_map(7, True)[2:], None, 2, False)),
    "planes_pool": lambda: (torch.ops.act_fast.affine_transport.default, (torch.randn(2, 5, 3, 4), *make_map(5, False, k=2)[:2], None, 0.4, None, None, torch.tensor([1, 0]), 1, True)),
    "rms": lambda: (torch.ops.act_fast.rms_norm_transport.default, (torch.randn(3, 2, 7), torch.randn(7), *make_map(7, True)[:2], torch.tensor(0.5), 0.0, *make_map(7, True)[2:], None, 1e-6, 1.0, True)),
    "layer": lambda: (torch.ops.act_fast.layer_norm_transport.default, (torch.randn(3, 2, 7), torch.randn(7), torch.randn(7), *make_map(7, True)[:2], torch.rand(3), 0.0, *make_map(7, True)[2:], None, 1e-5)),
    "group": lambda: (torch.ops.act_fast.group_norm_transport.default, (torch.randn(2, 4, 3, 3), 2, torch.randn(4), torch.randn(4), *make_map(4, True)[:2], None, 0.7, *make_map(4, True)[2:], None, 1e-5, True)),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_with_cpu_kernels(case):
    _kernels_or_skip()
    previous = set_backend("cpu")
    try:
        op, args = OPCHECK_CASES[case]()
        args[0].requires_grad_()
        assert implementation(args[0]) == "cpu"
        torch.library.opcheck(op, args)
    finally:
        set_backend(previous)


def test_opcheck_out_variant_with_cpu_kernels():
    _kernels_or_skip()
    previous = set_backend("cpu")
    try:
        x = torch.randn(3, 9)
        w, b, lo, hi = make_map(9, True)
        torch.library.opcheck(torch.ops.act_fast.affine_transport_out.default, (x, w, b, None, 0.3, lo, hi, None, 1, False, torch.empty_like(x)))
    finally:
        set_backend(previous)


# -- switch, cache, fallback -----------------------------------------------------------------------


def test_switch_off_gives_the_reference(monkeypatch):
    _kernels_or_skip()
    previous = set_backend("auto")
    try:
        x = torch.randn(4, 9, dtype=torch.bfloat16)
        w, b, lo, hi = make_map(9, True)
        assert implementation(x) == "cpu"
        monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
        assert implementation(x) == "torch"
        assert cpu_kernels.status().startswith("off")
        assert_equal(af.ops.affine_transport(x, w, b, 0.5, lo, hi), affine_transport_ref(x, w, b, 0.5, lo, hi))
        with pytest.raises(RuntimeError, match="ACT_FAST_CPU_KERNELS=0"):
            set_backend("cpu")
        monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "1")
        assert implementation(x) == "cpu"
        set_backend("torch")
        assert implementation(x) == "torch"
    finally:
        set_backend(previous)


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    """A build that fails (simulated) leaves the ops on the reference, with exactly one warning."""
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH, raising=False)
    monkeypatch.setattr(cpu_kernels, "_state", cpu_kernels._State())
    monkeypatch.setattr(cpu_kernels, "library_path", lambda: tmp_path / "missing" / "act_fast_cpu.so")
    monkeypatch.setattr(cpu_kernels, "missing_tools", lambda: None)

    def fail(target, verbose):
        raise RuntimeError("Error building extension 'act_fast_cpu'\nfoo.cpp:1: error: simulated failure")

    monkeypatch.setattr(cpu_kernels, "_compile", fail)
    previous = set_backend("auto")
    try:
        x = torch.randn(3, 5)
        w, b, lo, hi = make_map(5, True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert implementation(x) == "torch"
            y1 = af.ops.affine_transport(x, w, b, 0.5, lo, hi)
            y2 = af.ops.rms_norm_transport(x, None, w, b, 0.5, lo, hi)
        ours = [w for w in caught if "compiled CPU kernels unavailable" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert "error: simulated failure" in str(ours[0].message)
        assert "simulated failure" in cpu_kernels.status()
        assert_equal(y1, affine_transport_ref(x, w, b, 0.5, lo, hi))
        assert_equal(y2, rms_norm_transport_ref(x, None, w, b, 0.5, lo, hi))
        with pytest.raises(RuntimeError, match="simulated failure"):
            set_backend("cpu")
    finally:
        set_backend(previous)


def test_no_compiler_falls_back_in_a_fresh_process(tmp_path):
    """A real attempt with a compiler that fails (CXX=false) in a fresh process and cache: the ops
    still give the reference's results and one warning names the failure."""
    script = textwrap.dedent(
        """
        import warnings
        import torch
        import act_fast as af
        from act_fast.ops.reference import affine_transport_ref
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = torch.randn(4, 6); w = torch.randn(6); b = torch.randn(6)
            ok = all(torch.equal(af.ops.affine_transport(x, w, b, 0.3), affine_transport_ref(x, w, b, 0.3)) for _ in range(3))
        ours = [str(w.message) for w in caught if "compiled CPU kernels unavailable" in str(w.message)]
        print("RESULT", ok, len(ours))
        print("MESSAGE", ours[0] if ours else "")
        """
    )
    env = {**os.environ, "CXX": shutil.which("false") or "false", cpu_kernels.ENV_CACHE: str(tmp_path), "PYTHONPATH": str(Path(af.__file__).parents[1])}
    env.pop(cpu_kernels.ENV_SWITCH, None)
    env.pop("ACT_FAST_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT True 1" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "building the CPU kernels failed" in proc.stdout
    assert not list((tmp_path / "cpu_kernels").glob("*/*.so"))
    assert not list((tmp_path / "cpu_kernels").glob("*/.build-*")), "a failed build left its temporary folder"


def test_build_key_names_torch_abi_capability_and_sources(tmp_path, monkeypatch):
    key = cpu_kernels.build_key()
    assert torch.__version__ in key and sys.implementation.cache_tag in key and cpu_kernels.capability().lower() in key
    copy = tmp_path / "csrc"
    shutil.copytree(cpu_kernels.source_dir(), copy)
    monkeypatch.setattr(cpu_kernels, "source_dir", lambda: copy)
    assert cpu_kernels.build_key() == key
    (copy / "common.h").write_text((copy / "common.h").read_text() + "\n// changed\n")
    assert cpu_kernels.build_key() != key
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path / "cache"))
    assert cpu_kernels.library_path().parent.parent == tmp_path / "cache" / "cpu_kernels"


def test_concurrent_builds_publish_one_complete_library(tmp_path, monkeypatch):
    """Two builders racing on one cache key (the compile step replaced by one that writes a library
    slowly): the cache ends with one complete file and no temporary folders."""
    import torch.utils.cpp_extension as cpp_extension

    barrier = threading.Barrier(2)

    def fake_load(name, sources, extra_cflags, extra_ldflags, build_directory, is_python_module, verbose):
        barrier.wait(timeout=30)
        path = Path(build_directory) / f"{name}.so"
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(b"x" * 4096)
        return str(path)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    target = tmp_path / "key" / "act_fast_cpu.so"
    errors: list[BaseException] = []

    def build():
        try:
            cpu_kernels._compile(target, False)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert target.stat().st_size == 64 * 4096
    assert [p.name for p in target.parent.iterdir()] == ["act_fast_cpu.so"]


def test_status_and_build_info():
    _kernels_or_skip()
    status = cpu_kernels.status()
    assert status.startswith("loaded: ") and cpu_kernels.capability() in status
    assert "float lanes" in torch.ops.act_fast_cpu.build_info()


def test_build_command(capsys, monkeypatch):
    from act_fast import build

    _kernels_or_skip()
    assert build.main([]) == 0
    assert "act_fast: CPU kernels already built: " in capsys.readouterr().out

    def unavailable(verbose=False, force=False):
        raise cpu_kernels.CpuKernelsUnavailable("no C++ compiler: 'c++' is not on PATH")

    monkeypatch.setattr(cpu_kernels, "load", unavailable)
    assert build.main(["--force"]) == 1
    assert "CPU kernels not built: no C++ compiler" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2"])
def test_fused_steering_on_cpu_kernels_is_exact(kind, dtype):
    """A model steered in fused mode on the CPU kernels: λ = 0 gives the unsteered logits bit for
    bit (norm weights far from 1, so every rounding of the norm shows), and λ = 0.8 the same
    logits as the pure-torch path."""
    pytest.importorskip("transformers")
    from tiny_models import tiny_causal_lm

    _kernels_or_skip()
    model = tiny_causal_lm(kind).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.copy_((p.float() + 2 * torch.randn_like(p.float())).to(dtype))
    C = model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    maps = af.SteeringMaps({
        site: af.AffineMap(1 + 0.2 * torch.randn(C, generator=g), 0.2 * torch.randn(C, generator=g),
                           torch.full((C,), -1.0), torch.full((C,), 1.5))
        for site in af.sites(model, "layernorm")
    })
    ids = torch.randint(3, 100, (3, 9), generator=g)
    previous = set_backend("cpu")
    try:
        with torch.no_grad():
            base = model(input_ids=ids).logits
            handle = af.steer(model, maps, strength=0.0, mode="fused")
            at_zero = model(input_ids=ids).logits
            handle.set_strength(0.8)
            steered = model(input_ids=ids).logits
            set_backend("torch")
            reference = model(input_ids=ids).logits
            handle.remove()
    finally:
        set_backend(previous)
    assert torch.equal(at_zero, base)
    assert not torch.equal(steered, base)
    assert torch.equal(steered, reference)
