"""The plugin's wrappers on stand-ins (the engine tests run them inside vLLM): request validation in
the front end, the prefix-cache salt in the engine core, and idempotent registration."""

from types import SimpleNamespace

import pytest

from engine_support import require_vllm

require_vllm()

from act_fast.vllm import plugin  # noqa: E402


def _processor(sets):
    calls = []
    wrapped = plugin._process_inputs(lambda self, *a, **k: calls.append((a, k)) or "request")
    return (lambda *a, **k: wrapped(SimpleNamespace(_act_fast_sets=sets), *a, **k)), calls


def test_front_end_validates_before_processing():
    process, calls = _processor(("a", "b"))
    ok = SimpleNamespace(extra_args={"act_fast_maps": "b", "act_fast_strength": 0.5})
    assert process("r1", "prompt", ok, supported_tasks=()) == "request"
    assert process("r2", "prompt", params=SimpleNamespace(extra_args=None)) == "request"
    with pytest.raises(ValueError, match=r"request r3: unknown map set 'c'.*\['a', 'b'\]") as err:
        process("r3", "prompt", SimpleNamespace(extra_args={"act_fast_maps": "c"}))
    from vllm.exceptions import VLLMValidationError

    assert isinstance(err.value, VLLMValidationError)  # the OpenAI server answers 400
    assert len(calls) == 2


def test_engine_without_map_sets_refuses_steering_requests():
    process, calls = _processor(None)
    assert process("r1", "prompt", SimpleNamespace(extra_args={"unrelated": 1})) == "request"
    with pytest.raises(ValueError, match="this engine has no act_fast map sets"):
        process("r2", "prompt", SimpleNamespace(extra_args={"act_fast_maps": "a"}))


def test_engine_core_salts_steered_requests_only():
    made = []
    wrapped = plugin._from_engine_core_request(classmethod(lambda cls, request, hasher: made.append(request.cache_salt)))
    make = wrapped.__get__(None, object)

    def request(extra, salt=None):
        return SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra), cache_salt=salt)

    make(request(None), None)
    make(request({"act_fast_maps": "a", "act_fast_strength": 0.0}), None)  # λ = 0 is unsteered
    make(request({"act_fast_maps": "a", "act_fast_strength": 0.5}), None)
    make(request({"act_fast_maps": "a", "act_fast_strength": 0.5}, salt="tenant-7"), None)
    make(request({"act_fast_maps": "a", "act_fast_strength": "x"}), None)  # invalid: runs unsteered
    assert made == [None, None, "act_fast:a:0.5", "tenant-7\x00act_fast:a:0.5", None]


def test_register_is_idempotent():
    from vllm.v1.engine.input_processor import InputProcessor

    plugin.register()
    first = InputProcessor.process_inputs
    plugin.register()
    assert InputProcessor.process_inputs is first
    assert getattr(first, plugin._PATCHED)
