"""Ahead-of-time PTX / ptxas figures of the statistics kernels at the production specialization.

Compiles, without a GPU, every kernel ``stats_update_triton`` launches for ``x [8192, 4096]``
contiguous (bf16, fp16, fp32; with and without a row mask) for sm_80 and sm_90 with Triton's
bundled ``ptxas -v``, and prints per kernel: registers, spill bytes, shared memory, float64 PTX
instructions, global / shared atomics, ``bar.sync``, global load widths of ``x`` and an occupancy
estimate from registers and shared memory. Must run without ``TRITON_INTERPRET=1``:

    PYTHONPATH=$PWD python benchmarks/stats_kernel_ptx.py [--arch 80 90] [--dtype bf16 fp32]

(The generic check of every kernel is ``act_fast/ops/aot``; this is the quick one for the
statistics kernels alone.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from collections import Counter

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("unset TRITON_INTERPRET: the kernels must be real JITFunctions to compile")

import torch
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource, compile as triton_compile
from triton.runtime.jit import JITFunction, create_function_from_signature

from act_fast.ops.stats import HistogramLayout, forced_layout, nvidia_layout, stats_update_triton
from act_fast.ops.stats_reference import HistogramParams, empty_state

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Registers / threads / shared memory per SM (sm_80 A100, sm_90 H100/H200).
SM_LIMITS = {80: dict(regs=65536, threads=2048, smem=164 * 1024, blocks=32), 90: dict(regs=65536, threads=2048, smem=228 * 1024, blocks=32)}


def record_launches(fn, *args, **kwargs) -> list[tuple[JITFunction, tuple, dict]]:
    """The ``(kernel, args, kwargs)`` of every Triton launch ``fn`` makes; nothing runs."""
    launches = []
    original = JITFunction.run

    def run(self, *a, grid, warmup, **kw):
        launches.append((self, a, kw))

    JITFunction.run = run
    try:
        fn(*args, **kwargs)
    finally:
        JITFunction.run = original
    return launches


def compile_launch(kernel: JITFunction, args: tuple, kwargs: dict, arch: int):
    """Compiles one recorded launch for sm_<arch>: ``(compiled, ptxas log, signature)``."""
    backend = CUDABackend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, _ = binder(*args, **kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(backend, dict(kwargs), bound, specialization, {})
    options = {k: v for k, v in kwargs.items() if k not in signature}
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        compiled = triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options)
    return compiled, log.getvalue(), signature


def ptx_counts(ptx: str) -> dict[str, object]:
    """Static instruction counts of interest in one kernel's PTX."""
    lines = [ln.split("//")[0].strip() for ln in ptx.splitlines()]
    ops = [ln.split()[0] if not ln.startswith("@") else (ln.split()[1] if len(ln.split()) > 1 else "") for ln in lines if ln and not ln.endswith(":") and ln[0] not in ".{}/)"]
    f64 = Counter(o for o in ops if "f64" in o.split("."))
    ld_global = Counter()
    for o in ops:
        parts = o.split(".")
        if parts[0] == "ld" and "global" in parts:
            vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
            bits = int(re.search(r"(\d+)$", parts[-1]).group(1))
            ld_global[f"{vec * bits // 8}B"] += 1
    return {
        "f64_ops": sum(f64.values()),
        "f64_detail": dict(f64.most_common(6)),
        "div.rn.f64": sum(n for o, n in f64.items() if o.startswith("div")),
        # Counted in the text: inline-asm blocks put several instructions on one "{ ... }" line.
        "atom.global": len(re.findall(r"\b(?:atom|red)(?:\.\w+)*\.global\b|\b(?:atom|red)\.global", ptx)),
        "atom.shared": len(re.findall(r"\b(?:atom|red)\.shared", ptx)),
        "ld.shared": len(re.findall(r"\bld\.shared", ptx)),
        "st.shared": len(re.findall(r"\bst\.shared", ptx)),
        "bar.sync": sum(1 for o in ops if o.startswith("bar.sync") or o.startswith("barrier.sync")),
        "ld.global": dict(ld_global),
        "ptx_lines": len(ops),
    }


