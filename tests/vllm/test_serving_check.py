"""The OpenAI server's request check (``BaseServing._check_model``, wrapped by the plugin) refuses bad
``vllm_xargs`` before any response is sent, so a streamed bad request gets HTTP 400 too (vLLM runs
``process_inputs`` only once a streamed response has started). On stand-ins; the load test
(test_load.py) sends streamed bad requests to a real server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

import act_fast as af
from engine_support import require_vllm

require_vllm()

from act_fast.vllm import plugin  # noqa: E402


@pytest.fixture
def maps_config(tmp_path):
    """additional_config with map sets a and b (λ range [-2, 2])."""
    files = {}
    for i, name in enumerate("ab"):
        g = torch.Generator().manual_seed(i)
        files[name] = str(af.SteeringMaps({"model.norm": af.AffineMap(torch.rand(8, generator=g), torch.rand(8, generator=g))}).save(tmp_path / f"{name}.safetensors"))
    return {"act_fast": {"maps": files, "strength_range": [-2, 2]}}


def _serving(additional_config, model_error=None):
    from vllm.entrypoints.serve.engine.serving import BaseServing

    async def check_model(self, request):
        return model_error

    processor = SimpleNamespace(_act_fast=plugin._FrontEnd(additional_config))
    serving = SimpleNamespace(input_processor=processor, create_error_response=BaseServing.create_error_response)
    wrapped = plugin._check_model(check_model)
    return lambda request: asyncio.run(wrapped(serving, request))


def test_bad_xargs_get_a_400_before_the_response_starts(maps_config):
    check = _serving(maps_config)
    error = check(SimpleNamespace(vllm_xargs={"act_fast_maps": "detox"}, stream=True))
    assert error is not None and error.error.code == 400 and error.error.param == "vllm_xargs"
    assert "unknown map set 'detox'" in error.error.message and "['a', 'b']" in error.error.message
    assert check(SimpleNamespace(vllm_xargs={"act_fast_maps": "b", "act_fast_strength": 0.5}, stream=True)) is None
    assert check(SimpleNamespace(vllm_xargs=None, stream=False)) is None
    out_of_range = check(SimpleNamespace(vllm_xargs={"act_fast_maps": "a", "act_fast_strength": 5}, stream=True))
    assert out_of_range.error.code == 400


def test_engine_without_map_sets_and_vllm_errors_pass_through(maps_config):
    error = _serving({})(SimpleNamespace(vllm_xargs={"act_fast_maps": "a"}))
    assert error.error.code == 400 and "this engine has no act_fast map sets" in error.error.message
    assert _serving({})(SimpleNamespace(vllm_xargs={"unrelated": 1})) is None
    earlier = object()
    assert _serving(maps_config, model_error=earlier)(SimpleNamespace(vllm_xargs={"act_fast_maps": "x"})) is earlier
