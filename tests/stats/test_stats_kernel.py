"""The Triton statistics kernel (run directly, under the interpreter on CPU) against the reference."""

import math

import pytest
import torch
from tolerances import FLOAT_DTYPES, TOLERANCES

import act_fast as af
from act_fast.ops import set_backend
from act_fast.ops.stats import (
    MAX_ROWS_PER_PROGRAM,
    PARTIAL_DTYPES,
    PARTIAL_FIELDS,
    HistogramLayout,
    default_rows_per_program,
    nvidia_layout,
    stats_fold_triton,
    stats_partials_triton,
    stats_update_triton,
)
from act_fast.ops.stats_reference import (
    HistogramParams,
    bucket_index_ref,
    bucket_intervals_ref,
    bucket_magnitude_edges,
    calibrate_ref,
    empty_state,
    stats_update_ref,
)

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


# ---------------------------------------------------------------------------- calibrated layout
K_LO, K_HI = PARAMS.exp_offset_range


def calibrations(cols: int, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Centres and exponent offsets ``[cols]``: from the data, random, and extreme (huge and tiny
    centres of both signs, offsets at both ends of the allowed range)."""
    g = torch.Generator().manual_seed(cols)
    random_c = (torch.randn(cols, generator=g) * 5.0).float()
    random_k = torch.randint(-20, 21, (cols,), generator=g).to(torch.int32)
    extreme_c = torch.tensor([3e38, -3e38, 1e-30, -1e-30, 0.0, 7e4, -1.5], dtype=torch.float32).repeat(cols)[:cols]
    extreme_k = torch.tensor([K_HI, K_LO, K_LO, K_HI, K_LO, 0, K_HI], dtype=torch.int32).repeat(cols)[:cols]
    return {
        "data": calibrate_ref(x, PARAMS),
        "random": (random_c, random_k),
        "extreme": (extreme_c, extreme_k),
    }


def calibrated_state(cols: int, centre: torch.Tensor, exp_offset: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    state = empty_state(cols, PARAMS, device)
    state["centre"].copy_(centre)
    state["exp_offset"].copy_(exp_offset)
    return state


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy, on ±3e38 centres
@pytest.mark.parametrize("kind", ["data", "random", "extreme"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_kernel_matches_reference_calibrated(rows, cols, dtype, kind, device):
    """Centred bucketing: histograms bit-identical to the reference on odd shapes, every dtype,
    with a row mask and NaN / ±Inf / huge / tiny values, for several calibrations."""
    x = special_data(rows, cols, dtype, device)
    mask = torch.rand(rows, device=device) > 0.3
    centre, exp_offset = calibrations(cols, x.float().cpu())[kind]
    kernel = calibrated_state(cols, centre, exp_offset, device)
    ref = clone_state(kernel)
    stats_update_triton(x, kernel, PARAMS, mask, rows_per_program=16)
    stats_update_ref(x, ref, PARAMS, mask)
    assert_state_matches(kernel, ref)
    assert torch.equal(kernel["centre"], ref["centre"]) and torch.equal(kernel["exp_offset"], ref["exp_offset"])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_centred_overflow_to_end_buckets(dtype, device):
    """x − c overflowing float32 (x = ∓3e38, c = ±3e38) is infinite: the end buckets, as in the
    reference. (Moments of such data overflow float32 tile sums; only counts are compared.)"""
    x = torch.tensor([[-3e38, 3e38, 1.0], [3e38, -3e38, -1.0], [0.0, 1e38, 2e38]]).to(dtype).to(device)
    centre = torch.tensor([3e38, -3e38, -3e38]).to(dtype).float()  # the data's own ±3e38
    exp_offset = torch.tensor([K_HI, K_LO, 0], dtype=torch.int32)
    kernel = calibrated_state(3, centre, exp_offset, device)
    ref = clone_state(kernel)
    stats_update_triton(x, kernel, PARAMS)
    stats_update_ref(x, ref, PARAMS)
    assert torch.equal(kernel["hist"], ref["hist"])
    # Channel 0 (c = 3e38, window top 2^127): -3e38 − c = -inf and 0 − c = -3e38 underflow, 3e38
    # is the centre. Channel 1 (c = -3e38): 3e38 − c and 1e38 − c are +inf. Channel 2: all overflow.
    zero, last = PARAMS.zero_bucket, PARAMS.num_buckets - 1
    assert (int(ref["hist"][0, 0]), int(ref["hist"][0, zero])) == (2, 1)
    assert (int(ref["hist"][1, last]), int(ref["hist"][1, zero])) == (2, 1)
    assert int(ref["hist"][2, last]) == 3


def test_bucket_index_and_intervals_agree():
    """Every value lies in the interval bucket_intervals_ref gives for its bucket, including values
    on bucket edges, for centred calibrations with several offsets."""
    g = torch.Generator().manual_seed(0)
    centre = torch.tensor([0.0, 100.0, -1e4, 3.0], dtype=torch.float32)
    exp_offset = torch.tensor([0, -3, -7, 2], dtype=torch.int32)
    edges = bucket_magnitude_edges(PARAMS, exp_offset).float()  # [4, K + 1], exact in float32
    pick = torch.randint(0, PARAMS.buckets_per_sign + 1, (4, 200), generator=g)
    on_edges = edges.gather(1, pick)
    d = torch.cat([on_edges, -on_edges, torch.randn(4, 200, generator=g) * torch.ldexp(torch.ones(4), exp_offset.float())[:, None]], 1)
    x = (centre[:, None].double() + d.double()).float()
    idx = bucket_index_ref(x.t(), PARAMS, centre, exp_offset).t()
    lo, hi = bucket_intervals_ref(idx, exp_offset, PARAMS)
    dd = (x - centre[:, None]).double()  # the float32 subtraction the bucketing does
    assert torch.all((lo <= dd) & (dd <= hi))
    positive = idx > PARAMS.zero_bucket
    negative = idx < PARAMS.zero_bucket
    assert torch.all(torch.where(positive, dd < hi, True)) and torch.all(torch.where(negative, dd > lo, True))
    zero = idx == PARAMS.zero_bucket
    assert torch.all(torch.where(zero, (dd > lo) & (dd < hi), True))


def test_calibrated_bucket_window_follows_the_offset():
    """|x − c| < 2^(E_lo+k): zero bucket; ≥ 2^(E_hi+k): under/overflow; the first magnitude bucket
    starts at exactly 2^(E_lo+k)."""
    p = PARAMS
    centre = torch.ones(6)
    k = torch.full((6,), -4, dtype=torch.int32)
    lo, hi = 2.0 ** (p.exp_min - 4), 2.0 ** (p.exp_max - 4)
    x = torch.tensor([[1.0 + lo / 2, 1.0 - lo / 2, 1.0 + hi, 1.0 - hi, 1.0 + 2 * lo, 1.0]], dtype=torch.float64)
    idx = bucket_index_ref(x, p, centre, k)[0]
    assert idx.tolist() == [p.zero_bucket, p.zero_bucket, p.num_buckets - 1, 0, p.zero_bucket + 1 + (1 << p.mantissa_bits), p.zero_bucket]


# ---------------------------------------------------------------------------- histogram layouts
# Every way the partial kernel can count (act_fast.ops.stats.HistogramLayout). The "scratch" ones
# run the shared-memory code path with a global buffer in place of shared memory, so the
# interpreter tests its packing, trash bin and flush; "shared" (inline PTX) needs an NVIDIA GPU.
LAYOUTS = [
    HistogramLayout("scratch", True, 8),
    HistogramLayout("scratch", True, 4),
    HistogramLayout("scratch", True, 2),
    HistogramLayout("scratch", False, 8),
    HistogramLayout("shared", True, 8),
    HistogramLayout("shared", True, 4),
    HistogramLayout("shared", True, 2),
    HistogramLayout("shared", False, 8),
]


def layout_id(layout: HistogramLayout) -> str:
    return f"{layout.store}-{'private' if layout.private_buckets else 'direct'}-c{layout.block_c}"


def runnable(layout: HistogramLayout, device: str) -> None:
    if layout.store == "shared" and (device != "cuda" or torch.version.hip is not None):
        pytest.skip("the shared-memory layout is inline PTX: NVIDIA GPUs only (the interpreter cannot run it)")


def update_with(x, state, params, row_mask, layout, rows_per_program):
    """``stats_update_triton`` with NaN-poisoned partials and a garbage-filled scratch buffer."""
    rows, cols = x.shape
    num_partials = -(-rows // rows_per_program)
    scratch = None
    if layout.store == "scratch":
        blocks = -(-cols // layout.block_c)
        scratch = torch.randint(-(2**31), 2**31 - 1, (num_partials * blocks * layout.words_per_program(params),), dtype=torch.int32, device=x.device)
    partials = stats_partials_triton(
        x,
        state["hist"],
        state["centre"],
        state["exp_offset"],
        params,
        row_mask,
        rows_per_program=rows_per_program,
        out=poisoned_partials(num_partials, cols, x.device),
        layout=layout,
        scratch=scratch,
    )
    stats_fold_triton(partials, state)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", ["data", "extreme"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_layouts_match_reference(layout, dtype, kind, device):
    """Every layout, several tiles and two row chunks per program column, a row mask, every bucket
    class: histograms and counts bit-identical, moments within the table, onto non-empty state."""
    runnable(layout, device)
    rows, cols = 1100, 13
    x = special_data(rows, cols, dtype, device)
    mask = torch.rand(rows, device=device) > 0.25
    centre, exp_offset = calibrations(cols, x.float().cpu())[kind]
    kernel = calibrated_state(cols, centre, exp_offset, device)
    first = special_data(40, cols, dtype, device)
    update_with(first, kernel, PARAMS, None, layout, 40)
    ref = calibrated_state(cols, centre, exp_offset, device)
    stats_update_ref(first, ref, PARAMS)
    update_with(x, kernel, PARAMS, mask, layout, 1000)
    stats_update_ref(x, ref, PARAMS, mask)
    assert_state_matches(kernel, ref)


@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_layouts_large_histogram(layout, device):
    """A resolution whose buckets need the narrow or direct layouts on a GPU (B = 8,195)."""
    runnable(layout, device)
    params = HistogramParams(mantissa_bits=7)
    x = special_data(300, 9, torch.bfloat16, device)
    kernel, ref = empty_state(9, params, device), empty_state(9, params, device)
    update_with(x, kernel, params, None, layout, 256)
    stats_update_ref(x, ref, params)
    assert_state_matches(kernel, ref)


@pytest.mark.parametrize("layout", LAYOUTS[:4], ids=layout_id)
def test_masked_rows_and_their_non_finite_values_are_not_counted(layout, device):
    """NaN / ±Inf in masked rows count nowhere; a program whose rows are all masked writes an
    empty partial (count 0, extremes ±inf) that leaves the state as it was."""
    x = torch.randn(300, 6)
    x[5, :] = math.nan
    x[6, :3] = math.inf
    x[7, 3:] = -math.inf
    mask = torch.ones(300, dtype=torch.bool)
    mask[5:8] = False
    mask[:128] = False  # the first row chunk (rows_per_program = 128) is entirely masked
    x, mask = x.to(device), mask.to(device)
    kernel, ref = empty_state(6, PARAMS, device), empty_state(6, PARAMS, device)
    update_with(x, kernel, PARAMS, mask, layout, 128)
    stats_update_ref(x, ref, PARAMS, mask)
    assert_state_matches(kernel, ref)
    assert int(kernel["nan"].sum() + kernel["pos_inf"].sum() + kernel["neg_inf"].sum()) == 0
    assert kernel["count"].tolist() == [300 - 128] * 6


def test_moments_keep_their_digits_without_a_centre(device):
    """1e4 + N(0, 1e-2) with the uncentred calibration (c = 0): the float32 sums are shifted by
    the chunk's first-tile mean, so M2 keeps float32's relative accuracy (Σx² − n·mean² would
    lose all of it)."""
    g = torch.Generator().manual_seed(3)
    x = (1e4 + 1e-2 * torch.randn(900, 4, generator=g, dtype=torch.float64)).float().to(device)
    kernel, ref = empty_state(4, PARAMS, device), empty_state(4, PARAMS, device)
    stats_update_triton(x, kernel, PARAMS, rows_per_program=300)
    stats_update_ref(x, ref, PARAMS)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(kernel["m2"], ref["m2"], rtol=tol["rtol"], atol=0.0)
    torch.testing.assert_close(kernel["mean"], ref["mean"], rtol=0.0, atol=tol["atol"] * 1e-2)


@pytest.mark.parametrize("scale", [1e-32, 1e-20, 1e20, 1e25])
def test_moments_of_channels_at_extreme_scales(scale, device):
    """Channels whose spread is 1e-32 (post-LayerNorm channels of real models are that small) or
    1e25: the float32 moment sums are of (x − shift)·2^-k with 2^k the calibrated spread, so they
    neither underflow (M2 = 0) nor overflow (M2 = inf)."""
    from act_fast.ops.stats_reference import calibrate_ref

    g = torch.Generator().manual_seed(4)
    x = (scale * (3.0 + torch.randn(700, 5, generator=g, dtype=torch.float64))).float().to(device)
    kernel, ref = empty_state(5, PARAMS, device), empty_state(5, PARAMS, device)
    centre, exp_offset = calibrate_ref(x[:100], PARAMS)
    for state in (kernel, ref):
        state["centre"].copy_(centre)
        state["exp_offset"].copy_(exp_offset)
    stats_update_triton(x, kernel, PARAMS, rows_per_program=256)
    stats_update_ref(x, ref, PARAMS)
    tol = TOLERANCES[torch.float32]
    assert bool(torch.isfinite(kernel["m2"]).all()) and bool((kernel["m2"] > 0).all())
    torch.testing.assert_close(kernel["m2"], ref["m2"], rtol=tol["rtol"], atol=0.0)
    torch.testing.assert_close(kernel["mean"], ref["mean"], rtol=tol["rtol"], atol=0.0)


def test_rows_per_program_is_bounded_by_the_16_bit_counters(device):
    x = torch.randn(4, 3, device=device)
    state = empty_state(3, PARAMS, device)
    with pytest.raises(ValueError, match="rows_per_program must be in"):
        stats_update_triton(x, state, PARAMS, rows_per_program=MAX_ROWS_PER_PROGRAM + 1)
    cpu = torch.device("cpu")
    for rows in (1, 127, 128, 4096, 65535, 65536, 1_000_000):
        for layout in (HistogramLayout("shared", True, 8), HistogramLayout("shared", True, 2)):
            per = default_rows_per_program(rows, 4096, cpu, layout)
            assert per % layout.block_r == 0 and per <= MAX_ROWS_PER_PROGRAM and per * -(-rows // per) >= rows


def test_nvidia_layout_fits_shared_memory():
    """The defaults count 8 channels per program in shared memory; finer resolutions fall back
    to 4 or 2 channels, then to one global atomic per value."""
    assert nvidia_layout(HistogramParams()) == HistogramLayout("shared", True, 8)
    assert nvidia_layout(HistogramParams(mantissa_bits=6)) == HistogramLayout("shared", True, 4)
    assert nvidia_layout(HistogramParams(mantissa_bits=7)) == HistogramLayout("shared", True, 2)
    assert nvidia_layout(HistogramParams(mantissa_bits=8)) == HistogramLayout("shared", False, 8)


def test_layout_self_check_accepts_a_correct_layout_and_catches_a_wrong_one(monkeypatch):
    """The check the shared-memory layout passes on a GPU's first update (else the portable layout
    is used), run here on the interpreter's scratch layout, then on a sabotaged launcher."""
    import act_fast.ops.stats as kernel
    from act_fast.ops.stats_reference import HistogramParams

    params = HistogramParams()
    layout = kernel.HistogramLayout("scratch", True)
    assert kernel.layout_matches_reference(layout, params, torch.device("cpu"))
    real = kernel.stats_update_triton

    def off_by_one(x, state, params, row_mask=None, **kw):
        real(x, state, params, row_mask, **kw)
        state["hist"].view(-1)[5] += 1

    monkeypatch.setattr(kernel, "stats_update_triton", off_by_one)
    assert not kernel.layout_matches_reference(layout, params, torch.device("cpu"))
