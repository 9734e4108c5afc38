"""Per-request steering keys: ``SamplingParams.extra_args`` (the server's ``vllm_xargs``).

- ``act_fast_maps``: the name of a map set from the engine's ``additional_config`` (None or ""
  = unsteered). May be left out when the engine has exactly one map set and ``act_fast_strength``
  is given.
- ``act_fast_strength``: λ, a number finite in float32 (the steering buffers are float32; a
  numeric string is accepted, as some clients send every ``vllm_xargs`` value as text), inside the
  engine's ``strength_range``. Default 1.0 when a map set is named.

A request with λ = 0 is unsteered (the map at λ = 0 is the identity), so it shares the prefix
cache with the other unsteered requests.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAPS_KEY = "act_fast_maps"
STRENGTH_KEY = "act_fast_strength"
KEYS = (MAPS_KEY, STRENGTH_KEY)
KEY_PREFIX = "act_fast_"


class RequestSteeringError(ValueError):
    """A request's ``act_fast_*`` extra args cannot be honoured (unknown map set, bad λ, unknown key)."""


@dataclass(frozen=True)
class RequestSteering:
    """What one request asks for: ``maps`` (a map-set name, or None for "the only set") and λ ≠ 0."""

    maps: str | None
    strength: float


def float32_bits(value: float) -> bytes:
    """``value`` rounded to float32, as its 4 little-endian bytes (what the steering buffers hold).

    Raises:
        OverflowError: ``value`` is not finite in float32 (``|value|`` above ~3.4e38, e.g. 1e39).
    """
    return struct.pack("<f", value)


def _strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestSteeringError(f"{STRENGTH_KEY} must be a number, got {type(value).__name__} {value!r}")
    try:
        strength = float(value)
    except ValueError:
        raise RequestSteeringError(f"{STRENGTH_KEY} must be a number, got {value!r}") from None
    if not math.isfinite(strength):
        raise RequestSteeringError(f"{STRENGTH_KEY} must be finite, got {value!r}")
    try:
        float32_bits(strength)
    except OverflowError:
        raise RequestSteeringError(f"{STRENGTH_KEY} must be finite in float32 (|λ| < 3.4e38), got {value!r}") from None
    return strength


def parse_request(extra_args: Mapping[str, Any] | None) -> RequestSteering | None:
    """The steering a request's extra args ask for, or None when unsteered.

    Checks the form only (key names, λ a finite number, map-set name a string); whether the name is
    one of the engine's sets is :func:`resolve`'s job.

    Raises:
        RequestSteeringError: an unknown ``act_fast_*`` key, a non-numeric or non-finite λ, or a
            map-set name that is not a string.
    """
    if not extra_args:
        return None
    unknown = sorted(k for k in extra_args if isinstance(k, str) and k.startswith(KEY_PREFIX) and k not in KEYS)
    if unknown:
        raise RequestSteeringError(f"unknown act_fast request keys {unknown}; the keys are {list(KEYS)}")
    name = extra_args.get(MAPS_KEY)
    if name is not None and not isinstance(name, str):
        raise RequestSteeringError(f"{MAPS_KEY} must be a map-set name (a string), got {type(name).__name__} {name!r}")
    has_strength = extra_args.get(STRENGTH_KEY) is not None
    if not name and not has_strength:
        return None
    strength = _strength(extra_args[STRENGTH_KEY]) if has_strength else 1.0
    if strength == 0.0:
        return None
    return RequestSteering(name or None, strength)


def check_range(strength: float, strength_range: tuple[float, float] | None) -> None:
    """Raises :class:`RequestSteeringError` naming the range when λ is outside ``[lo, hi]``."""
    if strength_range is None:
        return
    lo, hi = strength_range
    if not lo <= strength <= hi:
        raise RequestSteeringError(
            f"{STRENGTH_KEY} {strength!r} is outside this engine's range [{lo!r}, {hi!r}] "
            "(additional_config['act_fast']['strength_range'])"
        )


def resolve(
    steering: RequestSteering | None, set_names: Sequence[str], strength_range: tuple[float, float] | None = None
) -> tuple[int, float]:
    """``(slot, λ)`` for the per-token buffers: slot 0 (identity) and λ 0 when unsteered, else
    ``1 + position of the set`` in ``set_names``.

    Raises:
        RequestSteeringError: the named set is not one of ``set_names`` (the message lists them), no
            set is named while the engine has several, or λ is outside ``strength_range``.
    """
    if steering is None:
        return 0, 0.0
    check_range(steering.strength, strength_range)
    if steering.maps is None:
        if len(set_names) != 1:
            raise RequestSteeringError(
                f"{STRENGTH_KEY} without {MAPS_KEY}: this engine has {len(set_names)} map sets {list(set_names)}; name one"
            )
        return 1, steering.strength
    if steering.maps not in set_names:
        raise RequestSteeringError(f"unknown map set {steering.maps!r} in {MAPS_KEY}; this engine's map sets are {list(set_names)}")
    return 1 + list(set_names).index(steering.maps), steering.strength


def validate_request(
    extra_args: Mapping[str, Any] | None, set_names: Sequence[str], strength_range: tuple[float, float] | None = None
) -> tuple[int, float]:
    """:func:`parse_request` then :func:`resolve`; raises :class:`RequestSteeringError`."""
    return resolve(parse_request(extra_args), set_names, strength_range)
