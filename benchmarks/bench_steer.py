"""Steered vs unsteered forward of a small Llama (random weights) on all norm sites, in each
``act_fast.steer`` mode, and the same maps as forward hooks written the way the AcT reference
does (cast to float32, boolean masked indexing, several passes; ``baselines.ReferenceStyleHook``).

Run: ``python -m pytest benchmarks/bench_steer.py --benchmark-only --benchmark-group-by=group``.

- ``unsteered``: the plain forward (the peer);
- ``fold``: maps without support and bias 0, ``mode="fold"`` (folded into the RMSNorm weights);
- ``fused``, ``op``: maps with a support ``[lo, hi]`` and a bias, ``mode="fused"`` / ``"op"``;
- ``multi``: 4 map sets over a batch of 8 rows (``handle.select``), ``mode="auto"``;
- ``hooks``: the support maps as reference-style forward hooks.

Each steered case also times a second, unsteered copy of the model interleaved with the steered
one (same rounds, alternating), so ``extra_info`` holds a paired ``slowdown`` and ``added_ms``
per forward that does not depend on what else the machine ran in between. On CPU the act_fast
ops take their pure-torch path, so CPU figures compare eager code paths only (docs/design.md §6:
absolute times hold only on a GPU); the GPU figures come from ``benchmarks/run_gpu.py``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from baselines import add_reference_hooks
from gpubench import models as M

import act_fast as af

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


CONFIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=512, rms_norm_eps=1e-5)
BATCH, TOKENS = 8, 64
STRENGTH = 0.8
ROUNDS = 30
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIG)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=DEVICE, dtype=DTYPE).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread on CPU: on a shared 2-core machine, spinning OpenMP workers make the
    timings of a small model swing by 10× with the load."""
    if DEVICE != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models(single_thread):
    """Two identical models: one gets steered, the other stays plain (the paired peer)."""
    return _model(), _model()


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, CONFIG["vocab_size"], (BATCH, TOKENS), generator=g).to(DEVICE)


@pytest.fixture(scope="module")
def channels(models, ids):
    plain = models[1]
    sites = af.sites(plain, "layernorm")
    return M.site_channels(plain, sites, {"input_ids": ids[:1, :4], "use_cache": False})


def _forward(model, ids):
    def fn():
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
        synchronize()
        return out

    return fn


def _paired(steered, plain, rounds: int = ROUNDS) -> tuple[float, float]:
    """Medians (s) of alternating steered / plain calls."""
    ts, tp = [], []
    for fn in (steered, plain):
        fn()
    for _ in range(rounds):
        t0 = time.perf_counter()
        steered()
        t1 = time.perf_counter()
        plain()
        t2 = time.perf_counter()
        ts.append(t1 - t0)
        tp.append(t2 - t1)
    return statistics.median(ts), statistics.median(tp)


def _apply(impl: str, model, channels):
    """Steers ``model``; returns (teardown, info)."""
    if impl == "unsteered":
        return (lambda: None), {}
    if impl == "hooks":
        handles = add_reference_hooks(model, M.random_maps(channels, "support", DEVICE), STRENGTH)
        return (lambda: [h.remove() for h in handles]), {"mode": "reference-style hooks"}
    if impl == "multi":
        sets = {f"s{i}": M.random_maps(channels, "support", DEVICE, seed=100 + i) for i in range(4)}
        handle = af.steer(model, sets, strength=STRENGTH, mode="auto")
        handle.select([f"s{i % 4}" for i in range(BATCH)])
    else:
        kind = "fold" if impl == "fold" else "support"
        handle = af.steer(model, M.random_maps(channels, kind, DEVICE), strength=STRENGTH, mode=impl)
    return handle.remove, {"mode": impl, "modes": M.mode_counts(handle)}


@pytest.mark.parametrize("impl", ["unsteered", "fold", "fused", "op", "multi", "hooks"])
def bench_steered_forward(impl, models, ids, channels, benchmark):
    benchmark.group = f"steered forward, Llama {CONFIG['num_hidden_layers']}x{CONFIG['hidden_size']}, {BATCH}x{TOKENS} tokens"
    steered_model, plain_model = models
    teardown, info = _apply(impl, steered_model, channels)
    try:
        steered, plain = _forward(steered_model, ids), _forward(plain_model, ids)
        steered()
        benchmark.pedantic(steered, rounds=ROUNDS, iterations=1, warmup_rounds=2)
        s, p = _paired(steered, plain)
    finally:
        teardown()
    benchmark.extra_info.update(info)
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["sites"] = len(channels)
    benchmark.extra_info["paired_steered_ms"] = round(s * 1e3, 4)
    benchmark.extra_info["paired_unsteered_ms"] = round(p * 1e3, 4)
    benchmark.extra_info["added_ms"] = round((s - p) * 1e3, 4)
    benchmark.extra_info["slowdown"] = round(s / p - 1, 4)


@pytest.mark.parametrize("dispatch", ["body", "custom op"])
def bench_decode_step_dispatch(dispatch, models, channels, benchmark, monkeypatch):
    """One decode-shaped forward (1 token, batch 1) with every norm site fused, calling the ops'
    bodies directly (plain eager inference, ``act_fast.ops.eager``) or forcing the custom ops'
    dispatch: the per-call Python cost that dominates small-row steering."""
    import act_fast.ops.eager as eager

    benchmark.group = f"decode step dispatch, Llama {CONFIG['num_hidden_layers']}x{CONFIG['hidden_size']}, 1 token"
    if dispatch == "custom op":
        monkeypatch.setattr(eager, "dispatcher_needed", lambda *args: True)
    steered_model, plain_model = models
    one = torch.zeros(1, 1, dtype=torch.long, device=DEVICE)
    handle = af.steer(steered_model, M.random_maps(channels, "support", DEVICE), strength=STRENGTH, mode="fused")
    try:
        steered, plain = _forward(steered_model, one), _forward(plain_model, one)
        benchmark.pedantic(steered, rounds=10 * ROUNDS, iterations=1, warmup_rounds=20)
        s, p = _paired(steered, plain, rounds=10 * ROUNDS)
    finally:
        handle.remove()
    benchmark.extra_info.update({"dispatch": dispatch, "sites": len(channels), "threads": torch.get_num_threads()})
    benchmark.extra_info["paired_steered_ms"] = round(s * 1e3, 4)
    benchmark.extra_info["paired_unsteered_ms"] = round(p * 1e3, 4)
    benchmark.extra_info["added_us_per_site"] = round((s - p) * 1e6 / len(channels), 2)
