"""The plugin's wrappers on stand-ins (the engine tests run them inside vLLM): request validation
and the prefix-cache salt in the front end, beam search, the version check, Path values in
additional_config, and idempotent registration."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import act_fast as af
from engine_support import require_vllm

require_vllm()

from act_fast.vllm import plugin  # noqa: E402
from act_fast.vllm.config import file_digests, engine_config  # noqa: E402
from act_fast.vllm.salt import steered_salt  # noqa: E402


def _map_file(tmp_path, name, seed):
    g = torch.Generator().manual_seed(seed)
    return af.SteeringMaps({"model.norm": af.AffineMap(torch.rand(8, generator=g), torch.rand(8, generator=g))}).save(tmp_path / name)


@pytest.fixture
def additional_config(tmp_path):
    return {"act_fast": {"maps": {"a": str(_map_file(tmp_path, "a.safetensors", 0)), "b": str(_map_file(tmp_path, "b.safetensors", 1))},
                         "strength_range": [-2, 2]}}


def _processor(additional_config):
    """The wrapped process_inputs on a stand-in InputProcessor; the wrapped call returns an
    EngineCoreRequest stand-in carrying the prompt's cache_salt."""
    calls = []
    wrapped = plugin._process_inputs(lambda self, *a, **k: calls.append((a, k)) or SimpleNamespace(cache_salt=k.get("salt")))
    front = SimpleNamespace(_act_fast=plugin._FrontEnd(additional_config))
    return (lambda *a, **k: wrapped(front, *a, **k)), calls


def _params(extra):
    return SimpleNamespace(extra_args=extra)


def test_front_end_validates_before_processing(additional_config):
    process, calls = _processor(additional_config)
    assert process("r1", "prompt", _params({"act_fast_maps": "b", "act_fast_strength": 0.5}), supported_tasks=()).cache_salt
    assert process("r2", "prompt", params=_params(None)).cache_salt is None
    with pytest.raises(ValueError, match=r"request r3: unknown map set 'c'.*\['a', 'b'\]") as err:
        process("r3", "prompt", _params({"act_fast_maps": "c"}))
    from vllm.exceptions import VLLMValidationError

    assert isinstance(err.value, VLLMValidationError)  # the OpenAI server answers 400
    with pytest.raises(VLLMValidationError, match=r"request r4: act_fast_strength 2.5 is outside this engine's range \[-2.0, 2.0\]"):
        process("r4", "prompt", _params({"act_fast_maps": "a", "act_fast_strength": 2.5}))
    with pytest.raises(VLLMValidationError, match="finite in float32"):
        process("r5", "prompt", _params({"act_fast_maps": "a", "act_fast_strength": "1e39"}))
    assert len(calls) == 2


def test_engine_without_map_sets_refuses_steering_requests():
    process, calls = _processor({})
    assert process("r1", "prompt", _params({"unrelated": 1}), salt="s").cache_salt == "s"  # untouched
    with pytest.raises(ValueError, match="this engine has no act_fast map sets"):
        process("r2", "prompt", _params({"act_fast_maps": "a"}))


def test_front_end_salts(additional_config):
    """Regression (issue 20): the salt was the plain text ``act_fast:<set>:<λ>``, so an unsteered
    request sending that salt stored KV blocks that steered requests then reused."""
    process, _ = _processor(additional_config)
    digests = file_digests(engine_config(additional_config))

    def salt(extra, client=None):
        return process("r", "p", _params(extra), salt=client).cache_salt

    steered = salt({"act_fast_maps": "a", "act_fast_strength": 1.0})
    assert steered == steered_salt(None, [("a", digests["a"], 1.0)])
    assert salt({"act_fast_maps": "a", "act_fast_strength": 0.0}) is None  # λ = 0 is unsteered
    assert salt(None) is None
    assert salt({"act_fast_strength": 1.0, "act_fast_maps": "a"}, client="tenant-7") == steered_salt("tenant-7", [("a", digests["a"], 1.0)])
    for client in ("act_fast:a:1.0", steered):  # an unsteered client naming a steered salt
        assert salt(None, client=client) != steered
        assert salt(None, client=client) == salt({"act_fast_maps": "a", "act_fast_strength": 0}, client=client)
    assert len({steered, salt({"act_fast_maps": "b", "act_fast_strength": 1.0}), salt({"act_fast_maps": "a", "act_fast_strength": 0.5})}) == 3


