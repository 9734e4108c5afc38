"""Import of maps fitted by the AcT reference implementation (github.com/apple/ml-act).

Reads the per-site files its ``act/scripts/learn_intervention.py`` writes: one
``<module_name>.statedict`` per hooked module, ``torch.save(hook.state_dict())`` right after
``hook.fit()`` (the module name may end in an output index, ``name:0``). The hooks (``act/hooks/
transport.py``, ``act/hooks/aura_hook.py``) leave these exact key sets:

- ``LinearOTHook`` (``linear_ot``): ``net.w1``, ``net.b1`` (``[1, C]``, ``LinearProj``),
  ``quantiles_dict_src``, ``quantiles_src``. Map ``w = w1, b = b1``.
- ``GaussianOTHook`` (``gaussian_ot``) and ``OnlyMeanHook`` (``mean_ot``): ``mu1``, ``std1``
  (source), ``mu2``, ``std2`` (target), ``[C]``, ``quantiles_dict_src``, ``quantiles_src``. The two
  files are identical (``hook_onlymean`` is not saved): pass ``method="mean_act"`` for Mean-AcT.
  Channels with ``std1 ≤ std_eps`` or ``std2 ≤ std_eps`` (compared in the stored dtype, as the
  hook does) are identity maps; the others get :func:`.formulas.gaussian_act` /
  :func:`.formulas.mean_act`.
- ``AURAHook`` (``aura``): ``auroc`` ``[C]`` only; :func:`.formulas.aura`. No support.

Support. ``quantiles_dict_src`` maps each preset name to ``[lo [C], hi [C]]``, quantiles of the
source. ``quantiles_src`` is NOT the name: ``_post_load`` (run at the end of ``fit``) replaced it
by the bounds, ``[-1e6, 1e6]`` (floats) for ``q_all``, else the named entry viewed ``[1, C]``
(Linear) or restricted to the std-mask channels, ``[1, C_kept]`` (Gaussian/Mean), which is
expanded back to ``[C]`` here (outside channels are identity maps; their bounds are ``±float32
max``). ``[-1e6, 1e6]`` is read as no support: it only differs for ``|x| ≥ 1e6``, and keeps the
map foldable. A name (a file saved before ``_post_load``) is looked up in ``quantiles_dict_src``.
The support is recorded by name when the bounds equal an entry of ``quantiles_dict_src`` (in its
order), else as ``"saved_bounds"``. ``support=name`` takes that entry of ``quantiles_dict_src``
instead, as the reference itself does when it loads a file (its hooks take the name from their
config, not from the file).

The Gaussian hook's quantiles are float64 and compared with float32 activations in float64; they
are rounded to float32 downwards (``lo``) and upwards (``hi``), which gives the same strict test
``lo < x < hi`` for every float32, bfloat16 or float16 ``x``.

Applying: channels-last and ``[B, C]`` outputs as they are; ``[B, C, H, W]`` outputs with
``pool_spatial=True`` for ``linear_ot`` (the hook maps the spatial mean and shifts every pixel)
and ``pool_spatial=False`` for the others (per-pixel map; Gaussian/Mean test the support on the
spatial mean).

Files are read with ``torch.load(weights_only=True)``: no arbitrary code runs. Errors name the
file or site, the key and the shapes; they never print tensor values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from act_fast.estimators import formulas
from act_fast.maps import AffineMap, SteeringMaps

StateDict = Mapping[str, Any]

# Exact key sets of a reference hook's state_dict() (layout → keys); see the module docstring.
LAYOUTS: dict[str, frozenset[str]] = {
    "linear_act": frozenset({"net.w1", "net.b1", "quantiles_dict_src", "quantiles_src"}),
    "gaussian_act": frozenset({"mu1", "mu2", "std1", "std2", "quantiles_dict_src", "quantiles_src"}),
    "aura": frozenset({"auroc"}),
}
METHODS = ("linear_act", "gaussian_act", "mean_act", "aura")
Q_ALL = "q_all"
Q_ALL_BOUNDS = (-1e6, 1e6)  # what the reference's _post_load stores for "q_all"
SAVED_BOUNDS = "saved_bounds"  # support name for bounds that match no quantiles_dict_src entry
_OPEN = torch.finfo(torch.float32).max  # bounds of channels the map leaves alone


def _describe(value: Any) -> str:
    """A value's type and shape, never its contents."""
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _channels(v: Any, where: str, key: str) -> Tensor:
    """A ``[C]`` or ``[1, C]`` floating tensor as float64 ``[C]``."""
    if not isinstance(v, Tensor) or not v.is_floating_point() or not (v.ndim == 1 or (v.ndim == 2 and v.shape[0] == 1)):
        raise ValueError(f"{where}: {key} must be a float tensor [C] or [1, C], got {_describe(v)}")
    return v.detach().to("cpu", torch.float64).reshape(-1)


