"""Recording the kernel specializations that Triton would compile on a GPU.

:class:`LaunchRecorder` intercepts every Triton kernel launch (``kernel[grid](*args, **kw)``)
while it is active, in the interpreter (``TRITON_INTERPRET=1``) or on a GPU, and turns the
launch's arguments into a :class:`KernelSpec`: the argument type signature (``"*bf16"``,
``"i32"``, ``"fp32"``, …), the constexpr values and the specialization attributes
(16-divisibility of pointers and integers, integers equal to 1 turned into constexprs). These
come from Triton's own binder (``create_function_from_signature`` over ``native_specialize_impl``,
the code ``JITFunction.run`` uses) with the CUDA backend, so they are what Triton would compute
on an NVIDIA GPU for the same arguments. On a CPU, torch allocates at least 16-byte (in practice
64-byte) aligned storage, and views keep their element offsets, so pointer divisibility is the
GPU's too.

``execute=False`` skips the launch itself (outputs stay uninitialised): the launchers decide
their arguments from shapes, strides and dtypes, never from data, so production shapes such as
``[8192, 4096]`` can be recorded without running them in the interpreter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction, create_function_from_signature

# Specialization is target independent on NVIDIA (BaseBackend's rules); any CUDA target will do.
_BACKEND = CUDABackend(GPUTarget("cuda", 90, 32))
_FLOAT_ELEMENT_TYPES = ("fp16", "bf16", "fp32", "fp64")


def _path_key(path: tuple[int, ...]) -> str:
    return ",".join(map(str, path))


@dataclass
class KernelSpec:
    """One specialization of one kernel: what ``triton.compile`` needs, plus provenance.

    Attributes:
        kernel: ``"module:qualname"`` of the ``@triton.jit`` function.
        signature: parameter name → Triton type (``"*bf16"``, ``"i32"``, ``"constexpr"``, …), in
            parameter order.
        constexprs: argument path (``(index,)``) → value, for constexpr parameters and arguments
            Triton specialized to constants (integers equal to 1, None).
        attrs: argument path → Triton attributes (``[["tt.divisibility", 16]]`` or ``[]``).
        options: launch options (``num_warps``, ``num_stages``, …).
        labels: the workloads (or tests) that launched it, first one first.
        streamed: pointer parameters that carry a workload's bulk data (hot workloads only).
    """

    kernel: str
    signature: dict[str, str]
    constexprs: dict[tuple[int, ...], Any]
    attrs: dict[tuple[int, ...], list]
    options: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    streamed: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.kernel.rsplit(":", 1)[1]

    @property
    def key(self) -> str:
        """Identity of the compiled code: equal keys compile to the same binary."""
        return json.dumps(
            [
                self.kernel,
                list(self.signature.items()),
                sorted((_path_key(k), repr(v)) for k, v in self.constexprs.items()),
                sorted((_path_key(k), v) for k, v in self.attrs.items()),
                sorted(self.options.items()),
            ]
        )

    @property
    def spec_id(self) -> str:
        return f"{self.name}-{hashlib.sha1(self.key.encode()).hexdigest()[:8]}"

    @property
    def data_dtype(self) -> str | None:
        """Element type of the first floating-point pointer (the input, by this package's
        convention of passing ``x`` first), or None."""
        for ty in self.signature.values():
            if ty.startswith("*") and ty.lstrip("*k") in _FLOAT_ELEMENT_TYPES:
                return ty.lstrip("*k")
        return None

    def describe(self) -> str:
        """Readable one-liner: kernel, pointer/int types with divisibility, constexprs."""
        parts = []
        for i, (name, ty) in enumerate(self.signature.items()):
            if ty == "constexpr":
                parts.append(f"{name}={self.constexprs.get((i,))!r}")
            else:
                div = any(a[0] == "tt.divisibility" for a in self.attrs.get((i,), []))
                parts.append(f"{name}:{ty}{'/16' if div else ''}")
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({', '.join(parts)}) [{opts}]"

    def to_json(self) -> dict:
        return {
            "kernel": self.kernel,
            "signature": list(self.signature.items()),
            "constexprs": [[list(k), v] for k, v in self.constexprs.items()],
            "attrs": [[list(k), v] for k, v in self.attrs.items()],
            "options": self.options,
            "labels": self.labels,
            "streamed": sorted(self.streamed),
        }

    @classmethod
    def from_json(cls, d: dict) -> "KernelSpec":
        return cls(
            kernel=d["kernel"],
            signature=dict((k, v) for k, v in d["signature"]),
            constexprs={tuple(k): v for k, v in d["constexprs"]},
            attrs={tuple(k): v for k, v in d["attrs"]},
            options=dict(d["options"]),
            labels=list(d["labels"]),
            streamed=set(d["streamed"]),
        )


def save_specs(specs: list[KernelSpec], path: str | Path) -> None:
    Path(path).write_text(json.dumps([s.to_json() for s in specs], indent=1))


def load_specs(path: str | Path) -> list[KernelSpec]:
    return [KernelSpec.from_json(d) for d in json.loads(Path(path).read_text())]


_jit_twins: dict[Any, JITFunction] = {}


def jit_function(kernel: JITFunction | InterpretedFunction) -> JITFunction:
    """The :class:`JITFunction` of a launched kernel; in the interpreter, a twin built over the same
    Python function with the same ``do_not_specialize`` options (it is only used to bind and
    specialize arguments, never run)."""
    if isinstance(kernel, JITFunction):
        return kernel
    twin = _jit_twins.get(kernel.fn)
    if twin is None:
        kw = {k: kernel.kwargs[k] for k in ("do_not_specialize", "do_not_specialize_on_alignment") if k in kernel.kwargs}
        twin = _jit_twins[kernel.fn] = JITFunction(kernel.fn, **kw)
    return twin


def _checkable(value: Any, where: str) -> Any:
    """Constexpr values must survive JSON (they travel to the compile process)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where}: constexpr value {value!r} of type {type(value).__name__} cannot be recorded (expected None, bool, int, float or str)")


