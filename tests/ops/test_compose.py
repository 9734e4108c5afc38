"""Composition: a ``[B, S]`` ``map_index`` (and ``[B, S]`` λ) gives each row an ordered chain of maps
``y = T_S(… T_1(x))``, each support tested on its own input, in affine_transport,
rms_norm_transport and layer_norm_transport, on every backend (reference, compiled CPU kernels,
Triton): chain vs maps applied one after another, λ = 0 is the identity, mixes per row, the
custom-op contract, gradients, compile without recompiles, and refused buffers."""

import subprocess
import sys
import textwrap

import pytest
import torch
from tolerances import ALL_DTYPES, FLOAT_DTYPES, assert_close

import act_fast as af
from act_fast.ops import cpu_kernels, set_backend
from act_fast.ops.group_norm_transport import group_norm_transport_impl
from act_fast.ops.norm_transport import layer_norm_transport_impl, rms_norm_transport_impl
from act_fast.ops.reference import affine_transport_ref, layer_norm_ref, rms_norm_ref
from act_fast.ops.transport import affine_transport_impl

K = 5
BACKENDS = ["torch", "cpu", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    previous = set_backend(request.param)
    yield request.param
    set_backend(previous)


def make_maps(C, support, dtype=torch.float32, k=K):
    """``[K, C]`` maps, slot 0 the identity (as a steering bank), the others near 1 so a chain of
    four stays in range; supports around the data so every map is partly inside."""
    w = 1.0 + 0.4 * torch.randn(k, C)
    b = 0.5 * torch.randn(k, C)
    w[0], b[0] = 1.0, 0.0
    if not support:
        return w.to(dtype), b.to(dtype), None, None
    lo = -0.8 + 0.2 * torch.randn(k, C)
    hi = 0.9 + 0.2 * torch.randn(k, C)
    lo[0], hi[0] = -torch.finfo(torch.float32).max, torch.finfo(torch.float32).max
    return w.to(dtype), b.to(dtype), lo.to(dtype), hi.to(dtype)


def make_chain(B, S):
    """``[B, S]`` int32 chains, every map used, not sorted, a map twice in one chain when S > 2."""
    idx = (torch.arange(B)[:, None] * 2 + torch.arange(S)[None, :] * 3 + 1) % (K - 1) + 1
    return idx.to(torch.int32)


def sequential(x, w, b, lam, lo, hi, index):
    """The maps one after another with affine_transport (rounded to x's dtype after each)."""
    for k in range(index.shape[1]):
        s = lam[:, k] if isinstance(lam, torch.Tensor) and lam.ndim == 2 else lam
        x = af.ops.affine_transport(x, w, b, s, None if lo is None else lo, hi, map_index=index[:, k])
    return x


def assert_kernel(y, expected, backend):
    """The compiled CPU kernels are bit-identical to the reference; Triton within the dtype table."""
    if backend == "triton":
        assert_close(y, expected)
    else:
        assert torch.equal(y, expected)


SHAPES = [(3, 13), (2, 5, 67), (1, 1031), (4, 2, 3, 17)]


@pytest.mark.parametrize("S", [1, 2, 4])
@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_chain_equals_maps_one_after_another(shape, dtype, support, S, backend):
    x = (1.2 * torch.randn(shape)).to(dtype)
    w, b, lo, hi = make_maps(shape[-1], support)
    index = make_chain(shape[0], S)
    lam = 0.2 + torch.rand(shape[0], S)
    y = af.ops.affine_transport(x, w, b, lam, lo, hi, map_index=index)
    reference = affine_transport_ref(x, w, b, lam, lo, hi, map_index=index)
    assert_kernel(y, reference, backend)
    seq = sequential(x, w, b, lam, lo, hi, index)
    if dtype == torch.float32 and backend != "triton":
        assert torch.equal(y, seq)  # same float32 arithmetic in the same order
    elif dtype in (torch.float32, torch.float64):
        assert_close(y, seq)
    else:
        # one rounding (chain) against one per map (sequential), and a support edge a rounding
        # can cross: compare against the sequential maps in float32 rounded once
        assert_close(y, sequential(x.float(), w, b, lam, lo, hi, index).to(dtype))


@pytest.mark.parametrize("strength", ["float", "0d", "row"])
def test_chain_with_one_strength_per_row_or_for_all(strength, backend):
    x = torch.randn(4, 2, 19)
    w, b, lo, hi = make_maps(19, True)
    index = make_chain(4, 3)
    lam = {"float": 0.7, "0d": torch.tensor(0.7), "row": torch.rand(4)}[strength]
    full = lam[:, None].expand(4, 3).contiguous() if strength == "row" else torch.full((4, 3), 0.7)
    y = af.ops.affine_transport(x, w, b, lam, lo, hi, map_index=index)
    assert_kernel(y, affine_transport_ref(x, w, b, full, lo, hi, map_index=index), backend)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zero_strength_is_the_identity(dtype, backend):
    x = (2.0 * torch.randn(5, 3, 33)).to(dtype)
    w, b, lo, hi = make_maps(33, True)
    for S in (2, 4):
        index = make_chain(5, S)
        y = af.ops.affine_transport(x, w, b, torch.zeros(5, S), lo, hi, map_index=index)
        assert torch.equal(y, x)
        assert torch.equal(af.ops.affine_transport(x, w, b, 0.0, None, None, map_index=index), x)


def test_zero_strength_drops_a_map_exactly_even_for_non_finite_values(backend):
    """λ_k = 0 drops map k: x = ±inf, NaN and -0.0 pass bit for bit (a support-free identity slot
    evaluated would give inf − inf = NaN)."""
    x = torch.tensor([[float("inf"), float("-inf"), float("nan"), -0.0, 1.5, -2.0]] * 2)
    w, b, _, _ = make_maps(6, False)
    index = torch.tensor([[0, 3], [2, 0]], dtype=torch.int32)
    lam = torch.tensor([[0.0, 0.0], [0.0, -0.0]])
    y = af.ops.affine_transport(x, w, b, lam, map_index=index)
    assert torch.equal(y.view(torch.int32), x.view(torch.int32))
    index = torch.tensor([[1, 3], [2, 4]], dtype=torch.int32)
    lam = torch.tensor([[0.7, 0.0], [0.0, 0.7]])
    y = af.ops.affine_transport(x, w, b, lam, map_index=index)
    expected = affine_transport_ref(x, w, b, lam, map_index=index)
    torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)
    alone = [af.ops.affine_transport(x[r], w[k], b[k], 0.7) for r, k in ((0, 1), (1, 4))]
    torch.testing.assert_close(y, torch.stack(alone), rtol=0, atol=0, equal_nan=True)