def _same_channels(where: str, vectors: dict[str, Tensor]) -> int:
    sizes = {key: v.numel() for key, v in vectors.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{where}: channel counts differ: " + ", ".join(f"{k} [{n}]" for k, n in sizes.items()))
    return next(iter(sizes.values()))


def _layout(sd: StateDict, where: str) -> str:
    keys = {str(k) for k in sd}
    for layout, expected in LAYOUTS.items():
        if keys == expected:
            return layout
    closest = min(LAYOUTS, key=lambda k: len(keys ^ LAYOUTS[k]))
    missing, extra = sorted(LAYOUTS[closest] - keys), sorted(keys - LAYOUTS[closest])
    raise ValueError(
        f"{where}: not a state dict of an AcT reference hook (LinearOT: {sorted(LAYOUTS['linear_act'])}; "
        f"GaussianOT/OnlyMean: {sorted(LAYOUTS['gaussian_act'])}; AURA: ['auroc']); "
        f"closest is {closest}, missing {missing[:6]}, unexpected {extra[:6]}"
    )


def _quantile_table(sd: StateDict, where: str, num_channels: int) -> dict[str, tuple[Tensor, Tensor]]:
    """``quantiles_dict_src`` as name → ``(lo, hi)``, each ``[C]`` in its stored dtype."""
    table = sd["quantiles_dict_src"]
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: quantiles_dict_src must be a dict name -> [lo, hi], got {_describe(table)}")
    out = {}
    for name, pair in table.items():
        key = f"quantiles_dict_src[{name!r}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{where}: {key} must be [lo, hi], got {_describe(pair)}")
        lo, hi = pair
        for side, v in (("lo", lo), ("hi", hi)):
            if not isinstance(v, Tensor) or not v.is_floating_point() or v.numel() != num_channels or v.ndim > 2 or (v.ndim == 2 and v.shape[0] != 1):
                raise ValueError(f"{where}: {key} {side} must be a float tensor [{num_channels}], got {_describe(v)}")
        out[str(name)] = (lo.detach().cpu().reshape(-1), hi.detach().cpu().reshape(-1))
    return out


def _named_support(table: Mapping[str, tuple[Tensor, Tensor]], name: str, where: str, source: str) -> tuple[Tensor, Tensor]:
    if name not in table:
        raise ValueError(f"{where}: support {name!r} ({source}) is not in quantiles_dict_src, which has {sorted(table)}")
    return table[name]


