"""Builds the compiled CPU kernels ahead of time: ``python -m act_fast.build`` (the ``act-fast
build-cpu`` subcommand calls :func:`build_cpu`).

Without it the kernels are built on the first op call on a CPU tensor; building ahead of time
moves that minute out of the first request (a container image, a CI cache). The library goes to
the cache folder of :mod:`act_fast.ops.cpu_kernels` (``$ACT_FAST_CACHE_DIR``, else
``$XDG_CACHE_HOME/act_fast``, else ``~/.cache/act_fast``), under a key of the torch version, the
Python ABI, the machine, the vector instructions and the sources.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_cpu` did: the library's path, whether it was compiled now (else it was
    already in the cache), the seconds it took and the build's vector instructions."""

    library: Path
    compiled: bool
    seconds: float
    info: str


def build_cpu(verbose: bool = False, force: bool = False) -> BuildReport:
    """Builds (unless cached; ``force``: rebuild) and loads the compiled CPU kernels.

    Raises:
        act_fast.ops.cpu_kernels.CpuKernelsUnavailable: no compiler or ninja, or the build failed
            (the message says why).
    """
    import torch

    from act_fast.ops import cpu_kernels

    cached = cpu_kernels.library_path().is_file()
    start = time.perf_counter()
    library = cpu_kernels.load(verbose=verbose, force=force)
    return BuildReport(library, force or not cached, time.perf_counter() - start, torch.ops.act_fast_cpu.build_info())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m act_fast.build",
        description="build the compiled CPU kernels of act_fast into the cache (otherwise built on first use)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has a build for this machine")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    from act_fast.ops.cpu_kernels import CpuKernelsUnavailable

    try:
        report = build_cpu(verbose=args.verbose, force=args.force)
    except CpuKernelsUnavailable as error:
        print(f"act_fast: CPU kernels not built: {error}", file=sys.stderr)
        return 1
    how = f"compiled in {report.seconds:.0f} s" if report.compiled else "already built"
    print(f"act_fast: CPU kernels {how}: {report.library} ({report.info})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
