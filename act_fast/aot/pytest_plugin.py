"""pytest plugin: records the specialization of every Triton launch of a test run.

    python -m pytest -p act_fast.aot.pytest_plugin --aot-record specs.json [pytest args]

Launches run as usual (the tests check their results); each spec is labelled with the ids of the
tests that launched it. Without a GPU, ``TRITON_INTERPRET=1`` must be in the environment before
pytest starts (this plugin is imported before the tests' conftest, and importing it imports
act_fast): ``python -m act_fast.aot --all`` sets it.
"""

from __future__ import annotations

import os

import pytest

_recorder = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--aot-record", metavar="PATH", default=None, help="write the Triton specializations launched by the tests here (JSON)")


def pytest_configure(config: pytest.Config) -> None:
    global _recorder
    path = config.getoption("--aot-record")
    if not path:
        return
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise pytest.UsageError("--aot-record without a GPU needs TRITON_INTERPRET=1 in the environment before pytest starts")
    from act_fast.aot.record import LaunchRecorder

    _recorder = LaunchRecorder(execute=True).__enter__()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    if _recorder is None:
        yield
        return
    with _recorder.workload(item.nodeid):  # setup, call and teardown
        yield


def pytest_unconfigure(config: pytest.Config) -> None:
    global _recorder
    if _recorder is None:
        return
    from act_fast.aot.record import save_specs

    _recorder.__exit__(None, None, None)
    save_specs(_recorder.specs, config.getoption("--aot-record"))
    _recorder = None
