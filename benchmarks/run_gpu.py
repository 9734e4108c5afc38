#!/usr/bin/env python
"""GPU benchmark of act_fast: writes ``benchmarks/results/<device>-<date>.json`` and ``.md``.

Sections (``--sections a,b,...``; default: all, in this order):

  copy          device copy bandwidth (large device-to-device copy, read + write)
  transport     affine_transport GB/s, bf16/fp16/fp32, [tokens, C] for C in 2304/4096/8192 and
                tokens 1..65536, as a fraction of copy bandwidth; pooled / per-pixel 4-D on SDXL shapes
  norm          fused RMSNorm + transport vs the same fused RMSNorm alone vs HF eager RMSNorm
  stats         ChannelStats.update GB/s vs a read-once reduction
  collect       af.collect on all norm sites of a Llama-3-8B-shaped model vs a plain forward
  prefill       eager prefill 8 x 512: unsteered vs fold / fused / op vs reference-style hooks
  decode_eager  eager decode, batch 32: act_fast vs reference-style hooks (added time per step)
  decode_b1     compiled decode (static cache, reduce-overhead), batch 1: unsteered vs fold/fused/op
  decode_b32    the same at batch 32, plus 16 map sets selected per row
  sdxl          SDXL-shaped UNet denoising steps/s with and without steering
  flux          FLUX-shaped transformer denoising steps/s with and without steering

Runs of different sections on the same device and date merge into the same files, so the
sections can be run in separate invocations (each should stay under ~8 minutes on an H100):

  python benchmarks/run_gpu.py --sections copy,transport,norm,stats,collect,prefill,decode_eager
  python benchmarks/run_gpu.py --sections decode_b1
  python benchmarks/run_gpu.py --sections decode_b32
  python benchmarks/run_gpu.py --sections sdxl,flux

Without CUDA it refuses to run unless ``--smoke`` is given: then every section runs on the
current device with tiny shapes and one repeat, to exercise the code paths; its files are named
``smoke-...`` and go to ``--out`` (default: a fresh temporary folder), never to results/.
Exit status: 0 when every figure was measured, 1 when any section or figure raised.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # gpubench, baselines

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("unset TRITON_INTERPRET before benchmarking: interpreted kernels are not timed")

import torch  # noqa: E402

from gpubench import report  # noqa: E402
from gpubench.sections import SECTIONS, Ctx, summarize  # noqa: E402

# sections made of steering configs: with --modes, a run replaces only the configs it measured
CONFIG_SECTIONS = {"prefill": "tokens_per_s", "decode_eager": "tokens_per_s", "decode_b1": "tokens_per_s",
                   "decode_b32": "tokens_per_s", "sdxl": "steps_per_s", "flux": "steps_per_s"}


def merge_configs(old: dict, new: dict, unit: str) -> dict:
    """``new`` with the figures of ``old`` whose config ``new`` did not measure (each figure keeps
    its loss against the unsteered figure of its own run)."""
    measured = {f["config"] for f in new["figures"]}
    kept = [dict(f, from_earlier_run=True) for f in old.get("figures", []) if f.get("config") not in measured]
    if kept:
        new["figures"] = new["figures"] + kept
        new["summary"] = summarize(new["figures"], unit)
    return new
from act_fast.bench.timing import Timer  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat, any device; output named smoke-*")
    p.add_argument("--headline", action="store_true", help="transport / norm / stats at a few headline shapes only (the 8-minute gpu_check.py)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/, or a temp folder with --smoke)")
    p.add_argument("--name", default=None, help="file stem (default <device-slug>-<date>); runs with the same stem merge")
    p.add_argument("--date", default=None, help="date in the file name (default today)")
    p.add_argument("--commit", default=None, help="commit to record when the checkout has no .git (or set ACT_FAST_COMMIT)")
    p.add_argument("--layers", type=int, default=None, help="Llama layers (default 32; fewer only if memory forces it, recorded)")
    p.add_argument("--flux-layers", default=None, help="FLUX depth as 'double,single' (default 19,38; recorded when reduced)")
    p.add_argument("--modes", default=None, help="subset of steered configs for prefill/decode: fold,fused,op,multi16,hooks (unsteered always runs)")
    p.add_argument("--diffusion-preset", default="layernorm", help="site preset steered in sdxl/flux (default: all norms)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 20; 1 with --smoke)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per figure (default 3; 1 with --smoke)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend for compiled decode (default inductor; aot_eager with --smoke)")
    p.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode with inductor (default reduce-overhead: CUDA graphs)")
    args = p.parse_args(argv)
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("run_gpu.py: no CUDA device. This script measures GPU figures only; use --smoke to exercise it on CPU.", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.smoke and not cuda else "inductor"
    if args.smoke:
        timer = Timer(device, warmup=1 if args.warmup is None else args.warmup, repeats=1 if args.repeats is None else args.repeats,
                      min_run_ms=0.0, max_inner=1)
        out_dir = args.out or Path(tempfile.mkdtemp(prefix="act_fast_smoke_"))
    else:
        timer = Timer(device, warmup=3 if args.warmup is None else args.warmup, repeats=20 if args.repeats is None else args.repeats)
        out_dir = args.out or HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    date = args.date or report.today()
    json_path, md_path = report.results_paths(out_dir, device, args.smoke, date, args.name)

    data = report.load(json_path)
    meta = report.metadata(device, args.smoke, args.commit)
    meta["date"] = date
    if args.headline:
        meta["shapes"] = "headline subset (--headline): transport, norm and stats at a few shapes"
    if data.get("meta") and data["meta"].get("device") not in (None, meta["device"]):
        print(f"refusing to merge into {json_path}: it holds results of {data['meta']['device']}", file=sys.stderr)
        return 2
    data["meta"] = meta
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    ctx = Ctx(device=device, smoke=args.smoke, timer=timer, args=args, results=data.setdefault("sections", {}))
    wanted = args.sections.split(",")
    print(f"act_fast benchmarks on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, commit {str(meta['commit'])[:12]}); "
          f"sections: {', '.join(wanted)}; writing {json_path}", flush=True)
    failed = False
    run_start = time.perf_counter()
    for name in wanted:
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            result = SECTIONS[name](ctx)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' figures
            import traceback

            traceback.print_exc()
            result = {"figures": [], "summary": {}, "config": {}, "errors": [{"where": name, "error": f"{type(e).__name__}: {e}"}]}
        result["wall_s"] = time.perf_counter() - t0
        result["commit"] = meta["commit"]
        result["dirty"] = meta.get("dirty")
        result["timer"] = {"warmup": timer.warmup, "repeats": timer.repeats, "min_run_ms": timer.min_run_ms}
        failed |= bool(result.get("errors"))
        if args.modes and name in CONFIG_SECTIONS and name in ctx.results and result.get("figures"):
            result = merge_configs(ctx.results[name], result, CONFIG_SECTIONS[name])
        ctx.results[name] = result
        print(f"  ({result['wall_s']:.1f} s{', with errors' if result.get('errors') else ''})", flush=True)
        # written after every section: a later section that runs out of time loses nothing
        data.setdefault("runs", [])
        report.save(json_path, data)
        md_path.write_text(report.markdown(data))
    data["runs"].append({"sections": wanted, "commit": meta["commit"], "wall_s": time.perf_counter() - run_start})
    report.save(json_path, data)
    md_path.write_text(report.markdown(data))
    ctx.free()
    print(f"wrote {json_path} and {md_path}")
    for what, target, measured, verdict in report.targets(data):
        print(f"  {what}: {measured} [{target}] {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
