"""``collect`` vs a plain forward, with and without length bucketing, on prompts of mixed lengths
(issue 23 item 4).

A 4-layer tiny Llama (hidden 256), ``--prompts`` prompts of 4 to 256 tokens (log-uniform lengths),
batches of 8, right padding, one intra-op thread. Orders: source order, and sorted by length in
windows of 16 batches (:func:`act_fast.cli.collect.length_sorted_batches`, what ``act-fast collect``
does). For each order: a plain forward over the batches and ``af.collect`` on every norm site
(mean pooling), timed interleaved over ``--reps`` rounds (medians); real tokens/s and the padding
fraction of the batches' token slots. Writes JSON.

    python benchmarks/collect_bucketing.py --out benchmarks/results/cpu-<date>-collect-bucketing.json
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



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    import act_fast as af
    from act_fast.cli.collect import length_sorted_batches

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=1000, max_position_embeddings=512)).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.exp(torch.empty(args.prompts).uniform_(float(torch.log(torch.tensor(4.0))), float(torch.log(torch.tensor(256.0))), generator=g)).long()
    prompts = [torch.randint(0, 1000, (int(n),), generator=g).tolist() for n in lengths]

    def pad(batch: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(p) for p in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    orders = {
        "source_order": [pad(b) for b, _ in length_sorted_batches(iter(prompts), 8, 1)],
        "length_sorted": [pad(b) for b, _ in length_sorted_batches(iter(prompts), 8, 16)],
    }
    tokens = int(sum(lengths))
    sites = af.sites(model, "layernorm")

    def plain(batches):
        with torch.no_grad():
            for b in batches:
                model(**b)

    cases = {}
    for name, batches in orders.items():
        cases[f"plain_forward/{name}"] = lambda b=batches: plain(b)
        cases[f"collect/{name}"] = lambda b=batches: af.collect(model, b, sites, progress=False)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    padding = {name: 1 - tokens / sum(b["attention_mask"].numel() for b in batches) for name, batches in orders.items()}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    result = {
        "what": "act-fast collect length bucketing: collect vs plain forward, source order vs sorted (issue 23 item 4)",
        "machine": {"platform": platform.platform(), "processor": cpu_name(),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "threads": 1,
                    "note": "shared machine: other jobs ran at the same time; compare ratios within this file only"},
        "commit": commit, "torch": torch.__version__,
        "config": {"layers": 4, "hidden": 256, "sites": len(sites), "pooling": "mean", "prompts": args.prompts,
                   "lengths": "log-uniform 4..256 tokens", "batch": 8, "sort_window_batches": 16, "reps": args.reps},
        "real_tokens": tokens,
        "padding_fraction": padding,
        "seconds_median": med, "seconds_all": times,
        "real_tokens_per_second": {k: tokens / v for k, v in med.items()},
        "ratios": {
            "collect_vs_plain/source_order": med["collect/source_order"] / med["plain_forward/source_order"],
            "collect_vs_plain/length_sorted": med["collect/length_sorted"] / med["plain_forward/length_sorted"],
            "collect_sorted_vs_collect_source": med["collect/length_sorted"] / med["collect/source_order"],
            "collect_sorted_vs_plain_source": med["collect/length_sorted"] / med["plain_forward/source_order"],
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
