"""rms_norm_transport / layer_norm_transport: fused Triton kernel vs the pure-torch reference,
fused vs unfused (norm, then affine_transport), the custom-op contract (opcheck, gradients,
torch.compile) and input errors."""

import pytest
import torch
from tolerances import ALL_DTYPES, assert_close

import act_fast as af
from act_fast.ops import checks, set_backend
from act_fast.ops.norm_transport import MAX_SINGLE_TILE_C, norm_config, norm_transport_triton
from act_fast.ops.reference import layer_norm_ref, layer_norm_transport_ref, rms_norm_ref, rms_norm_transport_ref

NORMS = ["rms", "layer"]


@pytest.fixture
def triton_backend():
    previous = set_backend("triton")
    yield
    set_backend(previous)


def make_x(shape, dtype, device, layout="contiguous"):
    """``x`` of ``shape`` with a non-zero row mean; ``layout`` picks a non-contiguous view."""
    def values(*size):
        return (1.5 * torch.randn(size, device=device) + 0.3).to(dtype)

    if layout == "col_stride":  # every other channel of a wider tensor
        x = values(*shape[:-1], 2 * shape[-1])[..., ::2]
    elif layout == "row_stride":  # rows padded to a longer pitch
        x = values(*shape[:-1], shape[-1] + 5)[..., : shape[-1]]
    elif layout == "transposed":  # leading dims do not collapse: reshape copies
        x = values(shape[1], shape[0], *shape[2:]).transpose(0, 1)
    else:
        x = values(*shape)
    assert x.shape == shape and (layout == "contiguous") == x.is_contiguous()
    return x


def make_params(C, device, norm, norm_weight=True, norm_bias=True, support=True):
    """``(norm_weight, norm_bias, weight, bias, lo, hi)``; ``norm_bias`` is None for RMS."""
    nw = 0.5 + torch.rand(C, device=device) if norm_weight else None
    nb = 0.2 * torch.randn(C, device=device) if norm_bias and norm == "layer" else None
    w = 0.5 + torch.rand(C, device=device)
    b = 0.3 * torch.randn(C, device=device)
    lo = -0.6 + 0.1 * torch.randn(C, device=device) if support else None
    hi = 0.8 + 0.1 * torch.randn(C, device=device) if support else None
    return nw, nb, w, b, lo, hi


def make_strength(kind, batch, device):
    if kind == "float":
        return 0.7
    if kind == "0d":
        return torch.tensor(0.4, device=device)
    return 2.0 * torch.rand(batch, device=device) - 0.5


def reference(norm, x, nw, nb, w, b, s, lo, hi, eps, offset=0.0):
    if norm == "rms":
        return rms_norm_transport_ref(x, nw, w, b, s, lo, hi, eps=eps, weight_offset=offset)
    return layer_norm_transport_ref(x, nw, nb, w, b, s, lo, hi, eps=eps)


def public(norm, x, nw, nb, w, b, s, lo, hi, eps, offset=0.0):
    if norm == "rms":
        return af.ops.rms_norm_transport(x, nw, w, b, s, lo, hi, eps=eps, weight_offset=offset)
    return af.ops.layer_norm_transport(x, nw, nb, w, b, s, lo, hi, eps=eps)


def run_kernel(norm, x, nw, nb, w, b, s, lo, hi, eps, offset=0.0, **kwargs):
    """The launcher with a NaN-poisoned output buffer, so an unwritten element cannot pass."""
    out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)
    s_tensor, s_scalar = checks.normalize_strength(s, x)
    y = norm_transport_triton(
        x, nw, nb, w, b, s_tensor, s_scalar, lo, hi, None, rms=norm == "rms", eps=eps, weight_offset=offset, out=out, **kwargs
    )
    assert y.data_ptr() == out.data_ptr()
    return y


