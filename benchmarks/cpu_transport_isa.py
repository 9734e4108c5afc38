"""The CPU transport into ``out=`` against a copy, split into what a call costs (issue 25 item 2).

At ``[4096, 4096]``, one intra-op thread, support ``[-2, 2]``, λ = 0.8, bf16 / fp16 / fp32, in
interleaved rounds of thread CPU time (``act_fast.bench.timing.interleave``):

- ``public``: ``act_fast.ops.affine_transport(x, w, b, 0.8, lo, hi, out=o)`` (checks, custom op);
- ``kernel``: ``torch.ops.act_fast_cpu.affine_transport`` (the compiled kernel's own op, no checks);
- ``copy``: ``o.copy_(x)``, the peer of the ≤ 2.5× (bf16, fp16) / ≤ 1.5× (fp32) targets.

The instruction set is the one torch picks (``ATEN_CPU_CAPABILITY=avx2`` forces the AVX2 build
of the kernels on an AVX512 machine)::

    ATEN_CPU_CAPABILITY=avx2 python benchmarks/cpu_transport_isa.py --out /tmp/avx2.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import act_fast as af
from act_fast.bench.timing import compare, cpu_name, interleave
from act_fast.ops import cpu_kernels, set_backend

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    set_backend("cpu")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    R = C = 4096
    results = []
    for name, dtype in DTYPES.items():
        x = torch.randn(R, C, generator=g).to(dtype)
        w, b = 1.0 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g)
        lo, hi = torch.full((C,), -2.0), torch.full((C,), 2.0)
        out, copy_out = torch.empty_like(x), torch.empty_like(x)
        kernel = torch.ops.act_fast_cpu.affine_transport.default
        fns = {"public": lambda: af.ops.affine_transport(x, w, b, 0.8, lo, hi, out=out),
               "kernel": lambda: kernel(x, w, b, None, 0.8, lo, hi, None, 1, False, out),
               "copy": lambda: copy_out.copy_(x)}
        t = interleave(fns, args.rounds, warmup=2, thread_time=True)
        row = {"dtype": name, **{f"{k}_ms": v.median_ms for k, v in t.items()}, **{f"{k}_spread": v.spread for k, v in t.items()}}
        for k in ("public", "kernel"):
            c = compare(t["copy"].times_ms, t[k].times_ms)
            row[f"{k}_vs_copy"], row[f"{k}_resolved"] = c.ratio, c.resolved
        results.append(row)
        print(f"{name:9s} public {row['public_ms']:.2f} ms ({row['public_vs_copy']:.2f}× copy), kernel {row['kernel_ms']:.2f} ms "
              f"({row['kernel_vs_copy']:.2f}×), copy {row['copy_ms']:.2f} ms; spreads {t['public'].spread:.1%} / {t['kernel'].spread:.1%} / {t['copy'].spread:.1%}")
    if args.out is not None:
        payload = {"machine": f"{cpu_name()} ({os.cpu_count()} CPUs)", "capability": cpu_kernels.capability(), "kernels": cpu_kernels.status(),
                   "torch": torch.__version__, "shape": [R, C], "rounds": args.rounds, "clock": "thread CPU time", "note": args.note,
                   "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