def _saved_support(
    saved: Any, table: Mapping[str, tuple[Tensor, Tensor]], C: int, keep: Tensor | None, where: str
) -> tuple[str, tuple[Tensor, Tensor] | None]:
    """The support of ``quantiles_src`` as the file holds it: ``(name, (lo, hi) [C] or None)``.

    ``keep``: the ``[C]`` std mask of a Gaussian/Mean layout (bounds may be restricted to it), else None.
    """
    if isinstance(saved, str):
        if saved == Q_ALL:
            return Q_ALL, None
        return saved, _named_support(table, saved, where, "quantiles_src")
    if not isinstance(saved, (list, tuple)) or len(saved) != 2:
        raise ValueError(f"{where}: quantiles_src must be a support name or [lo, hi], got {_describe(saved)}")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in saved):
        if tuple(float(v) for v in saved) == Q_ALL_BOUNDS:
            return Q_ALL, None
        raise ValueError(f"{where}: quantiles_src holds numbers other than the reference's q_all bounds [-1e6, 1e6]")
    lo, hi = saved
    kept = int(keep.sum()) if keep is not None else C
    for side, v in (("lo", lo), ("hi", hi)):
        if not isinstance(v, Tensor) or not v.is_floating_point() or v.ndim > 2 or (v.ndim == 2 and v.shape[0] != 1):
            raise ValueError(f"{where}: quantiles_src {side} must be a float tensor [1, C], got {_describe(v)}")
    if lo.shape != hi.shape:
        raise ValueError(f"{where}: quantiles_src lo {list(lo.shape)} and hi {list(hi.shape)} differ in shape")
    lo, hi = lo.detach().cpu().reshape(-1), hi.detach().cpu().reshape(-1)
    for name, (t_lo, t_hi) in table.items():  # the reference's _post_load of each name, compared
        if keep is not None and lo.numel() == kept:
            t_lo, t_hi = t_lo[keep], t_hi[keep]
        if t_lo.dtype == lo.dtype and torch.equal(t_lo, lo) and torch.equal(t_hi, hi):
            return name, table[name]
    if keep is not None and lo.numel() == kept:
        full_lo, full_hi = torch.full((C,), -_OPEN, dtype=lo.dtype), torch.full((C,), _OPEN, dtype=hi.dtype)
        full_lo[keep], full_hi[keep] = lo, hi
        return SAVED_BOUNDS, (full_lo, full_hi)
    if lo.numel() == C:
        return SAVED_BOUNDS, (lo, hi)
    expected = f"[1, {C}]" if keep is None else f"[1, {C}] or [1, {kept}] (the channels the std_eps argument keeps; fitted with another std_eps?)"
    raise ValueError(f"{where}: quantiles_src bounds are {list(saved[0].shape)}, expected {expected}")


