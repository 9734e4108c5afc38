"""The recorder reproduces Triton's specialization of launch arguments; the PTX and ptxas-log
readers count what they claim."""

import pytest
import torch
from aot_kernels import scale_kernel
from triton.runtime.jit import JITFunction

from act_fast.aot.compile import compile_spec
from act_fast.aot.ptx import float64_ops, global_accesses, parse_ptxas_log
from act_fast.aot.record import KernelSpec, LaunchRecorder

DIV16 = [["tt.divisibility", 16]]


def _launch(x, y, n, stride, scale=2.0, block=64):
    scale_kernel[(-(-n // block),)](x, y, n, stride, scale, BLOCK=block, num_warps=2)


def _record(*launch_args, execute=False, label="t", **kw) -> KernelSpec:
    with LaunchRecorder(execute=execute) as rec, rec.workload(label):
        _launch(*launch_args, **kw)
    (spec,) = rec.specs
    return spec


def test_aligned_pointers_and_16_divisible_ints_get_divisibility_and_1_becomes_constexpr():
    x, y = torch.ones(64), torch.empty(64)
    assert x.data_ptr() % 16 == 0 and y.data_ptr() % 16 == 0
    spec = _record(x, y, 64, 1)
    assert spec.signature == {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "stride": "constexpr", "scale": "fp32", "BLOCK": "constexpr"}
    assert spec.constexprs == {(3,): 1, (5,): 64}
    assert spec.attrs[(0,)] == DIV16 and spec.attrs[(1,)] == DIV16 and spec.attrs[(2,)] == DIV16
    assert (4,) not in spec.attrs  # floats are never specialized
    assert spec.options == {"num_warps": 2}
    assert spec.data_dtype == "fp32"


def test_offset_pointers_and_odd_ints_get_no_divisibility():
    base = torch.ones(80, dtype=torch.bfloat16)
    x = base[1:]  # 2 bytes past an aligned address
    assert x.data_ptr() % 16 == 2
    spec = _record(x, torch.empty(79, dtype=torch.bfloat16), 63, 3)
    assert spec.signature["x_ptr"] == "*bf16" and spec.attrs[(0,)] == []
    assert spec.signature["n"] == "i32" and spec.attrs[(2,)] == []
    assert spec.signature["stride"] == "i32" and spec.attrs[(3,)] == []
    assert spec.attrs[(1,)] == DIV16


def test_ints_beyond_int32_are_i64():
    spec = _record(torch.ones(16), torch.empty(16), 2**33, 16, block=16)
    assert spec.signature["n"] == "i64" and spec.attrs[(2,)] == DIV16


def test_execute_runs_the_launch_and_skip_does_not():
    x = torch.arange(64, dtype=torch.float32)
    y = torch.full((64,), -1.0)
    _record(x, y, 64, 1, execute=False)
    assert torch.equal(y, torch.full((64,), -1.0))
    _record(x, y, 64, 1, execute=True)
    assert torch.equal(y, 2.0 * x)


def test_identical_specializations_merge_with_their_labels():
    x, y = torch.ones(64), torch.empty(64)
    with LaunchRecorder(execute=False) as rec:
        with rec.workload("a"):
            _launch(x, y, 64, 1)
        with rec.workload("b", hot_input=x):
            _launch(x, y, 32, 1)  # still 16-divisible: same code
        with rec.workload("c"):
            _launch(x, y, 63, 1)  # not: another spec
    assert rec.launches == 3
    merged, other = rec.specs
    assert merged.labels == ["a", "b"] and other.labels == ["c"]
    assert merged.streamed == {"x_ptr", "y_ptr"} and other.streamed == set()
    assert KernelSpec.from_json(merged.to_json()).key == merged.key


def test_placeholder_aliasing_an_earlier_pointer_is_not_streamed():
    x = torch.ones(64)
    with LaunchRecorder(execute=False) as rec, rec.workload("w", hot_input=x):
        _launch(x, x, 64, 1)
    assert rec.specs[0].streamed == {"x_ptr"}


def test_recorder_restores_the_launch_path():
    x, y = torch.arange(64, dtype=torch.float32), torch.empty(64)
    with LaunchRecorder(execute=False):
        pass
    _launch(x, y, 64, 1)
    assert torch.equal(y, 2.0 * x)


def test_compile_spec_reports_failure_instead_of_raising():
    """In the interpreter the kernel is no JITFunction: the result says so (on a GPU host it compiles)."""
    spec = _record(torch.ones(64), torch.empty(64), 64, 1)
    result = compile_spec(spec, 90)
    if isinstance(scale_kernel, JITFunction):
        assert result.ok and result.registers > 0, result.error
    else:
        assert not result.ok and "TRITON_INTERPRET" in result.error


PTX = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1,
	.param .u32 k_param_2
)
{
	.reg .pred 	%p<2>;
	ld.param.b64 	%rd3, [k_param_0];
	ld.param.b64 	%rd4, [k_param_1];
	ld.param.b32 	%r1, [k_param_2];
	mul.wide.s32 	%rd5, %r1, 2;
	add.s64 	%rd1, %rd3, %rd5;
	add.s64 	%rd2, %rd4, %rd5;
$L__BB0_1:
	// begin inline asm
	@%p1 ld.global.v4.b32 { %r2, %r3, %r4, %r5 }, [ %rd1 + 0 ];
	// end inline asm
	add.s64 	%rd1, %rd1, 16;
	cvt.f64.f32 	%fd1, %f1;
	add.rn.f64 	%fd2, %fd1, %fd1;
	@%p1 st.global.b16 [ %rd2 + 0 ], { %rs1 };
	atom.global.gpu.relaxed.add.u32 %r9, [%rd2], 1;
	ld.global.b32 { %r10 }, [ %rd3 + %rd4 ];
	ret;
}
"""


def test_global_accesses_are_attributed_to_their_pointer_argument():
    acc = global_accesses(PTX, [("x_ptr", "*bf16"), ("y_ptr", "*bf16"), ("n", "i32")])
    assert dict(acc["x_ptr"].ld) == {16: 1} and not acc["x_ptr"].st
    assert dict(acc["y_ptr"].st) == {2: 1} and acc["y_ptr"].atomics == 1
    assert dict(acc["x_ptr|y_ptr"].ld) == {4: 1}  # an address built from both


def test_float64_ops_are_counted_per_opcode():
    assert float64_ops(PTX) == {"cvt.f64.f32": 1, "add.rn.f64": 1}


def test_ptxas_log():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_k' for 'sm_90a'
ptxas info    : Function properties for _k
    16 bytes stack frame, 24 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""
    info = parse_ptxas_log(log)
    assert (info.registers, info.stack_bytes, info.spill_store_bytes, info.spill_load_bytes) == (255, 16, 24, 12)
    with pytest.raises(ValueError, match="ptxas log"):
        parse_ptxas_log("nothing here")
