"""bfloat16 rows through the compiled transport (csrc/bf16_pairs.h: rows loaded and stored as
(even, odd) channel pairs) against the pure-torch reference, bit for bit, on the float32 values
where rounding to bfloat16 is delicate: ties to even in both directions, just below and above a
tie, the largest finite values (which round to infinity), subnormals, ±0, ±inf and NaNs; on full
chunks and tails, several row groups, odd row strides and in place."""

import pytest
import torch

import act_fast as af
from act_fast.ops import set_backend
from act_fast.ops.reference import affine_transport_ref

from test_cpu_kernels import _kernels_or_skip


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.delenv("ACT_FAST_CPU_KERNELS", raising=False)
    _kernels_or_skip()
    previous = set_backend("cpu")
    yield
    set_backend(previous)


def _delicate_float32(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` finite float32 values (maps must be finite): each special bit pattern, then random
    bits (every exponent; the few non-finite ones replaced by 0)."""
    highs = torch.tensor([0x3F80, 0x3F81, 0x0000, 0x0001, 0x007F, 0x7F7F, 0x7F7E, 0x8000, 0xBF80, 0xBF81, 0xFF7F, 0x4049], dtype=torch.int64)
    lows = torch.tensor([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int64)
    special = (highs[:, None] * 65536 + lows[None, :]).reshape(-1)
    random = torch.randint(0, 2**32, (max(0, n - special.numel()),), generator=generator, dtype=torch.int64)
    bits = torch.cat([special, random])[:n]
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    values = bits.view(torch.float32)
    return torch.where(values.isfinite(), values, torch.zeros(()))


def _assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit where the reference is a number; NaN where it is NaN."""
    nan = expected.isnan()
    assert torch.equal(actual.isnan(), nan), "NaN positions differ"
    a, e = actual.view(torch.int16)[~nan], expected.view(torch.int16)[~nan]
    if not torch.equal(a, e):
        first = int((a != e).nonzero()[0])
        raise AssertionError(f"{int((a != e).sum())} of {a.numel()} values differ, first: {a[first]:#06x} vs {e[first]:#06x}")


@pytest.mark.parametrize("C", [64, 4096 + 37, 7])
def test_rounding_of_every_delicate_value(C, compiled):
    """x = 0, w = 1, λ = 1: the float32 result is the bias itself, so the rounding of each bias
    value to bfloat16 is what the output shows; a few x are ±inf or NaN (NaN results, on either
    lane of a pair)."""
    g = torch.Generator().manual_seed(C)
    rows = 9  # two full row groups and one row
    b = _delicate_float32(rows * C, g).reshape(rows, C)
    x = torch.zeros(rows * C, dtype=torch.bfloat16)
    x[torch.randperm(rows * C, generator=g)[:3]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.bfloat16)
    x = x.reshape(rows, C)
    w = torch.ones(rows, C)
    idx = torch.arange(rows)  # one map per row: every row sees its own bias values
    _assert_same_bits(af.ops.affine_transport(x, w, b, 1.0, map_index=idx), affine_transport_ref(x, w, b, 1.0, map_index=idx))


@pytest.mark.parametrize("support", [False, True])
def test_rows_strided_and_in_place(support, compiled):
    """Row strides that put every other row's pairs at an odd element offset; in place."""
    g = torch.Generator().manual_seed(1)
    base = (3 * torch.randn(7, 101, generator=g)).to(torch.bfloat16)
    x = base[:, 3:3 + 96]  # row stride 101: odd
    C = x.shape[-1]
    w, b = 1.0 + 0.5 * torch.randn(C, generator=g), torch.randn(C, generator=g)
    lo, hi = (torch.full((C,), -2.0), torch.full((C,), 2.0)) if support else (None, None)
    s = torch.rand(7, generator=g)
    expected = affine_transport_ref(x, w, b, s, lo, hi)
    _assert_same_bits(af.ops.affine_transport(x, w, b, s, lo, hi), expected)
    y = x.contiguous()
    af.ops.affine_transport(y, w, b, s, lo, hi, out=y)
    _assert_same_bits(y, expected)
