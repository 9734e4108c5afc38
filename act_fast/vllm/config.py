"""The engine's steering configuration:
``additional_config={"act_fast": {"maps": {name: path}, "strength_range": [lo, hi]}}``.

The map sets keep the order they are given in: set ``i`` (0-based) is slot ``i + 1`` of every
site's map bank, slot 0 being the identity.

``strength_range`` bounds the λ a request may ask for (default :data:`DEFAULT_STRENGTH_RANGE`).
λ = 1 is the fitted transport, [0, 1] interpolates and everything else extrapolates linearly
(``x + λ (T(x) − x)``): at λ = 10 a site's activations are shifted ten times as far as the maps
were fitted to shift them, an order of magnitude beyond anything the fit says something about,
while activations stay within about ten times their fitted shift, far from float16's 65504 and
float32's 3.4e38. A request at λ = 1e30 (finite in float32) drives the model to inf / NaN; the
range is what keeps one client from asking for that.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_KEY = "act_fast"
MAPS_FIELD = "maps"
STRENGTH_RANGE_FIELD = "strength_range"
DEFAULT_STRENGTH_RANGE = (-10.0, 10.0)
# Written by the worker into its own copy of additional_config: a digest of the map files, so that
# vLLM's compile cache (keyed on the config hash) never reuses a graph built for other maps.
DIGEST_FIELD = "_maps_digest"
FIELDS = (MAPS_FIELD, STRENGTH_RANGE_FIELD, DIGEST_FIELD)


class SteeringConfigError(ValueError):
    """``additional_config["act_fast"]`` is malformed, or a map file is missing or damaged."""


@dataclass(frozen=True)
class EngineSteeringConfig:
    """Map-set name → map file, in slot order; the ``[lo, hi]`` range of λ requests may ask for."""

    map_files: dict[str, Path]
    strength_range: tuple[float, float] = DEFAULT_STRENGTH_RANGE

    @property
    def set_names(self) -> tuple[str, ...]:
        return tuple(self.map_files)


def engine_config(additional_config: Any) -> EngineSteeringConfig | None:
    """The steering part of vLLM's ``additional_config``, or None when it has no ``"act_fast"`` entry.

    Raises:
        SteeringConfigError: the entry is not ``{"maps": {name: path, ...}}`` with at least one
            set, string names and string/path values, or ``strength_range`` is not two numbers
            ``lo <= hi``, both finite in float32.
    """
    if not isinstance(additional_config, Mapping) or CONFIG_KEY not in additional_config:
        return None
    entry = additional_config[CONFIG_KEY]
    example = '{"act_fast": {"maps": {"detox": "detox.safetensors"}}}'
    if not isinstance(entry, Mapping):
        raise SteeringConfigError(f"additional_config['act_fast'] must be a dict like {example}, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise SteeringConfigError(
            f"additional_config['act_fast'] has unknown keys {unknown}; expected 'maps' and optionally 'strength_range', as in {example}"
        )
    maps = entry.get(MAPS_FIELD)
    if not isinstance(maps, Mapping) or not maps:
        raise SteeringConfigError(f"additional_config['act_fast']['maps'] must be a non-empty dict of map-set name -> map file, as in {example}; got {maps!r}")
    files: dict[str, Path] = {}
    for name, path in maps.items():
        if not isinstance(name, str) or not name:
            raise SteeringConfigError(f"map-set names must be non-empty strings, got {name!r}")
        if not isinstance(path, (str, Path)) or not str(path):
            raise SteeringConfigError(f"map set {name!r}: the map file must be a path string, got {path!r}")
        files[name] = Path(path).expanduser()
    return EngineSteeringConfig(files, _strength_range(entry.get(STRENGTH_RANGE_FIELD, DEFAULT_STRENGTH_RANGE)))


def _strength_range(value: Any) -> tuple[float, float]:
    what = f"additional_config['act_fast']['{STRENGTH_RANGE_FIELD}'] must be [lo, hi], two numbers finite in float32 with lo <= hi"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SteeringConfigError(f"{what}; got {value!r}")
    bounds = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise SteeringConfigError(f"{what}; got {value!r}")
        try:
            struct.pack("<f", float(v))
        except OverflowError:
            raise SteeringConfigError(f"{what}; got {value!r}") from None
        bounds.append(float(v))
    lo, hi = bounds
    if lo > hi:
        raise SteeringConfigError(f"{what}; got {value!r}")
    return lo, hi


def normalise_paths(additional_config: Any) -> Any:
    """``additional_config`` with every :class:`~pathlib.Path` inside its ``"act_fast"`` entry
    turned into ``str`` (vLLM hashes ``additional_config`` with ``json.dumps``); other entries and
    configs without ``"act_fast"`` are returned as they are."""
    if not isinstance(additional_config, Mapping) or CONFIG_KEY not in additional_config:
        return additional_config

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(plain(v) for v in value)
        return value

    return {**additional_config, CONFIG_KEY: plain(additional_config[CONFIG_KEY])}


def load_map_sets(config: EngineSteeringConfig) -> dict:
    """``{name: SteeringMaps}`` read with :func:`act_fast.load_maps` (on CPU).

    Raises:
        SteeringConfigError: a file is missing, unreadable, truncated, corrupt or not a map file;
            the message names the map set and the file.
    """
    from act_fast.maps import load_maps

    sets = {}
    for name, path in config.map_files.items():
        try:
            sets[name] = load_maps(path)
        except (OSError, ValueError) as err:
            raise SteeringConfigError(f"act_fast map set {name!r}: cannot load map file {str(path)!r}: {err}") from err
    return sets


def file_digests(config: EngineSteeringConfig) -> dict[str, bytes]:
    """``{set name: sha256 of its map file's bytes}`` (32 bytes each)."""
    return {name: hashlib.sha256(path.read_bytes()).digest() for name, path in config.map_files.items()}


def maps_digest(config: EngineSteeringConfig) -> str:
    """sha256 over the set names and the bytes of their map files."""
    h = hashlib.sha256()
    for name, path in config.map_files.items():
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