def test_beam_search_with_steering_is_refused():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.exceptions import VLLMValidationError

    plugin.register()
    request = CompletionRequest(model="m", prompt="p", use_beam_search=True, n=2, vllm_xargs={"act_fast_maps": "a"})
    with pytest.raises(VLLMValidationError, match=r"act_fast steering \(act_fast_maps\) cannot be combined with use_beam_search"):
        request.to_beam_search_params(8)
    assert CompletionRequest(model="m", prompt="p", use_beam_search=True, n=2).to_beam_search_params(8).beam_width == 2
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], use_beam_search=True,
                                 vllm_xargs={"act_fast_strength": 0.5})
    with pytest.raises(VLLMValidationError, match="cannot be combined with use_beam_search"):
        chat.to_beam_search_params(8)


def test_unknown_vllm_version_fails_engine_start_in_one_line(monkeypatch, assets):
    from vllm.engine.arg_utils import EngineArgs

    from act_fast.vllm import version

    plugin.register()
    assert version.is_supported("0.32.0") and version.is_supported("0.32.1.dev4+gabc") and not version.is_supported("0.99.0")
    monkeypatch.setattr(version, "installed_version", lambda: "0.99.0")
    args = EngineArgs(model=str(assets.checkpoint), additional_config={"act_fast": {"maps": {"a": str(assets.map_files["a"])}}})
    with pytest.raises(version.UnsupportedVllmVersionError) as err:
        args.create_engine_config()
    message = str(err.value)
    assert "\n" not in message and f"supports vLLM {version.SUPPORTED_RANGE}" in message and "has vLLM 0.99.0" in message
    EngineArgs(model=str(assets.checkpoint)).create_engine_config()  # engines without act_fast are not affected


def test_path_values_are_accepted_and_hashable(assets):
    """Regression (issue 20): a pathlib.Path map file broke vLLM's config hash (json.dumps)."""
    from vllm.engine.arg_utils import EngineArgs

    plugin.register()
    path = Path(assets.map_files["a"])
    config = EngineArgs(model=str(assets.checkpoint), additional_config={"act_fast": {"maps": {"a": path}}}).create_engine_config()
    assert config.additional_config["act_fast"]["maps"]["a"] == str(path)
    assert config.compute_hash()


def test_register_is_idempotent():
    from vllm.v1.engine.input_processor import InputProcessor

    plugin.register()
    first = InputProcessor.process_inputs
    plugin.register()
    assert InputProcessor.process_inputs is first
    assert getattr(first, plugin._PATCHED)


def test_front_end_salt_covers_the_ordered_chain(additional_config):
    """Composition (issue 22): the salt is over the whole ordered chain of (set, file digest, λ);
    a chain of one is the one-set form, and a pair at λ = 0 is dropped (it steers nothing)."""
    process, _ = _processor(additional_config)
    digests = file_digests(engine_config(additional_config))

    def salt(extra, client=None):
        return process("r", "p", _params(extra), salt=client).cache_salt

    ab = salt({"act_fast_maps": {"a": 0.8, "b": 0.5}})
    assert ab == steered_salt(None, [("a", digests["a"], 0.8), ("b", digests["b"], 0.5)])
    assert ab == salt({"act_fast_maps": '{"a": 0.8, "b": 0.5}'}) == salt({"act_fast_maps": ["a", "b"], "act_fast_strength": [0.8, 0.5]})
    assert salt({"act_fast_maps": {"b": 0.5, "a": 0.8}}) != ab  # the order is part of the steering
    assert salt({"act_fast_maps": {"a": 0.8, "b": 0.25}}) != ab
    assert salt({"act_fast_maps": {"a": 0.8}}) == salt({"act_fast_maps": "a", "act_fast_strength": 0.8})
    assert salt({"act_fast_maps": {"a": 0.8, "b": 0.0}}) == salt({"act_fast_maps": "a", "act_fast_strength": 0.8})
    assert salt({"act_fast_maps": {"a": 0.0, "b": 0.0}}, client="t") == salt(None, client="t")
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match=r"unknown map set \['c'\] in act_fast_maps; this engine's map sets are \['a', 'b'\]"):
        salt({"act_fast_maps": {"a": 1.0, "c": 1.0}})
    with pytest.raises(VLLMValidationError, match=r"act_fast_strength of map set 'b' 3.0 is outside|outside this engine's range"):
        salt({"act_fast_maps": {"a": 1.0, "b": 3.0}})
