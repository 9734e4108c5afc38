"""``SteeringHandle``: what :func:`act_fast.steer` returns: λ and the per-row map set, the plan,
and the undo."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.steering.chains import chain_tensors, chain_width, describe_chain, finite_strength, is_chain_entry, parse_chain
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
        map_sets: names of the map sets (empty for a single set; ``"0"``, ``"1"``, … for a list
            of map sets, the whole-model chain of ``steer(model, [m1, m2])``).
    """

    def __init__(
        self, sites: list[SteeredSite], plans: list[SitePlan], control: StrengthControl, set_names: list[str], chain: bool = False
    ) -> None:
        self._sites = sites
        self._plans = plans
        self._control = control
        self._chain = chain  # made from a list of map sets: one chain for the whole model
        self.map_sets: tuple[str, ...] = tuple(set_names)
        self.modes: dict[str, str] = {s.site: s.mode for s in sites}
        self._removed = False
        for site in sites:
            STEERED[site.module] = site.site

    def explain(self) -> str:
        """One line per site: its mode and why cheaper modes were refused; with several map sets,
        first the sets and the current selection (each row's chain, in the order applied)."""
        lines = []
        if self.map_sets:
            lines.append(f"map sets: {list(self.map_sets)}; up to {chain_width(len(self.map_sets))} compose on a row, in the order given")
            lines.append(f"selection: {self._describe_selection()}")
        return "\n".join(lines + [p.explain() for p in self._plans])

    def _describe_selection(self) -> str:
        control = self._control
        if control.chain is not None:
            slots, lams = control.chain
            scale = control.scale
            scaled = "" if isinstance(scale, float) and scale == 1.0 else f", each λ times the strength {scale if isinstance(scale, float) else 'per row'}"
            if slots.shape[0] == 1:
                return f"every row: {describe_chain(slots[0], lams[0], self.map_sets)}{scaled}"
            rows = "; ".join(f"row {r}: {describe_chain(slots[r], lams[r], self.map_sets)}" for r in range(min(slots.shape[0], 8)))
            more = f"; … ({slots.shape[0]} rows)" if slots.shape[0] > 8 else ""
            return rows + more + scaled
        assert control.index is not None
        index = next(iter(control.index.values())).cpu()
        name = lambda k: "unsteered" if k == 0 else self.map_sets[k - 1]  # noqa: E731
        if index.ndim == 0:
            return f"every row: {name(int(index))} (λ {self.strength.tolist()})"
        return "; ".join(f"row {r}: {name(k)}" for r, k in enumerate(index.tolist()[:8])) + f" (λ {self.strength.tolist()})"

    # -- strength ---------------------------------------------------------------------------

    @property
    def strength_range(self) -> tuple[float, float] | None:
        """The ``(lo, hi)`` every λ must lie in (``steer(..., strength_range=...)``), or None."""
        return self._control.strength_range

    @property
    def strength(self) -> Tensor:
        """The current λ the kernels read (a copy of the device tensor: 0-d, or ``[B]`` per batch
        row; with chains ``[B, S]`` / ``[1, S]``, each position's λ times the strength)."""
        return next(iter(self._control.strength.values())).clone()

    def set_strength(self, strength: float | Tensor | Sequence[float]) -> None:
        """Sets λ: a finite number or 0-d tensor for every row, or ``[B]`` (one λ per batch row).

        With chains selected (:meth:`select` with dicts, or a list of map sets given to
        :func:`act_fast.steer`) the number (or ``[B]``) scales every position's λ. A list of
        numbers, one per map set, sets the whole-model chain's λ per set (a handle made from a
        list of map sets) and the scale back to 1.

        Values are checked (finite, inside the handle's :attr:`strength_range` when it has one —
        with chains each position's λ times the scale; a tensor on an accelerator is read once,
        here) and copied into the handle's device tensors (no recompile); a refused value changes
        nothing. Folded sites are refolded from their original parameters on the device. A ``[B]``
        λ needs every site in ``fused`` or ``op`` mode.
        """
        self._alive()
        self._refuse_changes("set the strength", by_value=False)
        if isinstance(strength, (list, tuple)):
            if not self._chain:
                raise ValueError(
                    "a list of strengths (one per map set) needs a handle made from a list of map sets, "
                    "steer(model, [m1, m2], strength=[...]); select per row with dicts {set: λ} instead"
                )
            if len(strength) != len(self.map_sets):
                raise ValueError(f"strength has {len(strength)} values, the chain has {len(self.map_sets)} map sets {list(self.map_sets)}")
            lams = [finite_strength(v, f"strength for map set {n!r}") for n, v in zip(self.map_sets, strength)]
            slots, lam_t = chain_tensors([[(k + 1, lam) for k, lam in enumerate(lams)]], chain_width(len(self.map_sets)))
            scale = self._control.scale
            self._control.scale = 1.0
            try:
                self._control.set_chain(slots, lam_t)
            except ValueError:
                self._control.scale = scale
                raise
            for site in self._sites:
                site.refold()
            return
        if isinstance(strength, Tensor) and strength.ndim == 1:
            folded = [s.site for s in self._sites if s.mode == "fold"]
            if folded:
                raise ValueError(f"per-row strength cannot be folded into weights; sites {folded[:4]} are in fold mode (steer with mode='fused' or 'op')")
        self._control.set_strength(strength)
        for site in self._sites:
            site.refold()

    # -- per-row map selection --------------------------------------------------------------

    def select(self, choice: Any) -> None:
        """Chooses the map set, or the ordered chain of map sets, of each batch row (handles made
        from several map sets).

        Args:
            choice: one of
                - a set name or None (unsteered) for every row, or a list with one per batch row:
                  that set at the handle's strength;
                - a dict ``{set: λ}`` for every row, or a list with one dict (or None, or a name)
                  per batch row: each row's ordered chain ``y = T_K(… T_1(x))``, the sets applied
                  in the dict's order, each with its λ (times the handle's strength, 1 unless
                  :meth:`set_strength` changed it); up to ``min(len(map_sets), 4)`` sets per row;
                - an integer tensor ``[B]`` (or 0-d) of set positions in :attr:`map_sets`
                  (``-1`` = unsteered).

        Raises:
            ValueError: an unknown set, a position out of range, λ not finite, a set named twice
                in a chain, too many sets in a chain (each message names the handle's sets); on
                a handle with folded sites (a list of map sets folded into the weights).
        """
        self._alive()
        if self._control.index is None:
            raise ValueError("this handle holds one map set; pass a dict of name -> SteeringMaps to steer() to select per row")
        folded = [s.site for s in self._sites if s.mode == "fold"]
        if folded:
            raise ValueError(f"sites {folded[:4]} fold the whole-model chain into their weights; steer with mode='fused' or 'op' to select per row")
        rows = choice if isinstance(choice, (list, tuple)) else None  # a list: one entry per row
        if isinstance(choice, Mapping) or (rows is not None and any(is_chain_entry(r) for r in rows)):
            entries = [choice] if rows is None else list(rows)
            chains = [parse_chain(e, self.map_sets, "select" if rows is None else f"select, row {r}") for r, e in enumerate(entries)]
            slots, lams = chain_tensors(chains, chain_width(len(self.map_sets)))
            self._control.set_chain(slots, lams)
            return
        if isinstance(choice, Tensor):
            if choice.dtype not in (torch.int32, torch.int64) or choice.ndim > 1:
                raise ValueError(f"selection tensor must be int32/int64, 0-d or [B], got {choice.dtype} {list(choice.shape)}")
            values = choice.detach().cpu()
            bad = (values < -1) | (values >= len(self.map_sets))
            if bool(bad.any()):
                where = bad.nonzero().flatten().tolist()[:8] if values.ndim else []
                got = values[bad].tolist()[:8] if values.ndim else [int(values)]
                positions = ", ".join(f"{k} = {n!r}" for k, n in enumerate(self.map_sets))
                raise ValueError(
                    f"selection tensor holds {got}{f' at rows {where}' if values.ndim else ''}: positions must be -1 "
                    f"(unsteered) or in [0, {len(self.map_sets)}) ({positions})"
                )
            slots = choice.detach().to(torch.int32) + 1
        else:
            names = [choice] if choice is None or isinstance(choice, str) else list(choice)
            bad_type = [type(n).__name__ for n in names if n is not None and not isinstance(n, str)]
            if bad_type:
                raise TypeError(f"select takes set names, None, dicts {{set: λ}} or an integer tensor, got {bad_type[0]}")
            unknown = sorted({n for n in names if n is not None and n not in self.map_sets})
            if unknown:
                raise ValueError(f"unknown map sets {unknown}; this handle has {list(self.map_sets)}")
            ids = [0 if n is None else self.map_sets.index(n) + 1 for n in names]
            slots = torch.tensor(ids[0] if isinstance(choice, str) or choice is None else ids, dtype=torch.int32)
        if self._control.chain is not None:
            self._control.set_chain(None, None)
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
