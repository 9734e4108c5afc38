"""The compiled CPU statistics update (csrc/stats.cpp, ``act_fast.ops.cpu_kernels.stats_update``)
against the pure-torch reference (``stats_update_ref``): histograms, counts and min / max
``torch.equal``, moments within float64's row of the tolerance table (float64 tile sums), on odd
shapes, every input dtype, row masks, NaN / ±Inf / ±0 / subnormals / huge values, several calibrations (from the data,
uncentred, extreme centres and the ends of the offset range), rows over many tiles and channels
over many parallel blocks; ChannelStats end to end on both CPU implementations; the switch."""

import math

import pytest
import torch
from tolerances import FLOAT_DTYPES, TOLERANCES

from act_fast.ops import cpu_kernels, set_backend
from act_fast.ops.backend import implementation
from act_fast.ops.stats_reference import (
    HistogramParams,
    bucket_magnitude_edges,
    calibrate_ref,
    empty_state,
    stats_update_ref,
)
from act_fast.stats import ChannelStats

PARAMS = HistogramParams()
# (rows, channels): one row, one channel, primes, C not a power of two, rows over many 64-row
# tiles, channels over several 64-channel blocks (each its own parallel task) and a partial one.
SHAPES = [(1, 1), (1, 13), (5, 1), (2, 64), (37, 67), (131, 130), (300, 257), (1031, 7)]
CALIBRATIONS = ["data", "uncentred", "extreme"]
MASKS = ["none", "random", "none_kept"]
EXACT_KEYS = ("count", "nan", "pos_inf", "neg_inf", "hist", "vmin", "vmax")


def _kernels_or_skip() -> None:
    """Loads the compiled kernels. Without a compiler or ninja this machine cannot build them
    (skip, with the reason); with both, a failed build is a test failure."""
    try:
        cpu_kernels.load()
    except cpu_kernels.CpuKernelsUnavailable as error:
        missing = cpu_kernels._missing_tools()
        if missing is not None:
            pytest.skip(f"compiled CPU kernels cannot be built here: {missing}")
        pytest.fail(f"a compiler and ninja are here but the CPU kernels are unavailable: {error}")


@pytest.fixture
def kernels(monkeypatch):
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH, raising=False)
    _kernels_or_skip()