def test_per_row_mix_of_chains_single_maps_and_unsteered(backend):
    """One batch: a chain of three, a single map (slot 0 elsewhere), unsteered (all slot 0, λ 0),
    a chain whose middle map has λ = 0 (dropped exactly)."""
    x = torch.randn(4, 7, 21)
    w, b, lo, hi = make_maps(21, True)
    index = torch.tensor([[1, 2, 3], [4, 0, 0], [0, 0, 0], [2, 3, 1]], dtype=torch.int32)
    lam = torch.tensor([[0.5, 1.0, 0.8], [0.9, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.6]])
    y = af.ops.affine_transport(x, w, b, lam, lo, hi, map_index=index)
    assert torch.equal(y[0], sequential(x[:1], w, b, lam[:1], lo, hi, index[:1])[0])
    assert torch.equal(y[1], af.ops.affine_transport(x[1], w[4], b[4], 0.9, lo[4], hi[4]))
    assert torch.equal(y[2], x[2])
    two = af.ops.affine_transport(af.ops.affine_transport(x[3], w[2], b[2], 1.0, lo[2], hi[2]), w[1], b[1], 0.6, lo[1], hi[1])
    assert torch.equal(y[3], two)


def test_each_support_is_tested_on_its_own_input():
    """Map 2's support holds T_1(x), not x: the chain differs from testing both on x."""
    x = torch.tensor([[0.5, 2.5]])
    w = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [2.0, 2.0], [10.0, 10.0]])
    lo = torch.tensor([[-1e30, -1e30], [0.0, 0.0], [2.0, 2.0]])
    hi = torch.tensor([[1e30, 1e30], [1.0, 1.0], [3.0, 3.0]])
    index = torch.tensor([[1, 2]], dtype=torch.int32)
    for backend in BACKENDS:
        previous = set_backend(backend)
        try:
            y = af.ops.affine_transport(x, w, b, torch.ones(1, 2), lo, hi, map_index=index)
        finally:
            set_backend(previous)
        # channel 0: 0.5 in (0, 1) -> 2.5, in (2, 3) -> 12.5; channel 1: 2.5 outside (0, 1) -> 2.5 -> 12.5
        assert y.tolist() == [[12.5, 12.5]], backend


