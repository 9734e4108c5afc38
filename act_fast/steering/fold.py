"""Fold mode: the map folded into the affine parameters that produce the site's output.

``y' = y + λ((w − 1) y + b)`` becomes ``scale + (scale + offset) · λ(w − 1)`` in the scale and
``shift + shift · λ(w − 1) + λ b`` in the shift (:class:`act_fast.integrations.FoldTarget`). Zero
cost per token. Changing λ refolds from the kept originals on the device; λ = 0 gives the
originals back exactly and :meth:`FoldedSite.remove` copies them back bit for bit. While folded,
``state_dict()`` reports the originals.
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
        self.hooks.append(self.module._register_state_dict_hook(self._original_state))

    def _original_state(self, module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        for key, name in self.names.items():
            if prefix + name in state_dict:
                state_dict[prefix + name] = self.originals[key].clone()

    def refold(self) -> None:
        """Writes the folded parameters for the current λ (0-d, on the site's device)."""
        strength, _ = self.control.tensors(self.device)
        d, e = composed_shift(self.bank, self.control, strength)
        with torch.no_grad():
            scale = self.originals["scale"].float()
            view = [1] * scale.ndim
            view[self.target.axis] = self.bank.channels
            self.target.scale.copy_(scale + (scale + self.target.offset) * d.reshape(view))
            if self.target.shift is not None:
                shift = self.originals["shift"].float()
                self.target.shift.copy_(shift + shift * d + e)

    def remove(self) -> None:
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(self.originals[key])
        super().remove()

    def unsteered_state(self, state: dict[str, Any]) -> dict[str, Any]:
        state = super().unsteered_state(state)
        state["_parameters"] = dict(state["_parameters"])
        for key, name in self.names.items():
            state["_parameters"][name] = self._as_parameter(self.originals[key], self.params[key])
        return state
