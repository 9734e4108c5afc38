"""The assertions every compiled specialization must meet (issue 13 item 5), as functions that
return None when met and a readable failure (kernel, specialization, target, numbers) when not.

- ``compiles``: Triton and ptxas produce a cubin.
- ``no_spills``: ptxas reports 0 bytes of spill stores and loads.
- ``no_float64``: no float64 PTX instruction when the kernel's data is fp32 / bf16 / fp16
  (:attr:`KernelSpec.data_dtype`), except in kernels whose job is float64 state
  (:data:`FLOAT64_STATE_KERNELS`).
- ``vectorized``: every global load and store of a streamed argument (the bulk tensors of a hot
  workload) moves 16 bytes, and each streamed argument is accessed.
"""

from __future__ import annotations

from collections.abc import Callable

from act_fast.aot.compile import CompileResult
from act_fast.aot.record import KernelSpec

VECTOR_BYTES = 16

# Kernels whose float64 work is by design; name → why.
FLOAT64_STATE_KERNELS = {
    "_stats_fold_kernel": "folds the per-program partials into the float64 master state (docs/design.md §2)",
}


def _where(spec: KernelSpec, result: CompileResult) -> str:
    return f"{spec.describe()} on sm_{result.arch} (recorded from {', '.join(spec.labels[:3])}{' …' if len(spec.labels) > 3 else ''})"


def compiles(spec: KernelSpec, result: CompileResult) -> str | None:
    if result.ok:
        return None
    return f"does not compile: {_where(spec, result)}\n{result.error}"


def no_spills(spec: KernelSpec, result: CompileResult) -> str | None:
    if not result.ok:
        return f"not compiled: {_where(spec, result)}"
    if result.spill_store_bytes == 0 and result.spill_load_bytes == 0:
        return None
    return (
        f"register spills: {result.spill_store_bytes} bytes spill stores, {result.spill_load_bytes} bytes spill loads, "
        f"{result.registers} registers, {result.stack_bytes} bytes stack: {_where(spec, result)}"
    )


def no_float64(spec: KernelSpec, result: CompileResult) -> str | None:
    if not result.ok:
        return f"not compiled: {_where(spec, result)}"
    if spec.data_dtype in (None, "fp64") or spec.name in FLOAT64_STATE_KERNELS or not result.f64_ops:
        return None
    ops = ", ".join(f"{op}×{n}" for op, n in sorted(result.f64_ops.items(), key=lambda kv: -kv[1]))
    return f"{sum(result.f64_ops.values())} float64 PTX instructions on {spec.data_dtype} data ({ops}): {_where(spec, result)}"


def vectorized(spec: KernelSpec, result: CompileResult) -> str | None:
    if not result.ok:
        return f"not compiled: {_where(spec, result)}"
    problems = []
    for param in sorted(spec.streamed):
        acc = result.access(param)
        if not (acc.ld or acc.st or acc.atomics):
            problems.append(f"{param}: no global access attributed to it")
            continue
        narrow = [f"{op} {w}B×{getattr(acc, op)[w]}" for op in ("ld", "st") for w in acc.widths(op) if w != VECTOR_BYTES]
        if narrow:
            problems.append(f"{param}: {', '.join(narrow)} (want {VECTOR_BYTES}B only; all: {acc.describe()})")
    if not problems:
        return None
    return f"not {VECTOR_BYTES}-byte vectorized: {'; '.join(problems)}; every access: {result.describe_accesses()}: {_where(spec, result)}"


CHECKS: dict[str, Callable[[KernelSpec, CompileResult], str | None]] = {
    "compiles": compiles,
    "no_spills": no_spills,
    "no_float64": no_float64,
    "vectorized": vectorized,
}
