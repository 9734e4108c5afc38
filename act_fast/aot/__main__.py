"""``python -m act_fast.aot``: compile this package's Triton kernels for real GPUs, here.

    python -m act_fast.aot                     # the CI set (~50 specs, ~1 min on 2 cores)
    python -m act_fast.aot --all               # every spec the test suite launches (slow:
                                                   #   the suite in the interpreter, then ~1,000
                                                   #   compiles; tens of minutes)
    python -m act_fast.aot --all -- tests/ops  # only what these tests launch
    python -m act_fast.aot --specs specs.json  # compile a recorded list again

Writes ``specs.json``, ``results.json`` and ``report.md`` (registers, spills, float64 work,
access widths, failed checks) under ``--out`` (default: a new temporary folder) and prints the
failed checks; exits 1 if any.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _ensure_dispatch_environment(argv: list[str]) -> None:
    """Without a GPU the ops reach Triton only in the interpreter, which must be chosen before
    Triton is imported: re-run this command with ``TRITON_INTERPRET=1``."""
    import torch

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    env = dict(os.environ, TRITON_INTERPRET="1")
    os.execve(sys.executable, [sys.executable, "-m", "act_fast.aot", *argv], env)


def _record_test_suite(specs_path: Path, pytest_args: list[str]) -> None:
    """Runs the test suite under the recording plugin (launches executed as usual)."""
    import act_fast

    root = Path(act_fast.__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "act_fast.aot.pytest_plugin", "--aot-record", str(specs_path)]
    cmd += pytest_args or ["tests", "--ignore=tests/aot"]
    print("recording:", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=root, env=env).returncode
    if not specs_path.exists():
        raise SystemExit(f"the test run (exit {rc}) wrote no {specs_path}")
    if rc != 0:
        print(f"note: the test run exited {rc}; compiling what it recorded", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, pytest_args = argv[:split], argv[split + 1 :]
    p = argparse.ArgumentParser(prog="python -m act_fast.aot", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--all", action="store_true", help="record every launch of the test suite (arguments after -- go to pytest)")
    source.add_argument("--specs", type=Path, help="compile the specializations in this JSON file")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default: 80 90)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder, printed)")
    args = p.parse_args(own)
    _ensure_dispatch_environment(argv)

    from act_fast.aot.compile import compile_in_subprocess, load_results
    from act_fast.aot.pipeline import check_all, record_workloads, report
    from act_fast.aot.record import load_specs, save_specs
    from act_fast.aot.workloads import WORKLOADS

    args.out = args.out or Path(tempfile.mkdtemp(prefix="act_fast_aot_"))
    args.out.mkdir(parents=True, exist_ok=True)
    specs_path, results_path = args.out / "specs.json", args.out / "results.json"
    start = time.perf_counter()
    if args.specs:
        specs = load_specs(args.specs)
        save_specs(specs, specs_path)
    elif args.all:
        _record_test_suite(specs_path.resolve(), pytest_args)
        specs = load_specs(specs_path)
    else:
        specs = record_workloads(WORKLOADS)
        save_specs(specs, specs_path)
    print(f"{len(specs)} specializations ({time.perf_counter() - start:.1f}s); compiling for "
          + ", ".join(f"sm_{a}" for a in args.arch), flush=True)
    compile_in_subprocess(specs_path, results_path, args.arch, args.jobs)
    results = {(r.spec_id, r.arch): r for r in load_results(results_path)}
    findings = check_all(specs, results, args.arch)
    (args.out / "report.md").write_text(report(specs, results, findings, args.arch))
    for f in findings:
        print(f"FAIL {f.check} sm_{f.arch}: {f.message}\n")
    print(f"{len(specs)} specs × {len(args.arch)} archs in {time.perf_counter() - start:.0f}s: "
          f"{len(findings)} failed checks; report: {args.out / 'report.md'}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
