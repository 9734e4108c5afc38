"""Statistics files: ``{site: ChannelStats}`` as safetensors, validated on load like map files.

A statistics file holds, for every site, each tensor of :meth:`ChannelStats.state_dict` under
``"<site>/<key>"`` (whatever keys the state has: moments, counters, histogram, histogram
parameters, calibration, exact-mode samples), and in its metadata ``act_fast.stats``: a JSON
object with the format name and version, the sites in order, their channel counts, histogram
parameters and exact flags, the model type and config fingerprint
(:func:`act_fast.maps.model_fingerprint`), creation time, act_fast version, the SHA-256 of the
tensor payload (:func:`act_fast.fileio.payload_digest`, checked on load; files without one still
load), and the caller's own ``metadata`` (JSON values). No pickle. Files are written to a temporary name and renamed
(:func:`act_fast.fileio.atomic_write`), so a reader never sees half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from act_fast._version import __version__
from act_fast.fileio import DIGEST_KEY, atomic_write, check_payload_digest, payload_digest, read_safetensors
from act_fast.maps import FORMAT_NAME as MAPS_FORMAT_NAME
from act_fast.maps import model_fingerprint
from act_fast.ops.checks import check_device
from act_fast.stats.channel_stats import ChannelStats

FORMAT_NAME = "act_fast.stats"
FORMAT_VERSION = 1


class StatsFileError(ValueError):
    """A statistics file that cannot be read: missing, truncated, corrupt, not a statistics file, a
    newer format, or a state that does not load; the message names the file."""


def _params_dict(stats: ChannelStats) -> dict[str, int]:
    params = stats.params
    return {k: int(v) for k, v in params._asdict().items()} if hasattr(params, "_asdict") else {"params": list(params)}


def save_stats(
    stats: Mapping[str, ChannelStats],
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    *,
    model: nn.Module | None = None,
) -> Path:
    """Writes per-site statistics to ``path`` (safetensors) atomically; returns the path.

    Args:
        stats: site name → :class:`ChannelStats`, in the order to keep (e.g. from
            :func:`act_fast.collect`). Each state is read with ``state_dict()`` (pending counts
            folded), moved to the CPU and stored as is: loading gives the same state bit for bit.
        path: the file to write; its folder is created.
        metadata: JSON-serialisable entries kept in the file (read back with
            :func:`stats_metadata`). ``model_type`` / ``model_fingerprint`` entries are used as the
            file's model fingerprint when ``model`` is not given.
        model: the model the statistics come from: its :func:`~act_fast.maps.model_fingerprint`
            is recorded.
    """
    if not isinstance(stats, Mapping) or not stats:
        raise ValueError(f"save_stats needs a non-empty dict of site name -> ChannelStats, got {type(stats).__name__} of length {len(stats) if isinstance(stats, Mapping) else '?'}")
    extra = dict(metadata or {})
    if model is not None:
        model_type, fingerprint = model_fingerprint(model)
    else:
        model_type, fingerprint = str(extra.get("model_type", "")), str(extra.get("model_fingerprint", ""))
    tensors: dict[str, Tensor] = {}
    for site, s in stats.items():
        if not isinstance(s, ChannelStats):
            raise TypeError(f"save_stats: site {site!r} holds a {type(s).__name__}, expected a ChannelStats")
        if not isinstance(site, str) or not site or "/" in site:
            raise ValueError(f"save_stats: site names must be non-empty strings without '/', got {site!r}")
        for key, t in s.state_dict().items():
            tensors[f"{site}/{key}"] = t.detach().to("cpu").contiguous()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sites": list(stats),
        "channels": {site: s.num_channels for site, s in stats.items()},
        "params": {site: _params_dict(s) for site, s in stats.items()},
        "exact": {site: bool(s.exact) for site, s in stats.items()},
        "model_type": model_type,
        "model_fingerprint": fingerprint,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        DIGEST_KEY: payload_digest(tensors),
        "metadata": extra,
    }
    try:
        blob = json.dumps(header)
    except TypeError as err:
        raise TypeError(f"save_stats: metadata must hold JSON values (str, numbers, lists, dicts): {err}") from None
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={FORMAT_NAME: blob}))


def _open(path: Path, *, tensors: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The validated header of a statistics file and (when asked) its tensors."""
    raw, data = read_safetensors(path, "statistics file", StatsFileError, tensors=tensors)
    if FORMAT_NAME not in raw:
        what = "an act_fast map file, not a statistics file" if MAPS_FORMAT_NAME in raw else f"a safetensors file, but not an act_fast statistics file (no '{FORMAT_NAME}' metadata)"
        raise StatsFileError(f"{path}: {what}")
    try:
        header = json.loads(raw[FORMAT_NAME])
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {header.get('format') if isinstance(header, dict) else header!r}")
        version = header["format_version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"format_version is {version!r}")
    except (ValueError, KeyError, TypeError) as err:
        raise StatsFileError(f"{path}: corrupt act_fast statistics metadata: {err}") from None
    if version > FORMAT_VERSION:
        raise StatsFileError(f"{path}: statistics format version {version} is newer than this act_fast reads ({FORMAT_VERSION}); upgrade act_fast")
    sites, channels = header.get("sites"), header.get("channels")
    ok = (
        isinstance(sites, list) and sites and all(isinstance(s, str) and s for s in sites) and len(set(sites)) == len(sites)
        and isinstance(channels, dict) and set(channels) == set(sites)
        and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels.values())
        and isinstance(header.get("params"), dict) and isinstance(header.get("exact"), dict)
        and isinstance(header.get("metadata", {}), dict)
    )
    if not ok:
        raise StatsFileError(f"{path}: corrupt act_fast statistics metadata: 'sites' must be a list of distinct names with a positive channel count, parameters and exact flag each")
    return header, data