NORMS = ["rms", "layer"]


def norm_public(norm, x, nw, nb, w, b, s, lo, hi, index):
    if norm == "rms":
        return af.ops.rms_norm_transport(x, nw, w, b, s, lo, hi, eps=1e-5, cast_before_scale=True, map_index=index)
    return af.ops.layer_norm_transport(x, nw, nb, w, b, s, lo, hi, eps=1e-5, map_index=index)


def normed(norm, x, nw, nb):
    if norm == "rms":
        return rms_norm_ref(x, nw, 1e-5, 0.0, True)
    return layer_norm_ref(x, nw, nb, 1e-5)


@pytest.mark.parametrize("S", [2, 4])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(3, 24), (2, 5, 67)])
@pytest.mark.parametrize("norm", NORMS)
def test_norm_chain_equals_norm_then_maps_one_after_another(norm, shape, dtype, S, backend):
    x = (1.5 * torch.randn(shape) + 0.3).to(dtype)
    C = shape[-1]
    nw = (0.5 + torch.rand(C)).to(dtype)
    nb = (0.2 * torch.randn(C)).to(dtype) if norm == "layer" else None
    w, b, lo, hi = make_maps(C, True)
    index = make_chain(shape[0], S)
    lam = 0.2 + torch.rand(shape[0], S)
    y = norm_public(norm, x, nw, nb, w, b, lam, lo, hi, index)
    h = normed(norm, x, nw, nb)
    reference = affine_transport_ref(h, w, b, lam, lo, hi, map_index=index)
    assert_kernel(y, reference, backend)
    if dtype == torch.float32 and backend != "triton":
        assert torch.equal(y, sequential(h, w, b, lam, lo, hi, index))
    zero = norm_public(norm, x, nw, nb, w, b, torch.zeros(shape[0], S), lo, hi, index)
    assert_kernel(zero, h, backend)


@pytest.mark.parametrize("backend_name", ["torch", "cpu", "triton"])
def test_opcheck_chain(backend_name):
    x = torch.randn(3, 2, 7, requires_grad=True)
    w, b, lo, hi = make_maps(7, True)
    w.requires_grad_(), b.requires_grad_()
    s = torch.rand(3, 2, requires_grad=True)
    index = make_chain(3, 2).to(torch.int64)
    nw = (0.5 + torch.rand(7)).requires_grad_()
    nb = (0.1 * torch.randn(7)).requires_grad_()
    calls = [
        (torch.ops.act_fast.affine_transport.default, (x, w, b, s, 0.0, lo, hi, index, 2, False)),
        (torch.ops.act_fast.rms_norm_transport.default, (x, nw, w, b, s, 0.0, lo, hi, index, 1e-5, 1.0, False)),
        (torch.ops.act_fast.layer_norm_transport.default, (x, nw, nb, w, b, s, 0.0, lo, hi, index, 1e-5)),
    ]
    previous = set_backend(backend_name)
    try:
        for op, args in calls:
            torch.library.opcheck(op, args)
    finally:
        set_backend(previous)


@pytest.mark.parametrize("norm", ["none", "rms", "layer"])
def test_chain_gradcheck_float64(norm):
    previous = set_backend("torch")
    try:
        x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        w, b, _, _ = make_maps(5, False, torch.float64)
        w.requires_grad_(), b.requires_grad_()
        s = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
        index = make_chain(3, 2)
        nw = (0.5 + torch.rand(5, dtype=torch.float64)).requires_grad_()
        if norm == "none":
            fn = lambda x, w, b, s, nw: af.ops.affine_transport(x, w, b, s, map_index=index)  # noqa: E731
        elif norm == "rms":
            fn = lambda x, w, b, s, nw: af.ops.rms_norm_transport(x, nw, w, b, s, map_index=index)  # noqa: E731
        else:
            fn = lambda x, w, b, s, nw: af.ops.layer_norm_transport(x, nw, None, w, b, s, map_index=index)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b, s, nw))
    finally:
        set_backend(previous)


