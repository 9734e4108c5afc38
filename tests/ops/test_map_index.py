"""Several maps per site, one chosen per batch row (``map_index``), in affine_transport,
rms_norm_transport and layer_norm_transport: kernels vs the reference, the reference vs one map
at a time, gradients into ``[K, C]`` maps, the custom-op contract and input errors."""

import pytest
import torch
from tolerances import ALL_DTYPES, assert_close

import act_fast as af
from act_fast.ops import set_backend
from act_fast.ops.norm_transport import norm_transport_triton
from act_fast.ops.reference import affine_transport_ref, layer_norm_transport_ref, rms_norm_transport_ref
from act_fast.ops.transport import affine_transport_triton

K = 4
# (kind, dtype): one map for every row (0-d) or one per batch row ([B]), int32 and int64
INDEX_KINDS = [("0d", torch.int32), ("per_row", torch.int32), ("per_row", torch.int64)]
INDEX_IDS = [f"{kind}-{str(dt)[6:]}" for kind, dt in INDEX_KINDS]


@pytest.fixture
def triton_backend():
    previous = set_backend("triton")
    yield
    set_backend(previous)


def make_maps(C: int, device: str, support: bool, k: int = K, dtype=torch.float32):
    """``[K, C]`` maps far apart from each other, so a row given the wrong map cannot pass."""
    w = (torch.arange(k, device=device, dtype=dtype)[:, None] + 0.5 + 0.2 * torch.randn(k, C, device=device, dtype=dtype))
    b = torch.randn(k, C, device=device, dtype=dtype) + torch.arange(k, device=device, dtype=dtype)[:, None]
    if not support:
        return w, b, None, None
    lo = -0.5 + 0.1 * torch.randn(k, C, device=device, dtype=dtype) - 0.3 * torch.arange(k, device=device, dtype=dtype)[:, None]
    hi = 0.7 + 0.1 * torch.randn(k, C, device=device, dtype=dtype)
    return w, b, lo, hi


def make_index(kind: str, dtype: torch.dtype, batch: int, device: str, k: int = K) -> torch.Tensor:
    if kind == "0d":
        return torch.tensor(k - 2, dtype=dtype, device=device)
    # every map used when there are enough rows, the last one twice, and never sorted
    return ((torch.arange(batch, device=device) * 3 + 1) % k).to(dtype)


def make_strength(kind: str, batch: int, device: str):
    """``(strength for the public API / the reference, (tensor, scalar) for a launcher)``."""
    if kind == "float":
        return 0.7, (None, 0.7)
    s = torch.tensor(0.3, device=device) if kind == "0d" else 2.0 * torch.rand(batch, device=device) - 0.5
    return s, (s, 0.0)


def rows_of(index: torch.Tensor, batch: int) -> list[int]:
    return [int(index)] * batch if index.ndim == 0 else index.tolist()


def run_transport_kernel(x, w, b, s_args, lo, hi, channel_dim, pool, index):
    out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)
    y = affine_transport_triton(x, w, b, s_args[0], s_args[1], lo, hi, index, channel_dim % x.ndim, pool, out=out)
    assert y.data_ptr() == out.data_ptr()
    return y


