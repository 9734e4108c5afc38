"""``act-fast build-cpu``: build the compiled CPU kernels ahead of time (:mod:`act_fast.build`)."""

from __future__ import annotations

import argparse

from act_fast.cli.common import CliError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-cpu",
        help="build the compiled CPU kernels into the cache (otherwise built on the first CPU op call)",
        description="Compiles csrc/ with ninja and the system C++ compiler into the act_fast cache folder "
        "($ACT_FAST_CACHE_DIR, else $XDG_CACHE_HOME/act_fast, else ~/.cache/act_fast), keyed by the torch "
        "version, the Python ABI, the machine and its vector instructions. Same as python -m act_fast.build.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cache has a build for this machine")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from act_fast.build import build_cpu
    from act_fast.ops.cpu_kernels import CpuKernelsUnavailable

    try:
        report = build_cpu(verbose=args.verbose, force=args.force)
    except CpuKernelsUnavailable as error:
        raise CliError(f"CPU kernels not built: {error}") from error
    how = f"compiled in {report.seconds:.0f} s" if report.compiled else "already built"
    print(f"CPU kernels {how}: {report.library} ({report.info})")
    return 0
