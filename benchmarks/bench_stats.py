"""``ChannelStats.update`` against reading the same tensor once (``x.float().sum(0)``).

Run: ``python -m pytest benchmarks/bench_stats.py --benchmark-group-by=param:shape,param:dtype``.
On CUDA ``update`` runs the fused Triton kernel; on CPU the pure-torch float64 reference (CPU
figures are ratios only, DESIGN.md §6). Target on GPU: ``update`` at least half the read-once
throughput (GB/s of input read, recorded in ``extra_info``).
"""

import pytest
import torch

import act_fast as af

SHAPES = [(4096, 1024), (16384, 4096)] if torch.cuda.is_available() else [(2048, 512)]
DTYPES = [torch.bfloat16, torch.float32]


def _data(shape: tuple[int, int], dtype: torch.dtype, device: str) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(shape, device=device).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_read_once(timed, device, shape, dtype):
    x = _data(shape, dtype, device)
    timed(lambda t: t.float().sum(0), x, bytes_moved=x.numel() * x.element_size())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_channel_stats_update(timed, device, shape, dtype):
    x = _data(shape, dtype, device)
    stats = af.ChannelStats(shape[1], device=device)
    timed(stats.update, x, bytes_moved=x.numel() * x.element_size())
