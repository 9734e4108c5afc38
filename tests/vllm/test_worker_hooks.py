"""The runner hooks of act_fast.vllm.worker on stand-ins for vLLM's V1 and V2 model runners: the
per-token buffers follow each step's request order and token counts, new requests are learned from
the scheduler output and finished ones forgotten. (The engine tests run the real V1 runner; vLLM
0.32 uses V2 only on GPU.)"""

from types import SimpleNamespace

import numpy as np

from engine_support import require_vllm

require_vllm()

from act_fast.vllm.buffers import TokenControl  # noqa: E402
from act_fast.vllm.config import EngineSteeringConfig  # noqa: E402
from act_fast.vllm.worker import WorkerSteering, _hook_execute, _hook_v1, _hook_v2  # noqa: E402


def _new(req_id, extra):
    return SimpleNamespace(req_id=req_id, sampling_params=SimpleNamespace(extra_args=extra))


def _steering():
    config = EngineSteeringConfig({"a": "a.safetensors", "b": "b.safetensors"})
    return WorkerSteering(config, TokenControl(32, "cpu"))


def _step(new=(), finished=()):
    return SimpleNamespace(scheduled_new_reqs=list(new), finished_req_ids=set(finished))


def test_v1_hook_fills_in_input_batch_order():
    steering = _steering()
    seen = []
    runner = SimpleNamespace(
        input_batch=SimpleNamespace(req_ids=["r2", "r0", "r1"]),
        _prepare_inputs=lambda so, counts: seen.append((steering.control.map_index[:6].tolist(), steering.control.strength[:6].tolist())),
        execute_model=lambda so, *a, **k: runner._prepare_inputs(so, np.array([1, 3, 2], dtype=np.int32)),
    )
    _hook_execute(runner, steering)
    _hook_v1(runner, steering)
    step = _step([_new("r0", {"act_fast_maps": "b", "act_fast_strength": 0.5}), _new("r1", None),
                  _new("r2", {"act_fast_maps": "a"}), _new("bad", {"act_fast_maps": "nope"})])
    runner.execute_model(step)
    assert seen == [([1, 2, 2, 2, 0, 0], [1.0, 0.5, 0.5, 0.5, 0.0, 0.0])]
    assert set(steering.requests) == {"r0", "r2"}  # unsteered and invalid requests are not kept
    runner.execute_model(_step(finished=["r0"]))
    assert set(steering.requests) == {"r2"}


def test_v2_hook_reads_the_returned_input_batch():
    steering = _steering()
    steering.track(_step([_new("x", {"act_fast_maps": "a", "act_fast_strength": -1}), _new("y", {"act_fast_maps": "b"})]))
    batch = SimpleNamespace(req_ids=["y", "z", "x"], num_reqs=3, num_scheduled_tokens=np.array([2, 1, 1, 0], dtype=np.int32))
    runner = SimpleNamespace(prepare_inputs=lambda *a, **k: batch)
    _hook_v2(runner, steering)
    assert runner.prepare_inputs("so", "state", "desc", 0) is batch
    assert steering.control.map_index[:5].tolist() == [2, 2, 0, 1, 0]
    assert steering.control.strength[:5].tolist() == [1.0, 1.0, 0.0, -1.0, 0.0]
