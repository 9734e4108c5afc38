"""Per-request steering keys: ``SamplingParams.extra_args`` (the server's ``vllm_xargs``).

- ``act_fast_maps``: the name of a map set from the engine's ``additional_config`` (None or ""
  = unsteered). May be left out when the engine has exactly one map set and ``act_fast_strength``
  is given.
- ``act_fast_strength``: λ, a finite number (a numeric string is accepted, as some clients send
  every ``vllm_xargs`` value as text). Default 1.0 when a map set is named.

A request with λ = 0 is unsteered (the map at λ = 0 is the identity), so it shares the prefix
cache with the other unsteered requests.
"""

from __future__ import annotations

import math
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

    def cache_key(self) -> str:
        """Identity of the steering for the prefix cache: requests with equal keys may share KV blocks."""
        return f"act_fast:{self.maps or ''}:{self.strength!r}"


def _strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestSteeringError(f"{STRENGTH_KEY} must be a number, got {type(value).__name__} {value!r}")
    try:
        strength = float(value)
    except ValueError:
        raise RequestSteeringError(f"{STRENGTH_KEY} must be a number, got {value!r}") from None
    if not math.isfinite(strength):
        raise RequestSteeringError(f"{STRENGTH_KEY} must be finite, got {value!r}")
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


def resolve(steering: RequestSteering | None, set_names: Sequence[str]) -> tuple[int, float]:
    """``(slot, λ)`` for the per-token buffers: slot 0 (identity) and λ 0 when unsteered, else
    ``1 + position of the set`` in ``set_names``.

    Raises:
        RequestSteeringError: the named set is not one of ``set_names`` (the message lists them), or
            no set is named while the engine has several.
    """
    if steering is None:
        return 0, 0.0
    if steering.maps is None:
        if len(set_names) != 1:
            raise RequestSteeringError(
                f"{STRENGTH_KEY} without {MAPS_KEY}: this engine has {len(set_names)} map sets {list(set_names)}; name one"
            )
        return 1, steering.strength
    if steering.maps not in set_names:
        raise RequestSteeringError(f"unknown map set {steering.maps!r} in {MAPS_KEY}; this engine's map sets are {list(set_names)}")
    return 1 + list(set_names).index(steering.maps), steering.strength


def validate_request(extra_args: Mapping[str, Any] | None, set_names: Sequence[str]) -> tuple[int, float]:
    """:func:`parse_request` then :func:`resolve`; raises :class:`RequestSteeringError`."""
    return resolve(parse_request(extra_args), set_names)
