"""The demo's two topic sentence sets (package data ``act_fast/data/<topic>.txt``) and their split."""

from __future__ import annotations

from importlib import resources

import torch

_SUFFIX = ".txt"


def topics() -> list[str]:
    """Names of the shipped sentence sets (``cooking``, ``football``), sorted."""
    data = resources.files("act_fast") / "data"
    return sorted(p.name[: -len(_SUFFIX)] for p in data.iterdir() if p.name.endswith(_SUFFIX))


def load_topic(name: str) -> list[str]:
    """The sentences of one topic, one per non-empty line, in file order."""
    known = topics()
    if name not in known:
        raise ValueError(f"unknown topic {name!r}; the demo ships {known}")
    text = (resources.files("act_fast") / "data" / f"{name}{_SUFFIX}").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def split(sentences: list[str], held_out: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded random split into ``(fit, held_out)``; ``held_out`` is the held-out fraction."""
    n_held = max(1, round(held_out * len(sentences)))
    if n_held >= len(sentences):
        raise ValueError(f"cannot hold out {n_held} of {len(sentences)} sentences and still fit")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    return [sentences[i] for i in order[n_held:]], [sentences[i] for i in order[:n_held]]
