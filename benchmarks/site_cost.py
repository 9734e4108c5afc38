"""Added time of one steered site at decode shapes, on CPU (issue 25 item 1).

The model is a module that only runs a ``LlamaRMSNorm`` (``layers.0``); the input ``x`` has a
decode shape (``[1, 1, 1024]``, ``[8, 1, 4096]``) or a prefill shape (``[4, 128, 1024]``). Under
``torch.no_grad()`` with one intra-op thread, in interleaved rounds
(``act_fast.bench.timing.interleave``: ``--inner`` back-to-back calls per sample, the order of
the configurations rotated each round; the thread's CPU time by default, ``--clock wall`` for
wall-clock time):

- ``plain``: the unsteered module;
- ``act_fast op``: ``act_fast.steer(mode="op")`` on the norm (a forward hook running the
  transport op on its output; a map with a bias and a support);
- ``act_fast fused``: ``mode="fused"`` (the norm and the map in one op);
- ``steering-vectors``: ``SteeringVector.patch_activations`` adding a vector to the norm's output
  (its forward hook), when the package imports (see ``decode_per_size.py`` for installing it
  beside this environment without changing it); otherwise the same add written as a hook
  (``add hook``).

Per configuration: the median µs per call and its spread, and the added µs against ``plain``
with the verdict of ``act_fast.bench.timing.compare`` (the difference is only a finding when it
exceeds the spread). ``--dtype`` float32 (default) or bfloat16.

    PYTHONPATH=$PWD:/tmp/peers python benchmarks/site_cost.py --out benchmarks/results/cpu-site-cost-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import act_fast as af
from act_fast.bench.timing import compare, cpu_name, interleave

SHAPES = {"decode-1x1024": (1, 1, 1024), "decode-8x4096": (8, 1, 4096), "prefill-4x128x1024": (4, 128, 1024)}


class NormOnly(nn.Module):
    """``layers.0``: one LlamaRMSNorm; forward returns its output."""

    def __init__(self, C: int) -> None:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        super().__init__()
        self.layers = nn.ModuleList([LlamaRMSNorm(C, eps=1e-5)])
        with torch.no_grad():
            self.layers[0].weight.copy_(1.0 + 0.1 * torch.randn(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x)


def calls(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[dict, dict]:
    """``{name: () -> None}`` on separate modules (one per configuration, steered once), and
    how each steers."""
    C = shape[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    vector = 0.1 * torch.randn(C, generator=g)
    amap = af.AffineMap(1.0 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g),
                        -(2.0 + torch.rand(C, generator=g)), 2.0 + torch.rand(C, generator=g))
    maps = af.SteeringMaps({"layers.0": amap}, method="benchmark-random-support")

    def module() -> nn.Module:
        torch.manual_seed(1)
        return NormOnly(C).to(dtype).eval().requires_grad_(False)

    fns, how = {}, {}
    plain = module()
    fns["plain"], how["plain"] = (lambda: plain(x)), "unsteered"
    for mode in ("op", "fused"):
        m = module()
        handle = af.steer(m, maps, 1.0, mode=mode)
        assert handle.modes == {"layers.0": mode}, handle.modes
        fns[f"act_fast {mode}"] = (lambda m=m: m(x))
        how[f"act_fast {mode}"] = f"af.steer(mode={mode!r})"
    m = module()
    try:
        from steering_vectors import SteeringVector

        SteeringVector({0: vector.to(dtype)}, "decoder_block").patch_activations(m, layer_config={"decoder_block": "layers.{num}"})
        name, how_sv = "steering-vectors", "SteeringVector.patch_activations (its forward hook)"
    except ImportError:
        m.layers[0].register_forward_hook(lambda mod, args, out: out + vector.to(out.dtype))
        name, how_sv = "add hook", "forward hook out + v (steering-vectors not importable)"
    fns[name], how[name] = (lambda: m(x)), how_sv
    with torch.no_grad():
        ref = plain(x)
        for k, f in fns.items():
            if k != "plain" and torch.equal(f(), ref):
                raise RuntimeError(f"{k} does not change the output: nothing steered")
    return fns, how


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--inner", type=int, default=0, help="calls per sample (0: 200 at decode, 20 at prefill)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--clock", default="thread", choices=["thread", "wall"],
                   help="thread CPU time (default: steady on a shared machine) or wall-clock time")
    p.add_argument("--out", type=Path)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    results = []
    for key in args.shapes.split(","):
        shape = SHAPES[key]
        fns, how = calls(shape, dtype)
        inner = args.inner or (20 if shape[1] > 1 else 200)
        with torch.no_grad():
            timings = interleave(fns, args.rounds, warmup=args.warmup, inner=inner, thread_time=args.clock == "thread")
        base = timings["plain"]
        rows = []
        print(f"{key} {list(shape)} {args.dtype}: median µs per call ({args.clock} time) over {args.rounds} rounds of {inner} calls")
        for name, t in timings.items():
            row = {"config": name, "how": how[name], "us": t.median_ms * 1e3, "spread": t.spread, "samples_us": [round(v * 1e3, 3) for v in t.times_ms]}
            line = f"  {name:18s} {row['us']:9.2f} µs ± {t.spread:5.1%}"
            if name != "plain":
                c = compare(base.times_ms, t.times_ms)
                row.update({"added_us": (t.median_ms - base.median_ms) * 1e3, "time_ratio": c.ratio, "noise": c.noise, "resolved": c.resolved})
                line += f"   added {row['added_us']:8.2f} µs ({'resolved' if c.resolved else 'within noise'})"
            rows.append(row)
            print(line)
        results.append({"shape": list(shape), "name": key, "inner": inner, "rows": rows})
    if args.out is not None:
        payload = {"what": "added time of one steered site on a module that only runs an RMSNorm (issue 25 item 1)",
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   "machine": f"{cpu_name()} ({os.cpu_count()} CPUs), torch {torch.__version__}, CPU capability "
                              f"{torch.backends.cpu.get_cpu_capability()}, 1 intra-op thread",
                   "kernels": af.ops.cpu_kernels.status(), "dtype": args.dtype, "rounds": args.rounds, "clock": args.clock, "note": args.note,
                   "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
