"""affine_transport: Triton kernel vs the pure-torch reference, the math itself, the custom-op
contract (opcheck, gradients, torch.compile) and input errors."""

import pytest
import torch
from tolerances import ALL_DTYPES, assert_close

import act_fast as af
from act_fast.ops import set_backend
from act_fast.ops.reference import affine_transport_ref
from act_fast.ops.transport import PLANE_SINGLE_TILE, affine_transport_triton

ROW_SHAPES = [(1, 1), (1, 7), (5, 1), (3, 13), (2, 5, 67), (2, 3, 4, 17), (2, 1031)]
PLANE_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 5, 1, 13), (2, 4, 9)]
STRENGTHS = ["float", "0d", "per_row"]


def make_map(C: int, device: str, support: bool, dtype=torch.float32):
    w = torch.randn(C, device=device, dtype=dtype)
    b = torch.randn(C, device=device, dtype=dtype)
    if not support:
        return w, b, None, None
    lo = -0.5 + 0.1 * torch.randn(C, device=device, dtype=dtype)
    hi = 0.7 + 0.1 * torch.randn(C, device=device, dtype=dtype)
    return w, b, lo, hi


def make_strength(kind: str, batch: int, device: str):
    """``(strength for the public API and the reference, (tensor, scalar) for the launcher)``."""
    if kind == "float":
        return 0.7, (None, 0.7)
    s = torch.tensor(0.3, device=device) if kind == "0d" else 2.0 * torch.rand(batch, device=device) - 0.5
    return s, (s, 0.0)


def run_kernel(x, w, b, strength_args, lo, hi, channel_dim, pool_spatial):
    """The launcher with a NaN-poisoned output buffer, so an unwritten element cannot pass."""
    out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)
    y = affine_transport_triton(x, w, b, strength_args[0], strength_args[1], lo, hi, None, channel_dim % x.ndim, pool_spatial, out=out)
    assert y.data_ptr() == out.data_ptr()
    return y


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rows_kernel_matches_reference(shape, dtype, strength, support, device):
    x = (torch.randn(shape, device=device) * 1.5).to(dtype)
    w, b, lo, hi = make_map(shape[-1], device, support)
    s, s_args = make_strength(strength, shape[0], device)
    y = run_kernel(x, w, b, s_args, lo, hi, -1, False)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, affine_transport_ref(x, w, b, s, lo, hi))


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", PLANE_SHAPES)
def test_planes_kernel_matches_reference(shape, dtype, strength, pool, support, device):
    x = (torch.randn(shape, device=device) + 0.3 * torch.randn(shape[:2] + (1,) * (len(shape) - 2), device=device)).to(dtype)
    w, b, lo, hi = make_map(shape[1], device, support)
    s, s_args = make_strength(strength, shape[0], device)
    y = run_kernel(x, w, b, s_args, lo, hi, 1, pool)
    assert_close(y, affine_transport_ref(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool))


@pytest.mark.parametrize("pool", [False, True])
def test_planes_kernel_large_plane_two_pass(pool, device):
    """A plane larger than the register tile takes the loop path (reduce, then write)."""
    side = int(PLANE_SINGLE_TILE**0.5) + 1
    x = torch.randn(2, 2, side, side, device=device, dtype=torch.bfloat16)
    w, b, lo, hi = make_map(2, device, support=True)
    lo, hi = lo - 1.0, hi  # keep both planes' means inside for one channel at least
    s = torch.tensor([0.4, 1.2], device=device)
    y = run_kernel(x, w, b, (s, 0.0), lo, hi, 1, pool)
    assert_close(y, affine_transport_ref(x, w, b, s, lo, hi, channel_dim=1, pool_spatial=pool))


def test_rows_kernel_non_contiguous(device):
    base = torch.randn(9, 6, 11, device=device, dtype=torch.float16)
    views = [
        base[:, :, 3],  # [9, 6], channel stride 11: read in place through strides
        base[::2].transpose(1, 2),  # [5, 11, 6]: leading dims do not collapse, reshaped first
        base.transpose(0, 2)[::3],  # [4, 6, 9]
    ]
    for x in views:
        assert not x.is_contiguous()
        w, b, lo, hi = make_map(x.shape[-1], device, support=True)
        s = torch.rand(x.shape[0], device=device)
        assert_close(run_kernel(x, w, b, (s, 0.0), lo, hi, -1, False), affine_transport_ref(x, w, b, s, lo, hi))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_support_edges_are_excluded(dtype, device):
    """``lo < x < hi`` is strict: values exactly on an edge stay untouched, bit for bit."""
    lo = torch.tensor([-1.0, 0.0, 0.5], device=device)
    hi = torch.tensor([1.0, 0.25, 2.0], device=device)
    x = torch.tensor([[-1.0, 0.0, 0.5], [1.0, 0.25, 2.0], [0.5, 0.125, 1.0]], device=device, dtype=dtype)
    w = torch.full((3,), 2.0, device=device)
    b = torch.full((3,), 1.0, device=device)
    for y in (run_kernel(x, w, b, (None, 1.0), lo, hi, -1, False), affine_transport_ref(x, w, b, 1.0, lo, hi)):
        assert torch.equal(y[:2], x[:2])
        assert torch.equal(y[2], (2.0 * x[2].double() + 1.0).to(dtype))


