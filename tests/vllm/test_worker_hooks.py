"""The runner hooks of act_fast.vllm.worker on stand-ins for vLLM's V1 and V2 model runners: the
per-token buffers follow each step's request order and token counts, new requests are learned from
the scheduler output and finished ones forgotten. (The engine tests run the real V1 runner; vLLM
0.32 uses V2 only on GPU.)"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine_support import require_vllm

require_vllm()

from act_fast.vllm.buffers import TokenControl  # noqa: E402
from act_fast.vllm.config import EngineSteeringConfig  # noqa: E402
from act_fast.vllm.worker import (  # noqa: E402
    UnsupportedEngineError, WorkerSteering, _check_engine, _hook_execute, _hook_v1, _hook_v2, non_finite_blocks,
)


def _new(req_id, extra):
    return SimpleNamespace(req_id=req_id, sampling_params=SimpleNamespace(extra_args=extra))


def _steering(zeroed=None):
    config = EngineSteeringConfig({"a": "a.safetensors", "b": "b.safetensors"})
    if zeroed is None:
        return WorkerSteering(config, TokenControl(32, "cpu"))
    return WorkerSteering(config, TokenControl(32, "cpu"), zeroed.append, lambda: [4])


def _step(new=(), finished=(), cached=None):
    return SimpleNamespace(scheduled_new_reqs=list(new), finished_req_ids=set(finished), scheduled_cached_reqs=cached)


def _new_blocks(req_id, extra, blocks, computed=0):
    return SimpleNamespace(req_id=req_id, sampling_params=SimpleNamespace(extra_args=extra), block_ids=(blocks,), num_computed_tokens=computed)


def _cached(req_ids, new_block_ids, computed=None, resumed=()):
    return SimpleNamespace(req_ids=req_ids, new_block_ids=[(b,) if b is not None else None for b in new_block_ids],
                           num_computed_tokens=computed or [0] * len(req_ids), resumed_req_ids=set(resumed))


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


def test_blocks_a_steered_request_wrote_are_zeroed_before_reuse():
    """Block size 4. A steered request's blocks are zeroed when vLLM hands them out again as new
    blocks (to anyone), never when they are shared as prefix-cache hits, and unsteered blocks never."""
    zeroed = []
    steering = _steering(zeroed)
    steering.track(_step([_new_blocks("s", {"act_fast_maps": "a"}, [3, 7]), _new_blocks("u", None, [5])]))
    steering.track(_step(cached=_cached(["s", "u"], [[9], [6]])))  # decode steps grow both requests
    assert zeroed == [] and steering.tainted == {3, 7, 9}
    # "s" finished; a new unsteered request gets 9 and 5 fresh, another shares 3 and 7 as 8 cached tokens.
    steering.track(_step([_new_blocks("n", None, [9, 5]), _new_blocks("h", {"act_fast_maps": "a"}, [3, 7, 2], computed=8)], finished=["s"]))
    assert zeroed == [[9]]  # block 5 was only ever unsteered; 3 and 7 are prefix hits of "h"
    assert steering.tainted == {3, 7, 2}
    # A resumed (preempted) request gets its whole block list again: the computed part is not zeroed.
    steering.track(_step(cached=_cached(["r"], [[3, 2, 11]], computed=[4], resumed=["r"])))
    assert zeroed == [[9], [2]]


def test_adaptive_verification_is_refused_at_load_time():
    """Regression (issue 20): the check read runner.adaptive_verification, which vLLM sets only
    after load (None when the worker installs steering); read what it is built from."""
    config = SimpleNamespace(
        parallel_config=SimpleNamespace(), compilation_config=SimpleNamespace(inductor_compile_config={}),
        device_config=SimpleNamespace(device=SimpleNamespace(type="cpu")), speculative_config=None,
    )
    _check_engine(config, SimpleNamespace(adaptive_verification=None))
    runner = SimpleNamespace(adaptive_verification=None, speculator=SimpleNamespace(enable_adaptive_verification=True))
    with pytest.raises(UnsupportedEngineError, match="adaptive speculative verification"):
        _check_engine(config, runner)
    config.speculative_config = SimpleNamespace(enable_adaptive_verification=True)
    with pytest.raises(UnsupportedEngineError, match="adaptive speculative verification"):
        _check_engine(config, SimpleNamespace(adaptive_verification=None))


def test_a_steered_request_that_left_non_finite_blocks_is_flagged():
    zeroed, checked = [], []
    config = EngineSteeringConfig({"a": "a.safetensors", "b": "b.safetensors"})
    steering = WorkerSteering(config, TokenControl(32, "cpu"), zeroed.append, lambda: [4],
                              lambda ids: checked.append(list(ids)) or [b for b in ids if b == 7])
    steering.track(_step([_new_blocks("s", {"act_fast_maps": "b", "act_fast_strength": 2.0}, [3, 7]),
                          _new_blocks("t", {"act_fast_maps": "a"}, [4])]))
    assert steering.flagged == {}
    steering.track(_step([_new_blocks("n", None, [7, 4])], finished=["s", "t"]))
    assert checked == [[4, 7]] and zeroed == [[4, 7]]
    assert steering.flagged == {"s": (("b", 2.0),)}  # "t" left finite values: not flagged


def test_a_composed_request_that_left_non_finite_blocks_is_flagged_with_its_chain():
    zeroed = []
    config = EngineSteeringConfig({"a": "a.safetensors", "b": "b.safetensors"})
    steering = WorkerSteering(config, TokenControl(32, "cpu"), zeroed.append, lambda: [4], lambda ids: [b for b in ids if b == 5])
    steering.track(_step([_new_blocks("c", {"act_fast_maps": {"b": 0.5, "a": 3.0}}, [5])]))
    steering.track(_step([_new_blocks("n", None, [5])], finished=["c"]))
    assert zeroed == [[5]]
    assert steering.flagged == {"c": (("b", 0.5), ("a", 3.0))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_non_finite_blocks_finds_each_kind_in_any_layer(dtype):
    """The CPU check behind the flag: NaN, +inf and −inf anywhere in a block (first, middle, last
    element) of any layer, and never a finite block, however large its values."""
    layers = [torch.randn(12, 2, 5, 3).to(dtype) for _ in range(3)]
    layers[0][2] = torch.finfo(dtype).max  # finite at the limit
    layers[0][3].view(-1)[0] = float("nan")
    layers[1][5].view(-1)[-1] = float("inf")
    layers[2][8].view(-1)[14] = -float("inf")
    layers[2][11].view(-1)[29] = float("nan")
    assert non_finite_blocks(layers, [0, 2, 3, 5, 8, 9]) == [3, 5, 8]
    assert non_finite_blocks(layers, [11, 1]) == [11]
    assert non_finite_blocks(layers, [2, 4]) == []
    assert layers[0][3].view(-1)[0].isnan() and layers[0][2].eq(torch.finfo(dtype).max).all()  # the caches are left as they were


def test_non_finite_blocks_in_float8_caches_and_raw_bytes():
    """float8 caches (vLLM's fp8 KV cache) are checked too; a cache of raw bytes is skipped, never a
    crash of the step."""
    e5m2 = torch.zeros(6, 2, 8).to(torch.float8_e5m2)
    e5m2[1].view(-1)[3] = float("inf")
    e5m2[4].view(-1)[15] = float("nan")
    e4m3 = torch.zeros(6, 2, 8).to(torch.float8_e4m3fn)
    e4m3[2].view(-1)[0] = float("nan")  # e4m3fn has NaN, no inf
    raw = torch.full((6, 16), 255, dtype=torch.uint8)
    assert non_finite_blocks([e5m2, e4m3, raw], [0, 1, 2, 3, 4, 5]) == [1, 2, 4]
    assert non_finite_blocks([raw], [0, 1]) == []