def _float32_bounds(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Float32 bounds with the same strict test ``lo < x < hi`` on float32 ``x`` as the stored ones:
    ``lo`` rounded down, ``hi`` rounded up (exact for float32 or narrower bounds)."""
    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    if lo.dtype == torch.float64:
        lo32 = torch.where(lo32.double() > lo, torch.nextafter(lo32, torch.tensor(-float("inf"))), lo32)
        hi32 = torch.where(hi32.double() < hi, torch.nextafter(hi32, torch.tensor(float("inf"))), hi32)
    return lo32, hi32


def _reference_map(
    sd: StateDict, where: str, method: str | None, support: str | None, std_eps: float
) -> tuple[str, str, AffineMap]:
    """``(method, support name, map)`` of one reference state dict."""
    layout = _layout(sd, where)
    if method is not None and not (method == layout or (method == "mean_act" and layout == "gaussian_act")):
        raise ValueError(f"{where}: method={method!r}, but the file holds a {layout} layout")
    kind = method or layout
    keep = None
    if layout == "linear_act":
        vec = {key: _channels(sd[key], where, key) for key in ("net.w1", "net.b1")}
        C = _same_channels(where, vec)
        w, b = vec["net.w1"], vec["net.b1"]
    elif layout == "gaussian_act":
        vec = {key: _channels(sd[key], where, key) for key in ("mu1", "std1", "mu2", "std2")}
        C = _same_channels(where, vec)
        # The hook compares its stored stds with the Python float std_eps in their dtype.
        eps = float(torch.tensor(std_eps, dtype=sd["std1"].dtype))
        keep = formulas.std_mask(vec["std1"], vec["std2"], eps)
        if kind == "mean_act":
            w, b = formulas.mean_act(vec["mu1"], vec["mu2"], keep)
        else:
            w, b = formulas.gaussian_act(vec["mu1"], vec["std1"], vec["mu2"], vec["std2"], keep, torch.ones_like(keep))
    else:
        auroc = _channels(sd["auroc"], where, "auroc")
        C = auroc.numel()
        w, b = formulas.aura(auroc)

    bounds: tuple[Tensor, Tensor] | None = None
    if layout == "aura":
        if support not in (None, Q_ALL):
            raise ValueError(f"{where}: support={support!r}, but AURA files have no support (the AURA hook has none)")
        name = Q_ALL
    else:
        table = _quantile_table(sd, where, C)
        if support is not None:
            name = support
            bounds = None if support == Q_ALL else _named_support(table, support, where, "the support argument")
        else:
            name, bounds = _saved_support(sd["quantiles_src"], table, C, keep, where)
    lo, hi = (None, None) if bounds is None else _float32_bounds(*bounds)
    try:
        return kind, name, AffineMap(w.float(), b.float(), lo, hi)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from err


def _site_name(site: str, where: str) -> str:
    name, sep, index = site.partition(":")
    if sep and index != "0":
        raise ValueError(f"{where}: output {index!r} of {name!r}; act_fast steers a module's first output tensor (':0') only")
    return name


def _load(path: str | os.PathLike, where: str) -> StateDict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many types; weights_only refusals included
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{where}: not a torch-saved state dict readable with weights_only=True ({first_line})") from err
    if not isinstance(sd, Mapping):
        raise ValueError(f"{where}: holds a {_describe(sd)}, not a state dict")
    return sd


def import_reference_maps(
    state_dicts: Mapping[str, str | os.PathLike | StateDict],
    *,
    method: str | None = None,
    support: str | None = None,
    std_eps: float = 1e-4,
) -> SteeringMaps:
    """Builds SteeringMaps from the AcT reference implementation's per-site state files.

    Args:
        state_dicts: site → path of a ``.statedict`` file (or the loaded dict), in forward order.
            A site is the reference's module name: ``name`` or ``name:0`` (the suffix is
            dropped; other output indices are refused).
        method: None (the layout decides; Gaussian layouts are ``gaussian_act``), or one of
            ``linear_act``, ``gaussian_act``, ``mean_act`` (Gaussian layouts read as Mean-AcT, the
            reference's ``mean_ot`` files), ``aura``; a layout that does not fit is refused.
        support: a name in each file's ``quantiles_dict_src`` (or ``q_all``: none) replacing the
            saved bounds, as the reference's ``quantiles_src`` hook argument does; None: the
            bounds saved in the file.
        std_eps: the std mask of the Gaussian/Mean layouts (the hook's ``std_eps``; default 1e-4).

    Returns:
        SteeringMaps with float32 ``[C]`` maps; ``method`` and ``support`` the sorted, comma-joined
        methods and support names found.

    Raises:
        FileNotFoundError: a path that is no file.
        ValueError: an unreadable file, another key set, misshapen tensors, a support name not in
            ``quantiles_dict_src``, a method that does not fit the layout, two files for one site.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be None or one of {METHODS}, got {method!r}")
    maps: dict[str, AffineMap] = {}
    kinds, supports = set(), set()
    for site, sd in state_dicts.items():
        where = f"site {site!r}"
        if not isinstance(sd, Mapping):
            where = f"{where} ({os.fspath(sd)})"
            sd = _load(sd, where)
        name = _site_name(site, where)
        if name in maps:
            raise ValueError(f"{where}: a second map for module {name!r}")
        kind, support_name, maps[name] = _reference_map(sd, where, method, support, std_eps)
        kinds.add(kind)
        supports.add(support_name)
    return SteeringMaps(maps, method=",".join(sorted(kinds)), support=",".join(sorted(supports)))
