"""The engine's steering configuration: ``additional_config={"act_fast": {"maps": {name: path}}}``.

The map sets keep the order they are given in: set ``i`` (0-based) is slot ``i + 1`` of every
site's map bank, slot 0 being the identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_KEY = "act_fast"
MAPS_FIELD = "maps"
# Written by the worker into its own copy of additional_config: a digest of the map files, so that
# vLLM's compile cache (keyed on the config hash) never reuses a graph built for other maps.
DIGEST_FIELD = "_maps_digest"
FIELDS = (MAPS_FIELD, DIGEST_FIELD)


class SteeringConfigError(ValueError):
    """``additional_config["act_fast"]`` is malformed, or a map file is missing or damaged."""


@dataclass(frozen=True)
class EngineSteeringConfig:
    """Map-set name → map file, in slot order."""

    map_files: dict[str, Path]

    @property
    def set_names(self) -> tuple[str, ...]:
        return tuple(self.map_files)


def engine_config(additional_config: Any) -> EngineSteeringConfig | None:
    """The steering part of vLLM's ``additional_config``, or None when it has no ``"act_fast"`` entry.

    Raises:
        SteeringConfigError: the entry is not ``{"maps": {name: path, ...}}`` with at least one
            set, string names and string/path values.
    """
    if not isinstance(additional_config, Mapping) or CONFIG_KEY not in additional_config:
        return None
    entry = additional_config[CONFIG_KEY]
    example = '{"act_fast": {"maps": {"detox": "detox.safetensors"}}}'
    if not isinstance(entry, Mapping):
        raise SteeringConfigError(f"additional_config['act_fast'] must be a dict like {example}, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise SteeringConfigError(f"additional_config['act_fast'] has unknown keys {unknown}; expected only 'maps', as in {example}")
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
    return EngineSteeringConfig(files)


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


def maps_digest(config: EngineSteeringConfig) -> str:
    """sha256 over the set names and the bytes of their map files."""
    h = hashlib.sha256()
    for name, path in config.map_files.items():
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