@pytest.mark.parametrize("site", ["transport", "rms"])
def test_compile_no_recompile_when_chains_change(site):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    C, B, S = 12, 3, 3
    w, b, lo, hi = make_maps(C, True)
    nw = 0.5 + torch.rand(C)
    index = torch.zeros(B, S, dtype=torch.int32)
    lam = torch.zeros(B, S)

    def fn(x):
        h = x * 2.0
        if site == "transport":
            return af.ops.affine_transport(h, w, b, lam, lo, hi, map_index=index)
        return af.ops.rms_norm_transport(h, nw, w, b, lam, lo, hi, map_index=index)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    x = torch.randn(B, 4, C)
    outputs = []
    with torch.no_grad():
        for chain, strength in (([[0, 0, 0]] * 3, 0.0), ([[1, 2, 3], [4, 0, 0], [2, 2, 1]], 0.8), ([[3, 1, 0]] * 3, 0.5)):
            index.copy_(torch.tensor(chain))
            lam.fill_(strength)
            y = compiled(x)
            assert torch.equal(y, fn(x))
            outputs.append(y)
    assert counter.frame_count == 1
    assert not torch.equal(outputs[1], outputs[2])


class TestRefused:
    def test_chain_longer_than_four(self):
        w, b, _, _ = make_maps(6, False)
        with pytest.raises(ValueError, match=r"composes 1 to 4 maps per row, got S = 5"):
            af.ops.affine_transport(torch.randn(2, 6), w, b, 1.0, map_index=torch.zeros(2, 5, dtype=torch.int32))

    def test_chain_on_conv_planes(self):
        w, b, _, _ = make_maps(3, False)
        with pytest.raises(ValueError, match=r"chain of maps \(\[B, S\] map_index\) is applied to channels-last input only"):
            af.ops.affine_transport(torch.randn(2, 3, 4, 4), w, b, 1.0, channel_dim=1, map_index=torch.zeros(2, 2, dtype=torch.int32))
        with pytest.raises(ValueError, match=r"channels-last input only"):
            af.ops.group_norm_transport(torch.randn(2, 3, 4, 4), 1, None, None, w, b, 1.0, map_index=torch.zeros(2, 2, dtype=torch.int32))

    def test_strength_shape_against_the_chain(self):
        w, b, _, _ = make_maps(6, False)
        index = torch.zeros(2, 3, dtype=torch.int32)
        with pytest.raises(ValueError, match=r"strength with a chain map_index \[2, 3\] must be .*\[2, 3\].*got \[2, 2\]"):
            af.ops.affine_transport(torch.randn(2, 6), w, b, torch.ones(2, 2), map_index=index)
        with pytest.raises(ValueError, match=r"per-row strength must have shape \[2\].*got \[2, 3\]"):
            af.ops.affine_transport(torch.randn(2, 6), w, b, torch.ones(2, 3), map_index=index[:, 0])

    def test_nan_in_a_chain_strength_names_the_entry(self):
        w, b, _, _ = make_maps(6, False)
        lam = torch.ones(2, 3)
        lam[1, 2] = float("nan")
        with pytest.raises(ValueError, match=r"holds NaN or Inf at \[row, chain position\] entries \[\[1, 2\]\]"):
            af.ops.affine_transport(torch.randn(2, 6), w, b, lam, map_index=torch.zeros(2, 3, dtype=torch.int32))


BODY_CALLS = {
    "transport": lambda x, w, b, s, idx: affine_transport_impl(x, w, b, s, 0.0, None, None, idx, 1, False),
    "rms": lambda x, w, b, s, idx: rms_norm_transport_impl(x, None, w, b, s, 0.0, None, None, idx, 1e-5, 0.0, True),
    "layer": lambda x, w, b, s, idx: layer_norm_transport_impl(x, None, None, w, b, s, 0.0, None, None, idx, 1e-5),
    "group": lambda x, w, b, s, idx: group_norm_transport_impl(x.reshape(64, 16, 1, 1), 4, None, None, w, b, s, 0.0, None, None, idx, 1e-5, True),
}