def specialize(kernel: JITFunction | InterpretedFunction, args: tuple, kwargs: dict) -> tuple[KernelSpec, dict[str, Any]]:
    """The :class:`KernelSpec` Triton's JIT computes for ``kernel[grid](*args, **kwargs)`` on an
    NVIDIA GPU, and the bound arguments (parameter name → value)."""
    jf = jit_function(kernel)
    binder = create_function_from_signature(jf.signature, jf.params, _BACKEND)
    bound, specialization, _ = binder(*args, **kwargs)
    # The same packing JITFunction.run does before compiling (signature, constexprs, attributes).
    _, signature, constexprs, attrs = jf._pack_args(_BACKEND, dict(kwargs), bound, specialization, {})
    where = f"{jf.module}:{jf.fn.__qualname__}"
    param_names = set(signature)
    spec = KernelSpec(
        kernel=where,
        signature=dict(signature),
        constexprs={path: _checkable(v, where) for path, v in constexprs.items()},
        attrs={path: [list(a) for a in v] for path, v in attrs.items()},
        options={k: _checkable(v, where) for k, v in kwargs.items() if k not in param_names},
    )
    return spec, bound


class LaunchRecorder:
    """Context manager that records the specialization of every Triton kernel launch.

    Args:
        execute: run the launches (False: skip them; the outputs stay uninitialised).

    Use :meth:`workload` to label the launches of a block (and mark its bulk tensors); specs
    with the same :attr:`KernelSpec.key` are merged (labels and streamed parameters united).
    """

    def __init__(self, *, execute: bool = True) -> None:
        self.execute = execute
        self._specs: dict[str, KernelSpec] = {}
        self._label = "unlabelled"
        self._streamed_numel: int | None = None
        self._saved: list[tuple[type, Any]] = []
        self.launches = 0

    @property
    def specs(self) -> list[KernelSpec]:
        return list(self._specs.values())

    @contextlib.contextmanager
    def workload(self, label: str, hot_input: Tensor | None = None) -> Iterator[None]:
        """Labels the launches inside the block. With ``hot_input`` (the workload's bulk input),
        pointer arguments with at least ``hot_input.numel()`` elements are recorded as streamed."""
        previous = self._label, self._streamed_numel
        self._label = label
        self._streamed_numel = None if hot_input is None else hot_input.numel()
        try:
            yield
        finally:
            self._label, self._streamed_numel = previous

    def record(self, kernel: JITFunction | InterpretedFunction, args: tuple, kwargs: dict) -> KernelSpec:
        spec, bound = specialize(kernel, args, kwargs)
        if self._streamed_numel is not None:
            seen: set[int] = set()  # unused pointers get a placeholder aliasing a real argument
            for name, ty in spec.signature.items():
                value = bound.get(name)
                if not (ty.startswith("*") and isinstance(value, Tensor)) or value.data_ptr() in seen:
                    continue
                seen.add(value.data_ptr())
                if value.numel() >= self._streamed_numel:
                    spec.streamed.add(name)
        spec.labels.append(self._label)
        kept = self._specs.setdefault(spec.key, spec)
        if kept is not spec:
            if self._label not in kept.labels:
                kept.labels.append(self._label)
            kept.streamed |= spec.streamed
        self.launches += 1
        return kept

    def _wrap(self, cls: type) -> None:
        original = cls.run
        recorder = self

        def run(kernel, *args, grid, warmup, **kwargs):
            if not warmup:
                recorder.record(kernel, args, kwargs)
                if not recorder.execute:
                    return None
            return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)

        self._saved.append((cls, original))
        cls.run = run

    def __enter__(self) -> "LaunchRecorder":
        if self._saved:
            raise RuntimeError("LaunchRecorder is not re-entrant")
        self._wrap(JITFunction)
        self._wrap(InterpretedFunction)
        return self

    def __exit__(self, *exc) -> None:
        for cls, original in reversed(self._saved):
            cls.run = original
        self._saved.clear()


def torch_device_for_recording() -> torch.device:
    """CUDA when present (launches are intercepted there too), else the CPU (which needs the
    interpreter for the ops to dispatch to Triton)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
