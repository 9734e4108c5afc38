"""``steer``: apply steering maps inside a model, each site in the cheapest exact mode.

Modes (DESIGN.md §3), chosen per site by ``mode="auto"``:

- ``fold``: the map has no support and every row gets the same map and λ, so
  ``y' = y + λ((w − 1) y + b)`` is folded into the affine parameters of the norm (or linear layer)
  that produces ``y``. Zero runtime cost. Changing λ refolds from kept originals, on the device;
  :meth:`SteeringHandle.remove` copies the originals back bit for bit.
- ``fused``: RMSNorm / LayerNorm (incl. Gemma's ``1 + w``) / GroupNorm modules compute their
  output with one fused norm+transport kernel (support masks, per-row λ and map selection).
- ``op``: any other module output goes through ``torch.ops.act_fast.affine_transport``.

λ and the per-row map selection live in device tensors owned by the handle: changing their
values never recompiles a ``torch.compile``-d model and never syncs the host. Nothing is
registered on the model, so ``state_dict()`` keys are unchanged while steered.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from act_fast.integrations import NormSpec, norm_spec
from act_fast.maps import AffineMap, SteeringMaps, model_fingerprint
import act_fast.ops  # noqa: F401  (registers the torch.ops.act_fast custom ops)
from act_fast.stats.collect import first_tensor

MODES = ("auto", "fold", "fused", "op")
# Support bounds of map slots that have no support, in a bank where another slot has one.
_OPEN = torch.finfo(torch.float32).max
# Modules currently steered, so that a second steer() on the same site is refused.
_STEERED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()

MapSets = SteeringMaps | Mapping[str, AffineMap] | Mapping[str, SteeringMaps | Mapping[str, AffineMap]]


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


@dataclass
class _Control:
    """λ and map selection, one copy per device the steered sites live on.

    ``strength[d]``: float32, 0-d or ``[B]``. ``index[d]``: int32 slot per row (0-d or ``[B]``), or
    None with one map set (slot 0 of a multi-set bank is the identity).
    """

    strength: dict[torch.device, Tensor] = field(default_factory=dict)
    index: dict[torch.device, Tensor] | None = None


@dataclass
class _FoldPlan:
    """Where a site's map folds: ``scale`` params get ``p + (p + offset) · λ(w − 1)`` along ``axis``,
    ``shift`` (may be None when the map's bias is 0) gets ``p + p · λ(w − 1) + λ b``."""

    scale: nn.Parameter
    axis: int
    offset: float
    shift: nn.Parameter | None


@dataclass
class _Site:
    """One steered module: its mode, its map bank on the module's device, and what to undo."""

    name: str
    module: nn.Module
    mode: str
    device: torch.device
    channels: int
    norm: NormSpec | None
    channel_dim: int  # 1 for conv features / GroupNorm ([B, C, *spatial]); -1 channels last
    pool_spatial: bool
    weight: Tensor  # [C] with one map set, [K + 1, C] with K sets (slot 0 = identity)
    bias: Tensor
    lo: Tensor | None
    hi: Tensor | None
    fold: _FoldPlan | None = None
    originals: dict[str, Tensor] = field(default_factory=dict)
    hook: Any = None


def _one_set(m: Any) -> SteeringMaps | None:
    """``m`` as a SteeringMaps when it is one map set (a SteeringMaps or a dict site -> AffineMap)."""
    if isinstance(m, SteeringMaps):
        return m
    if isinstance(m, Mapping) and m and all(isinstance(v, AffineMap) for v in m.values()):
        return SteeringMaps(dict(m))
    return None


def _as_map_sets(maps: MapSets) -> tuple[dict[str, SteeringMaps], bool]:
    """``({name: SteeringMaps}, multi)``; one set is named ``""``."""
    single = _one_set(maps)
    if single is not None:
        return {"": single}, False
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError("maps must be a SteeringMaps, a dict of site -> AffineMap, or a non-empty dict of name -> SteeringMaps")
    sets = {}
    for name, m in maps.items():
        sets[str(name)] = _one_set(m)
        if sets[str(name)] is None:
            raise TypeError(f"map set {name!r} must be a SteeringMaps or a dict of site -> AffineMap, got {type(m).__name__}")
    return sets, True


def _module_channels(module: nn.Module, norm: NormSpec | None) -> int | None:
    """Channel count of the module's output when the module type tells it, else None."""
    if norm is not None and norm.weight is not None:
        return norm.weight.numel()
    for attr in ("num_channels", "out_features", "out_channels", "nf"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    return int(shape[-1]) if shape else None


def _check_model(model: nn.Module, sets: dict[str, SteeringMaps], modules: dict[str, nn.Module], norms: dict[str, NormSpec | None]) -> None:
    model_type, fingerprint = model_fingerprint(model)
    for name, maps in sets.items():
        label = f"map set {name!r}" if name else "maps"
        if maps.model_type and model_type and maps.model_type != model_type:
            raise ValueError(f"{label} were fitted on a {maps.model_type!r} model; this model is {model_type!r}")
        if maps.model_fingerprint and fingerprint and maps.model_fingerprint != fingerprint:
            warnings.warn(f"{label} were fitted on a {maps.model_type} model with another config; check that the sites match", stacklevel=3)
        channels = {site: _module_channels(modules[site], norms[site]) for site in maps if site in modules}
        maps.check_model(model, channels)


def _bank(site: str, sets: dict[str, SteeringMaps], multi: bool, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The site's map tensors on ``device``: ``[C]`` for one set; ``[K + 1, C]`` for K sets, where
    slot 0 and the sets without this site hold the identity (w = 1, b = 0, open support)."""
    if not multi:
        m = next(iter(sets.values()))[site]
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return move(m.weight), move(m.bias), move(m.lo), move(m.hi)
    present = [s[site] for s in sets.values() if site in s]
    C = present[0].num_channels
    slots = [None] + [s.maps.get(site) for s in sets.values()]
    ones, zeros = torch.ones(C, device=device), torch.zeros(C, device=device)
    weight = torch.stack([ones if m is None else m.weight.to(device, torch.float32) for m in slots])
    bias = torch.stack([zeros if m is None else m.bias.to(device, torch.float32) for m in slots])
    if all(m.lo is None for m in present):
        return weight, bias, None, None
    lo = torch.stack([torch.full((C,), -_OPEN, device=device) if m is None or m.lo is None else m.lo.to(device, torch.float32) for m in slots])
    hi = torch.stack([torch.full((C,), _OPEN, device=device) if m is None or m.hi is None else m.hi.to(device, torch.float32) for m in slots])
    return weight, bias, lo, hi


def _fold_plan(module: nn.Module, norm: NormSpec | None, pool_spatial: bool) -> _FoldPlan | str:
    """Where the site's map can be folded, or why it cannot."""
    if norm is not None:
        if norm.kind == "group" and pool_spatial:
            return "a pooled map on conv features depends on the spatial mean, not on each value"
        if norm.weight is None:
            return "the norm has no affine weight to fold into"
        return _FoldPlan(norm.weight, 0, norm.weight_offset, norm.bias)
    if isinstance(module, nn.Linear):
        return _FoldPlan(module.weight, 0, 0.0, module.bias)
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):  # GPT-2's [in, out] linear
        return _FoldPlan(module.weight, 1, 0.0, module.bias)
    return f"{type(module).__name__} is neither a norm nor a linear layer"


class SteeringHandle:
    """Maps applied to a model by :func:`steer`; changes λ and the per-row map set, and undoes it all.

    Attributes:
        modes: site name → ``"fold"`` | ``"fused"`` | ``"op"``.
        map_sets: names of the map sets (empty for a single set).
    """

    def __init__(self, sites: list[_Site], control: _Control, set_names: list[str]) -> None:
        self._sites = sites
        self._control = control
        self.map_sets: tuple[str, ...] = tuple(set_names)
        self.modes: dict[str, str] = {s.name: s.mode for s in sites}
        self._removed = False

    # -- strength ---------------------------------------------------------------------------

    @property
    def strength(self) -> Tensor:
        """The current λ (a copy of the device tensor: 0-d, or ``[B]`` per batch row)."""
        return next(iter(self._control.strength.values())).clone()

    def set_strength(self, strength: float | Tensor) -> None:
        """Sets λ: a number or 0-d tensor for every row, or ``[B]`` (one λ per batch row).

        Values are copied into the handle's device tensors (no recompile, no host sync). Folded
        sites are refolded from their original parameters on the device. A ``[B]`` λ needs every
        site in ``fused`` or ``op`` mode.
        """
        self._alive()
        if isinstance(strength, Tensor):
            if not strength.is_floating_point() or strength.ndim > 1:
                raise ValueError(f"strength tensor must be floating, 0-d or [B], got {strength.dtype} {list(strength.shape)}")
            if strength.ndim == 1:
                folded = [s.name for s in self._sites if s.mode == "fold"]
                if folded:
                    raise ValueError(f"per-row strength cannot be folded into weights; sites {folded[:4]} are in fold mode (steer with mode='fused' or 'op')")
            value = strength.detach().to(torch.float32)
        else:
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
                raise ValueError(f"strength must be a finite number or a float tensor, got {strength!r}")
            value = float(strength)
        for device, buf in list(self._control.strength.items()):
            self._control.strength[device] = _write(buf, value, device)
        for site in self._sites:
            if site.mode == "fold":
                _refold(site, self._control.strength[site.device])

    # -- per-row map selection --------------------------------------------------------------

    def select(self, choice: Sequence[str | None] | Tensor | str | None) -> None:
        """Chooses the map set of each batch row (handles made from several map sets).

        Args:
            choice: one name (or None) for every row; a list with one name or None per batch row
                (None = unsteered); or an integer tensor ``[B]`` of set positions in
                :attr:`map_sets` (``-1`` = unsteered).
        """
        self._alive()
        if self._control.index is None:
            raise ValueError("this handle holds one map set; pass a dict of name -> SteeringMaps to steer() to select per row")
        if isinstance(choice, Tensor):
            if choice.dtype not in (torch.int32, torch.int64) or choice.ndim > 1:
                raise ValueError(f"selection tensor must be int32/int64, 0-d or [B], got {choice.dtype} {list(choice.shape)}")
            slots: Tensor | list[int] = choice.detach().to(torch.int32) + 1
        else:
            names = [choice] if choice is None or isinstance(choice, str) else list(choice)
            unknown = sorted({n for n in names if n is not None and n not in self.map_sets})
            if unknown:
                raise ValueError(f"unknown map sets {unknown}; this handle has {list(self.map_sets)}")
            ids = [0 if n is None else self.map_sets.index(n) + 1 for n in names]
            slots = torch.tensor(ids[0] if isinstance(choice, str) or choice is None else ids, dtype=torch.int32)
        for device, buf in list(self._control.index.items()):
            self._control.index[device] = _write(buf, slots, device)

    # -- diffusion schedules ----------------------------------------------------------------

    def step_callback(self, schedule: Sequence[float] | Callable[[int], float]) -> Callable[..., dict]:
        """A diffusers ``callback_on_step_end`` that sets λ per denoising step.

        ``schedule``: a list (step i uses ``schedule[i]``, the last value after its end) or a
        callable ``step -> λ``. λ for step 0 is set now; the callback sets step ``i + 1``'s λ when
        step ``i`` ends. Use: ``pipe(..., callback_on_step_end=handle.step_callback([...]))``.
        """
        if callable(schedule):
            at = schedule
        else:
            values = [float(v) for v in schedule]
            if not values:
                raise ValueError("the strength schedule is empty")
            at = lambda i: values[min(i, len(values) - 1)]  # noqa: E731
        self.set_strength(at(0))

        def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            self.set_strength(at(step + 1))
            return callback_kwargs

        return callback

    # -- lifetime ---------------------------------------------------------------------------

    def remove(self) -> None:
        """Restores the model exactly: removes hooks and fused forwards, copies folded originals back."""
        if self._removed:
            return
        for site in self._sites:
            if site.hook is not None:
                site.hook.remove()
            if site.mode == "fused":
                site.module.__dict__.pop("forward", None)
            if site.mode == "fold":
                with torch.no_grad():
                    for param, orig in _fold_params(site):
                        param.copy_(orig)
            _STEERED.pop(site.module, None)
        self._removed = True

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        counts = {m: sum(1 for v in self.modes.values() if v == m) for m in ("fold", "fused", "op")}
        state = "removed" if self._removed else ", ".join(f"{n} {m}" for m, n in counts.items() if n)
        sets = f", map sets {list(self.map_sets)}" if self.map_sets else ""
        return f"SteeringHandle({len(self._sites)} sites: {state}{sets})"

    def _alive(self) -> None:
        if self._removed:
            raise RuntimeError("this SteeringHandle was removed; call steer() again")


def _write(buf: Tensor, value: float | Tensor | list, device: torch.device) -> Tensor:
    """``value`` written into ``buf`` in place when the shape allows (no recompile), else a new tensor."""
    if isinstance(value, float):
        if buf.ndim == 0:
            return buf.fill_(value)
        return torch.full((), value, dtype=buf.dtype, device=device)
    src = value.to(device=device, dtype=buf.dtype, non_blocking=True)
    if src.shape == buf.shape:
        return buf.copy_(src)
    return src.clone() if src.data_ptr() == value.data_ptr() else src


def _fold_params(site: _Site) -> list[tuple[nn.Parameter, Tensor]]:
    plan = site.fold
    assert plan is not None
    pairs = [(plan.scale, site.originals["scale"])]
    if plan.shift is not None:
        pairs.append((plan.shift, site.originals["shift"]))
    return pairs


def _refold(site: _Site, strength: Tensor) -> None:
    """Writes the folded parameters for λ = ``strength`` (0-d, on the site's device)."""
    plan = site.fold
    assert plan is not None
    d = strength * (site.weight.float() - 1.0)  # λ (w − 1), [C]
    with torch.no_grad():
        scale = site.originals["scale"].float()
        view = [1] * scale.ndim
        view[plan.axis] = site.channels
        plan.scale.copy_(scale + (scale + plan.offset) * d.reshape(view))
        if plan.shift is not None:
            shift = site.originals["shift"].float()
            plan.shift.copy_(shift + shift * d + strength * site.bias.float())


def _fused_forward(site: _Site, control: _Control) -> Callable[[Tensor], Tensor]:
    """The replacement ``forward`` of a norm module in fused mode."""
    norm = site.norm
    assert norm is not None

    def forward(x: Tensor) -> Tensor:
        s, idx = _runtime(site, control, x, site.channel_dim % x.ndim)
        if norm.kind == "rms":
            return torch.ops.act_fast.rms_norm_transport(
                x, norm.weight, site.weight, site.bias, s, 0.0, site.lo, site.hi, idx, norm.eps, norm.weight_offset,
                norm.cast_before_scale,
            )
        if norm.kind == "layer":
            return torch.ops.act_fast.layer_norm_transport(
                x, norm.weight, norm.bias, site.weight, site.bias, s, 0.0, site.lo, site.hi, idx, norm.eps
            )
        return torch.ops.act_fast.group_norm_transport(
            x, norm.num_groups, norm.weight, norm.bias, site.weight, site.bias, s, 0.0, site.lo, site.hi, idx,
            norm.eps, site.pool_spatial,
        )

    return forward


def _op_hook(site: _Site, control: _Control) -> Callable[..., Any]:
    """A forward hook transporting the module's output through the transport op."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        out = first_tensor(output)
        if out is None:
            raise ValueError(f"site {site.name!r}: {type(module).__name__} returned no tensor to steer")
        conv = site.channel_dim == 1 or out.ndim >= 4
        cd = 1 if conv else out.ndim - 1
        s, idx = _runtime(site, control, out, cd)
        y = torch.ops.act_fast.affine_transport(
            out, site.weight, site.bias, s, 0.0, site.lo, site.hi, idx, cd, site.pool_spatial and conv and out.ndim >= 3
        )
        return replace_first_tensor(output, y)

    return hook


def _runtime(site: _Site, control: _Control, x: Tensor, cd: int) -> tuple[Tensor, Tensor | None]:
    """λ and map index for this call; shape checks only (static under torch.compile)."""
    if x.shape[cd] != site.channels:
        raise ValueError(f"site {site.name!r}: activation of shape {list(x.shape)} has {x.shape[cd]} channels in dim {cd}, the map has {site.channels}")
    s = control.strength[site.device]
    idx = None if control.index is None else control.index[site.device]
    for what, t in (("strength", s), ("map selection", idx)):
        if t is not None and t.ndim == 1 and t.shape[0] != x.shape[0]:
            raise ValueError(f"site {site.name!r}: per-row {what} has {t.shape[0]} rows, the batch has {x.shape[0]} (x {list(x.shape)})")
    return s, idx


def _site_device(module: nn.Module, model: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def steer(
    model: nn.Module,
    maps: MapSets,
    strength: float | Tensor = 1.0,
    mode: str = "auto",
    *,
    pool_spatial: bool = True,
) -> SteeringHandle:
    """Applies steering maps inside ``model`` until the returned handle is removed.

    Args:
        model: a transformers / diffusers model or any ``nn.Module``, already on its devices
            (``device_map`` placements are fine: each site's maps go to its module's device).
        maps: a :class:`SteeringMaps` (or a dict site → :class:`AffineMap`), or a dict
            name → SteeringMaps for per-request steering: one map set chosen per batch row with
            :meth:`SteeringHandle.select` (rows start unsteered).
        strength: λ, a number or a ``[B]`` tensor (one per batch row); see
            :meth:`SteeringHandle.set_strength`.
        mode: ``"auto"`` (per site: fold when possible, else fused for norms, else op), or
            ``"fold"`` / ``"fused"`` / ``"op"`` for every site (an error lists the sites that
            cannot take it).
        pool_spatial: conv features ``[B, C, *spatial]``: evaluate support and map on each plane's
            spatial mean and shift the plane (the AcT diffusion setting, as in :func:`act_fast.fit`);
            False: per-position map.

    Returns:
        A :class:`SteeringHandle` (also a context manager that removes itself on exit).

    Raises:
        ValueError: unknown mode, maps for another model or sites/channels that do not fit
            (all mismatches listed), a site already steered, or sites that cannot take ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sets, multi = _as_map_sets(maps)
    site_names = list(dict.fromkeys(site for s in sets.values() for site in s))
    all_modules = dict(model.named_modules())
    modules = {name: all_modules[name] for name in site_names if name in all_modules}
    norms = {name: norm_spec(module) for name, module in modules.items()}
    _check_model(model, sets, modules, norms)  # lists every missing site and channel mismatch
    busy = [name for name, module in modules.items() if module in _STEERED]
    if busy:
        raise ValueError(f"sites {busy[:4]} are already steered by another handle; remove it first")
    per_row = isinstance(strength, Tensor) and strength.ndim == 1

    control = _Control()
    sites: list[_Site] = []
    refused: list[str] = []
    for name, module in modules.items():
        norm = norms[name]
        device = _site_device(module, model)
        weight, bias, lo, hi = _bank(name, sets, multi, device)
        conv = isinstance(module, nn.GroupNorm) or (norm is not None and norm.kind == "group")
        site = _Site(name, module, "op", device, weight.shape[-1], norm, 1 if conv else -1, pool_spatial, weight, bias, lo, hi)
        plan = _fold_plan(module, norm, pool_spatial)
        why_not_fold = plan if isinstance(plan, str) else None
        if why_not_fold is None:
            if lo is not None:
                why_not_fold = "the map has a support"
            elif multi or per_row:
                why_not_fold = "rows do not all share one map and λ"
            elif plan.shift is None and bool((bias != 0).any()):
                why_not_fold = f"the map has a bias but {type(module).__name__} has no bias parameter"
        if mode == "fold" or (mode == "auto" and why_not_fold is None):
            if why_not_fold is not None:
                refused.append(f"{name}: {why_not_fold}")
                continue
            site.mode, site.fold = "fold", plan
        elif mode == "fused" or (mode == "auto" and norm is not None):
            if norm is None:
                refused.append(f"{name}: {type(module).__name__} is not a norm this package can fuse")
                continue
            site.mode = "fused"
        sites.append(site)
        control.strength.setdefault(device, torch.zeros((), dtype=torch.float32, device=device))
        if multi:
            control.index = control.index or {}
            control.index.setdefault(device, torch.zeros((), dtype=torch.int32, device=device))
    if refused:
        raise ValueError(f"mode={mode!r} does not fit {len(refused)} site(s):\n  " + "\n  ".join(refused))

    for site in sites:
        if site.mode == "fold":
            site.originals = {"scale": site.fold.scale.detach().clone()}
            if site.fold.shift is not None:
                site.originals["shift"] = site.fold.shift.detach().clone()
        elif site.mode == "fused":
            site.module.forward = _fused_forward(site, control)
        else:
            site.hook = site.module.register_forward_hook(_op_hook(site, control))
        _STEERED[site.module] = site.name
    handle = SteeringHandle(sites, control, list(sets) if multi else [])
    try:
        handle.set_strength(strength)
    except BaseException:
        handle.remove()
        raise
    return handle
