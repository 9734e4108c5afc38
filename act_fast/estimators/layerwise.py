"""Incremental fit layer by layer (docs/design.md §2, issue 23 item 2), as quantization calibrators
do (GPTQ, llm-compressor's sequential pipeline).

The model runs once up to its first block per prompt batch; the activations entering that block
(hidden states, and the other block inputs: masks, position embeddings, which every block of the
stack shares) are kept for every batch of both sides, in memory or, above a byte budget, in files
of a temporary folder. Then, block by block: each site inside the block is collected by running
the block on the kept inputs (stopped at the site), fitted, and installed (op mode, λ = 1); then
the block runs once more, with its maps, to give the next block's kept inputs. Each block runs
``1 + (sites in it)`` times per side, partly (up to a site) or whole, instead of a whole model
forward per site: one site per block costs about one forward per side plus the part of each
block before its site.

The arithmetic is the one of the whole-model path (:func:`act_fast.estimators.fitting.fit`,
``incremental=True``): the same block calls on the same batches with the same inputs, so the maps
are equal bit for bit where the kernels are deterministic (fp32 on CPU).

Not a stack of blocks: sites outside one ``nn.ModuleList`` of blocks, blocks whose input is not
the previous block's output, or blocks that take other inputs from each other. :func:`plan`
says why, and :func:`act_fast.fit` falls back to whole-model forwards (logging the reason).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.modeling import Batch, StopForward, first_tensor, module_device, move_batch, replace_first_tensor, resolve_sites

log = logging.getLogger("act_fast.fit")


@dataclass
class BlockPlan:
    """How a model's sites sit in its stack of blocks.

    Attributes:
        stack: the ``nn.ModuleList`` name (``model.layers``).
        blocks: ``[(index, block)]`` of the blocks from the first to the last one holding a site.
        sites: block index → the site names inside it, in forward order.
    """

    stack: str
    blocks: list[tuple[int, nn.Module]]
    sites: dict[int, list[str]]


def plan(model: nn.Module, ordered_sites: Sequence[str]) -> tuple[BlockPlan | None, str]:
    """The block plan of ``ordered_sites`` (forward order), or ``(None, why not)``."""
    modules = dict(model.named_modules())
    stacks: dict[str, dict[int, list[str]]] = {}
    for site in ordered_sites:
        parts = site.split(".")
        found = None
        for cut in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:cut])
            if isinstance(modules.get(parent), nn.ModuleList) and parts[cut].isdigit():
                found = (parent, int(parts[cut]))
                break
        if found is None:
            return None, f"site {site!r} is not inside a stack of blocks (an nn.ModuleList of layers)"
        stacks.setdefault(found[0], {}).setdefault(found[1], []).append(site)
    if len(stacks) != 1:
        return None, f"the sites lie in {len(stacks)} different stacks of blocks ({sorted(stacks)})"
    (stack, by_block), = stacks.items()
    layers = modules[stack]
    order = [ordered_sites.index(s) for i in sorted(by_block) for s in by_block[i]]
    if order != sorted(order):
        return None, f"the sites of {stack} do not run in block order"
    last = max(by_block)
    return BlockPlan(stack, [(i, layers[i]) for i in range(last + 1)], by_block), ""


# ----------------------------------------------------------------------------- block inputs
class _Stop(Exception):
    pass


def _hidden_of(args: tuple, kwargs: dict[str, Any]) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    hidden = kwargs.get("hidden_states")
    if not isinstance(hidden, Tensor):
        raise TypeError("the block's first input is not a tensor")
    return hidden


def _without_hidden(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """The block's other inputs, with any KV cache dropped (re-running a block must not append to one)."""
    rest_args = args[1:] if args and isinstance(args[0], Tensor) else args
    rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    for key, value in list(rest.items()):
        if "Cache" in type(value).__name__:
            rest[key] = None
    if "use_cache" in rest:
        rest["use_cache"] = False
    return rest_args, rest


def _same_inputs(a: Any, b: Any) -> bool:
    """Whether two block inputs (tensors, tuples of tensors, plain values) are the same."""
    if a is b:
        return True
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def check_stack(model: nn.Module, blocks: BlockPlan, batch: Batch) -> str:
    """Runs one batch through the whole model and checks that each block's hidden input is the
    previous block's output and that all blocks share their other inputs; returns why not ("" if
    they do)."""
    seen: list[tuple[tuple, dict[str, Any]]] = []
    outputs: list[Tensor | None] = []
    handles = []
    for _, block in blocks.blocks:
        handles.append(block.register_forward_pre_hook(lambda m, a, k: seen.append((a, dict(k))), with_kwargs=True))
        handles.append(block.register_forward_hook(lambda m, a, o: outputs.append(first_tensor(o))))
    stop_at = blocks.blocks[-1][1]
    handles.append(stop_at.register_forward_hook(lambda m, a, o: (_ for _ in ()).throw(_Stop())))
    try:
        with torch.no_grad():
            try:
                model(**move_batch(batch, module_device(model)))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(blocks.blocks):
        return f"the blocks of {blocks.stack} ran {len(seen)} times for {len(blocks.blocks)} blocks in one forward"
    first_rest = _without_hidden(*seen[0])
    for i in range(1, len(seen)):
        hidden = _hidden_of(*seen[i])
        if outputs[i - 1] is None or not (hidden is outputs[i - 1] or _same_inputs(hidden, outputs[i - 1])):
            return f"block {i} of {blocks.stack} does not take block {i - 1}'s output as its input"
        rest = _without_hidden(*seen[i])
        if not _same_inputs(rest[0], first_rest[0]) or rest[1].keys() != first_rest[1].keys() or not all(
            _same_inputs(rest[1][k], first_rest[1][k]) for k in rest[1]
        ):
            return f"block {i} of {blocks.stack} takes other inputs than block 0 (e.g. per-layer masks)"
    return ""


