"""Input validation shared by the public op wrappers.

Every error names what was expected and what came, with shapes, never tensor values. Shape, dtype
and device checks cost no device work. Value checks of map and strength tensors (finite, ``lo ≤
hi``) need a device read, so they run once per tensor version (cached on the tensor; ``lo ≤ hi``
once per *pair* of versions, since two tensors each fine alone can form an inverted pair: cached on
``lo`` with a weak reference to its ``hi``) and never while torch.compile traces (they would force
a host sync and a graph break).
"""

from __future__ import annotations

import math
import numbers
import weakref

import torch
from torch import Tensor

from act_fast.ops.reference import MAX_CHAIN, Strength


def device_problem(device: object) -> str | None:
    """Why ``device`` cannot hold tensors here (not a device, CUDA / MPS unavailable, an index past
    the visible GPUs), or None. The CLI's ``--device`` check and the library's say the same."""
    if device is None:
        return None
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, ValueError, TypeError):
        return "not a torch device (use cpu, cuda or cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None and torch.version.hip is None else "no CUDA device is visible"
            return f"CUDA is not available ({build}, torch {torch.__version__})"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} CUDA device(s) visible"
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return "MPS is not available on this machine"
    return None


def check_device(device: object, what: str) -> None:
    """Raises ValueError naming ``what`` (e.g. ``load_maps``) when ``device`` cannot be used here."""
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"{what}: device {str(device)!r}: {problem}; use device='cpu'")


