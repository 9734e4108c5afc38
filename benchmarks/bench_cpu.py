"""The CPU targets of docs/design.md §6 (issue 13, item 4): the compiled CPU kernels (csrc/) on
[4096, 4096], one intra-op thread, each next to its peer, timed alternately in the same run.

| case | act_fast | peer | target |
| --- | --- | --- | --- |
| ``transport_out`` | ``affine_transport(x, w, b, 0.8, lo, hi, out=o)`` | ``o.copy_(x)`` | ≤ 1.5× (fp32), ≤ 2.5× (bf16, fp16; AVX512 and AVX2) |
| ``transport_new`` | ``affine_transport(x, w, b, 0.8, lo, hi)`` (a new output) | ``x.clone()`` | ≤ 1.6× (fp32), ≤ 2.6× (bf16) |
| ``rms_norm_transport`` | ``rms_norm_transport(x, nw, w, b, 0.8, lo, hi, cast_before_scale=True)`` | ``F.rms_norm(x, (C,), nw)`` | ≤ 1.15× |
| ``layer_norm_transport`` | ``layer_norm_transport(x, nw, nb, w, b, 0.8, lo, hi)`` | ``F.layer_norm(x, (C,), nw, nb)`` | none (for information) |
| ``stats_update`` | ``ChannelStats.update(x)`` (calibrated on ``x``, default resolution) | ``x.float().sum(0)`` | ≤ 10× |

At [4096, 4096] torch's ``F.rms_norm`` on CPU is several eager passes, each writing a fresh
64 MB intermediate (page faults), so the fused op wins by a wide margin there; the
``rms_norm_transport`` cases at [32, 4096] and [256, 4096] (no target, for information) compare
where those intermediates stay in the allocator's cache, including act_fast's per-call Python
overhead (validation and custom-op dispatch).

The maps have a support ``[-2, 2]`` and a bias. Each case times the act_fast call with
pytest-benchmark and then the pair in interleaved rounds (``act_fast.bench.timing``); ``extra_info`` holds the paired
medians, their ratio and the spread (interquartile range / median), in wall-clock time and in the
thread's CPU time. The CPU time does not count the time the thread waits while other processes
run, so on a shared machine its ratio is the stable one; both are reported.

Run (``TRITON_INTERPRET`` unset)::

    python -m pytest benchmarks/bench_cpu.py --benchmark-only -p no:randomly \\
        --benchmark-json benchmarks/results/cpu-kernels-<date>.json

It prints one line per case with both ratios and the verdict against the target.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

import act_fast as af
from act_fast.bench.timing import interleaved_rounds, spread
from act_fast.ops import cpu_kernels, set_backend

SHAPE = (4096, 4096)
ROUNDS = 15
# name: (op, dtype, peer, target ratio or None, rows); every case has 4096 channels
CASES = {
    "transport_out-fp32": ("transport_out", torch.float32, "copy", 1.5, 4096),
    "transport_out-bf16": ("transport_out", torch.bfloat16, "copy", 2.5, 4096),
    "transport_out-fp16": ("transport_out", torch.float16, "copy", 2.5, 4096),
    "transport_new-fp32": ("transport_new", torch.float32, "clone", 1.6, 4096),
    "transport_new-bf16": ("transport_new", torch.bfloat16, "clone", 2.6, 4096),
    "rms_norm_transport-fp32": ("rms_norm_transport", torch.float32, "F.rms_norm", 1.15, 4096),
    "rms_norm_transport-bf16": ("rms_norm_transport", torch.bfloat16, "F.rms_norm", 1.15, 4096),
    "layer_norm_transport-fp32": ("layer_norm_transport", torch.float32, "F.layer_norm", None, 4096),
    "layer_norm_transport-bf16": ("layer_norm_transport", torch.bfloat16, "F.layer_norm", None, 4096),
    "rms_norm_transport-fp32-256rows": ("rms_norm_transport", torch.float32, "F.rms_norm", None, 256),
    "rms_norm_transport-bf16-256rows": ("rms_norm_transport", torch.bfloat16, "F.rms_norm", None, 256),
    "rms_norm_transport-fp32-32rows": ("rms_norm_transport", torch.float32, "F.rms_norm", None, 32),
    "rms_norm_transport-bf16-32rows": ("rms_norm_transport", torch.bfloat16, "F.rms_norm", None, 32),
    "stats_update-fp32": ("stats_update", torch.float32, "x.float().sum(0)", 10.0, 4096),
    "stats_update-bf16": ("stats_update", torch.bfloat16, "x.float().sum(0)", 10.0, 4096),
}


@pytest.fixture(scope="module")
def cpu_backend():
    """One intra-op thread and the compiled CPU kernels (the suite is about them)."""
    if torch.cuda.is_available():
        pytest.skip("the CPU kernel targets are measured on a CPU-only run")
    try:
        previous_backend = set_backend("cpu")
    except RuntimeError as error:
        pytest.skip(f"compiled CPU kernels unavailable: {error}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous_threads)
    set_backend(previous_backend)


def _calls(op: str, dtype: torch.dtype, rows: int):
    """``(act_fast call, peer call)`` on fresh ``[rows, 4096]`` inputs."""
    g = torch.Generator().manual_seed(0)
    R, C = rows, SHAPE[1]
    x = torch.randn(R, C, generator=g).to(dtype)
    w = 1.0 + 0.1 * torch.randn(C, generator=g)
    b = 0.1 * torch.randn(C, generator=g)
    lo, hi = torch.full((C,), -2.0), torch.full((C,), 2.0)
    nw = (1.0 + 0.1 * torch.randn(C, generator=g)).to(dtype)
    nb = (0.1 * torch.randn(C, generator=g)).to(dtype)
    if op == "stats_update":
        stats = af.ChannelStats(C).calibrate(x)
        return (lambda: stats.update(x)), (lambda: x.float().sum(0))
    if op == "transport_out":
        out, copy_out = torch.empty_like(x), torch.empty_like(x)
        return (lambda: af.ops.affine_transport(x, w, b, 0.8, lo, hi, out=out)), (lambda: copy_out.copy_(x))
    if op == "transport_new":
        return (lambda: af.ops.affine_transport(x, w, b, 0.8, lo, hi)), (lambda: x.clone())
    if op == "rms_norm_transport":
        return (
            lambda: af.ops.rms_norm_transport(x, nw, w, b, 0.8, lo, hi, eps=1e-6, cast_before_scale=True),
            lambda: F.rms_norm(x, (C,), nw, 1e-6),
        )
    return (
        lambda: af.ops.layer_norm_transport(x, nw, nb, w, b, 0.8, lo, hi, eps=1e-5),
        lambda: F.layer_norm(x, (C,), nw, nb, 1e-5),
    )


def paired(ours, peer, rounds: int = ROUNDS) -> dict[str, float]:
    """``ours`` and ``peer`` in interleaved rounds (``act_fast.bench.timing``, shared with
    ``act-fast bench``): medians (ms) and spreads in wall-clock and thread CPU time, and the
    ratios ours / peer of the medians."""
    fns = {"ours": ours, "peer": peer}
    ours(), peer()

    def run(name: str) -> dict[str, float]:
        w0, c0 = time.perf_counter(), time.thread_time()
        fns[name]()
        c1, w1 = time.thread_time(), time.perf_counter()
        return {"wall": w1 - w0, "cpu": c1 - c0}

    samples = interleaved_rounds(list(fns), rounds, run)
    times = {f"{name}_{clock}": samples[name][clock] for name in fns for clock in ("wall", "cpu")}
    result = {f"{k}_ms": round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
    result.update({f"{k}_spread": round(spread(v), 3) for k, v in times.items()})
    for clock in ("wall", "cpu"):
        result[f"ratio_{clock}"] = round(statistics.median(times[f"ours_{clock}"]) / statistics.median(times[f"peer_{clock}"]), 3)
    return result


@pytest.mark.parametrize("case", list(CASES))
def bench_cpu_target(case, cpu_backend, benchmark, capsys):
    op, dtype, peer_name, target, rows = CASES[case]
    benchmark.group = f"CPU kernels {rows}x{SHAPE[1]}, one thread"
    ours, peer = _calls(op, dtype, rows)
    rounds = ROUNDS * max(1, SHAPE[0] // (8 * rows))  # small cases: more rounds
    benchmark.pedantic(ours, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = paired(ours, peer, rounds)
    benchmark.extra_info.update(stats)
    benchmark.extra_info.update(
        {"peer": peer_name, "target": target, "shape": [rows, SHAPE[1]], "threads": torch.get_num_threads(), "kernels": cpu_kernels.status()}
    )
    verdict = ""
    if target is not None:
        verdict = "  target ≤ {:.2f}: {} (cpu) / {} (wall)".format(
            target, "met" if stats["ratio_cpu"] <= target else "MISSED", "met" if stats["ratio_wall"] <= target else "MISSED"
        )
    with capsys.disabled():
        print(
            f"\n{case:32s} vs {peer_name:12s} ratio {stats['ratio_cpu']:.2f}× cpu time "
            f"({stats['ours_cpu_ms']:.3g} / {stats['peer_cpu_ms']:.3g} ms, spread {stats['ours_cpu_spread']:.2f}/{stats['peer_cpu_spread']:.2f}), "
            f"{stats['ratio_wall']:.2f}× wall ({stats['ours_wall_ms']:.3g} / {stats['peer_wall_ms']:.3g} ms, "
            f"spread {stats['ours_wall_spread']:.2f}/{stats['peer_wall_spread']:.2f}){verdict}"
        )
