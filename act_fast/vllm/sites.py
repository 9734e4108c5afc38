"""Steering installed on the modules of a vLLM model (inside the worker, before it is compiled).

Every site gets its map bank as non-persistent buffers ``act_fast_weight`` / ``act_fast_bias`` (and
``act_fast_lo`` / ``act_fast_hi`` when a map has a support), ``[K + 1, C]`` float32 with slot 0 the
identity, plus the engine's shared per-token buffers ``act_fast_strength`` / ``act_fast_map_index``
(see :mod:`act_fast.vllm.buffers`). Buffers are module state, so vLLM's compiled graph (and its
saved AOT artifact) reads them at run time, as it reads the weights.

- **fused**: a vLLM ``RMSNorm`` / ``GemmaRMSNorm`` computes its output with the
  ``act_fast::rms_norm_transport`` op, in the norm's rounding order (``RMSNorm`` rounds the normalised
  value to the input dtype before scaling, ``GemmaRMSNorm`` scales ``1 + w`` in float32). With a
  residual it returns ``(normed, x + residual)`` as vLLM does; only ``normed`` is steered. With a
  residual in float16 / bfloat16, vLLM normalises the float32 sum: there vLLM's own forward runs and
  its normed output is transported (two passes, vLLM's numerics bit for bit).
- **op**: any other module: its output (a tensor, or the first tensor of ``(out, None)`` as vLLM's
  linear layers return) goes through the ``act_fast::affine_transport`` op.

Under tensor parallelism a column-parallel linear (``qkv_proj``, ``gate_up_proj``) outputs only this
rank's channels: its bank holds the same channels of the map (:mod:`act_fast.vllm.shards`).

The custom ops are called directly: maps are validated when their files load and λ when a request
is admitted (:mod:`act_fast.vllm.requests`), never per forward.

vLLM runs tokens flattened ``[num_tokens, C]``, so the per-row λ / map selection of the ops is per
token: ``strength[:num_tokens]``, ``map_index[:num_tokens]``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn

import act_fast.ops  # noqa: F401  (registers the torch.ops.act_fast custom ops)
from act_fast.maps import SteeringMaps
from act_fast.steering.mapsets import MapBank
from act_fast.vllm.buffers import TokenControl
from act_fast.vllm.shards import ShardError, rank_shard


class SiteError(ValueError):
    """Maps that do not fit the vLLM model (missing module, channel mismatch, unsupported module)."""


@dataclass(frozen=True)
class SitePlan:
    """Where and how one site is steered."""

    name: str
    mode: str  # "fused" | "op"
    channels: int
    weight_offset: float = 0.0
    cast_before_scale: bool = False
    shard: tuple[tuple[int, int], ...] | None = None  # this rank's channel ranges of a tensor-parallel output


def _rms_norm_classes() -> dict[type, tuple[float, bool]]:
    """vLLM's RMSNorm classes this module fuses: ``(weight offset, cast_before_scale)`` (Gemma's
    ``1 + w`` scaled in float32; vLLM's RMSNorm rounds to the input dtype, then scales)."""
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

    return {RMSNorm: (0.0, True), GemmaRMSNorm: (1.0, False)}


