"""λ and the per-row map-set selection of a steering handle, held in device tensors.

One copy per device that has steered sites (``device_map`` placements). Writing a new value is an
in-place copy when the shape allows it, so a ``torch.compile``-d model never recompiles and the
host never waits; values are validated when they are set, never per forward.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from act_fast.ops.checks import is_number


def _finite_strength(strength: float | Tensor) -> float | Tensor:
    """``strength`` as a float or a float32 tensor (0-d or ``[B]``), refusing NaN / ±Inf (a tensor on
    an accelerator is read once, here, when λ is set)."""
    if isinstance(strength, Tensor):
        if not strength.is_floating_point() or strength.ndim > 1:
            raise ValueError(f"strength tensor must be floating, 0-d or [B], got {strength.dtype} {list(strength.shape)}")
        value = strength.detach().to(torch.float32)
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(f"strength (shape {list(value.shape)}) holds NaN or Inf at rows {bad.nonzero().flatten()[:8].tolist()}; λ must be finite")
        return value
    if not is_number(strength) or not math.isfinite(float(strength)):  # type: ignore[arg-type]
        raise ValueError(f"strength must be a finite number or a float tensor, got {strength!r}")
    return float(strength)  # type: ignore[arg-type]


def _chain_strength(lams: Tensor, scale: float | Tensor) -> Tensor:
    """λ per chain position (``[B, S]`` / ``[1, S]``) times the handle's strength (a number, 0-d or
    ``[B]``): ``[B, S]`` or ``[1, S]`` float32."""
    if isinstance(scale, float) or scale.ndim == 0:
        combined = lams * (scale if isinstance(scale, float) else scale.to(torch.float32).cpu())
    else:
        rows = scale.to(torch.float32).cpu()[:, None]
        if lams.shape[0] not in (1, rows.shape[0]):
            raise ValueError(f"per-row strength has {rows.shape[0]} rows but the selected chains have {lams.shape[0]}")
        combined = lams * rows
    if not bool(torch.isfinite(combined).all()):
        raise ValueError("the chains' λ times the strength overflow float32; use smaller values")
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
    0-d or ``[B]``; slot 0 is the identity), per device.

    With a chain selection (:mod:`act_fast.steering.chains`) the slots are ``[B, S]`` or ``[1, S]``
    and the device λ is the chain's λ per position times the handle's strength (``[B, S]`` or
    ``[1, S]``); :attr:`chain` keeps the host copies ``(slots, λ per position)``.
    """

    def __init__(self, devices: Iterable[torch.device], multi: bool) -> None:
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
        value = _finite_strength(strength)
        combined = value if self.chain is None else _chain_strength(self.chain[1], value)
        for device, buf in list(self.strength.items()):
            self.strength[device] = _write(buf, combined, device)
        self.scale = value
        return value

    def set_chain(self, slots: Tensor | None, lams: Tensor | None) -> None:
        """Selects chains (host ``slots`` int32 and ``lams`` float32, ``[B, S]`` or ``[1, S]``), or
        leaves chain mode (None, None); rewrites the slots and λ on every device."""
        if slots is not None and lams is not None:
            _chain_strength(lams, self.scale)  # refuse a [B] strength of another batch before writing
        self.chain = None if slots is None else (slots, lams)  # type: ignore[assignment]
        if slots is not None:
            self.set_slots(slots)
        self.set_strength(self.scale)

    def set_slots(self, slots: Tensor) -> None:
        """Writes the per-row map slots (int32, 0-d or ``[B]``) on every device."""
        assert self.index is not None
        for device, buf in list(self.index.items()):
            self.index[device] = _write(buf, slots, device)