# (shape, strength); the last is one row, the one before channels-last 4-D
ROW_CASES = [((3, 13), "per_row"), ((2, 5, 67), "float"), ((5, 1), "0d"), ((2, 3, 4, 17), "per_row"), ((1, 1031), "per_row")]


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("index_kind,index_dtype", INDEX_KINDS, ids=INDEX_IDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape,strength", ROW_CASES)
def test_rows_kernel_matches_reference(shape, strength, dtype, index_kind, index_dtype, support, device):
    x = (torch.randn(shape, device=device) * 1.5).to(dtype)
    w, b, lo, hi = make_maps(shape[-1], device, support)
    s, s_args = make_strength(strength, shape[0], device)
    index = make_index(index_kind, index_dtype, shape[0], device)
    y = run_transport_kernel(x, w, b, s_args, lo, hi, -1, False, index)
    assert_close(y, affine_transport_ref(x, w, b, s, lo, hi, map_index=index))


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("index_kind,index_dtype", INDEX_KINDS, ids=INDEX_IDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (1, 3, 1, 1), (2, 7, 11)])
def test_planes_kernel_matches_reference(shape, dtype, index_kind, index_dtype, pool, device):
    x = (torch.randn(shape, device=device) + 0.3 * torch.randn(shape[:2] + (1,) * (len(shape) - 2), device=device)).to(dtype)
    w, b, lo, hi = make_maps(shape[1], device, support=True)
    s, s_args = make_strength("per_row", shape[0], device)
    index = make_index(index_kind, index_dtype, shape[0], device)
    y = run_transport_kernel(x, w, b, s_args, lo, hi, 1, pool, index)
    assert_close(y, affine_transport_ref(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool, map_index=index))


def test_one_dim_input_with_a_0d_index(device):
    x = torch.randn(29, device=device, dtype=torch.bfloat16)
    w, b, lo, hi = make_maps(29, device, support=True)
    index = torch.tensor(3, device=device)
    expected = affine_transport_ref(x, w[3], b[3], 0.8, lo[3], hi[3])
    assert_close(run_transport_kernel(x, w, b, (None, 0.8), lo, hi, -1, False, index), expected)
    assert_close(affine_transport_ref(x, w, b, 0.8, lo, hi, map_index=index), expected)


# (layout, pool): channels-last rows [B, T, C], and [B, C, H, W] planes with and without pooling
LAYOUTS = {"rows": ((3, 4, 10), -1, False), "planes": ((3, 10, 2, 3), 1, False), "planes_pool": ((3, 10, 2, 3), 1, True)}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_row_equals_its_map_alone(layout, backend, device):
    """Row ``b`` of a mixed batch is the op run on ``x[b]`` with the single map ``[C]`` of
    ``map_index[b]`` and ``λ[b]`` (the definition of per-request steering)."""
    shape, channel_dim, pool = LAYOUTS[layout]
    x = torch.randn(shape, device=device, dtype=torch.float64)
    w, b, lo, hi = make_maps(10, device, support=True, dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, -0.25], device=device, dtype=torch.float64)
    index = torch.tensor([2, 0, 2], device=device)
    previous = set_backend(backend)
    try:
        y = af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool, map_index=index)
        for i, k in enumerate(index.tolist()):
            alone = af.ops.affine_transport(
                x[i : i + 1], w[k], b[k], s[i : i + 1], lo[k], hi[k], channel_dim=channel_dim, pool_spatial=pool
            )
            torch.testing.assert_close(y[i : i + 1], alone, rtol=1e-12, atol=1e-12)
        other = af.ops.affine_transport(x, w[2], b[2], s, lo[2], hi[2], channel_dim=channel_dim, pool_spatial=pool)
        assert not torch.allclose(y[1], other[1])  # row 1 uses map 0, not map 2
        # a 0-d index is that map for every row
        y0 = af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool, map_index=torch.tensor(1, device=device))
        torch.testing.assert_close(y0, af.ops.affine_transport(x, w[1], b[1], s, lo[1], hi[1], channel_dim=channel_dim, pool_spatial=pool))
    finally:
        set_backend(previous)


NORMS = ["rms", "layer"]


def norm_reference(norm, x, nw, nb, w, b, s, lo, hi, index, eps=1e-5, offset=0.0):
    if norm == "rms":
        return rms_norm_transport_ref(x, nw, w, b, s, lo, hi, eps=eps, weight_offset=offset, map_index=index)
    return layer_norm_transport_ref(x, nw, nb, w, b, s, lo, hi, eps=eps, map_index=index)