@pytest.mark.parametrize("buffers", ["strength", "map_index", "chain"])
@pytest.mark.parametrize("op", list(BODY_CALLS))
def test_op_bodies_refuse_short_row_buffers(op, buffers, backend):
    """A 64-row input with 8-entry buffers (as a head-dim norm in vLLM would give): an error on
    every backend, never a read past the buffers (the C++ kernel used to crash)."""
    x = torch.randn(64, 16)
    w, b, _, _ = make_maps(16, False)
    s = torch.full((8,), 0.5) if buffers == "strength" else torch.full((64,), 0.5)
    idx = {"strength": torch.zeros(64, dtype=torch.int32), "map_index": torch.full((8,), 2, dtype=torch.int32),
           "chain": torch.ones(8, 2, dtype=torch.int32)}[buffers]
    if buffers == "chain":
        s = torch.full((8, 2), 0.5)
    with pytest.raises(ValueError, match=r"per-row (strength|map_index) must .*for x of shape \[64, 16(, 1, 1)?\], got \[8"):
        BODY_CALLS[op](x, w, b, s, idx)


def _run_compiled_kernel_script(code: str) -> str:
    """Runs ``code`` (which calls torch.ops.act_fast_cpu.* directly) in a subprocess, so that a crash
    fails the test instead of the test session; returns its stdout."""
    if not cpu_kernels.available():
        pytest.skip("the compiled CPU kernels cannot be built here")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_compiled_cpu_kernel_refuses_short_row_buffers_in_a_subprocess():
    """The compiled op itself (torch.ops.act_fast_cpu.*, which the bodies call) refuses them too; run in
    a subprocess so that a crash fails the test instead of the test session."""
    code = textwrap.dedent(
        """
        import torch
        from act_fast.ops import cpu_kernels
        cpu_kernels.load()
        x = torch.randn(4096, 64)
        w, b = torch.ones(3, 64), torch.zeros(3, 64)
        errors = 0
        for s, idx in ((torch.full((8,), 0.5), None), (None, torch.full((8,), 2, dtype=torch.int32)),
                       (torch.full((8, 2), 0.5), torch.ones(8, 2, dtype=torch.int32))):
            for call in (
                lambda: torch.ops.act_fast_cpu.affine_transport(x, w, b, s, 0.5, None, None, idx, 1, False, torch.empty_like(x)),
                lambda: torch.ops.act_fast_cpu.rms_norm_transport(x, None, w, b, s, 0.5, None, None, idx, 1e-5, 0.0, True, torch.empty_like(x)),
            ):
                try:
                    call()
                except ValueError as error:
                    assert "per-row" in str(error), error
                    errors += 1
        print("refused", errors)
        """
    )
    assert "refused 6" in _run_compiled_kernel_script(code)


def test_triton_reads_a_strided_per_row_strength_and_index(backend):
    """A column of a [B, S] tensor is strided: the kernels must read its entries, not the next ones."""
    x = torch.randn(6, 13)
    w, b, _, _ = make_maps(13, False)
    lam = torch.rand(6, 3)[:, 1]
    index = make_chain(6, 3)[:, 2]
    assert not lam.is_contiguous() and not index.is_contiguous()
    y = af.ops.affine_transport(x, w, b, lam, map_index=index)
    assert_kernel(y, affine_transport_ref(x, w, b, lam.contiguous(), map_index=index.contiguous()), backend)