# (shape, layout, strength, norm weight given, norm bias given, weight_offset)
KERNEL_CASES = {
    "1row_primeC": ((1, 67), "contiguous", "per_row", True, True, 0.0),
    "C1": ((37, 1), "contiguous", "float", True, True, 0.0),
    "C_not_pow2": ((40, 24), "contiguous", "0d", True, True, 1.0),
    "3d": ((5, 7, 24), "contiguous", "per_row", True, True, 0.0),
    "3d_transposed": ((3, 4, 13), "transposed", "per_row", True, False, 1.0),
    "col_stride": ((6, 33), "col_stride", "float", False, True, 0.0),
    "row_stride": ((2, 5, 40), "row_stride", "per_row", False, False, 0.0),
    "1d": ((29,), "contiguous", "0d", True, True, 0.0),
}


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("case", list(KERNEL_CASES))
@pytest.mark.parametrize("norm", NORMS)
def test_kernel_matches_reference(norm, case, dtype, support, device):
    shape, layout, strength, has_nw, has_nb, offset = KERNEL_CASES[case]
    x = make_x(shape, dtype, device, layout)
    nw, nb, w, b, lo, hi = make_params(shape[-1], device, norm, has_nw, has_nb, support)
    s = make_strength(strength, shape[0], device)
    offset = offset if norm == "rms" else 0.0
    y = run_kernel(norm, x, nw, nb, w, b, s, lo, hi, 1e-5, offset)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    assert_close(y, reference(norm, x, nw, nb, w, b, s, lo, hi, 1e-5, offset))


@pytest.mark.parametrize("C", [17, 48, 67])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("norm", NORMS)
def test_chunked_path_matches_reference(norm, dtype, C, device):
    """Rows wider than the register tile are read in chunks (forced here with a 16-wide tile);
    LayerNorm merges per-chunk statistics, tested on rows with a large mean. For float32 input the
    truth is the float64 evaluation (then rounded): with a mean of 40, float32 LayerNorm formulas
    (ATen's and the kernel's) differ by ~ulp(40) in ``x − mean``, which is not what this test is
    about; a ``Σx² − n·mean²`` merge would be off by orders of magnitude more."""
    assert norm_config(3, C, max_single_tile_c=16)[2] is False
    x = (torch.randn(3, 2, C, device=device) + 40.0).to(dtype)
    nw, nb, w, b, lo, hi = make_params(C, device, norm)
    s = make_strength("per_row", 3, device)
    offset = 1.0 if norm == "rms" else 0.0
    y = run_kernel(norm, x, nw, nb, w, b, s, lo, hi, 1e-5, offset, max_single_tile_c=16)
    if dtype == torch.float32:
        f64 = [None if t is None else t.double() for t in (nw, nb, w, b, s, lo, hi)]
        assert_close(y, reference(norm, x.double(), *f64, 1e-5, offset).to(dtype))
    else:
        assert_close(y, reference(norm, x, nw, nb, w, b, s, lo, hi, 1e-5, offset))


def test_config_single_tile_up_to_limit_then_chunks():
    assert norm_config(8, MAX_SINGLE_TILE_C)[2] is True
    block_r, block_c, single, warps = norm_config(8, MAX_SINGLE_TILE_C + 1)
    assert (block_r, single) == (1, False) and block_c < MAX_SINGLE_TILE_C and 4 <= warps <= 16
    block_r, block_c, single, _ = norm_config(1000, 64)
    assert single and block_c == 64 and block_r > 1


@pytest.mark.parametrize("norm", NORMS)
def test_float64_keeps_eps_and_offset_in_float64(norm, device):
    """Small rows make ``eps`` dominate; an eps or offset rounded to float32 would show at 1e-10."""
    x = 1e-3 * torch.randn(6, 19, device=device, dtype=torch.float64)
    nw, nb, w, b, lo, hi = (None if t is None else t.double() for t in make_params(19, device, norm, support=False))
    offset = 0.1 if norm == "rms" else 0.0
    y = run_kernel(norm, x, nw, nb, w, b, 0.9, lo, hi, 1e-6, offset)
    assert_close(y, reference(norm, x, nw, nb, w, b, 0.9, lo, hi, 1e-6, offset))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_values_on_support_edges_are_identity(norm, dtype, device, triton_backend):
    """Rows of ±1 with equal counts have mean 0 and unit RMS/std, so with eps = 0 the normed
    value ``h = ±nw + nb`` is exact and can be put exactly on ``lo`` or ``hi``."""
    signs = torch.tensor(
        [[1, -1, 1, -1, 1, -1], [-1, -1, -1, 1, 1, 1], [1, 1, -1, -1, 1, -1], [-1, 1, 1, 1, -1, -1]], device=device
    )
    x = signs.to(dtype)
    nw = torch.tensor([0.5, 1.5, 2.0, 0.75, 1.25, 3.0], device=device)
    nb = torch.full((6,), 0.25, device=device) if norm == "layer" else None
    h = signs * nw + (0.0 if nb is None else nb)
    shift = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0], device=device)
    lo = -nw + (0.0 if nb is None else nb) - shift * nw  # on the edge where shift == 0
    hi = nw + (0.0 if nb is None else nb) + (1.0 - shift) * nw  # on the edge where shift == 1
    w = torch.full((6,), 3.0, device=device)
    b = torch.full((6,), 0.5, device=device)
    y = public(norm, x, nw, nb, w, b, 1.0, lo, hi, 0.0)
    on_edge = (h == lo) | (h == hi)
    assert 0 < int(on_edge.sum()) < on_edge.numel()
    expected = torch.where(on_edge, h, 3.0 * h + 0.5).to(dtype)
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    assert_close(y, reference(norm, x, nw, nb, w, b, 1.0, lo, hi, 0.0))


