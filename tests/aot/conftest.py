"""The AOT compile of the CI workloads, once per session: recorded here (launches skipped), compiled
for sm_80 and sm_90 in a separate process without the interpreter."""

import os

import pytest

from act_fast.aot.compile import DEFAULT_ARCHS, CompileResult
from act_fast.aot.pipeline import compile_specs, record_workloads
from act_fast.aot.record import KernelSpec
from act_fast.aot.workloads import WORKLOADS


@pytest.fixture(scope="session")
def aot_compiled(tmp_path_factory) -> tuple[list[KernelSpec], dict[tuple[str, int], CompileResult]]:
    specs = record_workloads(WORKLOADS)
    results = compile_specs(specs, DEFAULT_ARCHS, jobs=os.cpu_count(), workdir=tmp_path_factory.mktemp("aot"), timeout=900)
    return specs, results
