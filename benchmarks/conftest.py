"""Benchmarks run on CUDA when there is a GPU (Triton compiled) and on CPU otherwise, where the
ops take their pure-torch path. Never under the Triton interpreter: its timings mean nothing."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    raise RuntimeError("unset TRITON_INTERPRET before benchmarking: interpreted kernels are not timed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def timed(benchmark):
    """``timed(fn, *args, bytes_moved=N)``: benchmarks ``fn`` (synchronised) and records GB/s."""

    def run(fn, *args, bytes_moved: int):
        def call():
            out = fn(*args)
            synchronize()
            return out

        call()  # warm-up (Triton compile, allocator)
        result = benchmark.pedantic(call, rounds=30, iterations=3, warmup_rounds=2)
        benchmark.extra_info["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
        benchmark.extra_info["bytes"] = bytes_moved
        benchmark.extra_info["GB/s"] = round(bytes_moved / benchmark.stats.stats.median / 1e9, 2)
        return result

    return run
