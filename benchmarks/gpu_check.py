#!/usr/bin/env python
"""One GPU check inside 8 minutes: the CUDA tests that matter, then the headline figures.

    benchmarks/gpu_check.sh [--out DIR]            # on a CUDA machine (installs carried wheels first)
    benchmarks/gpu_check.sh --smoke [--out DIR]    # the same plan on CPU, tiny shapes

Steps, each a child process with its own time limit inside one overall budget (default 470 s;
a step that runs out is killed and reported, and the next one runs):

  tests       tests/ops, tests/stats/test_stats_kernel.py, tests/stats/test_stats_accuracy.py
              on CUDA (every kernel, dtype and mode against the reference, opcheck, compile),
              over all CPU cores with pytest-xdist when it is installed
  steer       benchmarks/gpu_check_steer.py: steer() on a tiny Llama and a tiny UNet on CUDA
              (kernels vs reference, per-row λ and map sets, torch.compile without recompiles)
  kernels     run_gpu.py --headline: copy bandwidth, transport, fused norm, statistics update
  decode_b1   run_gpu.py decode_b1 (compiled, static cache) on a reduced-depth Llama-3-8B shape
  decode_b32  run_gpu.py decode_b32, the same model, 16 map sets over the batch, and 16 different
              chains of two map sets over the batch (composition, issue 22)

With ``--smoke`` (any machine): the test steps only collect their tests (running them needs
CUDA, which the summary says), the benchmark steps run ``run_gpu.py --smoke``, and every time
limit (and the budget) is 3× longer (a shared 2-core CI machine compiling the decode configs).

Everything goes to the output folder (``--out``, else ``$OUT``, else a temporary folder with
``--smoke`` / ``benchmarks/results/gpu-check-<device>-<date>/``): ``gpu_check.md`` (device,
date, commit, steps, headline figures), ``gpu_check.json``, ``gpu_check.log`` (every step's
output), ``tests.xml`` (JUnit), and run_gpu's ``bench.json`` / ``bench.md``. Exit status 0 when
every step passed, 1 otherwise, 2 when it cannot run (no CUDA without ``--smoke``).
The commit comes from git, else ``ACT_FAST_COMMIT`` (the device machine gets no ``.git``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TEST_SELECTION = ["tests/ops", "tests/stats/test_stats_kernel.py", "tests/stats/test_stats_accuracy.py"]
STEER_SELECTION = ["benchmarks/gpu_check_steer.py"]
DECODE_LAYERS = 4  # of the Llama-3-8B shape's 32: compile time, not memory, is the limit here
BUDGET_S = 470
REPORT_RESERVE_S = 10
# --smoke runs on a CI machine (2 shared cores, compiling with aot_eager) rather than 16 cores and a GPU
SMOKE_TIME_FACTOR = 3
# Packages the device image lacks, carried as wheels (benchmarks/README.md, "GPU check").
CARRIED = ("diffusers",)


@dataclass
class Step:
    name: str
    what: str
    limit_s: int
    cmd: list[str] | None = None
    note: str = ""
    # filled by run_step
    status: str = "not run"  # passed | failed | timed out | skipped | not run
    rc: int | None = None
    seconds: float = 0.0
    summary: str = ""
    output_tail: list[str] = field(default_factory=list)


def plan(cuda: bool, smoke: bool, out: Path, jobs: int) -> list[Step]:
    py = sys.executable
    bench = [py, str(HERE / "run_gpu.py"), "--out", str(out), "--name", "bench", "--headline"] + (["--smoke"] if smoke else [])
    if cuda:
        xdist = ["-n", str(jobs)] if jobs > 1 and importlib.util.find_spec("xdist") else []
        pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *xdist]
        tests_cmd = [*pytest, "--junitxml", str(out / "tests.xml"), *TEST_SELECTION]
        steer_cmd = [*pytest, *STEER_SELECTION]
        test_note = f"on CUDA{f', {jobs} pytest-xdist workers' if xdist else ''}"
    else:
        collect = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
        tests_cmd, steer_cmd = [*collect, *TEST_SELECTION], [*collect, *STEER_SELECTION]
        test_note = "collected only: running them needs CUDA"
    if smoke:
        depth, model, depth_note = [], "run_gpu.py's smoke Llama", "smoke model"
    else:
        depth, model = ["--layers", str(DECODE_LAYERS)], f"{DECODE_LAYERS}-layer Llama-3-8B shape"
        depth_note = f"reduced depth: {DECODE_LAYERS} of 32 layers"
    steps = [
        Step("tests", "ops and statistics kernels vs reference, opcheck, compile", 170, tests_cmd, test_note),
        Step("steer", "steer() on a tiny Llama and a tiny UNet, compile", 60, steer_cmd, test_note),
        Step("kernels", "copy, transport, fused norm, statistics (headline shapes)", 80, [*bench, "--sections", "copy,transport,norm,stats"]),
        Step("decode_b1", f"compiled decode, batch 1, {model}", 75,
             [*bench, "--sections", "decode_b1", *depth, "--modes", "fold,fused,op"], depth_note),
        Step("decode_b32", f"compiled decode, batch 32, {model}, 16 map sets, 16 chains of two", 90,
             [*bench, "--sections", "decode_b32", *depth, "--modes", "fused,op,multi16,chains16"], depth_note),
    ]
    if smoke:
        for s in steps:
            s.limit_s *= SMOKE_TIME_FACTOR
    return steps


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # run_gpu refuses it; CUDA tests must not use it
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


_SUMMARY = re.compile(r"\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|tests? collected)\b")


def run_step(step: Step, limit_s: float, log) -> None:
    """Runs the step's command in its own process group, copying its output to stdout and the
    log; kills the whole group when ``limit_s`` runs out."""
    header = f"\n===== {step.name}: {step.what} (limit {limit_s:.0f} s)\n$ {' '.join(step.cmd)}\n"
    print(header, end="", flush=True)
    log.write(header)
    lines: list[str] = []
    start = time.perf_counter()
    proc = subprocess.Popen(step.cmd, cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        step.rc = proc.wait(timeout=max(1.0, limit_s))
        step.status = "passed" if step.rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        step.status = "timed out"
    reader.join(timeout=10)
    step.seconds = time.perf_counter() - start
    step.output_tail = lines[-40:]
    step.summary = next((ln.strip(" =") for ln in reversed(lines) if _SUMMARY.search(ln)), "")
    footer = f"===== {step.name}: {step.status} in {step.seconds:.1f} s{f' (rc {step.rc})' if step.rc not in (None, 0) else ''}\n"
    print(footer, end="", flush=True)
    log.write(footer)
    log.flush()


def _device() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name()
    return False, "cpu (no CUDA device)"


def _versions() -> dict[str, str | None]:
    out = {}
    for name in ("torch", "triton", "transformers", "diffusers", "pytest", "pytest-xdist"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def headline(bench_json: Path) -> list[tuple[str, str, str, str]]:
    """(what, target, measured, verdict) rows from run_gpu's results: the docs/design.md §6 rows it
    measured, the copy bandwidth and the statistics update against a read-once sum."""
    from gpubench import report

    if not bench_json.exists():
        return []
    data = json.loads(bench_json.read_text())
    rows = [r for r in report.targets(data) if r[2] != report.NOT_MEASURED]
    secs = data.get("sections", {})
    copy = secs.get("copy", {}).get("summary", {}).get("copy_GBps")
    if copy is not None:
        rows.insert(0, ("device copy bandwidth", "peer of every GB/s", f"{copy:.0f} GB/s (read + write)", ""))
    for f in secs.get("stats", {}).get("figures", []):
        ratio = f["update_over_read_once"]
        smoke = bool(data.get("meta", {}).get("smoke"))
        rows.append((f"ChannelStats.update {f['rows']}×{f['C']} {f['dtype']}", "≥ 50 % of a read-once column sum (issue 13)",
                     f"{f['update_GBps']:.0f} GB/s, {ratio:.0%} of read-once {f['read_once_GBps']:.0f} GB/s",
                     "smoke run: no verdict" if smoke else ("meets" if ratio >= 0.5 else "misses")))
    return rows


def markdown(meta: dict, steps: list[Step], rows: list[tuple[str, str, str, str]], bench_md: str | None) -> str:
    lines = [f"# act_fast GPU check — {meta['device']}", ""]
    if meta["smoke"]:
        lines += ["**Smoke run** (`--smoke`): the plan on a machine without CUDA, tiny shapes; tests only collected; numbers mean nothing.", ""]
    v = meta["versions"]
    lines += [
        "| | |", "|---|---|",
        f"| device | {meta['device']} |",
        f"| date (UTC) | {meta['date']} |",
        f"| commit | {meta['commit']}{' (dirty tree)' if meta.get('dirty') else ''} |",
        f"| torch / triton | {v['torch']} / {v['triton']} |",
        f"| transformers / diffusers | {v['transformers']} / {v['diffusers']} |",
        f"| wall time | {meta['wall_s']:.0f} s of a {meta['budget_s']} s budget |",
        "", "## Steps", "", "| step | what | status | s / limit | result | note |", "|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(f"| {s.name} | {s.what} | {s.status} | {s.seconds:.0f} / {s.limit_s} | {s.summary or (f'rc {s.rc}' if s.rc is not None else '')} | {s.note} |")
    lines += ["", "## Headline figures", ""]
    if rows:
        lines += ["| what | target | measured | |", "|---|---|---|---|"] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        if not meta["smoke"]:
            lines += ["", f"Decode figures use a reduced-depth model: {DECODE_LAYERS} of the Llama-3-8B shape's 32 layers "
                      "(the steering cost is per layer; the unsteered embedding and lm_head weigh more at this depth, "
                      "so a loss here understates the full model's)."]
    else:
        lines.append("none measured")
    if bench_md:
        lines += ["", f"All figures: `{bench_md}`."]
    bad = [s for s in steps if s.status not in ("passed", "skipped")]
    for s in bad:
        lines += ["", f"## {s.name}: {s.status}", "", "```", *s.output_tail[-25:], "```"]
    return "\n".join(lines) + "\n"


def _out_dir(args: argparse.Namespace, device: str, date: str) -> Path:
    if args.out:
        return args.out
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="act_fast_gpu_check_"))
    from gpubench import report

    return HERE / "results" / f"gpu-check-{report.slug(device)}-{date}"


def download_wheels(dest: Path) -> int:
    """Downloads the wheels of :data:`CARRIED` (this environment's versions) for the device
    machine's Python 3.12 on x86-64 Linux, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", str(dest), *specs]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring / benchmarks/README.md.")
    p.add_argument("--smoke", action="store_true", help="the same plan on any machine: tests collected only, benchmarks at tiny shapes")
    p.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else see above)")
    p.add_argument("--budget", type=int, default=None,
                   help=f"overall seconds for all steps (default {BUDGET_S}; ×{SMOKE_TIME_FACTOR} with --smoke, as each step's limit)")
    p.add_argument("--only", default=None, help="comma-separated subset of the steps")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="pytest-xdist workers on CUDA (default: CPU count)")
    p.add_argument("--download-wheels", type=Path, metavar="DIR", help="only download the wheels to carry to the device machine, then exit")
    args = p.parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.download_wheels)

    start = time.perf_counter()
    if args.budget is None:
        args.budget = BUDGET_S * (SMOKE_TIME_FACTOR if args.smoke else 1)
    cuda, device = _device()
    if not cuda and not args.smoke:
        print("gpu_check: no CUDA device; use --smoke to run the plan on CPU", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.timezone.utc)
    out = _out_dir(args, device, now.date().isoformat())
    out.mkdir(parents=True, exist_ok=True)
    from gpubench import report

    meta = {"device": device, "cuda": cuda, "smoke": args.smoke, "date": now.isoformat(timespec="seconds"),
            **report.commit_info(None), "versions": _versions(), "budget_s": args.budget, "python": sys.version.split()[0],
            "cpu_count": os.cpu_count()}
    steps = plan(cuda, args.smoke, out, args.jobs)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            p.error(f"unknown steps {sorted(unknown)}; known: {[s.name for s in steps]}")
        for s in steps:
            if s.name not in wanted:
                s.status, s.note = "skipped", "not in --only"
    print(f"act_fast GPU check on {device}, commit {str(meta['commit'])[:12]}, output {out}", flush=True)
    deadline = start + args.budget - REPORT_RESERVE_S
    with open(out / "gpu_check.log", "w") as log:
        log.write(json.dumps(meta, indent=1) + "\n")
        for s in steps:
            if s.status == "skipped":
                continue
            left = deadline - time.perf_counter()
            if left < 5:
                s.status, s.note = "not run", "overall budget spent"
                continue
            run_step(s, min(s.limit_s, left), log)
    meta["wall_s"] = time.perf_counter() - start
    bench_json = out / ("smoke-bench.json" if args.smoke else "bench.json")
    rows = headline(bench_json)
    bench_md = bench_json.with_suffix(".md")
    (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "steps": [asdict(s) for s in steps],
                                                    "headline": [dict(zip(("what", "target", "measured", "verdict"), r)) for r in rows]}, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(meta, steps, rows, bench_md.name if bench_md.exists() else None))
    ran = [s for s in steps if s.status != "skipped"]
    print(f"\ngpu_check: {sum(s.status == 'passed' for s in ran)}/{len(ran)} steps passed in {meta['wall_s']:.0f} s; "
          f"{out / 'gpu_check.md'}")
    for what, target, measured, verdict in rows:
        print(f"  {what}: {measured} [{target}] {verdict}")
    return 0 if all(s.status == "passed" for s in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
