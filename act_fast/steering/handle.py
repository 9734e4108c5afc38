"""``SteeringHandle``: what :func:`act_fast.steer` returns: λ and the per-row map set, the plan,
and the undo."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.steering.control import StrengthControl
from act_fast.steering.fold import changed_message
from act_fast.steering.plan import SitePlan
from act_fast.steering.site import SteeredSite

# Modules currently steered (module -> site name), so that a second steer() on a site is refused.
STEERED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


class SteeringHandle:
    """Maps applied to a model by :func:`act_fast.steer`; changes λ and the per-row map set, and
    undoes it all. Also a context manager (removes itself on exit).

    Attributes:
        modes: site name → ``"fold"`` | ``"fused"`` | ``"op"``.
        map_sets: names of the map sets (empty for a single set).
    """

    def __init__(self, sites: list[SteeredSite], plans: list[SitePlan], control: StrengthControl, set_names: list[str]) -> None:
        self._sites = sites
        self._plans = plans
        self._control = control
        self.map_sets: tuple[str, ...] = tuple(set_names)
        self.modes: dict[str, str] = {s.site: s.mode for s in sites}
        self._removed = False
        for site in sites:
            STEERED[site.module] = site.site

    def explain(self) -> str:
        """One line per site: its mode and why cheaper modes were refused."""
        return "\n".join(p.explain() for p in self._plans)

    # -- strength ---------------------------------------------------------------------------

    @property
    def strength_range(self) -> tuple[float, float] | None:
        """The ``(lo, hi)`` every λ must lie in (``steer(..., strength_range=...)``), or None."""
        return self._control.strength_range

    @property
    def strength(self) -> Tensor:
        """The current λ (a copy of the device tensor: 0-d, or ``[B]`` per batch row)."""
        return next(iter(self._control.strength.values())).clone()

    def set_strength(self, strength: float | Tensor) -> None:
        """Sets λ: a finite number or 0-d tensor for every row, or ``[B]`` (one λ per batch row).

        Values are checked (finite, inside the handle's :attr:`strength_range` when it has one; a
        tensor on an accelerator is read once, here) and copied into the handle's device tensors
        (no recompile); a refused value changes nothing. Folded sites are refolded from their
        original parameters on the device. A ``[B]`` λ needs every site in ``fused`` or ``op`` mode.
        """
        self._alive()
        self._refuse_changes("set the strength", by_value=False)
        if isinstance(strength, Tensor) and strength.ndim == 1:
            folded = [s.site for s in self._sites if s.mode == "fold"]
            if folded:
                raise ValueError(f"per-row strength cannot be folded into weights; sites {folded[:4]} are in fold mode (steer with mode='fused' or 'op')")
        self._control.set_strength(strength)
        for site in self._sites:
            site.refold()

    # -- per-row map selection --------------------------------------------------------------

    def select(self, choice: Sequence[str | None] | Tensor | str | None) -> None:
        """Chooses the map set of each batch row (handles made from several map sets).

        Args:
            choice: one name (or None) for every row; a list with one name or None per batch row
                (None = unsteered); or an integer tensor ``[B]`` of set positions in
                :attr:`map_sets` (``-1`` = unsteered).
        """
        self._alive()
        if self._control.index is None:
            raise ValueError("this handle holds one map set; pass a dict of name -> SteeringMaps to steer() to select per row")
        if isinstance(choice, Tensor):
            if choice.dtype not in (torch.int32, torch.int64) or choice.ndim > 1:
                raise ValueError(f"selection tensor must be int32/int64, 0-d or [B], got {choice.dtype} {list(choice.shape)}")
            slots = choice.detach().to(torch.int32) + 1
        else:
            names = [choice] if choice is None or isinstance(choice, str) else list(choice)
            unknown = sorted({n for n in names if n is not None and n not in self.map_sets})
            if unknown:
                raise ValueError(f"unknown map sets {unknown}; this handle has {list(self.map_sets)}")
            ids = [0 if n is None else self.map_sets.index(n) + 1 for n in names]
            slots = torch.tensor(ids[0] if isinstance(choice, str) or choice is None else ids, dtype=torch.int32)
        self._control.set_slots(slots)

    # -- diffusion schedules ----------------------------------------------------------------

    def step_callback(self, schedule: Sequence[float] | Callable[[int], float]) -> Callable[..., dict]:
        """A diffusers ``callback_on_step_end`` that sets λ per denoising step.

        ``schedule``: a list (step i uses ``schedule[i]``, the last value after its end) or a
        callable ``step -> λ``. λ for step 0 is set now; the callback sets step ``i + 1``'s λ when
        step ``i`` ends. Use: ``pipe(..., callback_on_step_end=handle.step_callback([...]))``.
        """
        if callable(schedule):
            at = schedule
        else:
            values = [float(v) for v in schedule]
            if not values:
                raise ValueError("the strength schedule is empty")
            at = lambda i: values[min(i, len(values) - 1)]  # noqa: E731
        self.set_strength(at(0))

        def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            self.set_strength(at(step + 1))
            return callback_kwargs

        return callback

    # -- lifetime ---------------------------------------------------------------------------

    def remove(self, changed: str = "raise") -> None:
        """Restores the model exactly: removes hooks and fused forwards, copies folded originals back
        (the values of the last ``load_state_dict`` into a folded module, else those at ``steer()``).

        Args:
            changed: for folded parameters written by anything other than ``load_state_dict`` while
                steered (an optimizer step, ``copy_``; their unsteered value is unknown): ``"raise"``
                refuses with the parameters named and changes nothing, ``"restore"`` copies the
                values from ``steer()`` back (the change is lost), ``"keep"`` leaves their current
                values (the folded map stays in them).
        """
        if changed not in ("raise", "restore", "keep"):
            raise ValueError(f"changed must be 'raise', 'restore' or 'keep', got {changed!r}")
        if self._removed:
            return
        if changed == "raise":
            self._refuse_changes("remove the steering")
        for site in self._sites:
            if changed == "keep":
                site.keep_changes()
            site.remove()
            STEERED.pop(site.module, None)
        self._removed = True

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        counts = {m: sum(1 for v in self.modes.values() if v == m) for m in ("fold", "fused", "op")}
        state = "removed" if self._removed else ", ".join(f"{n} {m}" for m, n in counts.items() if n)
        sets = f", map sets {list(self.map_sets)}" if self.map_sets else ""
        return f"SteeringHandle({len(self._sites)} sites: {state}{sets})"

    def _refuse_changes(self, action: str, by_value: bool = True) -> None:
        changed = [name for site in self._sites for name in site.changes(by_value)]
        if changed:
            raise RuntimeError(f"cannot {action}: {changed_message(changed)}")

    def _alive(self) -> None:
        if self._removed:
            raise RuntimeError("this SteeringHandle was removed; call steer() again")
