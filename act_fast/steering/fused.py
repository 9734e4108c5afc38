"""Fused mode: a registered norm module computes norm + transport in one kernel.

The module's ``forward`` is replaced (an instance attribute; the class is untouched) by a call to
the fused custom op (or its body in plain eager inference, :mod:`act_fast.ops.eager`), which
reproduces the module's own rounding (``NormSpec.cast_before_scale``) and transports the rounded
output: at λ = 0 the output equals the module's bit for bit on the reference path. When the input's dtype differs from the norm parameters' (the module would then
return another dtype), the call runs the module's own forward and the transport op instead.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from act_fast.integrations import NormSpec
from act_fast.ops.eager import op_or_body
from act_fast.steering.site import SiteContext, SteeredSite


def refuse_fused(ctx: SiteContext) -> str | None:
    """Why the fused mode cannot take this site, or None."""
    return None if ctx.norm is not None else f"{type(ctx.module).__name__} is not a norm this package can fuse"


class FusedSite(SteeredSite):
    mode = "fused"

    def __init__(self, ctx: SiteContext, *args: Any) -> None:
        super().__init__(ctx, *args)
        assert ctx.norm is not None
        self.norm: NormSpec = ctx.norm
        self.pool_spatial = ctx.pool_spatial
        self.module.forward = self.forward

    def _same_dtype(self, x: Tensor) -> bool:
        return all(p is None or p.dtype == x.dtype for p in (self.norm.weight, self.norm.bias))

    def forward(self, x: Tensor) -> Tensor:
        norm, bank = self.norm, self.bank
        if norm.kind == "group" and x.ndim < 3:
            raise ValueError(f"site {self.site!r}: GroupNorm input must be [B, C, *spatial], got {list(x.shape)}")
        cd = 1 if norm.kind == "group" else x.ndim - 1
        s, idx = self.runtime(x, cd)
        if not self._same_dtype(x):
            y = type(self.module).forward(self.module, x)
            transport = op_or_body("affine_transport", y, bank.weight, bank.bias, s)
            return transport(y, bank.weight, bank.bias, s, 0.0, bank.lo, bank.hi, idx, cd, self.pool_spatial and cd == 1)
        fused = op_or_body(f"{norm.kind}_norm_transport", x, norm.weight, norm.bias, bank.weight, bank.bias, s)
        if norm.kind == "rms":
            return fused(
                x, norm.weight, bank.weight, bank.bias, s, 0.0, bank.lo, bank.hi, idx, norm.eps, norm.weight_offset,
                norm.cast_before_scale,
            )
        if norm.kind == "layer":
            return fused(x, norm.weight, norm.bias, bank.weight, bank.bias, s, 0.0, bank.lo, bank.hi, idx, norm.eps)
        return fused(
            x, norm.num_groups, norm.weight, norm.bias, bank.weight, bank.bias, s, 0.0, bank.lo, bank.hi, idx, norm.eps,
            self.pool_spatial,
        )

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)
        super().remove()

    def unsteered_state(self, state: dict[str, Any]) -> dict[str, Any]:
        state = super().unsteered_state(state)
        state.pop("forward", None)
        return state
