"""``act-fast build-cpu``: builds (or finds) the compiled CPU kernels; a failed build is one line, status 2."""

import pytest

from act_fast import cli
from act_fast.ops import cpu_kernels


def test_build_cpu_reports_the_library(capsys):
    missing = cpu_kernels.missing_tools()
    if missing:
        pytest.skip(f"compiled CPU kernels cannot be built here: {missing}")
    assert cli.main(["build-cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU kernels ") and str(cpu_kernels.library_path()) in out


def test_build_cpu_failure_is_one_line(monkeypatch, capsys):
    import act_fast.build

    def fail(verbose=False, force=False):
        raise cpu_kernels.CpuKernelsUnavailable("no C++ compiler found (set CXX)")

    monkeypatch.setattr(act_fast.build, "build_cpu", fail)
    assert cli.main(["build-cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["act-fast build-cpu: error: CPU kernels not built: no C++ compiler found (set CXX)"]