def _output_channels(module: nn.Module, hidden_size: int) -> int:
    """Channel count of the module's output as vLLM runs it (this rank's part for split linears)."""
    weight = getattr(module, "weight", None)
    if type(module) in _rms_norm_classes() and isinstance(weight, Tensor):
        return weight.numel()
    per_partition = getattr(module, "output_size_per_partition", None)
    if isinstance(per_partition, int) and getattr(module, "gather_output", True) is False:
        return per_partition
    for attr in ("output_size", "out_features"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    return hidden_size


def _language_model_prefix(model: nn.Module) -> str | None:
    """Name of the language model inside a multimodal vLLM model (``get_language_model()``), or
    None for a text-only model."""
    get = getattr(model, "get_language_model", None)
    if not callable(get):
        return None
    try:
        lm = get()
    except Exception:  # noqa: BLE001 - a model without one raises; treat it as text-only
        return None
    if lm is None or lm is model:
        return None
    return next((name for name, m in model.named_modules() if m is lm), None)


def _rows_not_tokens(site: str, module: nn.Module, channels: int, hidden_size: int, lm_prefix: str | None) -> str | None:
    """Why the rows of ``module``'s output are not the step's tokens (the per-token λ / map-slot
    buffers would be read at the wrong entries), or None when they are."""
    if lm_prefix is not None and not (site == lm_prefix or site.startswith(lm_prefix + ".")):
        return f"it is outside the language model ({lm_prefix!r}): a multimodal encoder runs on patches or frames, not the step's tokens"
    if "norm" in type(module).__name__.lower() and channels != hidden_size:
        return (
            f"a {type(module).__name__} over {channels} channels (the model's hidden size is {hidden_size}) is a per-head norm "
            "(e.g. Qwen3's q_norm / k_norm): vLLM runs it on [tokens x heads, head_dim] rows, not one row per token"
        )
    return None


def _partial_sums(module: nn.Module) -> str | None:
    """Why the module's output is a per-rank partial sum under tensor parallelism, or None."""
    tp = getattr(module, "tp_size", 1)
    if getattr(module, "reduce_results", True) is False and isinstance(tp, int) and tp > 1:
        return (
            f"a {type(module).__name__} with reduce_results=False under tensor parallelism {tp} outputs a partial sum on each "
            f"rank (e.g. a MoE shared expert): the map would be applied to each part and its bias added {tp} times; steer a module "
            "whose output is reduced"
        )
    return None


def plan_sites(model: nn.Module, map_sets: dict[str, SteeringMaps], files: dict[str, Any], hidden_size: int) -> list[SitePlan]:
    """Checks every map set against the model and decides each site's mode.

    Raises:
        SiteError: listing every problem, each naming the map set, its file and the site: a site
            that is not a module of the vLLM model (with the closest module names), a channel count
            that differs from the module's output, an RMSNorm vLLM configures in a way the fused
            op does not reproduce, a module whose output rows are not the step's tokens (per-head
            norms, multimodal encoders), or a tensor-parallel partial sum.
    """
    modules = dict(model.named_modules())
    lm_prefix = _language_model_prefix(model)
    norms = _rms_norm_classes()
    problems: list[str] = []
    plans: dict[str, SitePlan] = {}
    for set_name, maps in map_sets.items():
        where = f"map set {set_name!r} ({files[set_name]})"
        for site, m in maps.items():
            module = modules.get(site)
            if module is None:
                close = difflib.get_close_matches(site, list(modules), n=3)
                hint = f"; closest vLLM module names: {close}" if close else ""
                problems.append(f"{where}: site {site!r} is not a module of vLLM's {type(model).__name__}{hint}")
                continue
            try:
                shard = rank_shard(module)
            except ShardError as err:
                problems.append(f"{where}: site {site!r}: {err}")
                continue
            channels = shard.channels if shard is not None else _output_channels(module, hidden_size)
            if m.num_channels != channels:
                problems.append(f"{where}: site {site!r}: the map has {m.num_channels} channels, vLLM's {type(module).__name__} outputs {channels}")
                continue
            why = _rows_not_tokens(site, module, channels, hidden_size, lm_prefix) or _partial_sums(module)
            if why is not None:
                problems.append(f"{where}: site {site!r} cannot be steered per token: {why}")
                continue
            rounding = norms.get(type(module))
            if rounding is not None and getattr(module, "variance_size_override", None) is not None:
                problems.append(f"{where}: site {site!r}: an RMSNorm over the first {module.variance_size_override} channels is not supported")
                continue
            offset, cast = rounding if rounding is not None else (0.0, False)
            plans[site] = SitePlan(site, "op" if rounding is None else "fused", channels, offset, cast, None if shard is None else shard.ranges)
    if problems:
        raise SiteError(f"act_fast maps do not fit the vLLM model ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  " + "\n  ".join(problems))
    order = {name: i for i, name in enumerate(modules)}
    return sorted(plans.values(), key=lambda p: order[p.name])


def _steered_rms_norm(self: nn.Module, x: Tensor, residual: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """vLLM RMSNorm forward with the transport fused in; ``x``: ``[num_tokens, C]``."""
    if residual is not None and (x.dtype != torch.float32 or residual.dtype != torch.float32):
        # vLLM adds in float32, normalises the unrounded sum and rounds the residual to x's dtype (a
        # float16 sum may overflow where vLLM's output stays finite): its own forward, then the transport.
        normed, residual = self._act_fast_inner_forward(x, residual)
        return _transport(self, normed), residual
    if residual is not None:
        x = x + residual
        residual = x
    n = x.shape[0]
    y = torch.ops.act_fast.rms_norm_transport(
        x, self.weight if getattr(self, "has_weight", True) else None, self.act_fast_weight, self.act_fast_bias,
        self.act_fast_strength[:n], 0.0, self.act_fast_lo, self.act_fast_hi, self.act_fast_map_index[:n],
        self.variance_epsilon, self._act_fast_weight_offset, self._act_fast_cast_before_scale,
    )
    return y if residual is None else (y, residual)


def _steered_output(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The module's own forward, then the transport of its output ``[num_tokens, C]``."""
    out = self._act_fast_inner_forward(*args, **kwargs)
    if isinstance(out, Tensor):
        x, rest = out, None
    elif isinstance(out, tuple) and out and isinstance(out[0], Tensor) and all(not isinstance(v, Tensor) for v in out[1:]):
        x, rest = out[0], out[1:]
    else:
        raise SiteError(
            f"act_fast site {self._act_fast_site!r}: {type(self).__name__} returns {type(out).__name__}, not a tensor or "
            "(tensor, None); vLLM's decoder layers return (hidden, residual), so steer a norm, linear, attention or MLP output"
        )
    y = _transport(self, x)
    return y if rest is None else (y, *rest)


def _transport(self: nn.Module, x: Tensor) -> Tensor:
    """The site's transport of ``x``: ``[num_tokens, C]``, one λ and map slot per token."""
    if x.ndim != 2 or x.shape[-1] != self.act_fast_weight.shape[-1]:
        raise SiteError(f"act_fast site {self._act_fast_site!r}: output of shape {list(x.shape)}, expected [num_tokens, {self.act_fast_weight.shape[-1]}]")
    n = x.shape[0]
    return torch.ops.act_fast.affine_transport(
        x, self.act_fast_weight, self.act_fast_bias, self.act_fast_strength[:n], 0.0, self.act_fast_lo, self.act_fast_hi,
        self.act_fast_map_index[:n], 1, False,
    )


def install_sites(model: nn.Module, plans: list[SitePlan], map_sets: dict[str, SteeringMaps], control: TokenControl) -> None:
    """Registers each site's map bank and the shared per-token buffers, and replaces its forward."""
    for plan in plans:
        module = model.get_submodule(plan.name)
        bank = MapBank.build(plan.name, map_sets, True, control.device)
        if plan.shard is not None:  # this rank's channels of a tensor-parallel output, in its order
            index = torch.cat([torch.arange(start, stop) for start, stop in plan.shard]).to(control.device)
            bank = MapBank(*(None if t is None else t[:, index].contiguous() for t in (bank.weight, bank.bias, bank.lo, bank.hi)))
        for name, value in (("act_fast_weight", bank.weight), ("act_fast_bias", bank.bias), ("act_fast_lo", bank.lo), ("act_fast_hi", bank.hi),
                            ("act_fast_strength", control.strength), ("act_fast_map_index", control.map_index)):
            module.register_buffer(name, value, persistent=False)
        module._act_fast_site = plan.name
        module._act_fast_inner_forward = module.forward
        if plan.mode == "fused":
            module._act_fast_weight_offset = plan.weight_offset
            module._act_fast_cast_before_scale = plan.cast_before_scale
            module.forward = MethodType(_steered_rms_norm, module)
        else:
            module.forward = MethodType(_steered_output, module)
