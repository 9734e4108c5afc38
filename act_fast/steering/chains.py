"""Composition: a row's steering as an ordered chain of (map set, λ) pairs.

``y = T_K(… T_1(x))`` in the order given, each map with its own λ and its support tested on its
own input (docs/design.md §1). A handle made from several map sets stores a chain as a map-slot
index and a λ per position, ``[B, S]`` (one chain per batch row) or ``[1, S]`` (one chain for every
row, expanded to the batch at run time); ``S = min(number of sets, MAX_CHAIN)`` for every selection
of a handle, so changing chains never changes a shape (no recompile). Unused positions hold slot 0
(the identity) with λ 0.

What a row may be given (:func:`parse_chain`): None or ``{}`` (unsteered), a set name (that set,
λ 1), a dict ``{name: λ}`` (insertion order is the order of application) or a sequence of
``(name, λ)`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from act_fast.ops.checks import is_number
from act_fast.ops.reference import MAX_CHAIN

FLOAT32_MAX = float(torch.finfo(torch.float32).max)

Chain = list[tuple[int, float]]  # (slot, λ) pairs; slot k ≥ 1 is set k − 1 of the handle


def chain_width(num_sets: int) -> int:
    """``S``: the positions every chain of a handle with ``num_sets`` sets occupies."""
    return max(1, min(num_sets, MAX_CHAIN))


def is_chain_entry(entry: Any) -> bool:
    """Whether a row's selection is a chain (a dict, or a sequence of ``(name, λ)`` pairs)."""
    if isinstance(entry, Mapping):
        return True
    return isinstance(entry, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in entry)


def finite_strength(value: Any, where: str) -> float:
    """``value`` as a float that is finite in float32 (the kernels' λ dtype)."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if not is_number(value):
        raise TypeError(f"{where}: λ must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
        raise ValueError(f"{where}: λ must be finite (in float32), got {value!r}")
    return v


def parse_chain(entry: Any, names: Sequence[str], where: str) -> Chain:
    """One row's chain as ``(slot, λ)`` pairs, in order.

    Raises:
        ValueError: an unknown set (the known ones named), λ not finite, a set named twice, more
            than ``chain_width(len(names))`` sets.
        TypeError: a λ that is not a number, an entry of another type.
    """
    if entry is None:
        return []
    if isinstance(entry, str):
        pairs: list[tuple[Any, Any]] = [(entry, 1.0)]
    elif isinstance(entry, Mapping):
        pairs = list(entry.items())
    elif is_chain_entry(entry):
        pairs = [tuple(p) for p in entry]  # type: ignore[misc]
    else:
        raise TypeError(f"{where}: expected None, a set name, a dict {{set: λ}} or (set, λ) pairs, got {type(entry).__name__}")
    unknown = [n for n, _ in pairs if n not in names]
    if unknown:
        raise ValueError(f"{where}: unknown map set{'s' if len(unknown) > 1 else ''} {unknown}; this handle has {list(names)}")
    seen = [n for n, _ in pairs]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ValueError(f"{where}: map set{'s' if len(twice) > 1 else ''} {twice} named twice; a chain applies each set at most once (sets: {list(names)})")
    width = chain_width(len(names))
    if len(pairs) > width:
        raise ValueError(f"{where}: {len(pairs)} map sets {seen}, at most {width} compose on one row (MAX_CHAIN = {MAX_CHAIN}; sets: {list(names)})")
    return [(list(names).index(n) + 1, finite_strength(lam, f"{where}, set {n!r}")) for n, lam in pairs]


def chain_tensors(chains: Sequence[Chain], width: int) -> tuple[Tensor, Tensor]:
    """``(slots int32 [R, S], λ float32 [R, S])`` on the host, unused positions slot 0 and λ 0."""
    slots = torch.zeros(len(chains), width, dtype=torch.int32)
    lams = torch.zeros(len(chains), width, dtype=torch.float32)
    for r, chain in enumerate(chains):
        for k, (slot, lam) in enumerate(chain):
            slots[r, k], lams[r, k] = slot, lam
    return slots, lams


def describe_chain(slots: Tensor, lams: Tensor, names: Sequence[str]) -> str:
    """``detox (λ 0.8) → formal (λ 0.5)`` for one row of slots and λ (``unsteered`` when empty)."""
    parts = [f"{names[int(s) - 1]} (λ {float(lam):g})" for s, lam in zip(slots.tolist(), lams.tolist()) if int(s) != 0]
    return " → ".join(parts) if parts else "unsteered"
