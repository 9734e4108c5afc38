"""The sections of the GPU benchmark. Each takes a :class:`Ctx` and returns
``{"figures": [...], "summary": {...}, "config": {...}, "errors": [...]}``.

Bytes are counted explicitly: the minimum traffic of the operation (one read of the input and
one write of the output for the maps and norms, one read for statistics, read + write for the
copy). Every figure records its shape, dtype and configuration next to its timing.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import act_fast as af
from gpubench import models as M
from act_fast.bench.timing import Timer, Timing, gbps

STRENGTH = 0.8
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Ctx:
    device: str
    smoke: bool
    timer: Timer
    args: Any
    results: dict[str, Any]  # sections already in the results file (merged runs), updated as we go
    models: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def llama(self):
        if "llama" not in self.models:
            self.free()
            self.models["llama"] = M.llama(self.device, torch.bfloat16, self.smoke, self.args.layers)
        return self.models["llama"]

    def llama_config(self) -> dict[str, Any]:
        cfg = dict(M.LLAMA_SMOKE if self.smoke else M.LLAMA3_8B)
        if self.args.layers:
            cfg["num_hidden_layers"] = self.args.layers
        cfg["dtype"] = "bf16"
        cfg["weights"] = "random"
        if not self.smoke and cfg["num_hidden_layers"] != M.LLAMA3_8B["num_hidden_layers"]:
            cfg["note"] = f"reduced to {cfg['num_hidden_layers']} layers by --layers"
        return cfg

    def free(self) -> None:
        self.models.clear()
        gc.collect()
        torch._dynamo.reset()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def copy_gbps(self) -> float:
        copy = self.results.get("copy", {}).get("summary", {})
        if "copy_GBps" not in copy:
            self.log("  (measuring copy bandwidth first)")
            self.results["copy"] = section_copy(self)
            copy = self.results["copy"]["summary"]
        return copy["copy_GBps"]


def _cases(ctx: Ctx, smoke, headline, full):
    """The shapes of a kernel section: tiny with ``--smoke``, a few with ``--headline`` (the
    8-minute GPU check, :mod:`gpu_check`), else the full benchmark's."""
    if ctx.smoke:
        return smoke
    return headline if getattr(ctx.args, "headline", False) else full


def _t(timing: Timing | None) -> dict[str, Any] | None:
    return None if timing is None else timing.as_dict()


def _best_ms(eager: Timing, graph: Timing | None) -> float:
    """Device time when a CUDA-graph replay was measured, else the eager time."""
    return graph.median_ms if graph is not None else eager.median_ms


def _err(errors: list, where: str, exc: BaseException) -> None:
    tb = traceback.format_exc(limit=6)
    errors.append({"where": where, "error": f"{type(exc).__name__}: {exc}", "traceback": tb})
    print(f"  !! {where}: {type(exc).__name__}: {exc}", flush=True)