def safe_support(h: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``lo``/``hi`` in the middle of the widest gaps between normed values in the
    lower and upper halves, asserting every value stays ``margin`` away from both."""
    v = h.reshape(-1, h.shape[-1]).sort(0).values
    n = v.shape[0]
    bounds = []
    for part in (slice(1, n // 2), slice(n // 2, n - 1)):
        gaps = v[1:] - v[:-1]
        k = gaps[part].argmax(0) + part.start
        bounds.append((v.gather(0, k[None]) + v.gather(0, k[None] + 1))[0] / 2)
    lo, hi = bounds
    dist = torch.minimum((h - lo).abs(), (h - hi).abs())
    assert bool((dist > margin).all()), "test data too dense for a mask-stable support"
    return lo, hi


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_fused_matches_norm_then_affine_transport(norm, dtype, support, device, triton_backend):
    """The unfused path rounds ``norm(x)`` to ``dtype`` before transporting; the support keeps
    every normed value farther from ``lo``/``hi`` than that rounding, so no mask flips."""
    x = make_x((4, 5, 24), dtype, device)
    nw, nb, w, b, _, _ = make_params(24, device, norm, support=False)
    s = make_strength("per_row", 4, device)
    if norm == "rms":
        normed = rms_norm_ref(x, nw, 1e-6, 1.0).to(dtype)
    else:
        normed = layer_norm_ref(x, nw, nb, 1e-6).to(dtype)
    lo = hi = None
    if support:
        lo, hi = safe_support(normed.float(), margin=4 * 2.0**-8 * float(normed.float().abs().max()))
    unfused = af.ops.affine_transport(normed, w, b, s, lo, hi)
    fused = public(norm, x, nw, nb, w, b, s, lo, hi, 1e-6, 1.0)
    assert_close(fused, unfused)


@pytest.mark.parametrize("norm", NORMS)
def test_default_backend_matches_reference(norm, device):
    """The public op as users call it (on CPU: the reference path through the custom op)."""
    x = make_x((3, 4, 11), torch.float32, device)
    nw, nb, w, b, lo, hi = make_params(11, device, norm)
    s = make_strength("per_row", 3, device)
    y = public(norm, x, nw, nb, w, b, s, lo, hi, 1e-5)
    assert_close(y, reference(norm, x, nw, nb, w, b, s, lo, hi, 1e-5))
    empty = torch.empty(0, 11, device=device)
    assert public(norm, empty, nw, nb, w, b, 0.5, lo, hi, 1e-5).shape == (0, 11)


def op_args(norm, x, nw, nb, w, b, s, lo, hi, eps=1e-5, offset=0.0):
    s_tensor, s_scalar = checks.normalize_strength(s, x)
    if norm == "rms":
        return torch.ops.act_fast.rms_norm_transport.default, (x, nw, w, b, s_tensor, s_scalar, lo, hi, None, eps, offset, False)
    return torch.ops.act_fast.layer_norm_transport.default, (x, nw, nb, w, b, s_tensor, s_scalar, lo, hi, None, eps)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("strength", ["float", "per_row"])
@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_opcheck(norm, support, strength, backend, device):
    x = make_x((3, 2, 7), torch.float32, device).requires_grad_()
    nw, nb, w, b, lo, hi = make_params(7, device, norm, support=support)
    for t in (nw, nb, w, b):
        if t is not None:
            t.requires_grad_()
    s = make_strength(strength, 3, device)
    if isinstance(s, torch.Tensor):
        s.requires_grad_()
    op, args = op_args(norm, x, nw, nb, w, b, s, lo, hi, offset=1.0 if norm == "rms" else 0.0)
    previous = set_backend(backend)
    try:
        torch.library.opcheck(op, args)
    finally:
        set_backend(previous)


# (norm, norm weight given, norm bias given, weight_offset, strength)
GRAD_CASES = {
    "rms_offset": ("rms", True, True, 1.0, "per_row"),
    "rms_no_weight": ("rms", False, False, 0.0, "0d"),
    "layer": ("layer", True, True, 0.0, "per_row"),
    "layer_no_affine": ("layer", False, False, 0.0, "0d"),
}


# The reference forward for every case; the kernel's forward on the cases with every tensor.
GRAD_RUNS = [(case, "torch") for case in GRAD_CASES] + [("rms_offset", "triton"), ("layer", "triton")]


@pytest.mark.parametrize("support", [False, True])
@pytest.mark.parametrize("case,backend", GRAD_RUNS)
def test_gradcheck_float64(case, backend, support, device):
    norm, has_nw, has_nb, offset, strength = GRAD_CASES[case]
    x = make_x((4, 9), torch.float64, device)
    nw, nb, w, b, _, _ = (
        None if t is None else t.double() for t in make_params(9, device, norm, has_nw, has_nb, support=False)
    )
    s = make_strength(strength, 4, device).double()
    lo = hi = None
    if support:
        h = reference(norm, x, nw, nb, torch.ones_like(w), torch.zeros_like(b), 1.0, None, None, 1e-5, offset)
        lo, hi = safe_support(h, margin=1e-3)  # finite differences never flip the mask
        inside = (h > lo) & (h < hi)
        assert 0 < int(inside.sum()) < inside.numel()
    leaves = [t for t in (x, nw, nb, w, b, s) if t is not None]
    for t in leaves:
        t.requires_grad_()

    def fn(*tensors):
        it = iter(tensors)
        xx = next(it)
        nww = next(it) if nw is not None else None
        nbb = next(it) if nb is not None else None
        ww, bb, ss = next(it), next(it), next(it)
        return public(norm, xx, nww, nbb, ww, bb, ss, lo, hi, 1e-5, offset)

    previous = set_backend(backend)
    try:
        assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7)
    finally:
        set_backend(previous)


@pytest.mark.parametrize("norm", NORMS)
def test_gradients_outside_the_support_are_those_of_the_norm(norm, device):
    """With an empty support ``y = h``: the map gets zero gradients and ``x`` the norm's."""
    x = make_x((3, 8), torch.float64, device).requires_grad_()
    nw, nb, w, b, _, _ = (None if t is None else t.double().requires_grad_() for t in make_params(8, device, norm))
    s = torch.tensor(0.8, dtype=torch.float64, device=device, requires_grad=True)
    lo = torch.full((8,), 10.0, dtype=torch.float64, device=device)
    hi = torch.full((8,), 11.0, dtype=torch.float64, device=device)
    g = torch.randn(3, 8, dtype=torch.float64, device=device)
    gx, gw, gb, gs = torch.autograd.grad((public(norm, x, nw, nb, w, b, s, lo, hi, 1e-5) * g).sum(), (x, w, b, s))
    assert not gw.any() and not gb.any() and float(gs) == 0.0
    plain = rms_norm_ref(x, nw, 1e-5) if norm == "rms" else layer_norm_ref(x, nw, nb, 1e-5)
    (gx_plain,) = torch.autograd.grad((plain * g).sum(), (x,))
    assert_close(gx, gx_plain)


@pytest.mark.parametrize("norm", NORMS)
def test_bfloat16_input_gradients_keep_each_dtype(norm, device):
    """bf16 activations with float32 maps (LinEAS on a bf16 model): each gradient comes back in
    its input's dtype and matches the float64 computation on the same values."""
    x = make_x((2, 3, 10), torch.bfloat16, device)
    params = make_params(10, device, norm)
    s = make_strength("per_row", 2, device)
    grads = []
    for cast in (lambda t: t, lambda t: t.double()):
        leaves = [None if t is None else cast(t).detach().requires_grad_() for t in (x, *params[:4], s)]
        xx, nw, nb, w, b, ss = leaves
        lo, hi = (cast(t) for t in params[4:])
        y = public(norm, xx, nw, nb, w, b, ss, lo, hi, 1e-5, 1.0)
        g = (torch.arange(y.numel(), device=device) % 7 - 3.0).reshape(y.shape)  # exact in bf16
        grads.append(torch.autograd.grad((y.double() * g).sum(), [t for t in leaves if t is not None]))
    for got, want in zip(*grads):
        assert got.dtype == (torch.bfloat16 if got.shape == x.shape else torch.float32)
        assert_close(got, want.to(got.dtype))


class NormSteer(torch.nn.Module):
    def __init__(self, norm: str, C: int, device: str):
        super().__init__()
        self.norm = norm
        nw, nb, w, b, lo, hi = make_params(C, device, norm)
        self.register_buffer("nw", nw)
        self.register_buffer("nb", nb)
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(b)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("strength", torch.tensor(1.0, device=device))

    def forward(self, x):
        return public(self.norm, x * 2.0, self.nw, self.nb, self.weight, self.bias, self.strength, self.lo, self.hi, 1e-6, 1.0)


@pytest.mark.parametrize("norm", NORMS)
def test_compile_one_graph_no_recompile_on_strength_change(norm, device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = NormSteer(norm, 12, device)
    x = torch.randn(2, 3, 12, device=device)
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x), module(x))
        module.strength.fill_(0.25)
        y = compiled(x)
    assert counter.frame_count == 1
    op = getattr(torch.ops.act_fast, f"{norm}_norm_transport").default
    assert op in {node.target for node in counter.graphs[0].graph.nodes}
    assert_close(y, reference(norm, x * 2.0, module.nw, module.nb, module.weight.detach(), module.bias.detach(), 0.25, module.lo, module.hi, 1e-6, 1.0))