def _interleaved_rows(B, S):
    """``[B, S]`` chains and λ of a decode batch steered by a few settings, interleaved: rows that
    apply the same maps are far apart (across the CPU kernels' row windows of 64) and more than
    four of them share each setting; two settings apply the same maps from different chain
    positions (a map at λ = 0 dropped), others the same maps at other strengths."""
    settings = [  # (chain, λ)
        ([1, 2, 3, 4][:S], [0.5, 1.0, 0.8, 0.3][:S]),
        ([3] + [0] * (S - 1), [0.9] + [0.0] * (S - 1)),
        ([0] * (S - 1) + [3], [0.0] * (S - 1) + [0.4]),  # the maps of the row above, λ from position S − 1
        ([0] * S, [0.0] * S),  # unsteered
        ([2, 1, 4, 3][:S], [1.0, 0.0, 0.6, 0.7][:S]),
        ([1, 2, 3, 4][:S], [0.25, 0.6, 0.1, 0.9][:S]),  # the first setting's maps, other strengths
    ]
    order = [(7 * r + r // 11) % len(settings) for r in range(B)]
    index = torch.tensor([settings[k][0] for k in order], dtype=torch.int32)
    lam = torch.tensor([settings[k][1] for k in order])
    return index, lam


@pytest.mark.parametrize("S", [1, 2, 4])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("C", [40, 64])
def test_interleaved_rows_with_the_same_maps(C, dtype, S, backend):
    """The CPU kernels transport rows that apply the same maps together even when other rows lie
    between them; every row still gets exactly its own chain and strengths ([B, S] index), and a
    [B] index of interleaved single maps does the same."""
    B = 75
    x = (1.2 * torch.randn(B, C)).to(dtype)
    w, b, lo, hi = make_maps(C, True)
    index, lam = _interleaved_rows(B, S)
    y = af.ops.affine_transport(x, w, b, lam, lo, hi, map_index=index)
    assert_kernel(y, affine_transport_ref(x, w, b, lam, lo, hi, map_index=index), backend)
    one, one_lam = index[:, -1].contiguous(), lam[:, -1].contiguous()
    y = af.ops.affine_transport(x, w, b, one_lam, lo, hi, map_index=one)
    assert_kernel(y, affine_transport_ref(x, w, b, one_lam, lo, hi, map_index=one), backend)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_norm_interleaved_rows_with_the_same_maps(norm, dtype, backend):
    B, C, S = 75, 40, 2
    x = (1.5 * torch.randn(B, C) + 0.3).to(dtype)
    nw = (0.5 + torch.rand(C)).to(dtype)
    nb = (0.2 * torch.randn(C)).to(dtype) if norm == "layer" else None
    w, b, lo, hi = make_maps(C, True)
    index, lam = _interleaved_rows(B, S)
    y = norm_public(norm, x, nw, nb, w, b, lam, lo, hi, index)
    assert_kernel(y, affine_transport_ref(normed(norm, x, nw, nb), w, b, lam, lo, hi, map_index=index), backend)


def test_compiled_cpu_kernel_refuses_map_tensors_smaller_than_the_weight_in_a_subprocess():
    """A bias or support with fewer maps than the weight would be read past its end when map_index
    picks a map beyond it (the bodies check shapes; the compiled op is callable on its own)."""
    code = textwrap.dedent(
        """
        import torch
        from act_fast.ops import cpu_kernels
        cpu_kernels.load()
        x = torch.randn(4, 64)
        w, b = torch.ones(5, 64), torch.zeros(5, 64)
        lo, hi = torch.full((5, 64), -1.0), torch.full((5, 64), 1.0)
        idx = torch.full((4,), 4, dtype=torch.int32)
        errors = 0
        for bb, ll, hh in ((b[:1], None, None), (b, lo[:1], hi[:1]), (b, lo, hi[:2]), (b, lo, None)):
            for call in (
                lambda: torch.ops.act_fast_cpu.affine_transport(x, w, bb, None, 0.5, ll, hh, idx, 1, False, torch.empty_like(x)),
                lambda: torch.ops.act_fast_cpu.rms_norm_transport(x, None, w, bb, None, 0.5, ll, hh, idx, 1e-5, 0.0, True, torch.empty_like(x)),
            ):
                try:
                    call()
                except ValueError as error:
                    assert "map tensors" in str(error) or "lo and hi" in str(error), error
                    errors += 1
        torch.ops.act_fast_cpu.affine_transport(x, w, b, None, 0.5, lo, hi, idx, 1, False, torch.empty_like(x))
        print("refused", errors)
        """
    )
    assert "refused 8" in _run_compiled_kernel_script(code)