# ============================================================================ copy
def section_copy(ctx: Ctx) -> dict:
    """Large device-to-device copy (``dst.copy_(src)``): the bandwidth a streaming op can reach."""
    numel = (1 << 20) if ctx.smoke else (1 << 29)  # bf16: 2 MiB (smoke) or 1 GiB per tensor
    src = torch.randn(numel, device=ctx.device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    eager = ctx.timer.run(fn)
    graph = ctx.timer.graph(fn)
    moved = 2 * src.nbytes
    fig = {
        "name": "copy", "numel": numel, "dtype": "bf16", "tensor_bytes": src.nbytes, "bytes": moved,
        "GBps_eager": gbps(moved, eager.median_ms), "GBps_graph": None if graph is None else gbps(moved, graph.median_ms),
        "eager": _t(eager), "graph": _t(graph),
    }
    copy_gbps = max(v for v in (fig["GBps_eager"], fig["GBps_graph"]) if v is not None)
    ctx.log(f"  copy {src.nbytes / 2**20:.0f} MiB: {copy_gbps:.1f} GB/s (read + write)")
    del src, dst
    return {"figures": [fig], "summary": {"copy_GBps": copy_gbps}, "config": {"bytes_counted": "read + write"}, "errors": []}


# ============================================================================ transport
def _map_vectors(C: int, device: str, support: bool = True, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (1.0 + 0.1 * torch.randn(C, generator=g)).to(device)
    b = (0.1 * torch.randn(C, generator=g)).to(device)
    if not support:
        return w, b, None, None
    return w, b, torch.full((C,), -2.0, device=device), torch.full((C,), 2.0, device=device)


def section_transport(ctx: Ctx) -> dict:
    """``affine_transport`` on ``[tokens, C]`` (bf16, fp16, fp32) and on SDXL conv features."""
    copy = ctx.copy_gbps()
    channels, token_counts, planes, dtypes = _cases(
        ctx,
        ((64, 96), (1, 16, 256), [(2, 32, 16, 16), (2, 64, 8, 8)], DTYPES),
        ((4096,), (1, 4096, 65536), [(2, 320, 128, 128)], {k: DTYPES[k] for k in ("bf16", "fp32")}),
        ((2304, 4096, 8192), (1, 16, 256, 4096, 16384, 65536), [(2, 320, 128, 128), (2, 640, 64, 64), (2, 1280, 32, 32)], DTYPES),
    )
    figures, errors = [], []
    for dname, dtype in dtypes.items():
        for C in channels:
            w, b, lo, hi = _map_vectors(C, ctx.device)
            for tokens in token_counts:
                try:
                    x = torch.randn(tokens, C, device=ctx.device).to(dtype)
                    fn = lambda: af.ops.affine_transport(x, w, b, STRENGTH, lo, hi)  # noqa: E731
                    eager, graph = ctx.timer.run(fn), ctx.timer.graph(fn)
                    moved = 2 * x.nbytes
                    rate = gbps(moved, _best_ms(eager, graph))
                    figures.append({
                        "name": "transport_rows", "dtype": dname, "tokens": tokens, "C": C, "support": True,
                        "strength": STRENGTH, "bytes": moved, "GBps": rate, "fraction_of_copy": rate / copy,
                        "GBps_eager": gbps(moved, eager.median_ms), "eager": _t(eager), "graph": _t(graph),
                    })
                    del x
                except Exception as e:  # noqa: BLE001
                    _err(errors, f"transport {dname} {tokens}x{C}", e)
            ctx.log(f"  transport {dname} C={C}: " + ", ".join(
                f"{f['tokens']}:{f['fraction_of_copy']:.0%}" for f in figures if f["dtype"] == dname and f["C"] == C))
    # largest bf16 shape without support and with a per-row λ (what steer uses for per-request strength)
    C, tokens = channels[min(1, len(channels) - 1)], token_counts[-1]
    w, b, lo, hi = _map_vectors(C, ctx.device)
    x = torch.randn(tokens, C, device=ctx.device).to(torch.bfloat16)
    lam = torch.full((tokens,), STRENGTH, device=ctx.device)
    for variant, fn in {
        "no_support": lambda: af.ops.affine_transport(x, w, b, STRENGTH),
        "per_row_strength": lambda: af.ops.affine_transport(x, w, b, lam, lo, hi),
    }.items():
        eager, graph = ctx.timer.run(fn), ctx.timer.graph(fn)
        moved = 2 * x.nbytes
        rate = gbps(moved, _best_ms(eager, graph))
        figures.append({"name": f"transport_rows_{variant}", "dtype": "bf16", "tokens": tokens, "C": C,
                        "bytes": moved, "GBps": rate, "fraction_of_copy": rate / copy, "eager": _t(eager), "graph": _t(graph)})
    del x
    for shape in planes:
        C = shape[1]
        w, b, lo, hi = _map_vectors(C, ctx.device)
        x = torch.randn(*shape, device=ctx.device).to(torch.bfloat16)
        for pool in (True, False):
            try:
                fn = lambda: af.ops.affine_transport(x, w, b, STRENGTH, lo, hi, channel_dim=1, pool_spatial=pool)  # noqa: E731
                eager, graph = ctx.timer.run(fn), ctx.timer.graph(fn)
                moved = 2 * x.nbytes
                rate = gbps(moved, _best_ms(eager, graph))
                figures.append({"name": "transport_planes", "dtype": "bf16", "shape": list(shape), "pool_spatial": pool,
                                "support": True, "bytes": moved, "GBps": rate, "fraction_of_copy": rate / copy,
                                "eager": _t(eager), "graph": _t(graph)})
                ctx.log(f"  planes {shape} pool={pool}: {rate:.1f} GB/s ({rate / copy:.0%} of copy)")
            except Exception as e:  # noqa: BLE001
                _err(errors, f"transport planes {shape} pool={pool}", e)
        del x
    return {
        "figures": figures, "errors": errors,
        "summary": {"copy_GBps": copy},
        "config": {"strength": STRENGTH, "support": "lo=-2, hi=2", "bytes_counted": "one read of x + one write of y (pooled planes: minimum, the kernel may read a plane twice)",
                   "GBps_from": "CUDA-graph replay (device time) when captured, else eager CUDA events"},
    }


# ============================================================================ fused norms
def section_norm(ctx: Ctx) -> dict:
    """Fused RMSNorm + transport vs the same fused RMSNorm kernel with an identity map (its
    norm-only floor), the transformers eager LlamaRMSNorm, and torch's F.rms_norm."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    cases = _cases(
        ctx,
        [(16, 64, "bf16"), (256, 96, "bf16"), (256, 64, "fp32")],
        [(1, 4096, "bf16"), (16384, 4096, "bf16"), (65536, 4096, "bf16")],
        [(1, 4096, "bf16"), (256, 4096, "bf16"), (4096, 4096, "bf16"), (16384, 4096, "bf16"),
         (65536, 4096, "bf16"), (16384, 8192, "bf16"), (65536, 4096, "fp32")],
    )
    figures, errors = [], []
    for tokens, C, dname in cases:
        dtype = DTYPES[dname]
        try:
            x = torch.randn(tokens, C, device=ctx.device).to(dtype)
            norm = LlamaRMSNorm(C, eps=1e-5).to(device=ctx.device, dtype=dtype)
            with torch.no_grad():
                norm.weight.copy_(1.0 + 0.1 * torch.randn(C))
            nw = norm.weight.detach()
            w, b, lo, hi = _map_vectors(C, ctx.device)
            ones, zeros = torch.ones(C, device=ctx.device), torch.zeros(C, device=ctx.device)
            impls: dict[str, Callable[[], Any]] = {
                "fused_rmsnorm_transport": lambda: af.ops.rms_norm_transport(x, nw, w, b, STRENGTH, lo, hi, eps=1e-5),
                "fused_rmsnorm_alone": lambda: af.ops.rms_norm_transport(x, nw, ones, zeros, 0.0, eps=1e-5),
                "hf_eager_rmsnorm": lambda: norm(x),
                "torch_rms_norm": lambda: torch.nn.functional.rms_norm(x, (C,), nw, 1e-5),
            }
            row: dict[str, Any] = {"name": "rms_norm", "tokens": tokens, "C": C, "dtype": dname, "bytes": 2 * x.nbytes}
            with torch.no_grad():
                for impl, fn in impls.items():
                    eager, graph = ctx.timer.run(fn), ctx.timer.graph(fn)
                    row[impl] = {"ms": _best_ms(eager, graph), "GBps": gbps(2 * x.nbytes, _best_ms(eager, graph)),
                                 "eager": _t(eager), "graph": _t(graph)}
            row["transport_cost_vs_fused_alone"] = row["fused_rmsnorm_transport"]["ms"] / row["fused_rmsnorm_alone"]["ms"] - 1
            row["speedup_vs_hf_eager"] = row["hf_eager_rmsnorm"]["ms"] / row["fused_rmsnorm_transport"]["ms"]
            figures.append(row)
            ctx.log(f"  rmsnorm {tokens}x{C} {dname}: +transport {row['transport_cost_vs_fused_alone']:+.1%} vs fused alone, "
                    f"{row['speedup_vs_hf_eager']:.2f}x vs HF eager")
            del x
        except Exception as e:  # noqa: BLE001
            _err(errors, f"norm {tokens}x{C} {dname}", e)
    return {
        "figures": figures, "errors": errors, "summary": {},
        "config": {"strength": STRENGTH, "support": "lo=-2, hi=2", "eps": 1e-5,
                   "fused_rmsnorm_alone": "af.ops.rms_norm_transport with w=1, b=0, λ=0, no support: the same kernel doing only the norm",
                   "bytes_counted": "one read of x + one write of y"},
    }


# ============================================================================ statistics
def section_stats(ctx: Ctx) -> dict:
    """``ChannelStats.update`` vs a read-once reduction (``torch.sum(x, 0, dtype=float32)``)."""
    cases = _cases(
        ctx,
        [(512, 64, "bf16"), (512, 64, "fp32")],
        [(65536, 4096, "bf16"), (16384, 4096, "fp32")],
        [(16384, 4096, "bf16"), (65536, 4096, "bf16"), (16384, 4096, "fp32"), (4096, 14336, "bf16")],
    )
    figures, errors = [], []
    for rows, C, dname in cases:
        try:
            x = torch.randn(rows, C, device=ctx.device).to(DTYPES[dname])
            stats = af.ChannelStats(C, device=ctx.device)
            read_once = lambda: torch.sum(x, dim=0, dtype=torch.float32)  # noqa: E731
            update = lambda: stats.update(x)  # noqa: E731
            ro = ctx.timer.run(read_once)
            ro_g = ctx.timer.graph(read_once)
            up = ctx.timer.run(update)
            up_g = ctx.timer.graph(update)
            ro_ms, up_ms = _best_ms(ro, ro_g), _best_ms(up, up_g)
            fig = {"name": "channel_stats_update", "rows": rows, "C": C, "dtype": dname, "bytes": x.nbytes,
                   "update_GBps": gbps(x.nbytes, up_ms), "read_once_GBps": gbps(x.nbytes, ro_ms),
                   "update_over_read_once": ro_ms / up_ms, "update": _t(up), "update_graph": _t(up_g),
                   "read_once": _t(ro), "read_once_graph": _t(ro_g)}
            figures.append(fig)
            ctx.log(f"  stats {rows}x{C} {dname}: update {fig['update_GBps']:.1f} GB/s, read-once {fig['read_once_GBps']:.1f} GB/s "
                    f"({fig['update_over_read_once']:.0%})")
            del x, stats
        except Exception as e:  # noqa: BLE001
            _err(errors, f"stats {rows}x{C} {dname}", e)
    return {"figures": figures, "errors": errors, "summary": {},
            "config": {"bytes_counted": "one read of x", "histogram": "ChannelStats defaults", "target": "update >= 0.5 x read-once GB/s"}}


# ============================================================================ Llama helpers
def _llama_sites_and_maps(ctx: Ctx, model) -> tuple[list[str], dict[str, int]]:
    sites = af.sites(model, "layernorm")
    ids = torch.randint(0, model.config.vocab_size, (1, 4), device=ctx.device)
    channels = M.site_channels(model, sites, {"input_ids": ids, "logits_to_keep": 1, "use_cache": False})
    return sites, channels


def _steer_configs(ctx: Ctx, model, channels: dict[str, int], names: list[str], batch: int) -> dict[str, Callable[[], tuple[Callable[[], None], dict]]]:
    """name -> setup(); setup() applies the steering and returns (teardown, info)."""
    from baselines import add_reference_hooks

    def none():
        return (lambda: None), {}

    def steered(kind: str, mode: str):
        def setup():
            handle = af.steer(model, M.random_maps(channels, kind, ctx.device), strength=STRENGTH, mode=mode)
            return handle.remove, {"maps": kind, "mode": mode, "modes": M.mode_counts(handle)}
        return setup

    def multi():
        sets = {f"s{i}": M.random_maps(channels, "support", ctx.device, seed=100 + i) for i in range(16)}
        handle = af.steer(model, sets, strength=STRENGTH, mode="auto")
        rows = [f"s{i % 16}" for i in range(batch)]
        handle.select(rows)
        return handle.remove, {"maps": "support", "mode": "auto", "map_sets": 16, "batch": batch, "modes": M.mode_counts(handle)}

    def chains():
        # 16 different ordered chains of two map sets over the batch (issue 22): row i composes
        # s(i mod 16) at λ 1 then s(i + 5 mod 16) at λ 0.5
        sets = {f"s{i}": M.random_maps(channels, "support", ctx.device, seed=100 + i) for i in range(16)}
        handle = af.steer(model, sets, strength=1.0, mode="auto")
        handle.select([{f"s{i % 16}": STRENGTH, f"s{(i + 5) % 16}": 0.5 * STRENGTH} for i in range(batch)])
        return handle.remove, {"maps": "support", "mode": "auto", "map_sets": 16, "chains": 16, "chain_length": 2, "batch": batch,
                               "modes": M.mode_counts(handle)}

    def hooks():
        handles = add_reference_hooks(model, M.random_maps(channels, "support", ctx.device), STRENGTH)
        return (lambda: [h.remove() for h in handles]), {"maps": "support", "mode": "reference-style forward hooks"}

    table = {"unsteered": none, "fold": steered("fold", "fold"), "fused": steered("support", "fused"),
             "op": steered("support", "op"), "multi16": multi, "chains16": chains, "hooks": hooks}
    return {n: table[n] for n in names}


def _pick(names: list[str], allowed: str | None) -> list[str]:
    if not allowed:
        return names
    keep = {"unsteered", *allowed.split(",")}
    return [n for n in names if n in keep]


def _run_configs(ctx: Ctx, configs, measure: Callable[[str], dict], errors: list, unit: str) -> list[dict]:
    """Measures each config; every figure also records its loss and added time against the
    unsteered figure of the same run (so figures merged from several runs stay comparable)."""
    rows: dict[str, dict] = {}
    for name, setup in configs.items():
        teardown = None
        try:
            teardown, info = setup()
            row = measure(name)
            row.update(info)
            rows[name] = row
        except Exception as e:  # noqa: BLE001
            _err(errors, name, e)
        finally:
            if teardown is not None:
                teardown()
    base = rows.get("unsteered")
    for name, row in rows.items():
        row["config"] = name
        if base is not None and name != "unsteered":
            row["loss_vs_unsteered"] = 1 - row[unit] / base[unit]
            row["added_ms"] = row["ms"] - base["ms"]
    return list(rows.values())


def summarize(figures: list[dict], unit: str) -> dict[str, Any]:
    """Loss and added time per config, and the reference hooks' added time over act_fast's."""
    steered = {f["config"]: f for f in figures if "loss_vs_unsteered" in f}
    out: dict[str, Any] = {
        f"{unit}_loss": {n: f["loss_vs_unsteered"] for n, f in steered.items()},
        "added_ms": {n: f["added_ms"] for n, f in steered.items()},
    }
    if "hooks" in steered:
        hooks = steered["hooks"]["added_ms"]
        for n, f in steered.items():
            if n != "hooks":
                a = f["added_ms"]
                # None when either added time is not positive (within noise): no ratio to state
                out[f"hooks_added_over_{n}_added"] = hooks / a if a > 0 and hooks > 0 else None
    return out


# ============================================================================ collection
def section_collect(ctx: Ctx) -> dict:
    """``af.collect`` on all norm sites vs a plain forward of the same batches (Llama-3-8B shape)."""
    model = ctx.llama()
    B, T = (2, 16) if ctx.smoke else (8, 512)
    k = 2 if ctx.smoke else 4
    sites = af.sites(model, "layernorm")
    ids = torch.randint(0, model.config.vocab_size, (B, T), device=ctx.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": 1}
    errors: list = []
    with torch.no_grad():
        plain = ctx.timer.run(lambda: model(**batch), inner=1)
    figures = [{"name": "plain_forward", "batch": B, "tokens": T, "ms": plain.median_ms, "timing": _t(plain)}]
    summary: dict[str, Any] = {}
    for pooling in ("mean", "none"):
        try:
            t = ctx.timer.run(lambda: af.collect(model, [batch] * k, sites, pooling=pooling, progress=False), inner=1)
            per_forward = t.median_ms / k
            figures.append({"name": "collect", "pooling": pooling, "sites": len(sites), "batch": B, "tokens": T,
                            "forwards_per_call": k, "ms_per_forward": per_forward, "timing": _t(t),
                            "overhead_vs_plain": per_forward / plain.median_ms - 1})
            summary[f"overhead_{pooling}"] = per_forward / plain.median_ms - 1
            ctx.log(f"  collect pooling={pooling}: {per_forward:.2f} ms/forward vs plain {plain.median_ms:.2f} ms "
                    f"({summary[f'overhead_{pooling}']:+.1%})")
        except Exception as e:  # noqa: BLE001
            _err(errors, f"collect pooling={pooling}", e)
    return {"figures": figures, "errors": errors, "summary": summary,
            "config": {"model": ctx.llama_config(), "sites": "layernorm preset (all norms)", "n_sites": len(sites),
                       "note": "each collect() call allocates fresh ChannelStats (one per site); timed over several forwards per call"}}


# ============================================================================ prefill (eager)
def section_prefill(ctx: Ctx) -> dict:
    """Eager prefill of 8 × 512 tokens (last-token logits): unsteered, fold / fused / op on all norm
    sites, and the same maps as reference-style forward hooks."""
    model = ctx.llama()
    B, T = (2, 16) if ctx.smoke else (8, 512)
    sites, channels = _llama_sites_and_maps(ctx, model)
    ids = torch.randint(0, model.config.vocab_size, (B, T), device=ctx.device)
    errors: list = []
    names = _pick(["unsteered", "fold", "fused", "op", "hooks"], ctx.args.modes)
    configs = _steer_configs(ctx, model, channels, names, B)

    def measure(name: str) -> dict:
        with torch.no_grad():
            t = ctx.timer.run(lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False), inner=1)
        ctx.log(f"  prefill {name}: {t.median_ms:.2f} ms, {B * T / t.median_ms * 1e3:.0f} tokens/s")
        return {"ms": t.median_ms, "tokens_per_s": B * T / t.median_ms * 1e3, "timing": _t(t)}

    figures = [{"name": "prefill", **r} for r in _run_configs(ctx, configs, measure, errors, "tokens_per_s")]
    return {"figures": figures, "errors": errors, "summary": summarize(figures, "tokens_per_s"),
            "config": {"model": ctx.llama_config(), "batch": B, "tokens": T, "n_sites": len(sites), "sites": "layernorm preset (all norms)",
                       "strength": STRENGTH, "compiled": False, "logits_to_keep": 1}}


# ============================================================================ decode
def _decode(ctx: Ctx, B: int, compiled: bool, names: list[str]) -> dict:
    from transformers import StaticCache

    model = ctx.llama()
    P, N = (16, 4) if ctx.smoke else (512, 32)
    if not compiled:
        N = 2 if ctx.smoke else 8
    sites, channels = _llama_sites_and_maps(ctx, model)
    cache = StaticCache(config=model.config, max_cache_len=P + N)
    prompt = torch.randint(0, model.config.vocab_size, (B, P), device=ctx.device)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = prompt[:, -1:].clone()
    base_pos = torch.full((B, 1), P, device=ctx.device, dtype=torch.long)

    def reset() -> None:
        for layer in cache.layers:
            layer.cumulative_length.fill_(P)

    backend, cmode = ctx.args.compile_backend, ctx.args.compile_mode
    mark_step = compiled and ctx.device == "cuda" and backend == "inductor" and cmode == "reduce-overhead"

    def make_run(fwd):
        def run() -> None:
            tok = first
            with torch.no_grad():
                for i in range(N):
                    if mark_step:
                        torch.compiler.cudagraph_mark_step_begin()
                    out = fwd(input_ids=tok, position_ids=base_pos + i, past_key_values=cache, use_cache=True)
                    tok = out.logits[:, -1:].argmax(-1)
        return run

    def compile_fwd(fullgraph: bool):
        if backend == "inductor":
            return torch.compile(model.forward, mode=cmode, fullgraph=fullgraph)
        return torch.compile(model.forward, backend=backend, fullgraph=fullgraph)

    errors: list = []
    configs = _steer_configs(ctx, model, channels, _pick(names, ctx.args.modes), B)

    def measure(name: str) -> dict:
        info: dict[str, Any] = {}
        if compiled:
            torch._dynamo.reset()
            run = make_run(compile_fwd(True))
            reset()
            try:
                run()  # compiles
                info["fullgraph"] = True
            except Exception as e:  # noqa: BLE001 - a graph break: measure without fullgraph, say so
                info["fullgraph"] = False
                info["fullgraph_error"] = f"{type(e).__name__}: {str(e)[:500]}"
                ctx.log(f"  decode {name}: fullgraph=True failed ({type(e).__name__}); compiling with graph breaks")
                torch._dynamo.reset()
                run = make_run(compile_fwd(False))
        else:
            run = make_run(model.forward)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        t = ctx.timer.run(run, inner=1, between=reset)
        if compiled:
            # graphs compiled after the first (compiling) run: a recompile inside warm-up or timing
            info["graphs_compiled_after_first_run"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
        tps = B * N / t.median_ms * 1e3
        ctx.log(f"  decode B={B} {'compiled' if compiled else 'eager'} {name}: {t.median_ms / N:.3f} ms/step, {tps:.0f} tokens/s")
        return {"ms": t.median_ms / N, "tokens_per_s": tps, "timing": _t(t), **info}

    figures = [{"name": "decode", "batch": B, **r} for r in _run_configs(ctx, configs, measure, errors, "tokens_per_s")]
    if compiled:
        torch._dynamo.reset()
    del cache
    return {"figures": figures, "errors": errors, "summary": summarize(figures, "tokens_per_s"),
            "config": {"model": ctx.llama_config(), "batch": B, "prompt_tokens": P, "steps_per_run": N, "cache": "StaticCache",
                       "compiled": compiled, "compile": {"backend": backend, "mode": cmode if backend == "inductor" else None} if compiled else None,
                       "n_sites": len(sites), "sites": "layernorm preset (all norms)", "strength": STRENGTH,
                       "greedy": "argmax of the last logits fed back", "position": f"cache rewound to {P} before every timed run"}}


def section_decode_b1(ctx: Ctx) -> dict:
    """Compiled decode, batch 1, static cache: unsteered vs fold / fused / op on all norm sites."""
    return _decode(ctx, 1, True, ["unsteered", "fold", "fused", "op"])


def section_decode_b32(ctx: Ctx) -> dict:
    """Compiled decode, batch 32: unsteered vs fold / fused / op, 16 map sets over the batch, and
    16 different chains of two map sets over the batch."""
    return _decode(ctx, 32, True, ["unsteered", "fold", "fused", "op", "multi16", "chains16"])


def section_decode_eager(ctx: Ctx) -> dict:
    """Eager decode steps, batch 32: act_fast fused / op vs reference-style hooks (added time per step)."""
    return _decode(ctx, 32, False, ["unsteered", "fused", "op", "hooks"])


# ============================================================================ diffusion
def _diffusion(ctx: Ctx, label: str, build, inputs, config: dict) -> dict:
    ctx.free()
    model = build()
    fn = lambda: model(**inputs)  # noqa: E731
    sites = af.sites(model, ctx.args.diffusion_preset)
    channels = M.site_channels(model, sites, inputs)
    errors: list = []

    def steered(kind: str):
        def setup():
            handle = af.steer(model, M.random_maps(channels, kind, ctx.device), strength=STRENGTH, mode="auto")
            return handle.remove, {"maps": kind, "mode": "auto", "modes": M.mode_counts(handle)}
        return setup

    configs = {"unsteered": lambda: ((lambda: None), {}), "steered_support": steered("support"), "steered_fold_maps": steered("fold")}

    def measure(name: str) -> dict:
        with torch.no_grad():
            t = ctx.timer.run(fn, inner=1)
        ctx.log(f"  {label} {name}: {t.median_ms:.2f} ms/step, {1e3 / t.median_ms:.2f} steps/s")
        return {"ms": t.median_ms, "steps_per_s": 1e3 / t.median_ms, "timing": _t(t)}

    figures = [{"name": label, **r} for r in _run_configs(ctx, configs, measure, errors, "steps_per_s")]
    del model
    ctx.free()
    return {"figures": figures, "errors": errors, "summary": summarize(figures, "steps_per_s"),
            "config": {**config, "sites": f"{ctx.args.diffusion_preset} preset", "n_sites": len(sites), "strength": STRENGTH,
                       "compiled": False, "dtype": "bf16", "weights": "random"}}


def section_sdxl(ctx: Ctx) -> dict:
    """SDXL-shaped UNet, one denoising step (batch 2 = CFG, 1024 px), with and without steering."""
    cfg = M.SDXL_SMOKE if ctx.smoke else M.SDXL_UNET
    inputs = M.sdxl_inputs(ctx.device, torch.bfloat16, ctx.smoke)
    return _diffusion(ctx, "sdxl_unet", lambda: M.sdxl_unet(ctx.device, torch.bfloat16, ctx.smoke), inputs,
                      {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "batch": 2,
                       "latents": list(inputs["sample"].shape)})


def section_flux(ctx: Ctx) -> dict:
    """FLUX-shaped transformer, one denoising step (batch 1, 1024 px, 512 text tokens)."""
    cfg = dict(M.FLUX_SMOKE if ctx.smoke else M.FLUX)
    layers = None
    if ctx.args.flux_layers:
        layers = tuple(int(v) for v in ctx.args.flux_layers.split(","))
        cfg["num_layers"], cfg["num_single_layers"] = layers
        if not ctx.smoke:
            cfg["note"] = f"reduced depth by --flux-layers: {layers[0]} double + {layers[1]} single blocks"
    inputs = M.flux_inputs(ctx.device, torch.bfloat16, ctx.smoke)
    return _diffusion(ctx, "flux_transformer", lambda: M.flux(ctx.device, torch.bfloat16, ctx.smoke, layers), inputs,
                      {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "batch": 1,
                       "image_tokens": inputs["hidden_states"].shape[1], "text_tokens": inputs["encoder_hidden_states"].shape[1]})


SECTIONS: dict[str, Callable[[Ctx], dict]] = {
    "copy": section_copy,
    "transport": section_transport,
    "norm": section_norm,
    "stats": section_stats,
    "collect": section_collect,
    "prefill": section_prefill,
    "decode_eager": section_decode_eager,
    "decode_b1": section_decode_b1,
    "decode_b32": section_decode_b32,
    "sdxl": section_sdxl,
    "flux": section_flux,
}
