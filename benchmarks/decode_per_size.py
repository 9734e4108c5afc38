"""Added time per decoded token of steering, per model size, on CPU (issue 25 item 4).

A Llama-shaped model with random weights at hidden 1024 and 2048 (``--layers`` decoder layers,
default 4: few layers, so the unsteered embedding and lm_head weigh more than in a full-depth
model and a ratio understates the full model's; the added time per token and per site does
not depend on the depth). Greedy decode of ``--new-tokens`` tokens at batch 1 on the KV cache of
a ``--prompt``-token prompt (the cache is rebuilt untimed before every timed run), one intra-op
thread, timed in the thread's CPU time (``--clock wall`` for wall-clock time), in these
configurations:

- ``unsteered``;
- ``act_fast fused``: ``act_fast.steer(mode="fused")`` on every norm site of the blocks (the
  ``layernorm`` preset: 2 per layer), maps with a bias and a support;
- ``act_fast op``: ``mode="op"`` on every ``o_proj`` (1 per layer), the same kind of maps;
- ``steering-vectors``: ``SteeringVector.patch_activations`` (a forward hook) adding a vector to the output of each decoder
  layer (1 site per layer, the same layers);
- ``repeng``: ``ControlModel`` with a raw control vector on each decoder layer.

All configurations run in interleaved rounds (``act_fast.bench.timing.interleaved_rounds``: the
order rotates every round; each configuration is set up, warmed up and removed in every round).
Per configuration: the median ms per token, its spread, the added ms per token against unsteered
(the medians of the same rounds), per steered site, and the tokens/s ratio with the verdict of
``act_fast.bench.timing.compare`` (a ratio is only a finding when it exceeds the spread).

steering-vectors and repeng are not act_fast dependencies. Their releases pin transformers < 5
and numpy < 2, which this environment must not change, so install them without their
dependencies into a folder of their own and put it on the path for this script only::

    pip install --no-deps --target /tmp/peers steering-vectors==0.12.2 repeng==0.4.0
    PYTHONPATH=$PWD:/tmp/peers python benchmarks/decode_per_size.py --out benchmarks/results/cpu-decode-per-size-<date>.json

repeng 0.4.0 refers to ``numpy.float_`` (removed in numpy 2) in an annotation at import; the
script aliases it to ``numpy.float64`` before importing repeng. A peer that does not import is
reported as missing, not skipped silently.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import act_fast as af
from act_fast.bench.timing import Timer, compare, cpu_name, interleaved_rounds, spread

SIZES = {1024: 2816, 2048: 5632}  # hidden: intermediate (TinyLlama's ratio at 2048)


def llama(hidden: int, layers: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=SIZES[hidden], num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), vocab_size=32000,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def support_maps(model: nn.Module, sites: list[str], seed: int) -> af.SteeringMaps:
    """Weight 1 + 0.1·N, bias 0.1·N, support ∓(2 + U): fused / op run with their support masks."""
    C = model.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    maps = {s: af.AffineMap(1.0 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g),
                            -(2.0 + torch.rand(C, generator=g)), 2.0 + torch.rand(C, generator=g)) for s in sites}
    return af.SteeringMaps(maps, method="benchmark-random-support")


def peers() -> dict[str, str]:
    """Peer library versions, or why one is missing."""
    found = {}
    try:
        import steering_vectors  # noqa: F401
        from importlib.metadata import version

        found["steering-vectors"] = version("steering-vectors")
    except Exception as error:  # noqa: BLE001 - reported in the results
        found["steering-vectors"] = f"missing: {error}"
    try:
        import numpy as np

        if not hasattr(np, "float_"):
            np.float_ = np.float64  # repeng 0.4.0's annotations name it (removed in numpy 2)
        import repeng  # noqa: F401
        from importlib.metadata import version

        found["repeng"] = version("repeng")
    except Exception as error:  # noqa: BLE001
        found["repeng"] = f"missing: {error}"
    return found


def configurations(model: nn.Module, available: dict[str, str]) -> dict[str, tuple[int, Callable[[], contextlib.AbstractContextManager]]]:
    """name: (steered sites, context manager that steers the model while open)."""
    layers = len(model.model.layers)
    C = model.config.hidden_size
    norm_sites, o_proj_sites = af.sites(model, "layernorm"), af.sites(model, "o_proj")
    fused_maps, op_maps = support_maps(model, norm_sites, 1), support_maps(model, o_proj_sites, 2)
    g = torch.Generator().manual_seed(3)
    vectors = {i: 0.1 * torch.randn(C, generator=g) for i in range(layers)}

    @contextlib.contextmanager
    def act_fast_mode(maps: af.SteeringMaps, mode: str) -> Iterator[None]:
        handle = af.steer(model, maps, 1.0, mode=mode)
        try:
            assert set(handle.modes.values()) == {mode}, handle.modes
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def steering_vectors() -> Iterator[None]:
        from steering_vectors import SteeringVector

        handle = SteeringVector(layer_activations=vectors, layer_type="decoder_block").patch_activations(model, multiplier=1.0)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def repeng() -> Iterator[None]:
        from repeng import ControlModel

        controlled = ControlModel(model, list(range(layers)))
        try:
            controlled.set_raw_control({i: v.to(model.dtype) for i, v in vectors.items()})
            yield
        finally:
            controlled.unwrap()

    configs = {
        "unsteered": (0, contextlib.nullcontext),
        "act_fast fused (all norm sites)": (len(norm_sites), lambda: act_fast_mode(fused_maps, "fused")),
        "act_fast op (all o_proj)": (len(o_proj_sites), lambda: act_fast_mode(op_maps, "op")),
    }
    if not available["steering-vectors"].startswith("missing"):
        configs["steering-vectors (decoder layer outputs)"] = (layers, steering_vectors)
    if not available["repeng"].startswith("missing"):
        configs["repeng (decoder layer outputs)"] = (layers, repeng)
    return configs


def decode_ms(model: nn.Module, prompt: torch.Tensor, new_tokens: int, timer: Timer) -> float:
    """Median time of ``new_tokens`` greedy decode steps at batch 1 on the KV cache of ``prompt``
    (rebuilt, untimed, before every run)."""
    from act_fast.prompts import model_accepts

    cache_arg = "cache" if model_accepts(model, "cache") else "past_key_values"  # as act_fast.bench.throughput
    state: dict = {}

    def fresh_cache() -> None:
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) if cache_arg == "cache" else None
        state["cache"] = out.past_key_values if cache is None else cache
        state["first"] = out.logits[:, -1:].argmax(-1)

    def decode() -> None:
        tok, cache = state["first"], state["cache"]
        for _ in range(new_tokens):
            out = model(input_ids=tok, use_cache=True, **{cache_arg: cache})
            tok = out.logits[:, -1:].argmax(-1)

    with torch.no_grad():
        return timer.run(decode, inner=1, between=fresh_cache).median_ms


def run_size(hidden: int, args: argparse.Namespace, available: dict[str, str]) -> dict:
    model = llama(hidden, args.layers)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    configs = configurations(model, available)
    timer = Timer("cpu", warmup=args.warmup, repeats=1, thread_time=args.clock == "thread")
    decode_ms(model, prompt, args.new_tokens, Timer("cpu", warmup=1, repeats=1))  # one-time start-up costs
    with torch.no_grad():
        plain = model(input_ids=prompt).logits[0, -1]
        changes = {}
        for name, (_, steering) in configs.items():
            with steering():
                changes[name] = not torch.equal(model(input_ids=prompt).logits[0, -1], plain)
    if not all(changed for name, changed in changes.items() if name != "unsteered"):
        raise RuntimeError(f"a configuration does not change the model's output (nothing steered?): {changes}")

    def run(name: str) -> dict[str, float]:
        with configs[name][1]():
            return {"ms_per_token": decode_ms(model, prompt, args.new_tokens, timer) / args.new_tokens}

    samples = {name: s["ms_per_token"] for name, s in interleaved_rounds(list(configs), args.rounds, run).items()}
    base = samples["unsteered"]
    rows = []
    for name, (n_sites, _) in configs.items():
        ms = samples[name]
        row = {"config": name, "steered_sites": n_sites, "ms_per_token": statistics.median(ms), "spread": spread(ms),
               "samples_ms_per_token": [round(t, 4) for t in ms]}
        if name != "unsteered":
            tokens_per_s = compare([1e3 / t for t in base], [1e3 / t for t in ms])
            added = statistics.median(ms) - statistics.median(base)
            row.update({"added_ms_per_token": added, "added_us_per_site": added * 1e3 / n_sites,
                        "tokens_per_s_ratio": tokens_per_s.ratio, "noise": tokens_per_s.noise, "resolved": tokens_per_s.resolved,
                        "verdict": tokens_per_s.describe()})
        rows.append(row)
    return {"hidden": hidden, "intermediate": SIZES[hidden], "layers": args.layers, "rows": rows}


def table(result: dict) -> str:
    lines = [f"hidden {result['hidden']}, {result['layers']} layers:",
             f"  {'config':42s} {'sites':>5s} {'ms/token':>9s} {'±':>6s} {'added ms/tok':>12s} {'µs/site':>8s}  tokens/s vs unsteered"]
    for r in result["rows"]:
        added = "" if "added_ms_per_token" not in r else f"{r['added_ms_per_token']:12.3f} {r['added_us_per_site']:8.1f}  {r['verdict']}"
        lines.append(f"  {r['config']:42s} {r['steered_sites']:5d} {r['ms_per_token']:9.3f} {r['spread']:6.1%} {added}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024,2048", help="hidden sizes, of 1024,2048")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="thread", choices=["thread", "wall"],
                   help="thread CPU time (default: steady on a shared machine; one intra-op thread does all the work) or wall-clock")
    p.add_argument("--out", type=Path)
    p.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    available = peers()
    results = []
    for hidden in (int(s) for s in args.sizes.split(",")):
        results.append(run_size(hidden, args, available))
        print(table(results[-1]), flush=True)
    if args.out is not None:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
        payload = {"what": "added time per decoded token of steering, per model size (issue 25 item 4)",
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
                   "machine": f"{cpu_name()} ({os.cpu_count()} CPUs), torch {torch.__version__}, CPU capability "
                              f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} intra-op thread(s)",
                   "kernels": af.ops.cpu_kernels.status() if hasattr(af.ops, "cpu_kernels") else "n/a",
                   "note": args.note, "peers": available,
                   "settings": {"layers": args.layers, "batch": 1, "prompt": args.prompt, "new_tokens": args.new_tokens,
                                "rounds": args.rounds, "warmup": args.warmup, "dtype": "float32", "clock": args.clock},
                   "sizes": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