def special_data(rows: int, cols: int, dtype: torch.dtype, scale: float = 3.0, level: float = 0.0) -> torch.Tensor:
    """``level + scale·N(0, 1)`` salted with every bucket class: ±0, subnormal, tiny, huge, NaN, ±Inf."""
    x = level + torch.randn(rows, cols) * scale
    specials = [0.0, -0.0, 1e-40, -1e-30, 1e-7, 7e4, -9e4, math.nan, -math.nan, math.inf, -math.inf, 2.0**-16, -(2.0**16), 3e38]
    flat = x.view(-1)
    positions = torch.randperm(flat.numel())[: min(len(specials), flat.numel() // 3)]
    for pos, value in zip(positions.tolist(), specials):
        flat[pos] = value
    return x.to(dtype)


def calibrated_state(x: torch.Tensor, kind: str, row_mask: torch.Tensor | None, params: HistogramParams = PARAMS) -> dict:
    C = x.shape[1]
    state = empty_state(C, params)
    if kind == "data":
        centre, offset = calibrate_ref(x, params, row_mask)
    elif kind == "uncentred":
        centre, offset = torch.zeros(C), torch.zeros(C, dtype=torch.int32)
    else:  # far centres, offsets at both ends of the allowed range and in between
        lo, hi = params.exp_offset_range
        centre = torch.tensor([1e30, -3e7, 0.5, 1.17549435e-38, -65504.0])[torch.arange(C) % 5]
        offset = torch.tensor([lo, hi, -3, 0, 20], dtype=torch.int32)[torch.arange(C) % 5]
    state["centre"].copy_(centre)
    state["exp_offset"].copy_(offset)
    return state


def make_mask(kind: str, rows: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "none_kept":
        return torch.zeros(rows, dtype=torch.bool)
    return torch.rand(rows) < 0.6


def clone(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()}


def assert_moments_close(kernel: dict, ref: dict) -> None:
    """Mean and M2 within float64's tolerance, relative to each channel's spread (its mean) and to
    its M2: the kernel sums tiles in float64 and merges them in float64 as the reference does,
    only in another order."""
    tol = TOLERANCES[torch.float64]
    n = ref["count"].to(torch.float64)
    spread = (ref["m2"] / n.clamp_min(1)).sqrt()
    spread = torch.where(spread > 0, spread, 1.0)
    torch.testing.assert_close(kernel["mean"] / spread, ref["mean"] / spread, **tol)
    scale = torch.where(ref["m2"] > 0, ref["m2"], 1.0)
    torch.testing.assert_close(kernel["m2"] / scale, ref["m2"] / scale, **tol)


def assert_state_matches(kernel: dict, ref: dict) -> None:
    for key in EXACT_KEYS:
        assert kernel[key].dtype == ref[key].dtype, key
        if not torch.equal(kernel[key], ref[key]):
            diff = (kernel[key].double() - ref[key].double()).abs()
            raise AssertionError(f"{key}: {int((diff > 0).sum())} of {diff.numel()} entries differ")
    assert_moments_close(kernel, ref)


def run_both(x: torch.Tensor, state: dict, row_mask: torch.Tensor | None, params: HistogramParams = PARAMS) -> tuple[dict, dict]:
    """Two updates (the second merges into a non-empty state) on each implementation."""
    kernel, ref = clone(state), clone(state)
    for _ in range(2):
        cpu_kernels.stats_update(x, kernel, params, row_mask)
        stats_update_ref(x, ref, params, row_mask)
    return kernel, ref


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", SHAPES, ids=str)
def test_kernel_matches_reference(rows, cols, dtype, calibration, mask, kernels):
    x = special_data(rows, cols, dtype)
    row_mask = make_mask(mask, rows)
    kernel, ref = run_both(x, calibrated_state(x, calibration, row_mask), row_mask)
    assert_state_matches(kernel, ref)
    if mask == "none_kept":
        assert int(kernel["hist"].sum()) == 0 and int(kernel["count"].sum()) == 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_bucket_edges_exactly(dtype, kernels):
    """Values at, just inside and just outside every magnitude edge ``c ± a_j`` (and the zero
    bucket's and the window's ends), per channel with its own centre and offset."""
    params = HistogramParams(mantissa_bits=2, exp_min=-3, exp_max=4)
    C = 6
    centre = torch.tensor([0.0, 1.5, -100.0, 3e-3, 7e5, -1.0])
    offset = torch.tensor([0, -2, 3, -9, 12, params.exp_offset_range[0]], dtype=torch.int32)
    edges = bucket_magnitude_edges(params, offset).to(torch.float32)  # [C, K + 1]
    below = torch.nextafter(edges, torch.zeros_like(edges))
    above = torch.nextafter(edges, torch.full_like(edges, math.inf))
    mags = torch.cat([edges, below, above], dim=1)
    d = torch.cat([mags, -mags], dim=1)  # [C, N]
    x = (centre[:, None] + d).t().contiguous().to(dtype)
    state = empty_state(C, params)
    state["centre"].copy_(centre)
    state["exp_offset"].copy_(offset)
    kernel, ref = run_both(x, state, None, params)
    assert_state_matches(kernel, ref)


@pytest.mark.parametrize("params", [HistogramParams(0, -1, 1), HistogramParams(7, -16, 16), HistogramParams(3, -126, 127)], ids=str)
def test_other_resolutions(params, kernels):
    x = special_data(97, 70, torch.float32)
    kernel, ref = run_both(x, calibrated_state(x, "data", None, params), None, params)
    assert_state_matches(kernel, ref)


# (dtype, level, spread): far from zero relative to the spread, which the dtype still resolves
# and channels whose squares leave float32's range (MiniLM has post-LayerNorm channels at 1e-32)
LEVELS = [
    (torch.float32, level, scale)
    for level, scale in [(1e4, 1e-2), (0.0, 1e3), (-300.0, 1.0), (5e5, 3.0), (1e-3, 1e-6), (0.0, 1e-32), (4e-32, 1e-32), (1e30, 1e28), (0.0, 1e36)]
] + [
    (torch.bfloat16, level, scale) for level, scale in [(1e4, 200.0), (0.0, 1e3), (-300.0, 5.0), (5e5, 2e4), (1e-3, 3e-5)]
]


@pytest.mark.parametrize("dtype,level,scale", LEVELS, ids=str)
def test_moments_do_not_cancel(dtype, level, scale, kernels):
    """Channels far from zero relative to their spread keep their variance (the tile sums are of
    x − tile mean, not of x), and so do channels at 1e-32 or 1e36, over many tiles and three
    updates."""
    x = (level + scale * torch.randn(1000, 33)).to(dtype)
    state = calibrated_state(x, "uncentred", None)
    kernel, ref = clone(state), clone(state)
    for chunk in x.split(400):
        cpu_kernels.stats_update(chunk, kernel, PARAMS)
        stats_update_ref(chunk, ref, PARAMS)
    assert_state_matches(kernel, ref)
    assert (ref["m2"] > 0).all()


def test_non_finite_channels(kernels):
    """A channel with no finite value, one with only NaN, one with only ±Inf: counted, never in
    the moments, min / max or histogram."""
    x = torch.randn(70, 5)
    x[:, 0] = math.nan
    x[:, 1] = math.inf
    x[::2, 2] = -math.inf
    x[1::3, 3] = math.nan
    kernel, ref = run_both(x, calibrated_state(x, "data", None), None)
    assert_state_matches(kernel, ref)
    assert kernel["count"][:2].tolist() == [0, 0]
    assert kernel["vmin"][0] == math.inf and kernel["vmax"][0] == -math.inf


def test_strided_rows_and_transposed_input(kernels):
    base = special_data(80, 300, torch.bfloat16)
    for x in (base[:, 7:207], base[::3, :129], base.t().contiguous().t()[:, :100]):
        kernel, ref = run_both(x, calibrated_state(x, "data", None), None)
        assert_state_matches(kernel, ref)


def test_threads_give_the_same_state(kernels):
    """Channel blocks are independent tasks: one thread or two gives the same state bit for bit."""
    x = special_data(700, 300, torch.float32)
    state = calibrated_state(x, "data", None)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s = clone(state)
            cpu_kernels.stats_update(x, s, PARAMS)
            results.append(s)
    finally:
        torch.set_num_threads(previous)
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_float64_int64_hist_and_empty_run_the_reference(kernels):
    """float64 input and an int64 pending histogram take the reference (its exact result); no rows
    leaves the state untouched."""
    x = special_data(40, 9, torch.float64)
    kernel, ref = run_both(x, calibrated_state(x, "data", None), None)
    for key in ref:
        assert torch.equal(kernel[key], ref[key]), key
    x32 = x.float()
    state = calibrated_state(x32, "data", None)
    state["hist"] = state["hist"].to(torch.int64)
    kernel, ref = run_both(x32, state, None)
    for key in ref:
        assert torch.equal(kernel[key], ref[key]), key
    empty = calibrated_state(x32, "data", None)
    untouched = clone(empty)
    cpu_kernels.stats_update(x32[:0], empty, PARAMS)
    for key in empty:
        assert torch.equal(empty[key], untouched[key]), key


def test_op_rejects_a_wrong_state(kernels):
    x = torch.randn(4, 3)
    s = calibrated_state(x, "data", None)
    args = [s[k] for k in ("count", "mean", "m2", "vmin", "vmax", "nan", "pos_inf", "neg_inf", "hist", "centre", "exp_offset")]
    with pytest.raises(RuntimeError, match="hist must be a contiguous int32"):
        torch.ops.act_fast_cpu.stats_update(x, None, *args[:8], args[8].to(torch.int64), *args[9:], *PARAMS)
    with pytest.raises(RuntimeError, match="mean must be a contiguous CPU"):
        torch.ops.act_fast_cpu.stats_update(x, None, args[0], args[1].float(), *args[2:], *PARAMS)
    with pytest.raises(RuntimeError, match="row_mask must be"):
        torch.ops.act_fast_cpu.stats_update(x, torch.ones(5, dtype=torch.bool), *args, *PARAMS)


# -- ChannelStats end to end on both CPU implementations ---------------------------------------------


def _collect(impl: str, batches, masks, calibrate_from) -> tuple[ChannelStats, ChannelStats]:
    previous = set_backend(impl)
    try:
        a = ChannelStats(batches[0].shape[1]).calibrate(calibrate_from)
        b = ChannelStats(batches[0].shape[1]).set_calibration(a)
        for i, (x, m) in enumerate(zip(batches, masks)):
            assert implementation(x) == impl
            (a if i % 2 else b).update(x, m)
        a.merge(b)
        return a, b
    finally:
        set_backend(previous)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_channel_stats_end_to_end(dtype, kernels):
    C = 131
    batches = [special_data(r, C, dtype, scale=2.0, level=0.5) for r in (1, 70, 200, 3, 129)]
    masks = [None, torch.rand(70) < 0.5, None, torch.tensor([True, False, True]), torch.rand(129) < 0.9]
    cpu, cpu_b = _collect("cpu", batches, masks, batches[2])
    ref, ref_b = _collect("torch", batches, masks, batches[2])
    for got, want in ((cpu, ref), (cpu_b, ref_b)):
        assert torch.equal(got.histogram, want.histogram)
        for query in ("count", "nan_count", "pos_inf_count", "neg_inf_count", "min", "max"):
            torch.testing.assert_close(getattr(got, query), getattr(want, query), rtol=0, atol=0, msg=query)
        tol = TOLERANCES[torch.float64]
        torch.testing.assert_close(got.mean, want.mean, **tol)
        torch.testing.assert_close(got.var() / want.var().clamp_min(1.0), want.var() / want.var().clamp_min(1.0), **tol)
        levels = [0.0, 0.01, 0.25, 0.5, 0.9, 1.0]
        assert torch.equal(got.quantile(levels), want.quantile(levels))
        assert torch.equal(got.quantile(levels, interpolate=False), want.quantile(levels, interpolate=False))


def test_switch_off_runs_the_reference(monkeypatch, kernels):
    """``ACT_FAST_CPU_KERNELS=0``: ChannelStats.update takes the reference, not the kernel; with the
    switch on it calls the kernel."""
    calls = []
    real = cpu_kernels.stats_update

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_kernels, "stats_update", spy)
    previous = set_backend("auto")
    try:
        x = torch.randn(20, 6)
        monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
        assert implementation(x) == "torch"
        off = ChannelStats(6).update(x)
        assert calls == []
        monkeypatch.delenv(cpu_kernels.ENV_SWITCH)
        assert implementation(x) == "cpu"
        on = ChannelStats(6).update(x)
        assert calls == [1]
    finally:
        set_backend(previous)
    assert torch.equal(on.histogram, off.histogram)
    assert torch.equal(on.count, off.count)