# ----------------------------------------------------------------------------- the kept activations
@dataclass
class ActivationCache:
    """The hidden states entering the current block, one tensor per batch, in memory up to
    ``budget`` bytes and in files of a temporary folder beyond (safetensors, no pickle)."""

    budget: int | None
    entries: list[Tensor | Path] = field(default_factory=list)
    memory: int = 0
    spilled: int = 0
    _dir: tempfile.TemporaryDirectory | None = None

    def put(self, index: int, hidden: Tensor) -> None:
        """Stores batch ``index``'s hidden states (replacing the previous block's)."""
        size = hidden.numel() * hidden.element_size()
        old = self.entries[index] if index < len(self.entries) else None
        if isinstance(old, Tensor):
            self.memory -= old.numel() * old.element_size()
        if self.budget is None or self.memory + size <= self.budget:
            value: Tensor | Path = hidden
            self.memory += size
        else:
            from safetensors.torch import save_file

            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="act_fast_fit_")
            value = Path(self._dir.name) / f"{index}.safetensors"
            save_file({"hidden": hidden.detach().contiguous().cpu()}, os.fspath(value))
            self.spilled += size
        if index < len(self.entries):
            self.entries[index] = value
        else:
            self.entries.append(value)

    def get(self, index: int, device: torch.device) -> Tensor:
        value = self.entries[index]
        if isinstance(value, Tensor):
            return value
        from safetensors.torch import load_file

        return load_file(os.fspath(value), device=str(device))["hidden"]

    def close(self) -> None:
        self.entries.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


@dataclass
class SideInputs:
    """One prompt set's block inputs: the kept hidden states and, per batch, the shared other
    inputs and the padding mask."""

    hidden: ActivationCache
    rest: list[tuple[tuple, dict[str, Any]]]
    masks: list[Tensor | None]
    tokens: int = 0


def capture(model: nn.Module, first_block: nn.Module, batches: Sequence[Batch], budget: int | None, bar: Any = None) -> SideInputs:
    """Runs the model up to ``first_block`` for every batch and keeps the block's inputs."""
    device = module_device(model)
    side = SideInputs(ActivationCache(budget), [], [])
    grabbed: list[tuple[tuple, dict[str, Any]]] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        grabbed.append((args, dict(kwargs)))
        raise _Stop

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                inputs = move_batch(batch, device)
                grabbed.clear()
                try:
                    model(**inputs)
                except _Stop:
                    pass
                if not grabbed:
                    raise ValueError(f"the first block of the stack did not run for batch {i}")
                args, kwargs = grabbed[0]
                hidden = _hidden_of(args, kwargs)
                side.hidden.put(i, hidden)
                side.rest.append(_without_hidden(args, kwargs))
                mask = inputs.get("attention_mask")
                side.masks.append(None if mask is None else mask.to(torch.bool))
                side.tokens += int(mask.sum()) if mask is not None else hidden.shape[0] * hidden.shape[1]
                if bar is not None:
                    bar.update(1)
    finally:
        handle.remove()
    return side


def bytes_per_token(side: SideInputs) -> float:
    """Bytes kept per prompt token (hidden states plus the other block inputs), measured."""
    total = side.hidden.memory + side.hidden.spilled
    seen: set[int] = set()

    def size(v: Any) -> int:
        if isinstance(v, Tensor):
            if id(v) in seen:
                return 0
            seen.add(id(v))
            return v.numel() * v.element_size()
        if isinstance(v, (tuple, list)):
            return sum(size(x) for x in v)
        if isinstance(v, Mapping):
            return sum(size(x) for x in v.values())
        return 0

    for args, kwargs in side.rest:
        total += size(args) + size(kwargs)
    return total / max(side.tokens, 1)


def run_block(block: nn.Module, side: SideInputs, index: int, device: torch.device) -> Any:
    """``block(hidden, *rest)`` for batch ``index``; StopForward from a site hook ends it early (None)."""
    args, kwargs = side.rest[index]
    try:
        with torch.no_grad():
            return block(side.hidden.get(index, device), *args, **kwargs)
    except StopForward:
        return None


def estimate_bytes_per_token(model: nn.Module, sites: Sequence[str], batch: Batch) -> tuple[float | None, str]:
    """What :func:`act_fast.fit` would keep per prompt token and side when fitting layer by layer
    (measured on ``batch``), or ``(None, why it falls back)``."""
    resolve_sites(model, sites)
    from act_fast.estimators.fitting import forward_order

    ordered = forward_order(model, sites, batch)
    blocks, why = plan(model, ordered)
    if blocks is None:
        return None, why
    why = check_stack(model, blocks, batch)
    if why:
        return None, why
    side = capture(model, blocks.blocks[0][1], [batch], None)
    try:
        return bytes_per_token(side), ""
    finally:
        side.hidden.close()
