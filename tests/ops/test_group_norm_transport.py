"""group_norm_transport: the Triton kernels vs the pure-torch reference, the reference vs
F.group_norm then affine_transport, the custom-op contract (opcheck, gradients, torch.compile)
and input errors."""

import pytest
import torch
import torch.nn.functional as F
from tolerances import ALL_DTYPES, assert_close

import act_fast as af
from act_fast.ops import checks, set_backend
from act_fast.ops.group_norm_transport import group_norm_transport_triton
from act_fast.ops.reference import affine_transport_ref, group_norm_ref, group_norm_transport_ref
from act_fast.ops.transport import PLANE_SINGLE_TILE


@pytest.fixture
def triton_backend():
    previous = set_backend("triton")
    yield
    set_backend(previous)


def make_x(shape, dtype, device, offset=0.3, layout="contiguous"):
    """Values with per-channel offsets (so planes of a group differ in mean); ``layout``
    ``channels_last`` makes a 4-D tensor with channel stride 1."""
    x = 1.5 * torch.randn(shape, device=device) + offset + torch.randn(shape[:2] + (1,) * (len(shape) - 2), device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    return x.to(dtype)


def make_params(C, device, norm_weight=True, norm_bias=True, support=True, k=None, dtype=torch.float32):
    """``(norm_weight, norm_bias, weight, bias, lo, hi)``; map tensors ``[K, C]`` when ``k``."""
    lead = () if k is None else (k,)
    nw = (0.5 + torch.rand(C, device=device)).to(dtype) if norm_weight else None
    nb = (0.2 * torch.randn(C, device=device)).to(dtype) if norm_bias else None
    w = (0.5 + torch.rand(lead + (C,), device=device)).to(dtype)
    if k is not None:
        w = w + torch.arange(k, device=device, dtype=dtype)[:, None]
    b = (0.3 * torch.randn(lead + (C,), device=device)).to(dtype)
    lo = (-0.4 + 0.1 * torch.randn(lead + (C,), device=device)).to(dtype) if support else None
    hi = (0.5 + 0.1 * torch.randn(lead + (C,), device=device)).to(dtype) if support else None
    return nw, nb, w, b, lo, hi


def make_strength(kind, batch, device):
    if kind == "float":
        return 0.7
    if kind == "0d":
        return torch.tensor(0.4, device=device)
    return 2.0 * torch.rand(batch, device=device) - 0.5


def run_kernel(x, G, nw, nb, w, b, s, lo, hi, eps, pool, index=None):
    """The launcher with a NaN-poisoned output buffer, so an unwritten element cannot pass."""
    out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)
    s_tensor, s_scalar = checks.normalize_strength(s, x)
    y = group_norm_transport_triton(x, G, nw, nb, w, b, s_tensor, s_scalar, lo, hi, index, eps, pool, out=out)
    assert y.data_ptr() == out.data_ptr()
    return y


