"""Compiling recorded specializations for NVIDIA targets on a machine without a GPU.

``triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch,
32))`` runs Triton's whole pipeline down to a cubin with the ``ptxas`` its wheel ships; the
``ptxas -v`` log (registers, spills) is captured from Triton's own ptxas invocation
(``TRITON_DUMP_PTXAS_LOG``, with the compile cache bypassed so ptxas always runs).

This needs the real ``@triton.jit`` kernels, so it must run in a process without
``TRITON_INTERPRET=1``; :func:`compile_in_subprocess` starts one:

    python -m act_fast.aot.compile SPECS.json RESULTS.json --arch 80 90 --jobs 2
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from act_fast.aot.ptx import GlobalAccesses, float64_ops, global_accesses, parse_ptxas_log
from act_fast.aot.record import KernelSpec, load_specs

DEFAULT_ARCHS = (80, 90)


@dataclass
class CompileResult:
    """What one specialization compiled to for one ``sm_<arch>``; ``error`` set when it failed."""

    spec_id: str
    arch: int
    error: str | None = None
    seconds: float = 0.0
    registers: int = 0
    stack_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    f64_ops: dict[str, int] = field(default_factory=dict)
    accesses: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def access(self, param: str) -> GlobalAccesses:
        """Accesses whose address depends on ``param`` alone."""
        d = self.accesses.get(param)
        return GlobalAccesses() if d is None else GlobalAccesses.from_json(d)

    def describe_accesses(self) -> str:
        return "; ".join(f"{p}: {GlobalAccesses.from_json(d).describe()}" for p, d in sorted(self.accesses.items()))


def resolve_kernel(kernel: str):
    """The ``@triton.jit`` object named ``"module:qualname"``."""
    module, qualname = kernel.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    from triton.runtime.jit import JITFunction

    if not isinstance(obj, JITFunction):
        raise TypeError(
            f"{kernel} is a {type(obj).__name__}, not a JITFunction: compile in a process without TRITON_INTERPRET=1"
        )
    return obj


def compile_spec(spec: KernelSpec, arch: int) -> CompileResult:
    """Compiles ``spec`` for ``sm_<arch>`` and reads registers, spills, float64 work and global
    access widths from it. Compile errors are returned in ``error``, not raised."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = CompileResult(spec.spec_id, arch)
    start = time.perf_counter()
    try:
        kernel = resolve_kernel(spec.kernel)
        src = ASTSource(kernel, dict(spec.signature), dict(spec.constexprs), dict(spec.attrs))
        log = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec.options))
        info = parse_ptxas_log(log.getvalue())
        ptx = compiled.asm["ptx"]
    except Exception as e:  # noqa: BLE001 - every failure is a finding, reported per spec
        result.error = f"{type(e).__name__}: {e}"
        result.seconds = time.perf_counter() - start
        return result
    runtime_params = [(n, t) for n, t in spec.signature.items() if t != "constexpr"]
    result.registers = info.registers
    result.stack_bytes = info.stack_bytes
    result.spill_store_bytes = info.spill_store_bytes
    result.spill_load_bytes = info.spill_load_bytes
    result.f64_ops = dict(float64_ops(ptx))
    result.accesses = {p: a.to_json() for p, a in global_accesses(ptx, runtime_params).items()}
    result.seconds = time.perf_counter() - start
    return result


def _compile_job(job: tuple[dict, int]) -> dict:
    spec_json, arch = job
    return asdict(compile_spec(KernelSpec.from_json(spec_json), arch))


def compile_all(specs: list[KernelSpec], archs=DEFAULT_ARCHS, jobs: int | None = None) -> list[CompileResult]:
    """Compiles every spec for every arch, ``jobs`` processes at a time (default: CPU count)."""
    work = [(s.to_json(), a) for s in specs for a in archs]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [CompileResult(**_compile_job(w)) for w in work]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
        return [CompileResult(**d) for d in pool.map(_compile_job, work, chunksize=1)]


def save_results(results: list[CompileResult], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(r) for r in results], indent=1))


def load_results(path: str | Path) -> list[CompileResult]:
    return [CompileResult(**d) for d in json.loads(Path(path).read_text())]


def compile_in_subprocess(
    specs_path: Path, results_path: Path, archs=DEFAULT_ARCHS, jobs: int | None = None, timeout: float | None = None
) -> None:
    """Runs this module in a fresh process without ``TRITON_INTERPRET`` (the kernels must be real
    JITFunctions), importing the same ``act_fast`` as this process."""
    import act_fast

    root = str(Path(act_fast.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "act_fast.aot.compile", str(specs_path), str(results_path), "--arch", *map(str, archs)]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"AOT compile process failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m act_fast.aot.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("specs", type=Path, help="JSON list of recorded specializations")
    p.add_argument("results", type=Path, help="where to write the JSON list of compile results")
    p.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), help="CUDA compute capabilities (80 = sm_80, 90 = sm_90a)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: CPU count)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("TRITON_INTERPRET=1 is set: the kernels are interpreted functions and cannot be compiled")
    start = time.perf_counter()
    results = compile_all(load_specs(args.specs), args.arch, args.jobs)
    save_results(results, args.results)
    failed = sum(not r.ok for r in results)
    print(f"compiled {len(results) - failed}/{len(results)} in {time.perf_counter() - start:.1f}s -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