def occupancy(arch: int, regs: int, smem: int, warps: int) -> float:
    """Resident warps / the SM's maximum, from registers (allocated per warp in units of 256) and
    shared memory (1 KiB reserved per block)."""
    lim = SM_LIMITS[arch]
    threads = warps * 32
    per_warp = -(-regs * 32 // 256) * 256
    per_regs = (lim["regs"] // per_warp) // warps
    per_smem = lim["smem"] // (smem + 1024)
    blocks = min(per_regs, per_smem, lim["threads"] // threads, lim["blocks"])
    return blocks * threads / lim["threads"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--row-mask", action="store_true", help="launch with a row mask")
    p.add_argument("--dump", default=None, help="folder to write each kernel's PTX, TTGIR and cubin into")
    p.add_argument("--check", action="store_true", help="exit 1 unless every kernel compiles without spills, the partial kernel "
                   "has no float64 instruction, static + dynamic shared memory fits 48 KiB, and (NVIDIA layout, 16-divisible C) "
                   "its global loads are 16 bytes wide (1 byte for the row mask)")
    p.add_argument("--layout", choices=["nvidia", "scratch", "scratch-direct"], default="nvidia",
                   help="histogram layout: the NVIDIA one (default), or the scratch ones (interpreter, other GPUs)")
    p.add_argument("--mantissa-bits", type=int, default=5, help="histogram resolution (7: too many buckets for shared memory)")
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--rows-per-program", type=int, default=None, help="default: the launcher's choice for a CPU tensor (all rows, at most 65,535)")
    args = p.parse_args(argv)
    params = HistogramParams(mantissa_bits=args.mantissa_bits)
    failures = []
    for dtype in args.dtype:
        x = torch.empty(args.rows, args.cols, dtype=DTYPES[dtype])
        state = empty_state(args.cols, params)
        mask = torch.ones(args.rows, dtype=torch.bool) if args.row_mask else None
        layout = {"nvidia": nvidia_layout(params), "scratch": HistogramLayout("scratch", True), "scratch-direct": HistogramLayout("scratch", False)}[args.layout]
        with forced_layout(layout):
            launches = record_launches(stats_update_triton, x, state, params, mask, rows_per_program=args.rows_per_program)
        for kernel, a, kw in launches:
            for arch in args.arch:
                compiled, log, _ = compile_launch(kernel, a, kw, arch)
                regs = int(re.search(r"Used (\d+) registers", log).group(1))
                st, ld = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
                smem = compiled.metadata.shared  # Triton's dynamic shared memory
                static = re.search(r"(\d+) bytes smem", log)
                static = int(static.group(1)) if static else 0
                warps = compiled.metadata.num_warps
                c = ptx_counts(compiled.asm["ptx"])
                if args.dump:
                    os.makedirs(args.dump, exist_ok=True)
                    stem = os.path.join(args.dump, f"{kernel.fn.__name__}-{dtype}-sm{arch}")
                    for ext in ("ptx", "ttgir"):
                        with open(f"{stem}.{ext}", "w") as f:
                            f.write(compiled.asm[ext])
                    with open(f"{stem}.cubin", "wb") as f:
                        f.write(compiled.asm["cubin"])
                print(
                    f"{kernel.fn.__name__} {dtype}{' rowmask' if mask is not None else ''} sm_{arch}: "
                    f"regs={regs} spills={st}/{ld}B smem static={static}B dynamic={smem}B warps={warps} occupancy~{occupancy(arch, regs, smem + static, warps):.1%} "
                    f"f64={c['f64_ops']} div.rn.f64={c['div.rn.f64']} atom/red.global={c['atom.global']} atom/red.shared={c['atom.shared']} "
                    f"ld/st.shared={c['ld.shared']}/{c['st.shared']} "
                    f"bar.sync={c['bar.sync']} ld.global={c['ld.global']} ptx_instr={c['ptx_lines']}"
                )
                if c["f64_ops"]:
                    print(f"    f64: {c['f64_detail']}")
                where = f"{kernel.fn.__name__} {dtype} sm_{arch}"
                if st or ld:
                    failures.append(f"{where}: spills {st}/{ld} bytes")
                if kernel.fn.__name__ == "_stats_partial_kernel":
                    if c["f64_ops"]:
                        failures.append(f"{where}: {c['f64_ops']} float64 instructions")
                    if static + smem > 48 * 1024:
                        failures.append(f"{where}: {static} + {smem} bytes of shared memory (48 KiB without opt-in)")
                    # (The scratch layouts also read their private counters from global memory.)
                    if args.layout == "nvidia" and args.cols % 16 == 0 and set(c["ld.global"]) - {"16B", "1B"}:
                        failures.append(f"{where}: global loads {c['ld.global']}")
    if args.check and failures:
        print("FAILED:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
