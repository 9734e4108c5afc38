"""``ChannelStats.update`` against reading the same tensor once (``x.float().sum(0)``).

Run: ``python -m pytest benchmarks/bench_stats.py --benchmark-group-by=param:shape,param:dtype``.
On CUDA ``update`` runs the fused Triton kernel; on CPU the pure-torch float64 reference (CPU
figures are ratios only, docs/design.md §6). Target on GPU: ``update`` at least half the read-once
throughput (GB/s of input read, recorded in ``extra_info``). ``test_stats_kernel`` times the Triton
kernel alone per histogram layout against the read-once sum in the same test (GPU only); the
ahead-of-time PTX figures of the same kernel are ``benchmarks/stats_kernel_ptx.py``.
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
    """Steady state: the first (warm-up) call calibrates, the timed ones only update."""
    x = _data(shape, dtype, device)
    stats = af.ChannelStats(shape[1], device=device)
    timed(stats.update, x, bytes_moved=x.numel() * x.element_size())


# ---------------------------------------------------------------------------- the kernel alone
# ``stats_update_triton`` per histogram layout (act_fast.ops.stats.HistogramLayout), with the
# read-once sum timed in the same test so ``extra_info["vs_read_once"]`` is the fraction of the
# device's read bandwidth that the update reaches (target ≥ 0.5, docs/design.md §6).
KERNEL_SHAPES = [(8192, 4096), (16384, 1024)]
KERNEL_LAYOUTS = {"shared-private": ("shared", True), "shared-direct": ("shared", False), "scratch-private": ("scratch", True)}


def _median_ms(fn, reps: int = 50) -> float:
    import statistics

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel is only timed compiled, on a GPU")
@pytest.mark.parametrize("layout", list(KERNEL_LAYOUTS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
def test_stats_kernel(benchmark, shape, dtype, layout):
    from act_fast.ops.stats import HistogramLayout, stats_update_triton
    from act_fast.ops.stats_reference import HistogramParams, calibrate_ref, empty_state

    benchmark.group = f"stats kernel {shape} {dtype}"
    x = _data(shape, dtype, "cuda")
    params = HistogramParams()
    state = empty_state(shape[1], params, "cuda")
    centre, exp_offset = calibrate_ref(x, params)
    state["centre"].copy_(centre)
    state["exp_offset"].copy_(exp_offset)
    chosen = HistogramLayout(*KERNEL_LAYOUTS[layout])
    update = lambda: stats_update_triton(x, state, params, layout=chosen)  # noqa: E731
    read_once_ms = _median_ms(lambda: x.sum(0, dtype=torch.float32))  # reads x once, no float copy
    update_ms = _median_ms(update)
    benchmark.pedantic(lambda: (update(), torch.cuda.synchronize()), rounds=10, iterations=1, warmup_rounds=1)
    nbytes = x.numel() * x.element_size()
    benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.extra_info["update_GB/s"] = round(nbytes / update_ms / 1e6, 1)
    benchmark.extra_info["read_once_GB/s"] = round(nbytes / read_once_ms / 1e6, 1)
    benchmark.extra_info["vs_read_once"] = round(read_once_ms / update_ms, 3)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_channel_stats_calibrate(timed, device, shape):
    """The one-off calibration of the first batch (per-channel median and mean absolute
    deviation), which the first ``update`` of a stream pays."""
    x = _data(shape, torch.bfloat16, device)
    stats = af.ChannelStats(shape[1], device=device)
    timed(stats.calibrate, x, bytes_moved=x.numel() * x.element_size())


@pytest.mark.parametrize("query", ["coupled_covariance", "auroc", "quantile_function"])
def test_channel_stats_queries(benchmark, device, query):
    """Queries between two filled histograms (C = 1024, 65,536 rows each, different calibrations)."""
    benchmark.group = "stats queries, C = 1024"
    torch.manual_seed(0)
    src = af.ChannelStats(1024, device=device).update(torch.randn(65536, 1024, device=device))
    tgt = af.ChannelStats(1024, device=device).update(torch.randn(65536, 1024, device=device).exp())
    fn = {
        "coupled_covariance": lambda: src.coupled_covariance(tgt),
        "auroc": lambda: src.auroc(tgt),
        "quantile_function": lambda: src.quantile_function(256),
    }[query]
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


# ---------------------------------------------------------------------------- collection
# ``af.collect`` on every norm site of a small Llama vs the plain forward of the same batches
# (docs/design.md §6: collection ≤ 10 % over a plain forward; on CPU a ratio of eager paths only).
LLAMA = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512)
COLLECT_BATCHES = 4


@pytest.mark.parametrize("pooling", ["plain_forward", "mean", "none"])
def test_collect_all_sites(pooling, device, benchmark):
    import statistics
    import time

    from transformers import LlamaConfig, LlamaForCausalLM

    benchmark.group = f"collect, Llama {LLAMA['num_hidden_layers']}x{LLAMA['hidden_size']}, {COLLECT_BATCHES} batches of 8x64"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA)).to(device).eval()
    sites = af.sites(model, "layernorm")
    ids = torch.randint(0, LLAMA["vocab_size"], (8, 64), device=device)
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": 1}] * COLLECT_BATCHES

    def plain():
        with torch.no_grad():
            for b in batches:
                model(**b)
        if device == "cuda":
            torch.cuda.synchronize()

    def collect():
        af.collect(model, sites, batches, pooling=pooling, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()

    fn = plain if pooling == "plain_forward" else collect
    fn()
    benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=1)
    if fn is collect:  # paired: alternate collect and plain forwards, medians of each
        tc, tp = [], []
        for _ in range(15):
            t0 = time.perf_counter()
            collect()
            t1 = time.perf_counter()
            plain()
            tc.append(t1 - t0)
            tp.append(time.perf_counter() - t1)
        benchmark.extra_info["paired_collect_ms"] = round(statistics.median(tc) * 1e3, 3)
        benchmark.extra_info["paired_plain_ms"] = round(statistics.median(tp) * 1e3, 3)
        benchmark.extra_info["overhead_vs_plain"] = round(statistics.median(tc) / statistics.median(tp) - 1, 4)
    benchmark.extra_info["sites"] = len(sites)
    benchmark.extra_info["threads"] = torch.get_num_threads()
