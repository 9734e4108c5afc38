"""Prefill and decode throughput of a causal LM, unsteered and steered in each mode, side by side.

- **prefill**: one forward of ``[B, P]`` prompt tokens without a cache (last-token logits only
  where the model supports ``logits_to_keep``); tokens/s = ``B·P / time``.
- **decode**: ``N`` greedy steps of ``[B, 1]`` tokens on the KV cache of a ``P``-token prompt,
  the argmax fed back; tokens/s = ``B·N / time``. The cache is rebuilt (untimed) before every
  timed run, so every run decodes the same positions.

The unsteered model and each steering mode are timed in interleaved rounds
(:func:`act_fast.bench.timing.interleaved_rounds`): each round steers the model in one mode,
warms it up (``warmup`` untimed runs), times ``repeats`` runs, and removes the steering, the
order of the configurations rotated from round to round; one untimed pass first absorbs one-time
start-up costs. Each figure is the median over the rounds, with its spread; a ratio to
unsteered is a finding only when the difference exceeds the larger spread of the two
(:func:`act_fast.bench.timing.compare`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.bench.timing import Comparison, Timer, Timing, compare, interleaved_rounds, timing_of
from act_fast.prompts import model_accepts

UNSTEERED = "unsteered"


@dataclass
class Throughput:
    """One configuration's figures (``error`` set instead when it could not run). ``prefill`` /
    ``decode``: per-round medians (ms per timed run); ``*_vs_unsteered``: tokens/s against the
    unsteered row of the same rounds (None on that row)."""

    config: str
    prefill_tokens_per_s: float = float("nan")
    decode_tokens_per_s: float = float("nan")
    prefill: Timing | None = None
    decode: Timing | None = None
    modes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    prefill_vs_unsteered: Comparison | None = None
    decode_vs_unsteered: Comparison | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
            "prefill": None if self.prefill is None else self.prefill.as_dict(), "decode": None if self.decode is None else self.decode.as_dict(),
            "modes": self.modes, "error": self.error,
            "prefill_vs_unsteered": _comparison_dict(self.prefill_vs_unsteered),
            "decode_vs_unsteered": _comparison_dict(self.decode_vs_unsteered),
        }


def _comparison_dict(c: Comparison | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"ratio": c.ratio, "noise": None if c.noise == float("inf") else c.noise, "resolved": c.resolved}


def measure(model: nn.Module, prompt: Tensor, new_tokens: int, timer: Timer) -> tuple[Timing, Timing]:
    """Median prefill time of ``prompt`` ``[B, P]`` and of ``new_tokens`` greedy decode steps."""
    keep = {"logits_to_keep": 1} if model_accepts(model, "logits_to_keep") else {}
    cache_arg = "cache" if model_accepts(model, "cache") else "past_key_values"  # transformers ≥ 5.2x renamed it
    mask = torch.ones_like(prompt)
    with torch.no_grad():
        prefill = timer.run(lambda: model(input_ids=prompt, attention_mask=mask, use_cache=False, **keep), inner=1)
        state: dict[str, Any] = {}

        def fresh_cache() -> None:
            out = model(input_ids=prompt, attention_mask=mask, use_cache=True, **keep)
            cache = getattr(out, "cache", None) if cache_arg == "cache" else None
            state["cache"] = out.past_key_values if cache is None else cache
            state["first"] = out.logits[:, -1:].argmax(-1)

        def decode() -> None:
            tok, cache = state["first"], state["cache"]
            for i in range(new_tokens):
                step_mask = torch.ones((prompt.shape[0], prompt.shape[1] + i + 1), dtype=mask.dtype, device=mask.device)
                out = model(input_ids=tok, attention_mask=step_mask, use_cache=True, **{cache_arg: cache})
                tok = out.logits[:, -1:].argmax(-1)

        decode_t = timer.run(decode, inner=1, between=fresh_cache)
    return prefill, decode_t


def steering_throughput(
    model: nn.Module,
    maps: Mapping[str, Any],
    modes: Sequence[str],
    prompt: Tensor,
    new_tokens: int,
    device: str,
    rounds: int = 5,
    warmup: int = 1,
    repeats: int = 1,
    strength: float = 1.0,
) -> list[Throughput]:
    """The unsteered model and :func:`act_fast.steer` in each of ``modes``, in interleaved
    rounds (module docstring). A mode that some site cannot take gets a row with ``error``
    (steer's message) and is not timed."""
    from act_fast.steering import steer

    B, P = prompt.shape
    measure(model, prompt, new_tokens, Timer(device, warmup=1, repeats=1))  # one-time start-up costs, untimed
    errors: dict[str, str] = {}
    used: dict[str, dict[str, int]] = {UNSTEERED: {}}
    for mode in modes:
        try:
            handle = steer(model, maps, strength, mode=mode)
        except ValueError as err:
            reason = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()).replace(":;", ":")
            errors[mode] = reason if len(reason) <= 160 else reason[:159] + "…"
            continue
        used[mode] = dict(sorted(Counter(handle.modes.values()).items()))
        handle.remove()
    timer = Timer(device, warmup=warmup, repeats=repeats)

    def run(config: str) -> dict[str, float]:
        handle = None if config == UNSTEERED else steer(model, maps, strength, mode=config)
        try:
            pre, dec = measure(model, prompt, new_tokens, timer)
        finally:
            if handle is not None:
                handle.remove()
        return {"prefill": pre.median_ms, "decode": dec.median_ms}

    samples = interleaved_rounds(list(used), rounds, run)
    rate = {"prefill": B * P * 1e3, "decode": B * new_tokens * 1e3}  # tokens per run × 1000 / ms

    def rates(config: str, figure: str) -> list[float]:
        return [rate[figure] / ms for ms in samples[config][figure]]

    rows = []
    for config in [UNSTEERED, *modes]:
        if config in errors:
            rows.append(Throughput(config, error=errors[config]))
            continue
        pre, dec = timing_of(samples[config]["prefill"]), timing_of(samples[config]["decode"])
        row = Throughput(config, rate["prefill"] / pre.median_ms, rate["decode"] / dec.median_ms, pre, dec, used[config])
        if config != UNSTEERED:
            row.prefill_vs_unsteered = compare(rates(UNSTEERED, "prefill"), rates(config, "prefill"))
            row.decode_vs_unsteered = compare(rates(UNSTEERED, "decode"), rates(config, "decode"))
        rows.append(row)
    return rows
