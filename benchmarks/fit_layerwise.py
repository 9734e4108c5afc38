"""Incremental fit layer by layer vs the at-once fit (issue 23 item 2).

An 8-layer tiny Llama (hidden 256), 8 sites (every ``post_attention_layernorm``), source and target
sets of ``--batches`` batches of 8 prompts × 64 tokens, one intra-op thread. Timed, interleaved
over ``--reps`` rounds (medians): a plain forward over both sets, the at-once fit
(``incremental=False``: one forward per side), the incremental fit by whole-model forwards
(``layerwise=False``: one forward per site and side) and layer by layer (``layerwise=True``).
Checks the two incremental fits give the same maps (bit for bit) and writes the figures as JSON.

    python benchmarks/fit_layerwise.py --out benchmarks/results/cpu-<date>-fit-layerwise.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from act_fast.bench.timing import cpu_name


def model_and_batches(layers: int, batches: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)

    def side() -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in range(batches):
            ids = torch.randint(0, 1000, (8, 64), generator=g)
            mask = torch.ones(8, 64, dtype=torch.int64)
            mask[0, :16] = 0  # some padding
            out.append({"input_ids": ids, "attention_mask": mask})
        return out

    return model, side(), side()



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    import act_fast as af
    from act_fast.estimators import layerwise

    model, src, tgt = model_and_batches(args.layers, args.batches)
    sites = af.sites(model)
    assert len(sites) == args.layers

    def plain():
        with torch.no_grad():
            for b in src + tgt:
                model(**b)

    cases = {
        "plain_forward": plain,
        "at_once": lambda: af.fit(model, src, tgt, sites, incremental=False, progress=False),
        "incremental_whole_model": lambda: af.fit(model, src, tgt, sites, layerwise=False, progress=False),
        "incremental_layerwise": lambda: af.fit(model, src, tgt, sites, layerwise=True, progress=False),
    }
    a = cases["incremental_whole_model"]()
    b = cases["incremental_layerwise"]()
    same = all(torch.equal(a[s].tensors()[k], b[s].tensors()[k]) for s in a for k in a[s].tensors())
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_token, _ = layerwise.estimate_bytes_per_token(model, sites, src[0])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    result = {
        "what": "incremental fit layer by layer vs at-once fit (issue 23 item 2)",
        "machine": {"platform": platform.platform(), "processor": cpu_name(),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "threads": 1,
                    "note": "shared machine: other jobs ran at the same time; compare ratios within this file only"},
        "commit": commit, "torch": torch.__version__,
        "config": {"layers": args.layers, "sites": len(sites), "hidden": 256, "batches_per_side": args.batches,
                   "batch": [8, 64], "reps": args.reps},
        "seconds_median": med, "seconds_all": times,
        "ratios": {
            "layerwise_vs_at_once": med["incremental_layerwise"] / med["at_once"],
            "whole_model_vs_at_once": med["incremental_whole_model"] / med["at_once"],
            "layerwise_vs_plain_forward": med["incremental_layerwise"] / med["plain_forward"],
            "at_once_vs_plain_forward": med["at_once"] / med["plain_forward"],
        },
        "goal": "layerwise_vs_at_once <= 1.3",
        "maps_equal_bit_for_bit": same,
        "bytes_kept_per_prompt_token_and_side": per_token,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