def norm_public(norm, x, nw, nb, w, b, s, lo, hi, index, eps=1e-5, offset=0.0):
    if norm == "rms":
        return af.ops.rms_norm_transport(x, nw, w, b, s, lo, hi, eps=eps, weight_offset=offset, map_index=index)
    return af.ops.layer_norm_transport(x, nw, nb, w, b, s, lo, hi, eps=eps, map_index=index)


def norm_params(C, device, norm, dtype=torch.float32):
    nw = (0.5 + torch.rand(C, device=device)).to(dtype)
    nb = (0.2 * torch.randn(C, device=device)).to(dtype) if norm == "layer" else None
    return nw, nb


# (shape, strength, max_single_tile_c): 3-D, one row, C not a power of two, chunked rows, 1-D
NORM_CASES = {
    "3d": ((3, 5, 24), "per_row", None),
    "one_row": ((1, 67), "float", None),
    "chunked": ((3, 2, 37), "per_row", 16),
}


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("index_kind,index_dtype", [("0d", torch.int64), ("per_row", torch.int32)], ids=["0d-int64", "per_row-int32"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("case", list(NORM_CASES))
@pytest.mark.parametrize("norm", NORMS)
def test_norm_kernel_matches_reference(norm, case, dtype, index_kind, index_dtype, support, device):
    shape, strength, max_tile = NORM_CASES[case]
    x = (1.5 * torch.randn(shape, device=device) + 0.3).to(dtype)
    nw, nb = norm_params(shape[-1], device, norm)
    w, b, lo, hi = make_maps(shape[-1], device, support)
    s, (s_tensor, s_scalar) = make_strength(strength, shape[0], device)
    index = make_index(index_kind, index_dtype, shape[0], device)
    out = torch.full(x.shape, float("nan"), dtype=dtype, device=device)
    kwargs = {} if max_tile is None else {"max_single_tile_c": max_tile}
    y = norm_transport_triton(
        x, nw, nb, w, b, s_tensor, s_scalar, lo, hi, index, rms=norm == "rms", eps=1e-5,
        weight_offset=1.0 if norm == "rms" else 0.0, out=out, **kwargs,
    )
    assert_close(y, norm_reference(norm, x, nw, nb, w, b, s, lo, hi, index, offset=1.0 if norm == "rms" else 0.0))


@pytest.mark.parametrize("norm", NORMS)
def test_norm_one_dim_input_with_a_0d_index(norm, device, triton_backend):
    x = torch.randn(19, device=device)
    nw, nb = norm_params(19, device, norm)
    w, b, lo, hi = make_maps(19, device, support=True)
    index = torch.tensor(2, device=device, dtype=torch.int32)
    y = norm_public(norm, x, nw, nb, w, b, 0.6, lo, hi, index)
    assert_close(y, norm_reference(norm, x, nw, nb, w[2], b[2], 0.6, lo[2], hi[2], None))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm", NORMS)
def test_norm_each_row_equals_its_map_alone(norm, backend, device):
    x = torch.randn(3, 4, 9, device=device, dtype=torch.float64)
    nw, nb = norm_params(9, device, norm, torch.float64)
    w, b, lo, hi = make_maps(9, device, support=True, dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 2.0], device=device, dtype=torch.float64)
    index = torch.tensor([3, 1, 3], device=device)
    previous = set_backend(backend)
    try:
        y = norm_public(norm, x, nw, nb, w, b, s, lo, hi, index)
        for i, k in enumerate(index.tolist()):
            alone = norm_public(norm, x[i], nw, nb, w[k], b[k], float(s[i]), lo[k], hi[k], None)
            torch.testing.assert_close(y[i], alone, rtol=1e-12, atol=1e-12)
    finally:
        set_backend(previous)


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("index_kind", ["0d", "per_row"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_transport_gradients_match_the_reference(layout, index_kind, backend, device):
    """``[K, C]`` gradients accumulate over the rows that used each map (index_add); unused maps
    get zeros. The reference (gather, then the map) is differentiated by autograd."""
    shape, channel_dim, pool = LAYOUTS[layout]
    x0 = torch.randn(shape, device=device, dtype=torch.float64)
    maps = make_maps(10, device, support=False, dtype=torch.float64)[:2]
    s0 = torch.rand(shape[0], device=device, dtype=torch.float64)
    index = make_index(index_kind, torch.int64, shape[0], device) if index_kind == "0d" else torch.tensor([2, 0, 2], device=device)
    g = torch.randn(shape, device=device, dtype=torch.float64)
    grads = []
    for fn in (af.ops.affine_transport, affine_transport_ref):
        previous = set_backend(backend)
        try:
            x, w, b, s = leaves(x0, *maps, s0)
            y = fn(x, w, b, s, channel_dim=channel_dim, pool_spatial=pool, map_index=index)
            grads.append(torch.autograd.grad((y * g).sum(), (x, w, b, s)))
        finally:
            set_backend(previous)
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)
    gw = grads[0][1]
    unused = sorted(set(range(K)) - set(rows_of(index, shape[0])))
    assert unused and not gw[unused].any() and gw[rows_of(index, shape[0])].abs().sum() > 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_transport_gradcheck_float64(layout, device):
    shape, channel_dim, pool = LAYOUTS[layout]
    kw = dict(dtype=torch.float64, device=device)
    x = torch.randn(shape, **kw, requires_grad=True)
    w, b = (t.requires_grad_() for t in make_maps(10, device, support=False, k=3, dtype=torch.float64)[:2])
    s = torch.rand(shape[0], **kw, requires_grad=True)
    index = torch.tensor([1, 0, 1], device=device, dtype=torch.int32)
    lo, hi = torch.full((3, 10), -0.6, **kw), torch.full((3, 10), 0.6, **kw)
    lo[1] = -10.0  # map 1 transports everything, the others only inside (-0.6, 0.6)
    fn = lambda x, w, b, s: af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool, map_index=index)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b, s))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm", NORMS)