# (shape, num_groups, strength, norm weight given, norm bias given, layout, mean offset)
KERNEL_CASES = {
    "one_pixel_one_group": ((1, 1, 1, 1), 1, "float", True, True, "contiguous", 0.3),
    "3d_odd_groups": ((2, 15, 7), 5, "per_row", True, True, "contiguous", 0.3),
    "4d_prime_plane": ((3, 6, 7, 3), 3, "0d", True, False, "contiguous", 0.3),
    "spatial_1": ((2, 4, 1, 1), 2, "per_row", False, True, "contiguous", 0.3),
    "group_of_one_channel": ((1, 9, 13), 9, "per_row", False, False, "contiguous", 0.3),
    "channels_last": ((2, 6, 5, 3), 2, "per_row", True, True, "channels_last", 0.3),
    "large_mean": ((2, 6, 5, 11), 2, "per_row", True, True, "contiguous", 40.0),
}


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_matches_reference(case, dtype, pool, support, device):
    shape, G, strength, has_nw, has_nb, layout, offset = KERNEL_CASES[case]
    x = make_x(shape, dtype, device, offset, layout)
    nw, nb, w, b, lo, hi = make_params(shape[1], device, has_nw, has_nb, support)
    s = make_strength(strength, shape[0], device)
    y = run_kernel(x, G, nw, nb, w, b, s, lo, hi, 1e-5, pool)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    assert_close(y, group_norm_transport_ref(x, G, nw, nb, w, b, s, lo, hi, eps=1e-5, pool_spatial=pool))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planes_larger_than_one_tile(dtype, pool, device):
    """Planes above the register tile are walked in chunks by both kernels (statistics merged
    over chunks, output written chunk by chunk)."""
    side = int(PLANE_SINGLE_TILE**0.5) + 1
    x = make_x((1, 4, side, side), dtype, device, offset=5.0)
    nw, nb, w, b, lo, hi = make_params(4, device)
    s = torch.tensor([0.8], device=device)
    y = run_kernel(x, 2, nw, nb, w, b, s, lo, hi, 1e-5, pool)
    assert_close(y, group_norm_transport_ref(x, 2, nw, nb, w, b, s, lo, hi, eps=1e-5, pool_spatial=pool))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("index_kind", ["0d", "per_row"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_kernel_with_map_index(dtype, index_kind, pool, device):
    x = make_x((3, 6, 4, 5), dtype, device)
    nw, nb, w, b, lo, hi = make_params(6, device, k=4)
    s = make_strength("per_row", 3, device)
    index = torch.tensor(2, device=device) if index_kind == "0d" else torch.tensor([3, 0, 3], dtype=torch.int32, device=device)
    y = run_kernel(x, 3, nw, nb, w, b, s, lo, hi, 1e-5, pool, index)
    expected = group_norm_transport_ref(x, 3, nw, nb, w, b, s, lo, hi, eps=1e-5, pool_spatial=pool, map_index=index)
    assert_close(y, expected)
    for i, k in enumerate([2] * 3 if index_kind == "0d" else [3, 0, 3]):
        alone = group_norm_transport_ref(x[i : i + 1], 3, nw, nb, w[k], b[k], s[i : i + 1], lo[k], hi[k], eps=1e-5, pool_spatial=pool)
        assert_close(y[i : i + 1], alone)


def test_float64_keeps_eps_in_float64(device):
    """Tiny values make ``eps`` dominate; an eps rounded to float32 would show at 1e-10."""
    x = 1e-3 * torch.randn(2, 4, 3, 5, device=device, dtype=torch.float64)
    nw, nb, w, b, lo, hi = make_params(4, device, support=False, dtype=torch.float64)
    y = run_kernel(x, 2, nw, nb, w, b, 0.9, lo, hi, 1.1e-6, True)
    assert_close(y, group_norm_transport_ref(x, 2, nw, nb, w, b, 0.9, lo, hi, eps=1.1e-6))


def test_reference_is_group_norm_then_affine_transport(device):
    x = make_x((2, 6, 4, 3), torch.float64, device)
    nw, nb, w, b, lo, hi = make_params(6, device, dtype=torch.float64)
    h = F.group_norm(x, 3, nw, nb, 1e-5)
    torch.testing.assert_close(group_norm_ref(x, 3, nw, nb, 1e-5), h)
    torch.testing.assert_close(group_norm_ref(x, 3, None, None, 1e-5), F.group_norm(x, 3, None, None, 1e-5))
    for pool in (False, True):
        expected = affine_transport_ref(h, w, b, 0.6, lo, hi, channel_dim=1, pool_spatial=pool)
        torch.testing.assert_close(group_norm_transport_ref(x, 3, nw, nb, w, b, 0.6, lo, hi, eps=1e-5, pool_spatial=pool), expected)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_op_matches_unfused(backend, device):
    """bf16 input: the fused op keeps the normed value in float32, so it equals the unfused
    fp32 pipeline rounded once; the plane means sit far from the support edges."""
    x = make_x((2, 8, 5, 6), torch.bfloat16, device)
    nw, nb, w, b, _, _ = make_params(8, device, support=False)
    h = F.group_norm(x.float(), 4, nw, nb, 1e-5)
    m = h.mean(dim=(2, 3))
    lo = m.min(0).values - 0.5
    hi = torch.where(torch.arange(8, device=device) % 2 == 0, m.max(0).values + 0.5, (m[0] + m[1]) / 2)
    s = torch.tensor([0.5, 1.5], device=device)
    previous = set_backend(backend)
    try:
        y = af.ops.group_norm_transport(x, 4, nw, nb, w, b, s, lo, hi)
    finally:
        set_backend(previous)
    assert_close(y, af.ops.affine_transport(h, w, b, s, lo, hi, channel_dim=1, pool_spatial=True).to(torch.bfloat16))
    empty = torch.empty(0, 8, 3, 3, device=device)
    assert af.ops.group_norm_transport(empty, 4, nw, nb, w, b, 0.5).shape == empty.shape


def op_args(x, G, nw, nb, w, b, s, lo, hi, eps, pool, index):
    s_tensor, s_scalar = checks.normalize_strength(s, x)
    return (x, G, nw, nb, w, b, s_tensor, s_scalar, lo, hi, index, eps, pool)


# (shape, groups, pool, strength, support, norm affine given, map index)
OPCHECK_CASES = [
    ((2, 6, 3, 5), 3, True, "per_row", True, True, None),
    ((2, 6, 7), 2, False, "float", False, False, None),
    ((3, 4, 2, 3), 2, True, "0d", True, True, "per_row"),
    ((3, 4, 2, 3), 4, False, "per_row", False, True, "0d"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape,G,pool,strength,support,affine,index_kind", OPCHECK_CASES)
def test_opcheck(shape, G, pool, strength, support, affine, index_kind, backend, device):
    x = make_x(shape, torch.float32, device).requires_grad_()
    k = None if index_kind is None else 3
    nw, nb, w, b, lo, hi = make_params(shape[1], device, affine, affine, support, k=k)
    for t in (nw, nb, w, b):
        if t is not None:
            t.requires_grad_()
    s = make_strength(strength, shape[0], device)
    if isinstance(s, torch.Tensor):
        s.requires_grad_()
    index = None if k is None else (torch.tensor(1, device=device) if index_kind == "0d" else torch.tensor([2, 0, 2], device=device))
    previous = set_backend(backend)
    try:
        torch.library.opcheck(torch.ops.act_fast.group_norm_transport.default, op_args(x, G, nw, nb, w, b, s, lo, hi, 1e-5, pool, index))
    finally:
        set_backend(previous)


def plane_support(h: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``lo``/``hi`` per channel between the two batch rows' plane means of ``h`` (``B = 2``): even
    channels keep the higher plane inside, odd ones the lower; every mean stays ``margin`` away."""
    m = h.mean(dim=tuple(range(2, h.ndim)))
    mid = (m[0] + m[1]) / 2
    assert bool(((m[0] - m[1]).abs() / 2 > margin).all()), "plane means too close for a stable support"
    even = torch.arange(h.shape[1], device=h.device) % 2 == 0
    return torch.where(even, mid, torch.full_like(mid, -100.0)), torch.where(even, torch.full_like(mid, 100.0), mid)


# (pool, support, norm affine given, map index)
GRAD_CASES = {
    "pool_support": (True, True, True, None),
    "pool_map_index": (True, False, False, "per_row"),
    "per_pixel_support": (False, True, False, None),
    "per_pixel_map_index": (False, True, True, "0d"),
}


# Every case on the reference forward; the kernel's forward (slow in the interpreter) on two.
GRAD_RUNS = [(case, "torch") for case in GRAD_CASES] + [("pool_support", "triton"), ("per_pixel_map_index", "triton")]


@pytest.mark.parametrize("case,backend", GRAD_RUNS)
def test_gradcheck_float64(case, backend, device):
    pool, support, affine, index_kind = GRAD_CASES[case]
    x = make_x((2, 6, 3, 2), torch.float64, device)
    k = None if index_kind is None else 3
    nw, nb, w, b, _, _ = make_params(6, device, affine, affine, support=False, k=k, dtype=torch.float64)
    s = torch.tensor([0.7, 1.3], device=device, dtype=torch.float64)
    index = None if k is None else (torch.tensor(2, device=device) if index_kind == "0d" else torch.tensor([2, 0], device=device))
    lo = hi = None
    if support:
        lo, hi = plane_support(group_norm_ref(x, 3, nw, nb, 1e-5), margin=1e-3)
        if k is not None:
            lo, hi = lo.expand(k, -1).contiguous(), hi.expand(k, -1).contiguous()
    leaves = [t.requires_grad_() for t in (x, nw, nb, w, b, s) if t is not None]

    def fn(*tensors):
        it = iter(tensors)
        xx = next(it)
        nww, nbb = (next(it), next(it)) if affine else (None, None)
        return af.ops.group_norm_transport(xx, 3, nww, nbb, next(it), next(it), next(it), lo, hi, pool_spatial=pool, map_index=index)

    previous = set_backend(backend)
    try:
        # fast mode (random directional derivatives) keeps the interpreter's forward count low
        assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7, fast_mode=backend == "triton")
    finally:
        set_backend(previous)


def test_gradients_outside_the_support_are_those_of_group_norm(device):
    """With an empty support ``y = h``: the map gets zero gradients and ``x`` GroupNorm's."""
    x = make_x((2, 4, 3, 3), torch.float64, device).requires_grad_()
    nw, nb, w, b = (t.requires_grad_() for t in make_params(4, device, support=False, dtype=torch.float64)[:4])
    s = torch.tensor(0.8, dtype=torch.float64, device=device, requires_grad=True)
    lo = torch.full((4,), 10.0, dtype=torch.float64, device=device)
    hi = torch.full((4,), 11.0, dtype=torch.float64, device=device)
    g = torch.randn(x.shape, dtype=torch.float64, device=device)
    y = af.ops.group_norm_transport(x, 2, nw, nb, w, b, s, lo, hi)
    gx, gnw, gw, gb, gs = torch.autograd.grad((y * g).sum(), (x, nw, w, b, s))
    assert not gw.any() and not gb.any() and float(gs) == 0.0
    gx_plain, gnw_plain = torch.autograd.grad((F.group_norm(x, 2, nw, nb, 1e-5) * g).sum(), (x, nw))
    assert_close(gx, gx_plain)
    assert_close(gnw, gnw_plain)


class GroupNormSteer(torch.nn.Module):
    def __init__(self, C: int, batch: int, device: str):
        super().__init__()
        self.conv = torch.nn.Conv2d(C, C, 3, padding=1, device=device)
        self.norm = torch.nn.GroupNorm(2, C, device=device)
        _, _, w, b, lo, hi = make_params(C, device, k=3)
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(b)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("strength", torch.ones(batch, device=device))
        self.register_buffer("index", torch.zeros(batch, dtype=torch.int64, device=device))

    def forward(self, x):
        return af.ops.group_norm_transport(
            self.conv(x), 2, self.norm.weight, self.norm.bias, self.weight, self.bias, self.strength, self.lo, self.hi,
            eps=self.norm.eps, map_index=self.index,
        )


def test_compile_no_recompile_when_strength_or_map_index_changes(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = GroupNormSteer(6, 2, device)
    x = torch.randn(2, 6, 4, 5, device=device)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    outputs = []
    with torch.no_grad():
        for index, strength in (([0, 0], 1.0), ([2, 1], 1.0), ([2, 1], 0.25)):
            module.index.copy_(torch.tensor(index))
            module.strength.fill_(strength)
            outputs.append(compiled(x))
            assert_close(outputs[-1], module(x))
    assert counter.frame_count == 1
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
    assert torch.ops.act_fast.group_norm_transport.default in {n.target for n in counter.graphs[0].graph.nodes}


def test_compile_aot_eager_forward_and_backward(device):
    torch._dynamo.reset()
    module = GroupNormSteer(6, 2, device)
    module.index.copy_(torch.tensor([1, 2]))
    x = torch.randn(2, 6, 3, 3, device=device)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    gw, gx_w = torch.autograd.grad(y.square().sum(), (module.weight, module.conv.weight))
    y_eager = module(x)
    gw_eager, gx_w_eager = torch.autograd.grad(y_eager.square().sum(), (module.weight, module.conv.weight))
    assert_close(y, y_eager)
    assert_close(gw, gw_eager)
    assert_close(gx_w, gx_w_eager)
    assert not gw[0].any() and gw[1:].abs().sum() > 0  # map 0 unused


def bad_inputs(device):
    x = torch.randn(2, 6, 3, 3, device=device)
    one, zero = torch.ones(6, device=device), torch.zeros(6, device=device)
    ok = dict(x=x, G=3, nw=one, nb=zero, w=one, b=zero, lo=None, hi=None, eps=1e-5, pool=True, index=None)
    return ok, {
        "groups_not_divisor": (ValueError, dict(G=4), r"num_groups must be a positive divisor of the 6 channels of x \[2, 6, 3, 3\], got 4"),
        "groups_zero": (ValueError, dict(G=0), r"num_groups must be a positive divisor"),
        "groups_float": (TypeError, dict(G=3.0), r"num_groups must be an int, got float"),
        "no_spatial_dim": (ValueError, dict(x=torch.randn(2, 6)), r"x must be conv features \[B, C, \*spatial\] .* got shape \[2, 6\]"),
        "norm_weight_shape": (ValueError, dict(nw=torch.ones(5)), r"norm_weight must have shape \[6\].*got \[5\]"),
        "weight_channels": (ValueError, dict(w=torch.ones(3)), r"weight must have shape \[6\].*got \[3\]"),
        "matrix_without_index": (ValueError, dict(w=torch.ones(2, 6)), r"weight must have shape \[6\].*pass map_index"),
        "index_rows": (ValueError, dict(w=torch.ones(2, 6), b=torch.zeros(2, 6), index=torch.tensor([0, 1, 1])), r"per-row map_index must have shape \[2\]"),
        "index_dtype": (TypeError, dict(w=torch.ones(2, 6), b=torch.zeros(2, 6), index=torch.tensor(1.0)), r"map_index must be an int32 or int64 tensor"),
        "lo_without_hi": (ValueError, dict(lo=torch.zeros(6)), r"lo and hi must be given together"),
        "negative_eps": (ValueError, dict(eps=-1.0), r"eps must be a finite non-negative number"),
        "pool_not_bool": (TypeError, dict(pool="yes"), r"pool_spatial must be a bool, got str"),
        "integer_x": (TypeError, dict(x=torch.ones(2, 6, 3, dtype=torch.int64)), r"x must be a floating-point tensor"),
    }


@pytest.mark.parametrize("case", list(bad_inputs("cpu")[1]))
def test_bad_input_errors(case, device):
    ok, cases = bad_inputs(device)
    error, change, message = cases[case]
    a = {**ok, **change}
    with pytest.raises(error, match=message):
        af.ops.group_norm_transport(
            a["x"], a["G"], a["nw"], a["nb"], a["w"], a["b"], 0.5, a["lo"], a["hi"], eps=a["eps"], pool_spatial=a["pool"], map_index=a["index"]
        )
