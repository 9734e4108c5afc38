"""Greedy generations of a causal LM from fixed prompts, unsteered and steered, side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import act_fast as af
from act_fast.modeling import module_device

PROMPTS = (
    "My favourite way to spend a Saturday is",
    "Yesterday evening, my friends and I",
    "The most important thing to remember is",
    "Here is what happened next:",
)
UNSTEERED = "unsteered"


@torch.no_grad()
def generations(
    tokenizer: Any,
    model: nn.Module,
    maps: Mapping[str, af.AffineMap],
    strengths: Sequence[float],
    prompts: Sequence[str] = PROMPTS,
    max_new_tokens: int = 40,
    *,
    strength_range: tuple[float, float] | None = None,
) -> dict[str, list[str]]:
    """Greedy continuations of ``prompts``: ``{"unsteered": [...], "λ=0.50": [...], ...}``, one text per
    prompt (the prompt itself left out), the unsteered model first, then under :func:`act_fast.steer`
    at each strength (each checked against ``strength_range``, as :func:`act_fast.steer` does)."""
    device = module_device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every prompt from its last real token
    try:
        enc = tokenizer(list(prompts), padding=True, return_tensors="pt", return_token_type_ids=False).to(device)
    finally:
        tokenizer.padding_side = side

    def run() -> list[str]:
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    texts = {UNSTEERED: run()}
    with af.steer(model, maps, strength=0.0, strength_range=strength_range) as handle:
        for lam in strengths:
            handle.set_strength(float(lam))
            texts[f"λ={lam:.2f}"] = run()
    return texts


def format_generations(prompts: Sequence[str], texts: Mapping[str, list[str]]) -> str:
    """One block per prompt, one aligned line per variant (newlines in a text shown as ``⏎``)."""
    width = max(map(len, texts))
    blocks = []
    for i, prompt in enumerate(prompts):
        lines = [f"prompt {i + 1}: {prompt!r}"]
        lines += [f"  {label:>{width}} | {prompt}{variant[i]}".replace("\n", " ⏎ ") for label, variant in texts.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