def test_norm_gradcheck_float64(norm, backend, device):
    x = torch.randn(3, 2, 7, device=device, dtype=torch.float64, requires_grad=True)
    nw, nb = (None if t is None else t.requires_grad_() for t in norm_params(7, device, norm, torch.float64))
    w, b = (t.requires_grad_() for t in make_maps(7, device, support=False, k=3, dtype=torch.float64)[:2])
    s = torch.rand(3, device=device, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([2, 2, 0], device=device)
    ts = [t for t in (x, nw, nb, w, b, s) if t is not None]

    def fn(*tensors):
        it = iter(tensors)
        xx, nww = next(it), next(it)
        nbb = next(it) if nb is not None else None
        return norm_public(norm, xx, nww, nbb, next(it), next(it), next(it), None, None, index, offset=1.0 if norm == "rms" else 0.0)

    previous = set_backend(backend)
    try:
        assert torch.autograd.gradcheck(fn, tuple(ts), eps=1e-6, atol=1e-7)
    finally:
        set_backend(previous)


OPCHECK_CASES = [
    ((3, 4, 6), -1, False, "per_row", "per_row", True),
    ((5, 6), -1, False, "float", "0d", False),
    ((3, 6, 3, 5), 1, True, "per_row", "per_row", True),
    ((3, 6, 3, 5), 1, False, "0d", "0d", True),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape,channel_dim,pool,strength,index_kind,support", OPCHECK_CASES)
def test_opcheck_transport(shape, channel_dim, pool, strength, index_kind, support, backend, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    w, b, lo, hi = make_maps(shape[channel_dim], device, support)
    w.requires_grad_(), b.requires_grad_()
    _, (s, scalar) = make_strength(strength, shape[0], device)
    index = make_index(index_kind, torch.int32, shape[0], device)
    previous = set_backend(backend)
    try:
        torch.library.opcheck(
            torch.ops.act_fast.affine_transport.default, (x, w, b, s, scalar, lo, hi, index, channel_dim % len(shape), pool)
        )
    finally:
        set_backend(previous)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("index_kind", ["0d", "per_row"])
@pytest.mark.parametrize("norm", NORMS)
def test_opcheck_norms(norm, index_kind, backend, device):
    x = torch.randn(3, 2, 7, device=device, requires_grad=True)
    nw, nb = (None if t is None else t.requires_grad_() for t in norm_params(7, device, norm))
    w, b, lo, hi = make_maps(7, device, support=True)
    w.requires_grad_(), b.requires_grad_()
    s = torch.rand(3, device=device, requires_grad=True)
    index = make_index(index_kind, torch.int64, 3, device)
    if norm == "rms":
        op, args = torch.ops.act_fast.rms_norm_transport.default, (x, nw, w, b, s, 0.0, lo, hi, index, 1e-5, 1.0, False)
    else:
        op, args = torch.ops.act_fast.layer_norm_transport.default, (x, nw, nb, w, b, s, 0.0, lo, hi, index, 1e-5)
    previous = set_backend(backend)
    try:
        torch.library.opcheck(op, args)
    finally:
        set_backend(previous)


class PerRequest(torch.nn.Module):
    """A linear layer then a site steered per request: one map index and one λ per batch row."""

    def __init__(self, site: str, C: int, batch: int, device: str):
        super().__init__()
        self.site = site
        self.lin = torch.nn.Linear(C, C, device=device)
        w, b, lo, hi = make_maps(C, device, support=True)
        for name, t in dict(w=w, b=b, lo=lo, hi=hi).items():
            self.register_buffer(name, t)
        nw, nb = norm_params(C, device, "layer")
        self.register_buffer("nw", nw)
        self.register_buffer("nb", nb)
        self.register_buffer("index", torch.zeros(batch, dtype=torch.int32, device=device))
        self.register_buffer("strength", torch.ones(batch, device=device))

    def forward(self, x):
        h = self.lin(x)
        if self.site == "transport":
            return af.ops.affine_transport(h, self.w, self.b, self.strength, self.lo, self.hi, map_index=self.index)
        return norm_public(self.site, h, self.nw, self.nb, self.w, self.b, self.strength, self.lo, self.hi, self.index)


@pytest.mark.parametrize("site", ["transport", "rms", "layer"])
def test_compile_no_recompile_when_map_index_changes(site, device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = PerRequest(site, 12, 3, device)
    x = torch.randn(3, 5, 12, device=device)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    outputs = []
    with torch.no_grad():
        for index, strength in (([0, 0, 0], 1.0), ([3, 1, 2], 1.0), ([2, 2, 0], 0.5)):
            module.index.copy_(torch.tensor(index))
            module.strength.fill_(strength)
            y = compiled(x)
            assert_close(y, module(x))
            outputs.append(y)
    assert counter.frame_count == 1
    assert not torch.allclose(outputs[0], outputs[1])
    op = {"transport": "affine_transport", "rms": "rms_norm_transport", "layer": "layer_norm_transport"}[site]
    assert getattr(torch.ops.act_fast, op).default in {n.target for n in counter.graphs[0].graph.nodes}


def test_compile_no_recompile_when_a_0d_index_changes(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x = torch.randn(3, 8, device=device)
    w, b, lo, hi = make_maps(8, device, support=True)
    index = torch.tensor(0, device=device)
    counter = CompileCounterWithBackend("inductor")
    fn = torch.compile(lambda x, i: af.ops.affine_transport(x, w, b, 0.8, lo, hi, map_index=i), fullgraph=True, backend=counter)
    for k in range(K):
        index.fill_(k)
        assert_close(fn(x, index), affine_transport_ref(x, w[k], b[k], 0.8, lo[k], hi[k]))
    assert counter.frame_count == 1


class TestBadInput:
    def setup_method(self):
        self.x = torch.randn(3, 2, 6)
        self.w, self.b, self.lo, self.hi = make_maps(6, "cpu", support=True)
        self.index = torch.tensor([0, 1, 2])

    def call(self, op, **change):
        a = {**dict(x=self.x, w=self.w, b=self.b, lo=self.lo, hi=self.hi, index=self.index), **change}
        if op == "transport":
            return af.ops.affine_transport(a["x"], a["w"], a["b"], 0.5, a["lo"], a["hi"], map_index=a["index"])
        nw = torch.ones(a["x"].shape[-1])
        return norm_public(op, a["x"], nw, None, a["w"], a["b"], 0.5, a["lo"], a["hi"], a["index"])

    CASES = {
        "float_index": (TypeError, dict(index=torch.tensor([0.0, 1.0, 2.0])), r"map_index must be an int32 or int64 tensor, got torch.float32"),
        "int16_index": (TypeError, dict(index=torch.tensor([0, 1, 2], dtype=torch.int16)), r"map_index must be an int32 or int64 tensor, got torch.int16"),
        "list_index": (TypeError, dict(index=[0, 1, 2]), r"map_index must be None or an int32/int64 tensor, got list"),
        "index_rows": (ValueError, dict(index=torch.tensor([0, 1])), r"per-row map_index must have shape \[3\].*got \[2\]"),
        "index_3d": (ValueError, dict(index=torch.zeros(3, 1, 1, dtype=torch.int64)), r"per-row map_index must have shape \[3\].*got \[3, 1, 1\]"),
        "vector_weight_with_index": (ValueError, dict(w=torch.ones(6)), r"weight must have shape \[K, 6\] with map_index.*got \[6\]"),
        "weight_channels": (ValueError, dict(w=torch.ones(4, 5)), r"weight must have shape \[K, 6\] with map_index.*got \[4, 5\]"),
        "bias_maps": (ValueError, dict(b=torch.zeros(3, 6)), r"bias must have shape \[4, 6\] with map_index.*got \[3, 6\]"),
        "lo_maps": (ValueError, dict(lo=torch.zeros(2, 6)), r"lo must have shape \[4, 6\] with map_index.*got \[2, 6\]"),
        "matrix_without_index": (ValueError, dict(index=None), r"weight must have shape \[6\].*got \[4, 6\]; pass map_index"),
        "nan_in_one_map": (ValueError, dict(b=torch.zeros(4, 6).index_fill_(0, torch.tensor([2]), float("nan"))), r"bias \(shape \[4, 6\]\) holds NaN or Inf at \[map, channel\] entries \[\[2, 0\]"),
    }

    @pytest.mark.parametrize("case", list(CASES))
    @pytest.mark.parametrize("op", ["transport", "rms", "layer"])
    def test_errors(self, op, case):
        error, change, message = self.CASES[case]
        with pytest.raises(error, match=message):
            self.call(op, **change)

    def test_index_device_mismatch(self):
        x = torch.randn(3, 6, device="meta")
        w, b = torch.ones(2, 6, device="meta"), torch.zeros(2, 6, device="meta")
        with pytest.raises(ValueError, match="map_index is on cpu but x is on meta"):
            af.ops.affine_transport(x, w, b, 1.0, map_index=torch.tensor([0, 1, 0]))

    def test_per_row_index_needs_a_batch_dim(self):
        with pytest.raises(ValueError, match=r"per-row map_index must have shape a 0-d tensor \(x has no batch dim\)"):
            af.ops.affine_transport(torch.randn(6), self.w, self.b, 1.0, map_index=torch.tensor([0]))

    def test_out_of_range_index_raises_on_the_torch_path(self):
        with pytest.raises(IndexError, match="out of range"):
            af.ops.affine_transport(self.x, self.w, self.b, 1.0, map_index=torch.tensor([0, 4, 1]))