def check_input(x: Tensor, name: str = "x") -> None:
    """``x`` must be a floating-point tensor with at least one dim."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, bfloat16, float16 or float64), got {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have a channel dim, got a 0-d tensor")


def normalize_channel_dim(x: Tensor, channel_dim: int, pool_spatial: bool) -> int:
    """Returns ``channel_dim`` as a non-negative index; only the last dim or dim 1 are allowed."""
    if not isinstance(channel_dim, int) or not -x.ndim <= channel_dim < x.ndim:
        raise ValueError(f"channel_dim must be an int in [{-x.ndim}, {x.ndim - 1}] for x of shape {list(x.shape)}, got {channel_dim!r}")
    cd = channel_dim % x.ndim
    if cd not in (1, x.ndim - 1):
        raise ValueError(
            f"channel_dim must be the last dim (channels last) or 1 (conv features [B, C, ...]), "
            f"got {channel_dim} for x of shape {list(x.shape)}"
        )
    if pool_spatial and not (cd == 1 and x.ndim >= 3):
        raise ValueError(
            f"pool_spatial=True needs conv features [B, C, *spatial] with channel_dim=1, "
            f"got x of shape {list(x.shape)} with channel_dim={channel_dim}"
        )
    return cd


def check_channel_vector(
    v: object, name: str, num_channels: int, x: Tensor, what: str = "x", num_maps: int | None = None
) -> None:
    """``v`` must be a floating ``[C]`` tensor on ``x``'s device, or ``[K, C]`` when ``num_maps``
    is given (``K = num_maps``; -1 accepts any ``K ≥ 1``)."""
    expected = f"[{num_channels}]" if num_maps is None else f"[{'K' if num_maps < 0 else num_maps}, {num_channels}]"
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {v.dtype}")
    if num_maps is None:
        if v.ndim != 1 or v.shape[0] != num_channels:
            hint = "; pass map_index to select one of several [K, C] maps per row" if v.ndim == 2 else ""
            raise ValueError(
                f"{name} must have shape [{num_channels}] (one value per channel of {what} {list(x.shape)}), "
                f"got {list(v.shape)}{hint}"
            )
    elif v.ndim != 2 or v.shape[1] != num_channels or v.shape[0] < 1 or (num_maps >= 0 and v.shape[0] != num_maps):
        raise ValueError(
            f"{name} must have shape {expected} with map_index (K maps, one value per channel of {what} "
            f"{list(x.shape)}), got {list(v.shape)}"
        )
    if v.device != x.device:
        raise ValueError(f"{name} is on {v.device} but {what} is on {x.device}; move both to one device")


def check_support(lo: Tensor | None, hi: Tensor | None, num_channels: int, x: Tensor, num_maps: int | None = None) -> None:
    """``lo`` and ``hi`` come together, each ``[C]`` (``[K, C]`` when ``num_maps`` is given)."""
    if (lo is None) != (hi is None):
        raise ValueError(f"lo and hi must be given together, got lo={'None' if lo is None else 'a tensor'} and hi={'None' if hi is None else 'a tensor'}")
    if lo is not None:
        check_channel_vector(lo, "lo", num_channels, x, num_maps=num_maps)
        check_channel_vector(hi, "hi", num_channels, x, num_maps=num_maps)


def check_map_index(map_index: object, x: Tensor) -> None:
    """``map_index`` must be None or an int32/int64 tensor on ``x``'s device: 0-d, ``[B]`` with
    ``B = x.shape[0]``, or a chain ``[B, S]`` (``1 ≤ S ≤ MAX_CHAIN``). Its values are not read
    (that would sync the host)."""
    if map_index is None:
        return
    if not isinstance(map_index, Tensor):
        raise TypeError(f"map_index must be None or an int32/int64 tensor, got {type(map_index).__name__}")
    if map_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"map_index must be an int32 or int64 tensor, got {map_index.dtype}")
    if map_index.device != x.device:
        raise ValueError(f"map_index is on {map_index.device} but x is on {x.device}; keep it on the model's device")
    if map_index.ndim == 0:
        return
    if map_index.ndim not in (1, 2) or x.ndim < 2 or map_index.shape[0] != x.shape[0]:
        rows = f"[{x.shape[0]}] or [{x.shape[0]}, S]" if x.ndim >= 2 else "a 0-d tensor (x has no batch dim)"
        raise ValueError(
            f"per-row map_index must have shape {rows}, one map (or chain of S maps) per batch row of x "
            f"{list(x.shape)}, got {list(map_index.shape)}"
        )
    if map_index.ndim == 2 and not 1 <= map_index.shape[1] <= MAX_CHAIN:
        raise ValueError(f"a chain map_index [B, S] composes 1 to {MAX_CHAIN} maps per row, got S = {map_index.shape[1]}")


def check_chain_layout(x: Tensor, map_index: Tensor | None, channel_dim: int, op: str) -> None:
    """A chain (``[B, S]`` ``map_index``) is taken on channels-last input only."""
    if map_index is not None and map_index.ndim == 2 and channel_dim != x.ndim - 1 and x.ndim > 2:
        raise ValueError(
            f"{op}: a chain of maps ([B, S] map_index) is applied to channels-last input only, got x of shape "
            f"{list(x.shape)} with channel_dim={channel_dim} (conv planes take one map per row)"
        )


def check_row_buffers(x: Tensor, strength: Tensor | None, map_index: Tensor | None, op: str) -> None:
    """The per-row buffers of an op body (called without the public wrapper's checks, e.g. by
    steering or vLLM) must have one entry per batch row of ``x`` (``x.shape[0]``): never fewer
    (a kernel would read past them) nor more (rows would get another row's λ or map). Shapes only."""
    rows = x.shape[0] if x.ndim >= 2 else None
    chain = None if map_index is None or map_index.ndim != 2 else map_index.shape[1]
    for name, t in (("strength", strength), ("map_index", map_index)):
        if t is None or t.ndim == 0:
            continue
        expected = [rows] if t.ndim == 1 else [rows, chain]
        if rows is None or t.ndim > 2 or list(t.shape) != expected or (t.ndim == 2 and name == "strength" and chain is None):
            want = "a 0-d tensor" if rows is None else f"{expected} (one entry per batch row x.shape[0])"
            if name == "strength" and rows is not None and chain is not None:
                want = f"[{rows}] or [{rows}, {chain}] (one entry per batch row x.shape[0], per map of the chain)"
            raise ValueError(f"{op}: per-row {name} must be {want} for x of shape {list(x.shape)}, got {list(t.shape)}")
    if chain is not None and not 1 <= chain <= MAX_CHAIN:
        raise ValueError(f"{op}: a chain map_index [B, S] composes 1 to {MAX_CHAIN} maps per row, got S = {chain}")


def check_maps(
    weight: Tensor,
    bias: Tensor,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    num_channels: int,
    x: Tensor,
) -> None:
    """The map of a transport op: ``weight``, ``bias`` (and ``lo``/``hi``, both or neither) are
    ``[C]`` without ``map_index`` and ``[K, C]`` with it (one K for all of them)."""
    check_map_index(map_index, x)
    num_maps = None if map_index is None else -1
    check_channel_vector(weight, "weight", num_channels, x, num_maps=num_maps)
    if map_index is not None:
        num_maps = weight.shape[0]
    check_channel_vector(bias, "bias", num_channels, x, num_maps=num_maps)
    check_support(lo, hi, num_channels, x, num_maps=num_maps)


def is_number(value: object) -> bool:
    """A real number that is not a bool: Python ints and floats, NumPy scalars."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, Tensor))


def check_number(value: object, name: str, *, non_negative: bool = False) -> float:
    """``value`` as a finite float (non-negative when asked); TypeError / ValueError otherwise."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v) or (non_negative and v < 0):
        raise ValueError(f"{name} must be a finite{' non-negative' if non_negative else ''} number, got {value!r}")
    return v


def normalize_strength(strength: Strength, x: Tensor, map_index: Tensor | None = None) -> tuple[Tensor | None, float]:
    """Splits λ into ``(tensor, scalar)``: ``(None, s)`` for a number, ``(t, 0.0)`` for a tensor.

    A number must be finite (NumPy scalars are numbers). A tensor must be 0-d or ``[B]`` with
    ``B = x.shape[0]`` (one value per batch row) — or ``[B, S]`` (one per map of each row's chain)
    with a ``[B, S]`` ``map_index`` —, floating, on ``x``'s device, and finite (checked once per
    in-place version, see :func:`check_values`).
    """
    if not isinstance(strength, Tensor):
        if not is_number(strength):
            raise TypeError(f"strength must be a number, a 0-d tensor or a [B] tensor, got {type(strength).__name__}")
        return None, check_number(strength, "strength")
    if not strength.is_floating_point():
        raise TypeError(f"strength tensor must be floating-point, got {strength.dtype}")
    if strength.device != x.device:
        raise ValueError(f"strength is on {strength.device} but x is on {x.device}; keep λ on the model's device")
    chain = map_index is not None and map_index.ndim == 2
    if chain and strength.ndim == 2 and list(strength.shape) == list(map_index.shape):  # type: ignore[union-attr]
        check_values(strength=strength)
        return strength, 0.0
    if strength.ndim != 0 and (strength.ndim != 1 or x.ndim < 2 or strength.shape[0] != x.shape[0]):
        if chain:
            raise ValueError(
                f"strength with a chain map_index {list(map_index.shape)} must be a number, 0-d, [{x.shape[0]}] or "  # type: ignore[union-attr]
                f"{list(map_index.shape)} (one λ per map of each row's chain), got {list(strength.shape)}"  # type: ignore[union-attr]
            )
        rows = f"[{x.shape[0]}]" if x.ndim >= 2 else "a 0-d tensor (x has no batch dim)"
        raise ValueError(
            f"per-row strength must have shape {rows}, one value per batch row of x {list(x.shape)}, "
            f"got {list(strength.shape)}"
        )
    check_values(strength=strength)
    return strength, 0.0


_CHECKED_VERSION = "_act_fast_checked_version"
_CHECKED_PAIR = "_act_fast_checked_pair"


class _PairMark:
    """On ``lo``: the ``hi`` it was checked with (weakly) and both versions. Pickles and copies of
    ``lo`` get an empty mark (a weak reference cannot be pickled, and a copy is checked again)."""

    __slots__ = ("hi", "versions")

    def __init__(self, hi: Tensor | None = None, versions: tuple[int, int] = (-1, -1)) -> None:
        self.hi = None if hi is None else weakref.ref(hi)
        self.versions = versions

    def __reduce__(self) -> tuple:
        return (_PairMark, ())


def _first_bad(bad: Tensor) -> str:
    """The first offending indices of a boolean tensor, for a message (never the values)."""
    idx = bad.nonzero()[:8]
    return str(idx.flatten().tolist() if bad.ndim <= 1 else idx.tolist())


def check_values(lo: Tensor | None = None, hi: Tensor | None = None, **tensors: Tensor | None) -> None:
    """Raises ValueError if a named tensor holds NaN or ±Inf, or if ``lo > hi`` anywhere.

    Each tensor is read once per in-place version (``Tensor._version``, remembered on the tensor);
    skipped under torch.compile tracing, where a data-dependent check would break the graph.
    ``lo == hi`` is allowed: an empty support leaves that channel unchanged.
    """
    if torch.compiler.is_compiling():
        return
    named = {**tensors, "lo": lo, "hi": hi}
    fresh = [name for name, t in named.items() if t is not None and not _checked(t)]
    pair = lo is not None and hi is not None and not _pair_checked(lo, hi)
    if not fresh and not pair:
        return
    for name in fresh:
        t = named[name]
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            raise ValueError(_not_finite(name, t, ~finite))
    if pair:
        inverted = lo > hi
        if bool(inverted.any()):
            raise ValueError(
                f"support has lo > hi (shape {list(lo.shape)}) at {'channels' if lo.ndim == 1 else '[map, channel] entries'} "
                f"{_first_bad(inverted)}; a support interval needs lo <= hi (lo == hi: the map never applies there)"
            )
    for name in fresh:
        setattr(named[name], _CHECKED_VERSION, named[name]._version)
    if pair and not _is_fake(lo):
        setattr(lo, _CHECKED_PAIR, _PairMark(hi, (lo._version, hi._version)))


def _not_finite(name: str, t: Tensor, bad: Tensor) -> str:
    """The message for NaN / ±Inf in tensor ``name`` (λ: batch rows; maps: channels or entries)."""
    what = "λ" if name == "strength" else "a map"
    if t.ndim == 0:
        return f"{name} (a 0-d tensor) is NaN or Inf; {what} must be finite"
    if name == "strength":
        where = "[row, chain position] entries" if t.ndim == 2 else "batch rows"
    else:
        where = "channels" if t.ndim == 1 else "[map, channel] entries" if t.ndim == 2 else "entries"
    return f"{name} (shape {list(t.shape)}) holds NaN or Inf at {where} {_first_bad(bad)}; {what} must be finite"


def _is_fake(t: Tensor) -> bool:
    return isinstance(t, torch._subclasses.FakeTensor) or t.device.type == "meta"


def _pair_checked(lo: Tensor, hi: Tensor) -> bool:
    mark = getattr(lo, _CHECKED_PAIR, None)
    if mark is not None and mark.hi is not None and mark.hi() is hi and mark.versions == (lo._version, hi._version):
        return True
    return _is_fake(lo) or _is_fake(hi)


def _checked(t: Tensor) -> bool:
    if _is_fake(t):
        return True
    return getattr(t, _CHECKED_VERSION, None) == t._version


def check_norm_inputs(
    x: Tensor,
    channel_dim: int,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Strength,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
) -> tuple[Tensor | None, float]:
    """Validates a fused norm + transport call whose channels are on ``channel_dim`` (``x``
    already checked to have it); returns the strength as ``(tensor, scalar)``."""
    check_input(x)
    C = x.shape[channel_dim]
    if norm_weight is not None:
        check_channel_vector(norm_weight, "norm_weight", C, x)
    if norm_bias is not None:
        check_channel_vector(norm_bias, "norm_bias", C, x)
    check_maps(weight, bias, lo, hi, map_index, C, x)
    s_tensor, s_scalar = normalize_strength(strength, x, map_index)
    check_values(norm_weight=norm_weight, norm_bias=norm_bias, weight=weight, bias=bias, lo=lo, hi=hi)
    return s_tensor, s_scalar
