"""An op's body called directly when the dispatcher has nothing to do (docs/design.md §4).

A ``torch.library.custom_op`` call costs about 25 µs of Python dispatch (autograd wrapper,
redispatch, aliasing checks): more than the fused kernel takes on one decode row. Steering's hot
path, whose maps and λ were validated when they were set, asks :func:`op_or_body` for the callable
to use: the op's body (the same function the custom op runs, so the same result bit for bit) in
plain eager inference, or the custom op itself whenever the dispatcher has work to do —

- tracing: ``torch.compile`` / ``torch.export`` / ``torch.jit.trace`` (the op must stay opaque
  in the graph);
- autograd: grad mode on and any differentiable argument requiring grad;
- tensor subclasses (fake, functional, DTensor, …) as the input;
- torch-function or dispatch modes (profilers, FLOP counters, ``with torch.device(...)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from act_fast.ops.group_norm_transport import group_norm_transport_impl
from act_fast.ops.norm_transport import layer_norm_transport_impl, rms_norm_transport_impl
from act_fast.ops.transport import affine_transport_impl, affine_transport_out_impl

BODIES: dict[str, Callable] = {
    "affine_transport": affine_transport_impl,
    "affine_transport_out": affine_transport_out_impl,
    "rms_norm_transport": rms_norm_transport_impl,
    "layer_norm_transport": layer_norm_transport_impl,
    "group_norm_transport": group_norm_transport_impl,
}


def dispatcher_needed(x: Tensor, *differentiable: Tensor | None) -> bool:
    """True when calling ``torch.ops.act_fast.*`` differs from calling its body: see the module
    docstring. ``differentiable``: the other tensor arguments that could record autograd."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or type(x) is not Tensor:
        return True
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return True
    if torch.is_grad_enabled():
        return x.requires_grad or any(t is not None and t.requires_grad for t in differentiable)
    return False


def op_or_body(name: str, x: Tensor, *differentiable: Tensor | None) -> Callable:
    """``torch.ops.act_fast.<name>`` when :func:`dispatcher_needed`, else its body (same
    arguments, same result; ``affine_transport_out``'s body returns None like the op)."""
    if dispatcher_needed(x, *differentiable):
        return getattr(torch.ops.act_fast, name)
    return BODIES[name]
