"""λ and the per-row map-set selection of a steering handle, held in device tensors.

One copy per device that has steered sites (``device_map`` placements). Writing a new value is an
in-place copy when the shape allows it, so a ``torch.compile``-d model never recompiles and the
host never waits; values are validated when they are set (finite, and inside the handle's
``strength_range`` when it has one), never per forward.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from act_fast.ops.checks import is_number


StrengthRange = tuple[float, float]


def check_strength_range(strength_range: object) -> StrengthRange | None:
    """``strength_range`` as ``(lo, hi)`` floats: None (any finite λ) or two finite numbers with
    ``lo ≤ hi``; ValueError / TypeError otherwise."""
    if strength_range is None:
        return None
    if isinstance(strength_range, (str, bytes, Tensor)) or not hasattr(strength_range, "__len__") or len(strength_range) != 2:  # type: ignore[arg-type]
        raise TypeError(f"strength_range must be None or a pair (lo, hi) of finite numbers, got {strength_range!r}")
    lo, hi = strength_range  # type: ignore[misc]
    if not (is_number(lo) and is_number(hi)) or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError(f"strength_range must be a pair (lo, hi) of finite numbers, got {strength_range!r}")
    if float(lo) > float(hi):
        raise ValueError(f"strength_range {strength_range!r} has lo > hi; give (lo, hi) with lo <= hi")
    return float(lo), float(hi)


def _rows(bad: Tensor) -> str:
    return f" at batch rows {bad.nonzero().flatten()[:8].tolist()}" if bad.ndim else ""


def _valid_strength(strength: float | Tensor, strength_range: StrengthRange | None = None) -> float | Tensor:
    """``strength`` as a float or a float32 tensor (0-d or ``[B]``), refusing NaN / ±Inf and, with
    ``strength_range = (lo, hi)``, values outside ``[lo, hi]`` (a tensor on an accelerator is read
    once, here, when λ is set)."""
    if isinstance(strength, Tensor):
        if not strength.is_floating_point() or strength.ndim > 1:
            raise ValueError(f"strength tensor must be floating, 0-d or [B], got {strength.dtype} {list(strength.shape)}")
        value = strength.detach().to(torch.float32)
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(f"strength (shape {list(value.shape)}) holds NaN or Inf{_rows(bad)}; λ must be finite")
        if strength_range is not None:
            outside = (value < strength_range[0]) | (value > strength_range[1])
            if bool(outside.any()):
                raise ValueError(
                    f"strength (shape {list(value.shape)}) is outside the allowed range [{strength_range[0]:g}, "
                    f"{strength_range[1]:g}]{_rows(outside)} (the strength_range given to steer())"
                )
        return value
    if not is_number(strength) or not math.isfinite(float(strength)):  # type: ignore[arg-type]
        raise ValueError(f"strength must be a finite number or a float tensor, got {strength!r}")
    value = float(strength)  # type: ignore[arg-type]
    if strength_range is not None and not strength_range[0] <= value <= strength_range[1]:
        raise ValueError(
            f"strength {value:g} is outside the allowed range [{strength_range[0]:g}, {strength_range[1]:g}] "
            "(the strength_range given to steer())"
        )
    return value


def _chain_strength(lams: Tensor, scale: float | Tensor, strength_range: StrengthRange | None = None) -> Tensor:
    """λ per chain position (``[B, S]`` / ``[1, S]``) times the handle's strength (a number, 0-d or
    ``[B]``): ``[B, S]`` or ``[1, S]`` float32, each product finite and inside ``strength_range``."""
    if isinstance(scale, float) or scale.ndim == 0:
        combined = lams * (scale if isinstance(scale, float) else scale.to(torch.float32).cpu())
    else:
        rows = scale.to(torch.float32).cpu()[:, None]
        if lams.shape[0] not in (1, rows.shape[0]):
            raise ValueError(f"per-row strength has {rows.shape[0]} rows but the selected chains have {lams.shape[0]}")
        combined = lams * rows
    if not bool(torch.isfinite(combined).all()):
        raise ValueError("the chains' λ times the strength overflow float32; use smaller values")
    if strength_range is not None:
        outside = (combined < strength_range[0]) | (combined > strength_range[1])
        if bool(outside.any()):
            raise ValueError(
                f"a chain's λ times the strength is outside the allowed range [{strength_range[0]:g}, {strength_range[1]:g}] "
                f"at [row, chain position] entries {outside.nonzero()[:8].tolist()} (the strength_range given to steer())"
            )
    return combined


def _write(buf: Tensor, value: float | Tensor, device: torch.device) -> Tensor:
    """``value`` written into ``buf`` in place when the shape allows (no recompile), else a new tensor."""
    if isinstance(value, float):
        if buf.ndim == 0:
            return buf.fill_(value)
        return torch.full((), value, dtype=buf.dtype, device=device)
    src = value.to(device=device, dtype=buf.dtype, non_blocking=True)
    if src.shape == buf.shape:
        return buf.copy_(src)
    return src.clone() if src.data_ptr() == value.data_ptr() else src


class StrengthControl:
    """λ (float32, 0-d or ``[B]``) and, with several map sets, the map slot of each row (int32,
    0-d or ``[B]``; slot 0 is the identity), per device. ``strength_range``: the λ it accepts
    (None: any finite λ).

    With a chain selection (:mod:`act_fast.steering.chains`) the slots are ``[B, S]`` or ``[1, S]``
    and the device λ is the chain's λ per position times the handle's strength (``[B, S]`` or
    ``[1, S]``; each product inside ``strength_range``); :attr:`chain` keeps the host copies
    ``(slots, λ per position)``.
    """

    def __init__(self, devices: Iterable[torch.device], multi: bool, strength_range: StrengthRange | None = None) -> None:
        self.strength_range = check_strength_range(strength_range)
        devices = list(dict.fromkeys(devices))
        self.strength: dict[torch.device, Tensor] = {d: torch.zeros((), dtype=torch.float32, device=d) for d in devices}
        self.index: dict[torch.device, Tensor] | None = (
            {d: torch.zeros((), dtype=torch.int32, device=d) for d in devices} if multi else None
        )
        self.chain: tuple[Tensor, Tensor] | None = None
        self.scale: float | Tensor = 0.0  # the handle's strength as last set

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """``(λ, map slot or None)`` on ``device``."""
        return self.strength[device], None if self.index is None else self.index[device]

    def set_strength(self, strength: float | Tensor) -> float | Tensor:
        """Validates λ and writes it on every device (times the chain's λ per position when a chain
        is selected); returns the validated value."""
        value = _valid_strength(strength, self.strength_range)
        combined = value if self.chain is None else _chain_strength(self.chain[1], value, self.strength_range)
        for device, buf in list(self.strength.items()):
            self.strength[device] = _write(buf, combined, device)
        self.scale = value
        return value

    def set_chain(self, slots: Tensor | None, lams: Tensor | None) -> None:
        """Selects chains (host ``slots`` int32 and ``lams`` float32, ``[B, S]`` or ``[1, S]``), or
        leaves chain mode (None, None); rewrites the slots and λ on every device."""
        if slots is not None and lams is not None:
            _chain_strength(lams, self.scale, self.strength_range)  # refuse a [B] strength of another batch before writing
        self.chain = None if slots is None else (slots, lams)  # type: ignore[assignment]
        if slots is not None:
            self.set_slots(slots)
        self.set_strength(self.scale)

    def set_slots(self, slots: Tensor) -> None:
        """Writes the per-row map slots (int32, 0-d or ``[B]``) on every device."""
        assert self.index is not None
        for device, buf in list(self.index.items()):
            self.index[device] = _write(buf, slots, device)