@pytest.mark.parametrize("pool", [False, True])
def test_plane_support_edges_use_the_mean(pool, device):
    """Constant planes whose mean sits exactly on an edge are untouched; one just inside is not."""
    lo = torch.tensor([0.5, 0.5], device=device)
    hi = torch.tensor([1.5, 1.5], device=device)
    x = torch.ones(1, 2, 3, 5, device=device)
    x[0, 0] = 0.5  # mean == lo
    w, b = torch.full((2,), 3.0, device=device), torch.full((2,), 0.25, device=device)
    for y in (run_kernel(x, w, b, (None, 1.0), lo, hi, 1, pool), affine_transport_ref(x, w, b, 1.0, lo, hi, channel_dim=1, pool_spatial=pool)):
        assert torch.equal(y[0, 0], x[0, 0])
        assert torch.equal(y[0, 1], torch.full_like(x[0, 1], 3.25))


@pytest.mark.parametrize("backend", ["torch", "triton"])
class TestSemantics:
    """The map of docs/design.md §1, through the public op on both backends."""

    @pytest.fixture(autouse=True)
    def _backend(self, backend):
        previous = set_backend(backend)
        yield
        set_backend(previous)

    def test_zero_strength_is_identity(self, backend, device):
        x = torch.randn(4, 9, device=device, dtype=torch.bfloat16)
        w, b, _, _ = make_map(9, device, False)
        assert torch.equal(af.ops.affine_transport(x, w, b, 0.0), x)

    def test_full_strength_is_the_affine_map(self, backend, device):
        x = torch.randn(4, 9, device=device, dtype=torch.float64)
        w, b, _, _ = make_map(9, device, False, dtype=torch.float64)
        torch.testing.assert_close(af.ops.affine_transport(x, w, b, 1.0), w * x + b)

    def test_extrapolation(self, backend, device):
        x = torch.randn(4, 9, device=device, dtype=torch.float64)
        w, b, _, _ = make_map(9, device, False, dtype=torch.float64)
        torch.testing.assert_close(af.ops.affine_transport(x, w, b, -1.5), x - 1.5 * (w * x + b - x))

    def test_per_row_strength_equals_rows_one_by_one(self, backend, device):
        x = torch.randn(3, 5, 7, device=device)
        w, b, lo, hi = make_map(7, device, True)
        s = torch.tensor([0.0, 0.5, 2.0], device=device)
        y = af.ops.affine_transport(x, w, b, s, lo, hi)
        for i in range(3):
            assert_close(y[i], af.ops.affine_transport(x[i], w, b, float(s[i]), lo, hi))

    def test_pool_spatial_shifts_every_pixel_by_the_pooled_delta(self, backend, device):
        x = torch.randn(2, 3, 4, 5, device=device, dtype=torch.float64)
        w, b, _, _ = make_map(3, device, False, dtype=torch.float64)
        y = af.ops.affine_transport(x, w, b, 0.6, channel_dim=1, pool_spatial=True)
        m = x.mean(dim=(2, 3), keepdim=True)
        expected = 0.6 * ((w.view(1, 3, 1, 1) - 1.0) * m + b.view(1, 3, 1, 1))
        torch.testing.assert_close(y - x, expected.expand_as(x))

    def test_channel_dim_one_without_pooling_is_per_pixel(self, backend, device):
        x = torch.randn(2, 3, 4, 5, device=device, dtype=torch.float64)
        w, b, _, _ = make_map(3, device, False, dtype=torch.float64)
        y = af.ops.affine_transport(x, w, b, 1.0, channel_dim=1)
        torch.testing.assert_close(y, w.view(1, 3, 1, 1) * x + b.view(1, 3, 1, 1))

    def test_dtype_preserved(self, backend, device):
        for dtype in ALL_DTYPES:
            x = torch.randn(2, 5, device=device, dtype=dtype)
            w, b, lo, hi = make_map(5, device, True)
            y = af.ops.affine_transport(x, w, b, 0.5, lo, hi)
            assert y.dtype == dtype
            assert_close(y, affine_transport_ref(x, w, b, 0.5, lo, hi))

    def test_map_vectors_in_other_float_dtypes(self, backend, device):
        x = torch.randn(2, 5, device=device, dtype=torch.bfloat16)
        w, b, lo, hi = make_map(5, device, True, dtype=torch.bfloat16)
        assert_close(af.ops.affine_transport(x, w, b, 0.5, lo, hi), affine_transport_ref(x, w, b, 0.5, lo, hi))


