"""Every Triton kernel compiled for sm_80 and sm_90 from the specializations the CI workloads
(:mod:`act_fast.aot.workloads`, production shapes included) launch, without a GPU: it
compiles, never spills, does no float64 work on 16/32-bit data, and the hot paths stream their
bulk tensors with 16-byte accesses (issue 13 item 5). One case per (workload, check, target).

Known failures are strict xfails keyed by workload and check: when a fix lands they XPASS, the
test fails, and the entry must go.
"""

import importlib
import pkgutil

import pytest

import act_fast.ops
from act_fast.aot.checks import CHECKS
from act_fast.aot.compile import DEFAULT_ARCHS as ARCHS
from act_fast.aot.record import KernelSpec
from act_fast.aot.workloads import WORKLOADS

# (workload, check, arch) -> why it fails today. Empty: every kernel passes every check.
KNOWN_FAILURES: dict[tuple[str, str, int], str] = {}


def _cases(check: str):
    for w in WORKLOADS:
        if check == "vectorized" and not w.hot:
            continue
        for arch in ARCHS:
            reason = KNOWN_FAILURES.get((w.name, check, arch))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(w.name, arch, id=f"{w.name}-sm{arch}", marks=marks)


def _specs_of(specs: list[KernelSpec], workload: str) -> list[KernelSpec]:
    found = [s for s in specs if workload in s.labels]
    assert found, f"workload {workload!r} recorded no specialization"
    return found


def _assert_check(aot_compiled, check: str, workload: str, arch: int) -> None:
    specs, results = aot_compiled
    failures = [
        msg
        for spec in _specs_of(specs, workload)
        if (msg := CHECKS[check](spec, results[(spec.spec_id, arch)])) is not None
    ]
    assert not failures, f"{check} failed for workload {workload} on sm_{arch}:\n" + "\n".join(failures)


@pytest.mark.parametrize(("workload", "arch"), list(_cases("compiles")))
def test_compiles(aot_compiled, workload, arch):
    _assert_check(aot_compiled, "compiles", workload, arch)


@pytest.mark.parametrize(("workload", "arch"), list(_cases("no_spills")))
def test_no_register_spills(aot_compiled, workload, arch):
    _assert_check(aot_compiled, "no_spills", workload, arch)


@pytest.mark.parametrize(("workload", "arch"), list(_cases("no_float64")))
def test_no_float64_on_16_or_32_bit_data(aot_compiled, workload, arch):
    _assert_check(aot_compiled, "no_float64", workload, arch)


@pytest.mark.parametrize(("workload", "arch"), list(_cases("vectorized")))
def test_hot_path_uses_16_byte_accesses(aot_compiled, workload, arch):
    specs, _ = aot_compiled
    streamed = {p for s in _specs_of(specs, workload) for p in s.streamed}
    assert streamed, f"hot workload {workload} has no argument as large as its input: nothing to check"
    _assert_check(aot_compiled, "vectorized", workload, arch)


def test_known_failures_name_real_cases():
    names = {w.name for w in WORKLOADS}
    stale = [key for key in KNOWN_FAILURES if key[0] not in names or key[1] not in CHECKS or key[2] not in ARCHS]
    assert not stale, f"KNOWN_FAILURES entries for no workload/check: {stale}"


def _launched_kernels() -> set[str]:
    """Names of the ``*_kernel`` Triton functions defined in the ops modules (helpers excluded)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    names = set()
    for info in pkgutil.iter_modules(act_fast.ops.__path__, "act_fast.ops."):
        if info.name.startswith("act_fast.aot"):
            continue
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, (JITFunction, InterpretedFunction)) and attr.endswith("_kernel") and value.fn.__module__ == info.name:
                names.add(f"{info.name}:{attr}")
    return names


def test_every_kernel_is_compiled(aot_compiled):
    specs, _ = aot_compiled
    kernels = _launched_kernels()
    assert kernels, "found no Triton kernels in act_fast.ops"
    missing = kernels - {s.kernel for s in specs}
    assert not missing, f"Triton kernels no CI workload launches (add a workload in act_fast/aot/workloads.py): {sorted(missing)}"


def test_production_rows_get_the_vectorizable_specialization(aot_compiled):
    """The production launch specializes channels-contiguous, 16-divisible C and row stride; the
    unit-test-sized launches do not (so the hot checks need the production shapes)."""
    specs, _ = aot_compiled
    (prod,) = [s for s in specs if "transport-rows-bf16-8192x4096" in s.labels]
    (odd,) = [s for s in specs if "transport-rows-bf16-odd-map0d" in s.labels]
    div = lambda s, name: ["tt.divisibility", 16] in s.attrs[(list(s.signature).index(name),)]  # noqa: E731
    runtime_ints = [n for n, t in prod.signature.items() if t == "i32"]
    assert runtime_ints and all(div(prod, n) for n in runtime_ints), prod.describe()
    assert not all(div(odd, n) for n, t in odd.signature.items() if t == "i32"), odd.describe()


def test_vectorized_check_catches_narrow_accesses(aot_compiled):
    """A strided input (channel stride 2) loads 2-byte elements: the check must say so."""
    specs, results = aot_compiled
    (spec,) = [s for s in specs if "transport-rows-bf16-strided" in s.labels]
    x_param = next(name for name, ty in spec.signature.items() if ty.startswith("*"))  # the input comes first
    forced = KernelSpec.from_json({**spec.to_json(), "streamed": [x_param]})
    message = CHECKS["vectorized"](forced, results[(spec.spec_id, 90)])
    assert message is not None and f"{x_param}: ld 2B" in message, message


def test_float64_check_catches_float64_work(aot_compiled):
    """The float64 rows kernel is full of f64 instructions: allowed on float64 data, flagged if the
    same code ran on bf16 data."""
    specs, results = aot_compiled
    (spec,) = [s for s in specs if "transport-rows-fp64-odd" in s.labels]
    result = results[(spec.spec_id, 90)]
    assert result.f64_ops and CHECKS["no_float64"](spec, result) is None
    as_bf16 = KernelSpec.from_json({**spec.to_json(), "signature": [[n, "*bf16" if t == "*fp64" else t] for n, t in spec.signature.items()]})
    message = CHECKS["no_float64"](as_bf16, result)
    assert message is not None and "float64 PTX instructions on bf16 data" in message
