"""What touches a running model: activations inside module outputs, devices, site lookup, channel
counts, and the one loop that runs batches through a model with forward hooks.

Statistics collection (:mod:`act_fast.stats`), fitting (:mod:`act_fast.estimators`) and steering
(:mod:`act_fast.steering`) are peers above this module; none of them imports model helpers from
another.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from act_fast.integrations import norm_spec

Hook = Callable[[nn.Module, Any, Any], Any]
Batch = Mapping[str, Any]

# Module attributes that give the channel count of the module's output.
_CHANNEL_ATTRS = ("num_channels", "out_features", "out_channels", "nf")


def first_tensor(output: Any) -> Tensor | None:
    """The activation of a module output: the tensor itself, or the first tensor of a tuple / list /
    mapping (HF blocks return ``(hidden_states, ...)``, diffusers blocks sometimes dataclasses)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    elif hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    return None


def replace_first_tensor(output: Any, new: Tensor) -> Any:
    """``output`` with its activation (see :func:`first_tensor`) replaced by ``new``."""
    if isinstance(output, Tensor):
        return new
    old = first_tensor(output)
    if isinstance(output, (tuple, list)):
        items = list(output)
        items[next(i for i, v in enumerate(items) if v is old)] = new
        return type(output)(items)
    if isinstance(output, dict) or hasattr(output, "keys"):  # dicts and transformers ModelOutput
        key = next(k for k in output.keys() if output[k] is old)
        output[key] = new
        return output
    raise TypeError(f"cannot replace the activation inside a {type(output).__name__} module output")


def module_device(module: nn.Module, fallback: nn.Module | None = None) -> torch.device:
    """The device of ``module``'s first parameter or buffer, else ``fallback``'s, else the CPU
    (``device_map`` placements: each module answers for itself). Under accelerate's hooks
    (``device_map`` with offload), the execution device of the module or its first hooked
    submodule: offloaded parameters sit on the meta device."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for candidate in (module, fallback):
        if candidate is None:
            continue
        for t in candidate.parameters():
            return t.device
        for t in candidate.buffers():
            return t.device
    return torch.device("cpu")


def grouped_output(module: nn.Module) -> bool:
    """Whether ``module`` is a GroupNorm (torch's or a registered group norm): its 3-D outputs
    have their channels in dim 1. Depends on the module's type only (callers may keep it)."""
    spec = norm_spec(module)
    return isinstance(module, nn.GroupNorm) or (spec is not None and spec.kind == "group")


def output_channel_dim(module: nn.Module, output: Tensor, grouped: bool | None = None) -> int:
    """Where the channels of a site's output are: 1 for conv features (``[B, C, *spatial]``: 4-D and
    wider outputs, and GroupNorm outputs of any rank), else the last dim (non-negative).
    ``grouped``: :func:`grouped_output` of ``module`` when the caller kept it (per-call hot paths)."""
    if output.ndim >= 4:
        return 1
    if output.ndim >= 3 and (grouped_output(module) if grouped is None else grouped):
        return 1
    return output.ndim - 1


def resolve_sites(model: nn.Module, site_names: Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for each site name, in the given order; an unknown name raises ValueError
    with the closest module names."""
    modules = dict(model.named_modules())
    resolved = {}
    for name in site_names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(f"unknown site {name!r}: no module of that name in {type(model).__name__}{hint}")
        resolved[name] = modules[name]
    return resolved


def module_channels(module: nn.Module) -> int | None:
    """Channel count of ``module``'s output when its type tells it (norm weight, ``out_features``,
    ``out_channels``, ``num_channels``, GPT-2 ``Conv1D.nf``, ``normalized_shape``), else None."""
    spec = norm_spec(module)
    if spec is not None and spec.weight is not None:
        return spec.weight.numel()
    for attr in _CHANNEL_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    shape = getattr(module, "normalized_shape", None)
    return int(shape[-1]) if shape else None


def site_channels(model: nn.Module, sites: Sequence[str], batch: Batch | None = None) -> dict[str, int | None]:
    """Channel count of each site's output: from the module's type (:func:`module_channels`), else,
    when ``batch`` is given, measured by one forward pass (stopped once every such site ran), else
    None."""
    modules = resolve_sites(model, sites)
    channels = {name: module_channels(m) for name, m in modules.items()}
    unknown = [name for name, c in channels.items() if c is None]
    if unknown and batch is not None:
        seen: dict[str, int] = {}

        def record(name: str) -> Hook:
            def fn(module: nn.Module, args: Any, output: Any) -> None:
                out = first_tensor(output)
                if out is not None and name not in seen:
                    seen[name] = out.shape[output_channel_dim(module, out)]

            return fn

        run_batches(model, [batch], {name: record(name) for name in unknown}, stop_after=unknown)
        channels.update(seen)
    return channels


class StopForward(Exception):
    """Raised by a hook once every site of interest has produced its output, to skip the rest of the
    model (caught by :func:`run_batches`)."""


def move_batch(batch: Batch, device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (other values as they are); TypeError for a non-mapping."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"each batch must be a dict of model inputs (keyword arguments), got {type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def progress_bar(total: int | None, desc: str, progress: bool | None, unit: str = "batch") -> tqdm:
    """A tqdm bar; ``progress`` None shows it only when stderr is a terminal (quiet in logs)."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False, dynamic_ncols=True)


def run_batches(
    model: nn.Module,
    batches: Iterable[Batch],
    hooks: Mapping[str, Hook] | None = None,
    *,
    stop_after: Collection[str] | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
    grad: bool = False,
    bar: tqdm | None = None,
) -> int:
    """Runs ``model(**batch)`` for every batch with forward hooks on the named modules.

    Args:
        model: any module taking keyword inputs.
        batches: dicts of keyword inputs (as a tokenizer returns them); tensors are moved to the
            model's device.
        hooks: site name → forward hook ``fn(module, args, output)``; registered after any hooks
            already on the modules, removed when the loop ends (even on error).
        stop_after: site names; once all of them have produced an output, the rest of the forward
            is skipped (for sites that run once per forward).
        on_batch: called with each moved batch before its forward (e.g. to read its padding mask).
        grad: run with autograd enabled (training through the model); else under no_grad.
        bar: a progress bar to advance by one per batch.

    Returns:
        The number of batches run.
    """
    hooks = dict(hooks or {})
    names = list(hooks) + [n for n in (stop_after or ()) if n not in hooks]
    modules = resolve_sites(model, names)
    device = module_device(model)
    handles = [modules[name].register_forward_hook(fn) for name, fn in hooks.items()]
    ran: set[str] = set()
    if stop_after:
        pending = set(stop_after)

        def stopper(name: str) -> Hook:
            def fn(module: nn.Module, args: Any, output: Any) -> None:
                ran.add(name)
                if pending <= ran:
                    raise StopForward

            return fn

        handles += [modules[name].register_forward_hook(stopper(name)) for name in pending]
    count = 0
    try:
        with torch.set_grad_enabled(grad):
            for batch in batches:
                inputs = move_batch(batch, device)
                if on_batch is not None:
                    on_batch(inputs)
                try:
                    model(**inputs)
                except StopForward:
                    pass
                ran.clear()
                count += 1
                if bar is not None:
                    bar.update(1)
    finally:
        for handle in handles:
            handle.remove()
    return count
