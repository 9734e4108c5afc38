"""Fold mode: the map folded into the affine parameters that produce the site's output.

``y' = y + λ((w − 1) y + b)`` becomes ``scale + (scale + offset) · λ(w − 1)`` in the scale and
``shift + shift · λ(w − 1) + λ b`` in the shift (:class:`act_fast.integrations.FoldTarget`). Zero
cost per token. Changing λ refolds from the kept originals on the device; λ = 0 gives the
originals back exactly and :meth:`FoldedSite.remove` copies them back bit for bit.

Others may write the folded parameters too (docs/design.md §3). While folded, ``state_dict()``
reports the originals and ``load_state_dict()`` replaces them (the loaded values become the
originals and are refolded), so ``remove()`` leaves exactly the loaded weights. Any other write (an
optimizer step, ``copy_``, ``.data``) is detected — cheaply (version counter, storage, identity)
when λ changes, by value (the parameter against its folded value) when the unsteered state is
asked for — and refused with the parameter named: :meth:`changes` lists them and the handle's
``remove(changed=...)`` decides.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from act_fast.integrations import FoldTarget
from act_fast.steering.control import StrengthControl
from act_fast.steering.mapsets import MapBank
from act_fast.steering.site import SiteContext, SteeredSite


def composed_shift(bank: MapBank, control: StrengthControl, strength: Tensor) -> tuple[Tensor, Tensor]:
    """``(d, e)`` with the site's steering ``y' = (1 + d) y + e`` per channel (``[C]``).

    One map: ``d = λ (w − 1)``, ``e = λ b``. A whole-model chain (support-free maps, one ``[1, S]``
    selection): the maps composed in order, ``d ← d + d_k + d_k d``, ``e ← e + d_k e + λ_k b_k``
    (``d_k = λ_k (w_k − 1)``), which for one map is the same arithmetic as above.
    """
    if control.chain is None:
        return strength * (bank.weight.float() - 1.0), strength * bank.bias.float()
    slots = control.chain[0][0].tolist()
    d = torch.zeros_like(bank.weight[0], dtype=torch.float32)
    e = torch.zeros_like(d)
    for k, slot in enumerate(slots):
        lam = strength[0, k]
        dk = lam * (bank.weight[slot].float() - 1.0)
        d, e = d + dk + dk * d, e + dk * e + lam * bank.bias[slot].float()
    return d, e


def refuse_fold(ctx: SiteContext) -> str | None:
    """Why the fold mode cannot take this site, or None."""
    if isinstance(ctx.fold, str):
        return ctx.fold
    if any(m.lo is not None for m in ctx.maps):
        return "the map has a support"
    if (ctx.multi and not ctx.chain) or ctx.per_row:
        return "rows do not all share one map and λ"
    if ctx.fold.shift is None and any(bool((m.bias != 0).any()) for m in ctx.maps):
        return "the map has a bias but the module has no bias parameter"
    return None


class FoldedSite(SteeredSite):
    mode = "fold"

    def __init__(self, ctx: SiteContext, *args: Any) -> None:
        super().__init__(ctx, *args)
        assert isinstance(ctx.fold, FoldTarget)
        self.target = ctx.fold
        self.params: dict[str, nn.Parameter] = {"scale": self.target.scale}
        if self.target.shift is not None:
            self.params["shift"] = self.target.shift
        self.originals = {key: p.detach().clone() for key, p in self.params.items()}
        # Attribute name in the module of each folded parameter (state_dict keys, pickled state).
        own = dict(self.module.named_parameters(recurse=False))
        self.names = {key: next(name for name, p in own.items() if p is param) for key, param in self.params.items()}
        # Per parameter after our last write: (version counter, data pointer, dtype, device).
        self.written: dict[str, tuple[int, int, torch.dtype, torch.device]] = {}
        self.incoming: set[str] = set()  # folded parameters present in the state dict being loaded
        self.hooks.append(self.module._register_state_dict_hook(self._original_state))
        self.hooks.append(self.module.register_load_state_dict_pre_hook(self._loading))
        self.hooks.append(self.module.register_load_state_dict_post_hook(self._loaded))

    # -- folding ----------------------------------------------------------------------------

    def _folded(self, key: str) -> Tensor:
        """The folded value of parameter ``key`` at the current λ, in float32 (the shape of the original)."""
        strength, _ = self.control.tensors(self.device)
        d, e = composed_shift(self.bank, self.control, strength)  # y' = (1 + d) y + e, [C]
        if key == "scale":
            scale = self.originals["scale"].float()
            view = [1] * scale.ndim
            view[self.target.axis] = self.bank.channels
            return scale + (scale + self.target.offset) * d.reshape(view)
        shift = self.originals["shift"].float()
        return shift + shift * d + e

    def refold(self) -> None:
        """Writes the folded parameters for the current λ (0-d, on the site's device)."""
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(self._folded(key))
        self.written = {key: (p._version, p.data_ptr(), p.dtype, p.device) for key, p in self.params.items()}

    # -- writes by others -------------------------------------------------------------------

    def _current(self, key: str) -> Any:
        return self.module._parameters.get(self.names[key])

    def _is_changed(self, key: str, by_value: bool) -> bool:
        """Whether parameter ``key`` no longer holds what :meth:`refold` wrote. A dtype / device
        conversion of the module (``model.half()``) is no change when the values are the converted
        folded values; ``by_value`` also catches writes through ``.data`` (reads the device)."""
        if key not in self.written:  # not folded yet
            return False
        p = self._current(key)
        if p is not self.params[key]:
            return True
        version, ptr, dtype, device = self.written[key]
        converted = (p.dtype, p.device) != (dtype, device)
        if not converted and (p._version, p.data_ptr()) != (version, ptr):
            return True
        if not (by_value or converted):
            return False
        with torch.no_grad():
            expected = self._folded(key).to(dtype).to(device=p.device, dtype=p.dtype)
            return not torch.equal(p.detach(), expected)

    def changes(self, by_value: bool = True) -> list[str]:
        """The folded parameters written by something other than steering (``"<site>.<name>"``)."""
        return [f"{self.site}.{self.names[key]}" for key in self.params if self._is_changed(key, by_value)]

    def keep_changes(self) -> None:
        """Takes the current values of changed parameters as the ones :meth:`remove` leaves."""
        for key in self.params:
            if self._is_changed(key, True):
                self.params[key] = self._current(key)
                self.originals[key] = self.params[key].detach().clone()

    def _refuse_changes(self, action: str) -> None:
        changed = self.changes()
        if changed:
            raise RuntimeError(f"cannot {action}: {changed_message(changed)}")

    def _loading(self, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        self.incoming = {key for key, name in self.names.items() if prefix + name in state_dict}

    def _loaded(self, module: nn.Module, incompatible_keys: Any) -> None:
        """Loaded values become the originals (``state_dict`` reports originals, so loading sets
        them); a parameter whose copy failed (shape error) still holds its folded value."""
        adopted = [key for key in self.incoming if self._is_changed(key, False)]
        self.incoming = set()
        for key in adopted:
            self.params[key] = self._current(key)  # a new object with load_state_dict(assign=True)
            self.originals[key] = self.params[key].detach().clone()
        if adopted:
            self.refold()

    # -- the unsteered module ---------------------------------------------------------------

    def _original_state(self, module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        self._refuse_changes("report the unsteered state_dict of a folded module")
        for key, name in self.names.items():
            if prefix + name in state_dict:
                state_dict[prefix + name] = self.originals[key].clone()

    def remove(self) -> None:
        with torch.no_grad():
            for key, param in self.params.items():
                current = self._current(key)  # the module's own, should another object have replaced ours
                (param if current is None else current).copy_(self.originals[key])
        super().remove()

    def unsteered_state(self, state: dict[str, Any]) -> dict[str, Any]:
        self._refuse_changes("copy or pickle the unsteered module")
        state = super().unsteered_state(state)
        state["_parameters"] = dict(state["_parameters"])
        for key, name in self.names.items():
            state["_parameters"][name] = self._as_parameter(self.originals[key], self.params[key])
        return state


def changed_message(changed: list[str]) -> str:
    """What the user can do about folded parameters written while steered."""
    return (
        f"folded parameter(s) {changed[:8]} were written while steered (an optimizer step, copy_, .data; "
        "load_state_dict is handled), so their unsteered value is unknown; remove(changed='restore') puts back "
        "the values captured at steer() (the change is lost), remove(changed='keep') keeps the current values "
        "(the folded map stays in them)"
    )
