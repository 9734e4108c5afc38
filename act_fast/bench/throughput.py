"""Prefill and decode throughput of a causal LM, unsteered and steered in each mode, side by side.

- **prefill**: one forward of ``[B, P]`` prompt tokens without a cache (last-token logits only
  where the model supports ``logits_to_keep``); tokens/s = ``B·P / time``.
- **decode**: ``N`` greedy steps of ``[B, 1]`` tokens on the KV cache of a ``P``-token prompt,
  the argmax fed back; tokens/s = ``B·N / time``. The cache is rebuilt (untimed) before every
  timed run, so every run decodes the same positions.

Each figure is the median of ``repeats`` runs after ``warmup`` calls (:class:`Timer`), after one
untimed pass that absorbs one-time start-up costs. The unsteered model is measured before and
after the steered ones: the two show the noise of the machine, and ratios are taken against their
mean.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.bench.timing import Timer, Timing
from act_fast.prompts import model_accepts

UNSTEERED = "unsteered"


@dataclass
class Throughput:
    """One configuration's figures (``error`` set instead when it could not run)."""

    config: str
    prefill_tokens_per_s: float = float("nan")
    decode_tokens_per_s: float = float("nan")
    prefill: Timing | None = None
    decode: Timing | None = None
    modes: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
            "prefill": None if self.prefill is None else self.prefill.as_dict(), "decode": None if self.decode is None else self.decode.as_dict(),
            "modes": self.modes, "error": self.error,
        }


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
    timer: Timer,
    strength: float = 1.0,
) -> list[Throughput]:
    """Unsteered, then steered with :func:`act_fast.steer` in each of ``modes``, then unsteered
    again. A mode that some site cannot take gets a row with ``error`` (steer's message)."""
    from act_fast.steering import steer

    B, P = prompt.shape
    measure(model, prompt, new_tokens, Timer(timer.device, warmup=1, repeats=1))  # one-time start-up costs, untimed

    def row(config: str, modes_used: dict[str, int]) -> Throughput:
        pre, dec = measure(model, prompt, new_tokens, timer)
        return Throughput(config, B * P / pre.median_ms * 1e3, B * new_tokens / dec.median_ms * 1e3, pre, dec, modes_used)

    rows = [row(UNSTEERED, {})]
    for mode in modes:
        try:
            handle = steer(model, maps, strength, mode=mode)
        except ValueError as err:
            reason = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()).replace(":;", ":")
            rows.append(Throughput(mode, error=reason if len(reason) <= 160 else reason[:159] + "…"))
            continue
        try:
            rows.append(row(mode, dict(sorted(Counter(handle.modes.values()).items()))))
        finally:
            handle.remove()
    rows.append(row(f"{UNSTEERED} (again)", {}))
    return rows


def baseline(rows: Sequence[Throughput]) -> tuple[float, float]:
    """Mean unsteered prefill and decode tokens/s of the rows measured without steering."""
    plain = [r for r in rows if r.config.startswith(UNSTEERED)]
    return statistics.fmean(r.prefill_tokens_per_s for r in plain), statistics.fmean(r.decode_tokens_per_s for r in plain)
