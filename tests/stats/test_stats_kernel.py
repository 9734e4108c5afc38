"""The Triton statistics kernel (run directly, under the interpreter on CPU) against the reference."""

import math

import pytest
import torch
from tolerances import FLOAT_DTYPES, TOLERANCES

import act_fast as af
from act_fast.ops import set_backend
from act_fast.ops.stats import PARTIAL_DTYPES, PARTIAL_FIELDS, stats_fold_triton, stats_partials_triton, stats_update_triton
from act_fast.ops.stats_reference import HistogramParams, bucket_index_ref, empty_state, stats_update_ref

PARAMS = HistogramParams()
SHAPES = [(1, 1), (1, 13), (64, 1), (37, 13), (64, 7)]
INT_KEYS = ("count", "nan", "pos_inf", "neg_inf", "hist")


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def special_data(rows: int, cols: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Gaussian data salted with every bucket class: ±0, subnormal, tiny, huge, NaN, ±Inf."""
    x = torch.randn(rows, cols) * 3.0
    specials = [0.0, -0.0, 1e-30, -1e-7, 7e4, -9e4, math.nan, math.inf, -math.inf, 2.0**-16, -(2.0**16), 1e4]
    flat = x.view(-1)
    positions = torch.randperm(flat.numel())[: min(len(specials), flat.numel() // 3)]
    for pos, value in zip(positions.tolist(), specials):
        flat[pos] = value
    return x.to(dtype).to(device)


def poisoned_partials(num_partials: int, num_channels: int, device: str) -> dict[str, torch.Tensor]:
    out = {}
    for key in PARTIAL_FIELDS:
        dtype = PARTIAL_DTYPES[key]
        if dtype.is_floating_point:
            out[key] = torch.full((num_partials, num_channels), math.nan, dtype=dtype, device=device)
        else:
            out[key] = torch.randint(-(2**30), 2**30, (num_partials, num_channels), dtype=dtype, device=device)
    return out


def assert_state_matches(kernel: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    for key in INT_KEYS:
        assert torch.equal(kernel[key], ref[key]), key
    # Extremes are exact values, never computed.
    assert torch.equal(kernel["vmin"], ref["vmin"])
    assert torch.equal(kernel["vmax"], ref["vmax"])
    # The kernel computes tile moments in float32: float32's row of the table applies.
    tol = TOLERANCES[torch.float32]
    scale = ref["m2"].clamp_min(1.0)
    torch.testing.assert_close(kernel["mean"], ref["mean"], atol=tol["atol"], rtol=tol["rtol"])
    torch.testing.assert_close(kernel["m2"] / scale, ref["m2"] / scale, atol=tol["atol"], rtol=tol["rtol"])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("rows_per_program", [None, 16])
def test_kernel_matches_reference(rows, cols, dtype, rows_per_program, device):
    x = special_data(rows, cols, dtype, device)
    state = empty_state(cols, PARAMS, device)
    ref = clone_state(state)
    num_partials = -(-rows // (rows_per_program or rows))
    partials = stats_partials_triton(
        x,
        state["hist"],
        state["centre"],
        state["exp_offset"],
        PARAMS,
        rows_per_program=rows_per_program or rows,
        out=poisoned_partials(num_partials, cols, device),
    )
    stats_fold_triton(partials, state)
    stats_update_ref(x, ref, PARAMS)
    assert_state_matches(state, ref)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kernel_accumulates_into_existing_state_with_row_mask(dtype, device):
    """Second update onto non-trivial state (including a non-zero pending histogram), masked rows skipped."""
    params = HistogramParams(mantissa_bits=3, exp_min=-8, exp_max=8)
    first = special_data(23, 11, dtype, device)
    second = special_data(41, 11, dtype, device)
    mask = torch.rand(41, device=device) > 0.4
    kernel, ref = empty_state(11, params, device), empty_state(11, params, device)
    stats_update_triton(first, kernel, params, rows_per_program=16)
    stats_update_ref(first, ref, params)
    stats_update_triton(second, kernel, params, mask, rows_per_program=16)
    stats_update_ref(second, ref, params, mask)
    assert_state_matches(kernel, ref)
    expected_rows = 23 + int(mask.sum())
    assert int(kernel["hist"].sum() + kernel["nan"].sum() + kernel["pos_inf"].sum() + kernel["neg_inf"].sum()) == expected_rows * 11


def test_kernel_strided_rows(device):
    """A row-strided view (last dim contiguous) is read in place."""
    base = torch.randn(30, 20, device=device)
    x = base[::3, 2:15]
    kernel, ref = empty_state(13, PARAMS, device), empty_state(13, PARAMS, device)
    stats_update_triton(x, kernel, PARAMS)
    stats_update_ref(x, ref, PARAMS)
    assert_state_matches(kernel, ref)


@pytest.mark.parametrize("mantissa_bits,exp_min,exp_max", [(0, -2, 3), (7, -126, 127), (16, -1, 1)])
def test_bucket_index_extreme_parameters(mantissa_bits, exp_min, exp_max, device):
    params = HistogramParams(mantissa_bits, exp_min, exp_max).validate()
    x = special_data(19, 5, torch.float32, device)
    kernel, ref = empty_state(5, params, device), empty_state(5, params, device)
    stats_update_triton(x, kernel, params)
    stats_update_ref(x, ref, params)
    assert torch.equal(kernel["hist"], ref["hist"])
    idx = bucket_index_ref(x, params)
    assert int(idx.min()) >= 0 and int(idx.max()) < params.num_buckets


def test_bucket_index_order_and_classes():
    """Indices are monotone in value; zero bucket holds ±0, subnormals and |x| < 2^E_lo; ends hold
    |x| ≥ 2^E_hi."""
    p = PARAMS
    values = torch.tensor(
        [-(2.0**20), -(2.0**16), -3.0, -(2.0**-16), -(2.0**-17), -0.0, 0.0, 1e-45, 2.0**-17, 2.0**-16, 1.0, 2.0**16, 1e30]
    )
    idx = bucket_index_ref(values, p)
    assert torch.all(idx[1:] >= idx[:-1])
    assert idx[0] == 0 and idx[1] == 0
    assert idx[-1] == p.num_buckets - 1 and idx[-2] == p.num_buckets - 1
    assert torch.all(idx[4:9] == p.zero_bucket)
    assert idx[3] == p.zero_bucket - 1 and idx[9] == p.zero_bucket + 1


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_channel_stats_dispatches_to_kernel(dtype, device):
    """``update`` under the forced Triton backend equals the reference backend."""
    x = special_data(50, 13, dtype, device)
    previous = set_backend("triton")
    try:
        kernel = af.ChannelStats(13, device).update(x)
    finally:
        set_backend(previous)
    previous = set_backend("torch")
    try:
        ref = af.ChannelStats(13, device).update(x)
    finally:
        set_backend(previous)
    assert torch.equal(kernel.histogram, ref.histogram)
    assert torch.equal(kernel.count, ref.count)
    assert torch.equal(kernel.min, ref.min) and torch.equal(kernel.max, ref.max)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(kernel.mean, ref.mean, atol=tol["atol"], rtol=tol["rtol"])
    torch.testing.assert_close(kernel.var(), ref.var(), atol=tol["atol"], rtol=tol["rtol"])
