"""Per-request steering keys: ``SamplingParams.extra_args`` (the server's ``vllm_xargs``).

- ``act_fast_maps``: the name of a map set from the engine's ``additional_config`` (None or ""
  = unsteered). May be left out when the engine has exactly one map set and ``act_fast_strength``
  is given.
- ``act_fast_strength``: λ, a number finite in float32 (the steering buffers are float32; a
  numeric string is accepted, as some clients send every ``vllm_xargs`` value as text), inside the
  engine's ``strength_range``. Default 1.0 when a map set is named.

**Composition**: ``act_fast_maps`` may name an ordered chain of map sets, each with its own λ,
applied ``y = T_K(… T_1(x))`` in the order given (up to ``min(number of sets, 4)``):

- ``{"detox": 0.8, "formal": 0.5}`` (``extra_args`` offline; its order is the chain's), or the same
  JSON object as a string (``vllm_xargs``, whose values vLLM's server types as strings, numbers or
  lists; a JSON object keeps its order);
- a list of names ``["detox", "formal"]`` with ``act_fast_strength`` a list of as many λ (or left
  out: λ 1 each).

With a dict or JSON object, ``act_fast_strength`` must be left out (each set carries its λ).
A set named twice is refused. Pairs with λ = 0 are dropped (the map at λ = 0 is the identity), so
a request with λ = 0 everywhere is unsteered and shares the prefix cache with the other unsteered
requests.
"""

from __future__ import annotations

import json
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
    """What one request asks for: ``maps`` (a map-set name, or None for "the only set") and λ ≠ 0;
    or, for a composition, ``chain``: ``(set name, λ ≠ 0)`` pairs in application order (``maps``
    is then None and ``strength`` 1.0)."""

    maps: str | None
    strength: float
    chain: tuple[tuple[str, float], ...] = ()


def float32_bits(value: float) -> bytes:
    """``value`` rounded to float32, as its 4 little-endian bytes (what the steering buffers hold).

    Raises:
        OverflowError: ``value`` is not finite in float32 (``|value|`` above ~3.4e38, e.g. 1e39).
    """
    return struct.pack("<f", value)


def _strength(value: Any, what: str = STRENGTH_KEY) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestSteeringError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    try:
        strength = float(value)
    except ValueError:
        raise RequestSteeringError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(strength):
        raise RequestSteeringError(f"{what} must be finite, got {value!r}")
    try:
        float32_bits(strength)
    except OverflowError:
        raise RequestSteeringError(f"{what} must be finite in float32 (|λ| < 3.4e38), got {value!r}") from None
    return strength


def _chain_pairs(maps: Any, strength: Any) -> list[tuple[Any, Any]] | None:
    """The ``(name, λ)`` pairs of a composition, or None when ``maps`` is one name (or nothing)."""
    if isinstance(maps, str) and maps.lstrip().startswith("{"):
        try:
            maps = json.loads(maps, object_pairs_hook=lambda pairs: pairs)  # keeps order and repeated names
        except ValueError as err:
            raise RequestSteeringError(f"{MAPS_KEY} looks like a JSON object but does not parse: {err}") from None
        if not isinstance(maps, list):
            raise RequestSteeringError(f"{MAPS_KEY} must be a JSON object {{set: λ}}, got {type(maps).__name__}")
        pairs = [tuple(p) for p in maps]
    elif isinstance(maps, Mapping):
        pairs = list(maps.items())
    elif isinstance(maps, (list, tuple)):
        if strength is None:
            strength = [1.0] * len(maps)
        if not isinstance(strength, (list, tuple)) or len(strength) != len(maps):
            raise RequestSteeringError(
                f"{MAPS_KEY} is a list of {len(maps)} map sets: {STRENGTH_KEY} must be a list of as many λ (or left out), got {strength!r}"
            )
        return list(zip(maps, strength))
    else:
        return None
    if strength is not None:
        raise RequestSteeringError(f"{STRENGTH_KEY} goes with one map-set name or a list of names; {MAPS_KEY} {{set: λ}} carries each set's λ")
    return pairs


def _parse_chain(pairs: list[tuple[Any, Any]]) -> RequestSteering | None:
    names = [n for n, _ in pairs]
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise RequestSteeringError(f"{MAPS_KEY}: map-set names must be non-empty strings, got {bad[0]!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RequestSteeringError(f"{MAPS_KEY}: map set{'s' if len(twice) > 1 else ''} {twice} named twice; a chain applies each set at most once")
    chain = tuple((n, _strength(v, f"{STRENGTH_KEY} of map set {n!r}")) for n, v in pairs)
    # all names were checked above; pairs at λ = 0 are the identity and dropped
    kept = tuple((n, v) for n, v in chain if v != 0.0)
    return RequestSteering(None, 1.0, kept) if kept else None


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
    pairs = _chain_pairs(extra_args.get(MAPS_KEY), extra_args.get(STRENGTH_KEY))
    if pairs is not None:
        steering = _parse_chain(pairs)
        # names are checked against the engine's sets even when every λ is 0 (resolve_chain)
        return steering if steering is not None else RequestSteering(None, 0.0, tuple((n, 0.0) for n, _ in pairs))
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


def chain_width(num_sets: int) -> int:
    """Map sets one request may compose: ``min(num_sets, 4)`` (the kernels' compile-time maximum)."""
    from act_fast.ops.reference import MAX_CHAIN

    return max(1, min(num_sets, MAX_CHAIN))


def resolve_chain(
    steering: RequestSteering | None, set_names: Sequence[str], strength_range: tuple[float, float] | None = None
) -> tuple[tuple[int, float], ...]:
    """The request's ``(slot, λ)`` pairs in application order (empty: unsteered); one pair for the
    one-set form (:func:`resolve`).

    Raises:
        RequestSteeringError: an unknown set (the message lists the engine's sets), more sets than
            :func:`chain_width` allows, or a λ outside ``strength_range``.
    """
    if steering is None:
        return ()
    if not steering.chain:
        return (resolve(steering, set_names, strength_range),)
    names = list(set_names)
    unknown = [n for n, _ in steering.chain if n not in names]
    if unknown:
        raise RequestSteeringError(f"unknown map set{'s' if len(unknown) > 1 else ''} {unknown} in {MAPS_KEY}; this engine's map sets are {names}")
    width = chain_width(len(names))
    if len(steering.chain) > width:
        raise RequestSteeringError(
            f"{MAPS_KEY} composes {len(steering.chain)} map sets, this engine takes at most {width} per request (its map sets are {names})"
        )
    pairs = [(names.index(n) + 1, v) for n, v in steering.chain if v != 0.0]
    for _, v in pairs:
        check_range(v, strength_range)
    return tuple(pairs)


def validate_chain(
    extra_args: Mapping[str, Any] | None, set_names: Sequence[str], strength_range: tuple[float, float] | None = None
) -> tuple[tuple[int, float], ...]:
    """:func:`parse_request` then :func:`resolve_chain`; raises :class:`RequestSteeringError`."""
    return resolve_chain(parse_request(extra_args), set_names, strength_range)