def stats_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a statistics file (sites, channels, histogram parameters, model fingerprint,
    creation time, version, and the writer's ``metadata``), validated, without loading tensors."""
    return _open(Path(path), tensors=False)[0]


def load_stats(path: str | os.PathLike, device: torch.device | str | None = None) -> dict[str, ChannelStats]:
    """Reads a statistics file written by :func:`save_stats`: ``{site: ChannelStats}`` in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``device`` is not usable here (e.g. CUDA with a CPU-only torch), before reading.
        StatsFileError: a folder, a truncated or corrupt file, not a statistics file (a map file
            says so), a newer format version, tensors missing or left over, or a state that
            :meth:`ChannelStats.load_state_dict` refuses, tensor data that does not match the
            file's digest (changed after it was written); the message names the file and site.
    """
    check_device(device, "load_stats")
    path = Path(path)
    header, tensors = _open(path, tensors=True)
    by_site: dict[str, dict[str, Tensor]] = {site: {} for site in header["sites"]}
    stray = []
    for key, t in tensors.items():
        site, _, field = key.rpartition("/")
        if site in by_site and field:
            by_site[site][field] = t
        else:
            stray.append(key)
    if stray:
        raise StatsFileError(f"{path}: tensors that belong to no listed site: {sorted(stray)[:8]}")
    out: dict[str, ChannelStats] = {}
    for site, state in by_site.items():
        if not state:
            raise StatsFileError(f"{path}: site {site!r} is listed but has no tensors")
        try:
            s = ChannelStats.from_state_dict(state, device)
        except KeyError as err:
            raise StatsFileError(f"{path}: site {site!r}: missing tensor '{site}/{err.args[0]}'") from None
        except (ValueError, TypeError, IndexError, RuntimeError) as err:
            raise StatsFileError(f"{path}: site {site!r}: {err}") from None
        if s.num_channels != header["channels"][site]:
            raise StatsFileError(f"{path}: site {site!r} holds {s.num_channels} channels, metadata says {header['channels'][site]}")
        if _params_dict(s) != header["params"].get(site) or bool(s.exact) != header["exact"].get(site):
            raise StatsFileError(
                f"{path}: site {site!r}: histogram parameters {_params_dict(s)} (exact={s.exact}) differ from the metadata's "
                f"{header['params'].get(site)} (exact={header['exact'].get(site)})"
            )
        out[site] = s
    check_payload_digest(path, header.get(DIGEST_KEY), tensors, StatsFileError)
    return out
