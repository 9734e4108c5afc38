"""Which implementation a custom op runs: the Triton kernel or the pure-torch reference.

- ``auto`` (default): Triton on CUDA tensors, the reference elsewhere.
- ``triton``: Triton everywhere. On CPU this needs ``TRITON_INTERPRET=1`` set before Triton is
  imported (the tests do this); it is slow and meant for testing the kernels without a GPU.
- ``torch``: the reference everywhere.

The default comes from the environment variable ``ACT_FAST_BACKEND``.
"""

from __future__ import annotations

import os

from torch import Tensor

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # platforms without a Triton wheel
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch")
_backend = os.environ.get("ACT_FAST_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"ACT_FAST_BACKEND must be one of {BACKENDS}, got {_backend!r}")


def get_backend() -> str:
    return _backend


def set_backend(name: str) -> str:
    """Sets the backend and returns the previous one."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError("backend 'triton' asked for but Triton is not installed")
    previous, _backend = _backend, name
    return previous


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: Tensor) -> bool:
    """Whether the op on ``x`` runs the Triton kernel."""
    if not HAS_TRITON or _backend == "torch":
        return False
    if _backend == "triton":
        return x.is_cuda or interpreting()
    return x.is_cuda


def implementation(x: Tensor) -> str:
    """The implementation an op on ``x`` runs: ``"triton"`` or ``"torch"`` (the reference). The
    one place that decides; every custom op asks it."""
    return "triton" if use_triton(x) else "torch"