OPCHECK_CASES = [
    ((3, 4, 6), -1, False, "float", False),
    ((3, 4, 6), -1, False, "per_row", True),
    ((5, 6), -1, False, "0d", True),
    ((2, 6, 3, 5), 1, True, "per_row", True),
    ((2, 6, 3, 5), 1, False, "0d", False),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape,channel_dim,pool,strength,support", OPCHECK_CASES)
def test_opcheck(shape, channel_dim, pool, strength, support, backend, device):
    previous = set_backend(backend)
    try:
        x = torch.randn(shape, device=device, requires_grad=True)
        w, b, lo, hi = make_map(shape[channel_dim], device, support)
        w.requires_grad_(), b.requires_grad_()
        _, (s, scalar) = make_strength(strength, shape[0], device)
        args = (x, w, b, s, scalar, lo, hi, None, channel_dim % len(shape), pool)
        torch.library.opcheck(torch.ops.act_fast.affine_transport.default, args)
    finally:
        set_backend(previous)


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("layout", ["rows", "planes_pool", "planes"])
def test_gradcheck_float64(layout, support, device):
    shape, channel_dim, pool = {"rows": ((3, 4, 5), -1, False), "planes_pool": ((2, 5, 3, 2), 1, True), "planes": ((2, 5, 3, 2), 1, False)}[layout]
    kw = dict(dtype=torch.float64, device=device)
    x = torch.randn(shape, **kw, requires_grad=True)
    w = torch.randn(5, **kw, requires_grad=True)
    b = torch.randn(5, **kw, requires_grad=True)
    s = torch.rand(shape[0], **kw, requires_grad=True)
    lo, hi = (torch.full((5,), -0.6, **kw), torch.full((5,), 0.6, **kw)) if support else (None, None)
    fn = lambda x, w, b, s: af.ops.affine_transport(x, w, b, s, lo, hi, channel_dim=channel_dim, pool_spatial=pool)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b, s))
    s0 = torch.tensor(0.8, **kw, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w, b, s0))


def test_gradcheck_one_dim_input(device):
    """``x: [C]`` (no batch dim): the map's gradients are the per-channel products, not a sum."""
    kw = dict(dtype=torch.float64, device=device)
    x, w, b = (torch.randn(6, **kw, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda x, w, b: af.ops.affine_transport(x, w, b, 0.7), (x, w, b))


def test_gradient_is_identity_outside_the_support(device):
    x = torch.tensor([[-2.0, 0.0, 2.0]], device=device, requires_grad=True)
    w = torch.full((3,), 3.0, device=device, requires_grad=True)
    b = torch.ones(3, device=device, requires_grad=True)
    lo, hi = torch.full((3,), -1.0, device=device), torch.full((3,), 1.0, device=device)
    af.ops.affine_transport(x, w, b, 0.5, lo, hi).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0, 1.0]]
    assert w.grad.tolist() == [0.0, 0.0, 0.0]
    assert b.grad.tolist() == [0.0, 0.5, 0.0]


