"""act_fast.ops.eager: the op's body is called directly only where that equals the custom op call
(plain eager inference); the custom op is used whenever the dispatcher has work to do."""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from act_fast.ops.eager import BODIES, dispatcher_needed, op_or_body

C = 37


def _args(name: str, dtype: torch.dtype, generator: torch.Generator):
    """Arguments of ``torch.ops.act_fast.<name>`` on small odd shapes, with a support and a per-row λ."""
    def rand(*shape, dt=torch.float32):
        return torch.randn(*shape, generator=generator).to(dt)

    w, b = rand(C).abs() + 0.5, rand(C)
    lo, hi = torch.full((C,), -1.0), torch.full((C,), 1.5)
    if name in ("affine_transport", "affine_transport_out"):
        x = rand(3, 5, C, dt=dtype)
        args = [x, w, b, torch.tensor([0.3, 1.0, 0.0]), 0.0, lo, hi, None, 2, False]
        return args + [torch.empty_like(x)] if name.endswith("_out") else args
    if name == "rms_norm_transport":
        return [rand(3, 5, C, dt=dtype), rand(C, dt=dtype), w, b, torch.tensor([0.3, 1.0, 0.0]), 0.0, lo, hi, None, 1e-6, 0.0, True]
    if name == "layer_norm_transport":
        return [rand(3, 5, C, dt=dtype), rand(C, dt=dtype), rand(C, dt=dtype), w, b, None, 0.7, lo, hi, None, 1e-5]
    x = rand(2, C - 1, 3, 5, dt=dtype)  # group norm: 36 channels in 4 groups, [B, C, H, W]
    return [x, 4, rand(C - 1, dt=dtype), rand(C - 1, dt=dtype), w[:-1], b[:-1], None, 0.7, lo[:-1], hi[:-1], None, 1e-5, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", sorted(BODIES))
def test_each_body_equals_its_op_bit_for_bit(name, dtype):
    args = _args(name, dtype, torch.Generator().manual_seed(0))
    op = getattr(torch.ops.act_fast, name)
    if name.endswith("_out"):
        out_op, out_body = torch.empty_like(args[0]).fill_(float("nan")), torch.empty_like(args[0]).fill_(float("nan"))
        assert op(*args[:-1], out_op) is None and BODIES[name](*args[:-1], out_body) is None
        assert torch.equal(out_op, out_body)
    else:
        assert torch.equal(op(*args), BODIES[name](*args))


def test_plain_eager_inference_skips_the_dispatcher_and_everything_else_keeps_it():
    x, w = torch.randn(2, 4), torch.ones(4)
    assert op_or_body("affine_transport", x, w) is BODIES["affine_transport"]
    with torch.no_grad():
        assert not dispatcher_needed(x, w.requires_grad_())
    assert dispatcher_needed(x, w)  # grad mode and a map that requires grad: autograd must record
    assert op_or_body("affine_transport", x, w) is torch.ops.act_fast.affine_transport
    assert dispatcher_needed(x.requires_grad_())
    x = x.detach()
    with torch.device("cpu"):  # a torch-function mode
        assert dispatcher_needed(x)

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Log():
        assert dispatcher_needed(x)
    with torch._subclasses.fake_tensor.FakeTensorMode() as fake:
        assert dispatcher_needed(fake.from_tensor(x))


def test_a_jit_trace_records_the_custom_op():
    x, w, b = torch.randn(3, 8), torch.rand(8) + 0.5, torch.randn(8)

    def steer(x):
        return op_or_body("affine_transport", x, w, b)(x, w, b, None, 0.5, None, None, None, 1, False)

    with warnings.catch_warnings():  # torch.jit.trace is deprecated; exporters still trace with it
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(steer, (x,))
    assert "act_fast::affine_transport" in str(traced.graph)
    assert torch.equal(traced(x), steer(x))


def test_under_compile_the_custom_op_is_in_the_graph():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    x, w, b = torch.randn(3, 8), torch.rand(8) + 0.5, torch.randn(8)

    @torch.compile(backend=backend, fullgraph=True)
    def steer(x):
        fn = op_or_body("affine_transport", x, w, b)
        return fn(x, w, b, None, 0.5, None, None, None, 1, False)

    assert torch.equal(steer(x), BODIES["affine_transport"](x, w, b, None, 0.5, None, None, None, 1, False))
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert {torch.ops.act_fast.affine_transport, torch.ops.act_fast.affine_transport.default} & set(targets)

