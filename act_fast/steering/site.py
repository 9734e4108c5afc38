"""What the three steering modes share: the facts about a site they decide on
(:class:`SiteContext`), and an installed site (:class:`SteeredSite`) that can be removed and that
keeps a steered module's copies, pickles and ``state_dict`` unsteered.

Steering is a runtime property of a model: ``copy.deepcopy(model)``, ``pickle`` / ``torch.save``
and ``state_dict()`` of a steered model give the unsteered model (original weights, no hooks, no
replaced ``forward``); save maps separately (:meth:`act_fast.SteeringMaps.save`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.integrations import FoldTarget, NormSpec, is_adapter_layer
from act_fast.integrations.hosts import merge_guard
from act_fast.maps import AffineMap
from act_fast.steering.control import StrengthControl
from act_fast.steering.mapsets import MapBank

# The hook dicts of nn.Module keyed by hook id (the handles' ids we must drop from copies).
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass
class SiteContext:
    """The facts a mode decides on for one site.

    Attributes:
        site, module: the site's name and module.
        norm: its norm spec (None for other modules).
        fold: its fold target, or why it has none.
        maps: this site's map in each map set that has it.
        multi: several map sets (one chosen per row); per_row: λ differs between rows.
        pool_spatial: maps on conv features act on each plane's spatial mean.
        chain: the map sets are one ordered chain for the whole model (a list given to steer).
    """

    site: str
    module: nn.Module
    norm: NormSpec | None
    fold: FoldTarget | str
    maps: list[AffineMap]
    multi: bool
    per_row: bool
    pool_spatial: bool
    chain: bool = False


class SteeredSite:
    """A site steered in some mode: its map bank on the module's device and the handle's control.

    Subclasses install themselves in ``__init__`` and undo it in :meth:`remove`;
    :meth:`unsteered_state` strips what they added from a copy of the module's ``__dict__``.
    """

    mode = ""

    def __init__(self, ctx: SiteContext, device: torch.device, bank: MapBank, control: StrengthControl) -> None:
        self.site = ctx.site
        self.module = ctx.module
        self.device = device
        self.bank = bank
        self.control = control
        self.hooks: list[Any] = []  # RemovableHandles this site registered on the module
        self.attrs: dict[str, Any] = {}  # instance attributes this site set on the module (host guards)

    def runtime(self, x: Tensor, channel_dim: int) -> tuple[Tensor, Tensor | None]:
        """λ and map slot for this call; shape checks only (static under torch.compile)."""
        if x.shape[channel_dim] != self.bank.channels:
            raise ValueError(
                f"site {self.site!r}: activation of shape {list(x.shape)} has {x.shape[channel_dim]} channels in dim "
                f"{channel_dim}, the map has {self.bank.channels}"
            )
        s, idx = self.control.tensors(self.device)
        B = x.shape[0]
        # one chain for every row ([1, S]): a stride-0 view of the batch's size
        if idx is not None and idx.ndim == 2 and idx.shape[0] == 1 and B != 1:
            idx = idx.expand(B, -1)
        if s.ndim == 2 and s.shape[0] == 1 and B != 1:
            s = s.expand(B, -1)
        for what, t in (("strength", s), ("map selection", idx)):
            if t is not None and t.ndim >= 1 and t.shape[0] != x.shape[0]:
                raise ValueError(f"site {self.site!r}: per-row {what} has {t.shape[0]} rows, the batch has {x.shape[0]} (x {list(x.shape)})")
        return s, idx

    def refold(self) -> None:
        """Brings folded parameters in line with λ (only the fold mode folds)."""

    def changes(self, by_value: bool = True) -> list[str]:
        """Parameters this site wrote that something else wrote since (only the fold mode writes)."""
        return []

    def keep_changes(self) -> None:
        """Makes :meth:`remove` leave the parameters others wrote as they are (fold mode)."""

    def remove(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        self.module.__dict__.pop("__getstate__", None)
        for name in self.attrs:
            self.module.__dict__.pop(name, None)

    def unsteered_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` (a copy of the module's ``__dict__``) without this site's hooks and guard."""
        state.pop("__getstate__", None)
        for name in self.attrs:
            state.pop(name, None)
        ids = {h.id for h in self.hooks}
        for key in _HOOK_DICTS:
            if key in state:
                state[key] = OrderedDict((k, v) for k, v in state[key].items() if k not in ids)
        return state

    def guard(self) -> None:
        """Makes deep copies and pickles of the module unsteered (``copy.deepcopy`` and ``pickle``
        both read ``__getstate__``, which an instance attribute overrides)."""
        site = self
        self.module.__dict__["__getstate__"] = lambda: site.unsteered_state(dict(site.module.__dict__))
        if is_adapter_layer(self.module):  # PEFT's merge would replace the steered module
            self.attrs["merge"] = self.module.__dict__["merge"] = merge_guard(self.site, self.mode)

    def _as_parameter(self, value: Tensor, like: nn.Parameter) -> nn.Parameter:
        return nn.Parameter(value.detach().clone(), requires_grad=like.requires_grad)
