"""Which implementation a custom op runs: the Triton kernel, the compiled CPU kernels or the
pure-torch reference.

- ``auto`` (default): Triton on CUDA tensors; on CPU tensors the compiled CPU kernels
  (:mod:`act_fast.ops.cpu_kernels`, built on first use) when they can be built and
  ``ACT_FAST_CPU_KERNELS`` is not ``0``, else the reference.
- ``cpu``: as ``auto``, but asks for the compiled CPU kernels up front: :func:`set_backend` builds
  them and raises if they cannot be used.
- ``triton``: Triton everywhere. On CPU this needs ``TRITON_INTERPRET=1`` set before Triton is
  imported (the tests do this); it is slow and meant for testing the kernels without a GPU.
- ``torch``: the reference everywhere.

The default comes from the environment variable ``ACT_FAST_BACKEND``. ``ACT_FAST_CPU_KERNELS=0``
turns the compiled CPU kernels off at any time (read at every call).
"""

from __future__ import annotations

import os

from torch import Tensor

from act_fast.ops import cpu_kernels

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # platforms without a Triton wheel
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch", "cpu")
_backend = os.environ.get("ACT_FAST_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"ACT_FAST_BACKEND must be one of {BACKENDS}, got {_backend!r}")


def get_backend() -> str:
    return _backend


def set_backend(name: str) -> str:
    """Sets the backend and returns the previous one.

    Raises:
        ValueError: an unknown name.
        RuntimeError: ``triton`` without Triton installed; ``cpu`` when the compiled CPU kernels
            are turned off (``ACT_FAST_CPU_KERNELS=0``) or cannot be built (the message says why).
    """
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError("backend 'triton' asked for but Triton is not installed")
    if name == "cpu":
        if not cpu_kernels.enabled():
            raise RuntimeError(f"backend 'cpu' asked for but {cpu_kernels.ENV_SWITCH}=0 turns the compiled CPU kernels off")
        cpu_kernels.load()  # CpuKernelsUnavailable (a RuntimeError) says why they cannot be used
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


def use_cpu_kernels(x: Tensor) -> bool:
    """Whether the op on ``x`` runs the compiled CPU kernels (built on the first call)."""
    return _backend in ("auto", "cpu") and x.is_cpu and cpu_kernels.available()  # is_cpu: no torch.device per call


def implementation(x: Tensor) -> str:
    """The implementation an op on ``x`` runs: ``"triton"``, ``"cpu"`` (the compiled CPU kernels)
    or ``"torch"`` (the reference). The one place that decides; every custom op asks it."""
    if use_triton(x):
        return "triton"
    return "cpu" if use_cpu_kernels(x) else "torch"
