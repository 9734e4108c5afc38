"""Op mode: any module's output goes through the transport op (a forward hook).

Conv features (``[B, C, *spatial]``) are transported with ``channel_dim=1`` (pooled on each
plane's mean with ``pool_spatial``), everything else channels last. Under ``torch.no_grad()``
(inference, outside torch.compile) the output is transported in place when that is safe: a
contiguous tensor that is no view and shares no memory with the module's inputs, parameters or
buffers. In plain eager inference the op's body is called directly (:mod:`act_fast.ops.eager`).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.modeling import first_tensor, grouped_output, output_channel_dim, replace_first_tensor
from act_fast.ops.eager import op_or_body
from act_fast.steering.site import SiteContext, SteeredSite


def refuse_op(ctx: SiteContext) -> str | None:
    """The op mode takes every site."""
    return None


def _shares_memory(out: Tensor, module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether ``out``'s storage is also held by a tensor input or a parameter / buffer of ``module``
    (its own and its submodules')."""
    ptr = out.untyped_storage().data_ptr()
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor) and v.untyped_storage().data_ptr() == ptr:
            return True
    if module._modules:  # submodules: walk them all
        held = chain(module.parameters(), module.buffers())
    else:  # a leaf (a norm, a linear): its own dicts, without the recursive generators' cost per call
        held = chain(module._parameters.values(), module._buffers.values())
    return any(t is not None and t.untyped_storage().data_ptr() == ptr for t in held)


def can_write_in_place(out: Tensor, module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether the transport may overwrite ``out``: no autograd, not tracing, a contiguous tensor
    that is no view and shares no storage with the module's tensor inputs, parameters or buffers."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not out.requires_grad
        and out._base is None
        and out.is_contiguous()
        and not _shares_memory(out, module, args, kwargs)
    )


class OpSite(SteeredSite):
    mode = "op"

    def __init__(self, ctx: SiteContext, *args: Any) -> None:
        super().__init__(ctx, *args)
        self.pool_spatial = ctx.pool_spatial
        self.grouped = grouped_output(self.module)  # the module's type decides; not looked up per call
        self.hooks.append(self.module.register_forward_hook(self.hook, with_kwargs=True))

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        out = first_tensor(output)
        if out is None:
            raise ValueError(f"site {self.site!r}: {type(module).__name__} returned no tensor to steer")
        cd = output_channel_dim(module, out, self.grouped)
        s, idx = self.runtime(out, cd)
        bank = self.bank
        pooled = self.pool_spatial and cd == 1 and out.ndim >= 3
        if can_write_in_place(out, module, args, kwargs):
            transport_out = op_or_body("affine_transport_out", out, bank.weight, bank.bias, s)
            transport_out(out, bank.weight, bank.bias, s, 0.0, bank.lo, bank.hi, idx, cd, pooled, out)
            return output
        transport = op_or_body("affine_transport", out, bank.weight, bank.bias, s)
        y = transport(out, bank.weight, bank.bias, s, 0.0, bank.lo, bank.hi, idx, cd, pooled)
        return replace_first_tensor(output, y)
