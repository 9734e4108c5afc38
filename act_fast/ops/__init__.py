"""Kernels: Triton implementations, their pure-torch references (:mod:`.reference`), and their
registration as ``torch.ops.act_fast.*`` custom ops with fake (meta) and autograd formulas."""

from act_fast.ops.backend import get_backend, set_backend
from act_fast.ops.group_norm_transport import group_norm_transport
from act_fast.ops.norm_transport import layer_norm_transport, rms_norm_transport
from act_fast.ops.transport import affine_transport

__all__ = [
    "affine_transport",
    "get_backend",
    "group_norm_transport",
    "layer_norm_transport",
    "rms_norm_transport",
    "set_backend",
]