class SteeredLinear(torch.nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.lin = torch.nn.Linear(C, C)
        self.register_buffer("w", torch.randn(C))
        self.register_buffer("b", torch.randn(C))
        self.register_buffer("lo", torch.full((C,), -1.0))
        self.register_buffer("hi", torch.full((C,), 1.0))
        self.register_buffer("strength", torch.tensor(0.5))

    def forward(self, x):
        return torch.relu(af.ops.affine_transport(self.lin(x), self.w, self.b, self.strength, self.lo, self.hi))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_one_graph_no_recompile_on_strength_change(backend, device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = SteeredLinear(8).to(device)
    x = torch.randn(3, 8, device=device)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for value in (0.5, 0.9, -0.3):
        model.strength.fill_(value)
        torch.testing.assert_close(compiled(x), model(x))
    assert counter.frame_count == 1


def test_compiled_training_step_gets_map_gradients(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x = torch.randn(2, 3, 6, device=device)
    w = torch.ones(6, device=device, requires_grad=True)
    b = torch.zeros(6, device=device, requires_grad=True)
    counter = CompileCounterWithBackend("aot_eager")
    loss_fn = torch.compile(lambda x, w, b: af.ops.affine_transport(x, w, b, 1.0).pow(2).sum(), fullgraph=True, backend=counter)
    loss_fn(x, w, b).backward()
    torch.testing.assert_close(w.grad, (2 * x * x).sum(dim=(0, 1)))
    torch.testing.assert_close(b.grad, (2 * x).sum(dim=(0, 1)))
    assert counter.frame_count == 1


class TestBadInput:
    def test_channel_mismatch(self, device):
        with pytest.raises(ValueError, match=r"weight must have shape \[6\].*got \[5\]"):
            af.ops.affine_transport(torch.randn(2, 6, device=device), torch.ones(5, device=device), torch.zeros(6, device=device), 1.0)

    def test_bias_mismatch_conv(self, device):
        with pytest.raises(ValueError, match=r"bias must have shape \[3\]"):
            af.ops.affine_transport(torch.randn(2, 3, 4, 4, device=device), torch.ones(3, device=device), torch.zeros(4, device=device), 1.0, channel_dim=1)

    def test_strength_rows_vs_batch(self, device):
        with pytest.raises(ValueError, match=r"per-row strength must have shape \[2\].*got \[3\]"):
            af.ops.affine_transport(torch.randn(2, 5, 6, device=device), torch.ones(6, device=device), torch.zeros(6, device=device), torch.ones(3, device=device))

    def test_strength_wrong_type(self, device):
        with pytest.raises(TypeError, match="strength must be a number"):
            af.ops.affine_transport(torch.randn(2, 6, device=device), torch.ones(6, device=device), torch.zeros(6, device=device), "strong")
        with pytest.raises(TypeError, match="strength tensor must be floating-point"):
            af.ops.affine_transport(torch.randn(2, 6, device=device), torch.ones(6, device=device), torch.zeros(6, device=device), torch.ones(2, dtype=torch.int64, device=device))

    def test_support_shape_and_pairing(self, device):
        x, w, b = torch.randn(2, 6, device=device), torch.ones(6, device=device), torch.zeros(6, device=device)
        with pytest.raises(ValueError, match=r"lo must have shape \[6\].*got \[2, 6\]"):
            af.ops.affine_transport(x, w, b, 1.0, torch.zeros(2, 6, device=device), torch.ones(2, 6, device=device))
        with pytest.raises(ValueError, match="lo and hi must be given together"):
            af.ops.affine_transport(x, w, b, 1.0, torch.zeros(6, device=device), None)

    def test_integer_input(self, device):
        with pytest.raises(TypeError, match="x must be a floating-point tensor.*int64"):
            af.ops.affine_transport(torch.ones(2, 6, dtype=torch.int64, device=device), torch.ones(6, device=device), torch.zeros(6, device=device), 1.0)
        with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
            af.ops.affine_transport(torch.ones(2, 6, device=device), torch.ones(6, dtype=torch.int32, device=device), torch.zeros(6, device=device), 1.0)

    def test_device_mismatch(self):
        x = torch.randn(2, 6, device="meta")
        with pytest.raises(ValueError, match="weight is on cpu but x is on meta"):
            af.ops.affine_transport(x, torch.ones(6), torch.zeros(6), 1.0)

    def test_nan_in_map(self, device):
        x, w, b = torch.randn(2, 6, device=device), torch.ones(6, device=device), torch.zeros(6, device=device)
        af.ops.affine_transport(x, w, b, 1.0)
        b[4] = float("nan")  # in-place change after a checked call is caught (version bump)
        with pytest.raises(ValueError, match=r"bias \(shape \[\d+\]\) holds NaN or Inf at channels \[4\]"):
            af.ops.affine_transport(x, w, b, 1.0)
        with pytest.raises(ValueError, match=r"weight \(shape \[6\]\) holds NaN or Inf"):
            af.ops.affine_transport(x, torch.full((6,), float("inf"), device=device), torch.zeros(6, device=device), 1.0)

    def test_channel_dim_and_pooling(self, device):
        x, w, b = torch.randn(2, 3, 4, 5, device=device), torch.ones(3, device=device), torch.zeros(3, device=device)
        with pytest.raises(ValueError, match="channel_dim must be the last dim .* or 1"):
            af.ops.affine_transport(x, torch.ones(4, device=device), torch.zeros(4, device=device), 1.0, channel_dim=2)
        with pytest.raises(ValueError, match="pool_spatial=True needs conv features"):
            af.ops.affine_transport(x, torch.ones(5, device=device), torch.zeros(5, device=device), 1.0, pool_spatial=True)
        with pytest.raises(ValueError, match=r"channel_dim must be an int in \[-4, 3\]"):
            af.ops.affine_transport(x, w, b, 1.0, channel_dim=7)
