"""Helpers of the command-line tests: data files, running ``act-fast`` as a subprocess and under
torchrun, and comparing statistics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tolerances import TOLERANCES

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "act_fast" / "data"
COOKING, FOOTBALL = DATA / "cooking.txt", DATA / "football.txt"
# State entries that are exact integer counts (or exact extrema / settings) in any merge order;
# mean and m2 are float64 Chan merges whose rounding depends on the merge order.
ORDER_DEPENDENT = frozenset({"mean", "m2"})


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: this checkout first on the path, no hub, one thread (as
    torchrun gives each process), the Triton interpreter without a GPU."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    env.update(extra)
    return env


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "act_fast.cli", *map(str, args)]


def torchrun_command(nproc: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "act_fast.cli", *map(str, args)]


def run(cmd: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(**env), cwd=REPO)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def assert_same_stats(a: dict, b: dict, *, moments_exact: bool) -> None:
    """Every state entry of every site equal (``torch.equal``); ``mean`` / ``m2`` equal up to float64
    rounding when ``moments_exact`` is False (a different merge order)."""
    assert list(a) == list(b)
    for site in a:
        sa, sb = a[site].state_dict(), b[site].state_dict()
        assert sa.keys() == sb.keys(), site
        for key in sa:
            if key in ORDER_DEPENDENT and not moments_exact:
                torch.testing.assert_close(sa[key], sb[key], **TOLERANCES[torch.float64], msg=f"{site}/{key}")
            else:
                assert torch.equal(sa[key], sb[key]), f"{site}/{key} differs"