@pytest.mark.parametrize("norm", NORMS)
def test_compile_aot_eager_forward_and_backward(norm, device):
    torch._dynamo.reset()
    module = NormSteer(norm, 12, device)
    x = torch.randn(4, 12, device=device)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    (gw,) = torch.autograd.grad(y.square().sum(), (module.weight,))
    y_eager = module(x)
    (gw_eager,) = torch.autograd.grad(y_eager.square().sum(), (module.weight,))
    assert_close(y, y_eager)
    assert_close(gw, gw_eager)
    assert gw.abs().sum() > 0


def bad_inputs(device):
    x = torch.randn(2, 5, device=device)
    one, zero = torch.ones(5, device=device), torch.zeros(5, device=device)
    ok = dict(nw=one, nb=zero, w=one, b=zero, s=0.5, lo=None, hi=None, eps=1e-5)
    nan_w = torch.ones(5, device=device)
    nan_w[2] = float("nan")
    return x, ok, {
        "weight_channels": (ValueError, dict(w=torch.ones(4)), r"weight must have shape \[5\].*got \[4\]"),
        "norm_weight_shape": (ValueError, dict(nw=torch.ones(5, 1)), r"norm_weight must have shape \[5\].*got \[5, 1\]"),
        "norm_weight_int": (TypeError, dict(nw=torch.ones(5, dtype=torch.int64)), r"norm_weight must be a floating-point"),
        "integer_x": (TypeError, dict(x=torch.ones(2, 5, dtype=torch.int32)), r"x must be a floating-point tensor.*int32"),
        "nan_weight": (ValueError, dict(w=nan_w), r"weight \(shape \[5\]\) holds NaN or Inf at channels \[2\]"),
        "nan_norm_weight": (ValueError, dict(nw=nan_w.clone()), r"norm_weight \(shape \[5\]\) holds NaN or Inf at channels \[2\]"),
        "strength_rows": (ValueError, dict(s=torch.ones(3)), r"per-row strength must have shape \[2\].*got \[3\]"),
        "lo_without_hi": (ValueError, dict(lo=torch.zeros(5)), r"lo and hi must be given together"),
        "negative_eps": (ValueError, dict(eps=-1e-5), r"eps must be a finite non-negative number, got -1e-05"),
        "eps_not_number": (TypeError, dict(eps="1e-5"), r"eps must be a number, got str"),
    }


@pytest.mark.parametrize("case", list(bad_inputs("cpu")[2]))
@pytest.mark.parametrize("norm", NORMS)
def test_bad_input_errors(norm, case, device):
    x, ok, cases = bad_inputs(device)
    error, change, message = cases[case]
    a = {**ok, **change}
    x = a.pop("x", x)
    with pytest.raises(error, match=message):
        public(norm, x, a["nw"], a["nb"], a["w"], a["b"], a["s"], a["lo"], a["hi"], a["eps"])


def test_norm_bias_shape_and_weight_offset_errors(device):
    x = torch.randn(2, 5, device=device)
    one, zero = torch.ones(5), torch.zeros(5)
    with pytest.raises(ValueError, match=r"norm_bias must have shape \[5\].*got \[6\]"):
        af.ops.layer_norm_transport(x, one, torch.zeros(6), one, zero, 0.5)
    with pytest.raises(ValueError, match=r"weight_offset must be a finite number, got inf"):
        af.ops.rms_norm_transport(x, one, one, zero, 0.5, weight_offset=float("inf"))
