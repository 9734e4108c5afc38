"""Steering maps: one per-channel affine map per site, and their safetensors files.

A map file is a safetensors file whose tensors are ``"<site>/weight"``, ``"<site>/bias"`` and,
when the map has a support, ``"<site>/lo"`` and ``"<site>/hi"`` (float32, ``[C]`` each), and whose
metadata holds ``act_fast.maps`` (a JSON object: format version, sites in order, channel counts,
method, support, pooling, model type and config fingerprint, creation time, act_fast version, and
the SHA-256 of the tensor payload, :func:`act_fast.fileio.payload_digest`, checked on load; files
without one, written before it existed, still load). No pickle anywhere. Files are validated as
``load_maps`` validates them before they are written, and written atomically
(:func:`act_fast.fileio.atomic_write`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from act_fast._version import __version__
from act_fast.fileio import DIGEST_KEY, atomic_write, check_payload_digest, payload_digest, read_safetensors
from act_fast.ops.checks import check_device
from act_fast.ops.reference import Strength
from act_fast.ops.transport import affine_transport

FORMAT_NAME = "act_fast.maps"
FORMAT_VERSION = 1
_FIELDS = ("weight", "bias", "lo", "hi")
_META_FIELDS = ("method", "support", "pooling", "model_type", "model_fingerprint", "created", "version")
# Config entries that do not change the model's computation (paths, versions, dtypes, labels).
_FINGERPRINT_IGNORED = frozenset(
    {"_name_or_path", "transformers_version", "_diffusers_version", "torch_dtype", "dtype", "architectures",
     "_class_name", "id2label", "label2id", "_commit_hash", "_attn_implementation_autoset", "name_or_path"}
)


class MapFileError(ValueError):
    """A map file that cannot be read: missing, truncated, corrupt, not a map file, or invalid."""


def validate_fields(fields: Mapping[str, Tensor | None], where: str = "map") -> None:
    """Checks a map's tensors by field name (``weight``, ``bias``, optional ``lo`` / ``hi``): shapes
    ``[C]``, floating dtypes, one device, finite values, ``lo ≤ hi``; raises ValueError/TypeError."""
    weight, lo, hi = fields["weight"], fields.get("lo"), fields.get("hi")
    C = weight.numel() if isinstance(weight, Tensor) else -1
    if (lo is None) != (hi is None):
        raise ValueError(f"{where}: lo and hi must be given together")
    for name in _FIELDS:
        v = fields.get(name)
        if v is None:
            continue
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating-point tensor, got {type(v).__name__ if not isinstance(v, Tensor) else v.dtype}")
        if v.ndim != 1 or v.numel() != C:
            raise ValueError(f"{where}: {name} must have shape [{C}] like weight, got {list(v.shape)}")
        if v.device != weight.device:
            raise ValueError(f"{where}: {name} is on {v.device} but weight is on {weight.device}")
        if not bool(torch.isfinite(v).all()):
            bad = (~torch.isfinite(v)).nonzero().flatten()[:8].tolist()
            raise ValueError(f"{where}: {name} holds NaN or Inf (first bad channels: {bad})")
    if lo is not None and bool((lo > hi).any()):
        bad = (lo > hi).nonzero().flatten()[:8].tolist()
        raise ValueError(f"{where}: support has lo > hi (first bad channels: {bad}); lo <= hi is required (lo == hi: the map never applies there)")


@dataclass
class AffineMap:
    """Per-channel affine map ``T(x) = weight ⊙ x + bias`` with optional support ``lo < x < hi``.

    Attributes:
        weight, bias: ``[C]`` float tensors.
        lo, hi: ``[C]`` support bounds, or None (transport everywhere).
    """

    weight: Tensor
    bias: Tensor
    lo: Tensor | None = None
    hi: Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_channels(self) -> int:
        return self.weight.numel()

    def validate(self, where: str = "map") -> None:
        """Shapes ``[C]``, floating dtypes, one device, finite values, ``lo ≤ hi``; raises
        ValueError/TypeError."""
        validate_fields({name: getattr(self, name) for name in _FIELDS}, where)

    def apply(self, x: Tensor, strength: Strength = 1.0, *, channel_dim: int = -1, pool_spatial: bool = False) -> Tensor:
        """``x`` transported with strength λ; see :func:`act_fast.ops.affine_transport` for shapes."""
        return affine_transport(x, self.weight, self.bias, strength, self.lo, self.hi, channel_dim=channel_dim, pool_spatial=pool_spatial)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AffineMap":
        check_device(device, "AffineMap.to")
        move = lambda v: None if v is None else v.to(device=device, dtype=dtype)  # noqa: E731
        return AffineMap(move(self.weight), move(self.bias), move(self.lo), move(self.hi))

    def tensors(self) -> dict[str, Tensor]:
        """The map's tensors by field name (``lo``/``hi`` only when there is a support)."""
        return {name: getattr(self, name) for name in _FIELDS if getattr(self, name) is not None}


def model_fingerprint(model: Any) -> tuple[str, str]:
    """``(model_type, sha256 of the config)`` of a transformers or diffusers model.

    The hash covers the config entries that define the computation (sizes, layer counts, norms),
    not paths, versions or dtypes. A model without a config gets ``("", "")``.
    """
    config = getattr(model, "config", None)
    if config is None:
        return "", ""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    model_type = str(as_dict.get("model_type") or as_dict.get("_class_name") or type(model).__name__)
    kept = {k: v for k, v in as_dict.items() if k not in _FINGERPRINT_IGNORED}
    blob = json.dumps(kept, sort_keys=True, default=str).encode()
    return model_type, hashlib.sha256(blob).hexdigest()


@dataclass
class SteeringMaps(Mapping[str, AffineMap]):
    """Site name → :class:`AffineMap`, in forward order, with the metadata of how they were fitted.

    Attributes:
        maps: the maps, keyed by site (module) name.
        method, support, pooling: how they were fitted (free text for hand-made maps).
        model_type, model_fingerprint: from :func:`model_fingerprint` of the model fitted on.
        created: ISO-8601 UTC time; version: act_fast version that wrote them.
    """

    maps: dict[str, AffineMap]
    method: str = ""
    support: str = ""
    pooling: str = ""
    model_type: str = ""
    model_fingerprint: str = ""
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: str = __version__

    def __getitem__(self, site: str) -> AffineMap:
        return self.maps[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def channels(self) -> dict[str, int]:
        return {site: m.num_channels for site, m in self.maps.items()}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SteeringMaps":
        check_device(device, "SteeringMaps.to")
        moved = {site: m.to(device, dtype) for site, m in self.maps.items()}
        return SteeringMaps(moved, **{k: v for k, v in self.metadata().items() if k in _META_FIELDS})

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "sites": list(self.maps),
            "channels": self.channels(),
            "method": self.method,
            "support": self.support,
            "pooling": self.pooling,
            "model_type": self.model_type,
            "model_fingerprint": self.model_fingerprint,
            "created": self.created,
            "version": self.version,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the maps as safetensors (float32) to ``path`` atomically; returns the path.

        Raises:
            TypeError, ValueError: a site that is not an :class:`AffineMap` or a map that
                :func:`load_maps` would refuse once stored in float32 (NaN / Inf, also from float64
                values beyond float32's range, ``lo > hi``, shapes; maps changed in place after
                they were made), naming the site; nothing is written.
        """
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        for site, m in self.maps.items():
            if not isinstance(site, str) or not isinstance(m, AffineMap):
                raise TypeError(f"site {site!r}: a str site name and an AffineMap expected, got {type(site).__name__} -> {type(m).__name__}")
            stored = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in m.tensors().items()}
            try:
                validate_fields(stored, f"site {site!r}")
            except (ValueError, TypeError) as err:
                raise type(err)(f"cannot save maps to {path}: {err}") from None
            tensors.update({f"{site}/{name}": t for name, t in stored.items()})
        metadata = {FORMAT_NAME: json.dumps({**self.metadata(), DIGEST_KEY: payload_digest(tensors)})}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def to_gguf(self, path: str | os.PathLike, *, model_hint: str | None = None) -> Path:
        """Writes the maps as a llama.cpp control vector (additive maps at decoder-layer outputs
        only; anything else is refused with its sites): :func:`act_fast.interop.write_control_vector`."""
        from act_fast.interop.gguf import write_control_vector

        return write_control_vector(self, path, model_hint=model_hint)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Uploads the maps and a model card to Hub repository ``repo_id``:
        :func:`act_fast.interop.push_to_hub`."""
        from act_fast.interop.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def check_model(
        self, model: torch.nn.Module, channels: Mapping[str, int | None] | None = None, modules: Mapping[str, Any] | None = None
    ) -> None:
        """Refuses maps that do not fit ``model``: raises ValueError listing every mismatch.

        Checks that each site names a module of ``model`` (or a key of ``modules``, site → module,
        when names resolve through a wrapper) and, where ``channels`` (site → channel count of the
        module output, None when unknown) is given, that the counts agree.
        """
        modules = dict(model.named_modules()) if modules is None else modules
        problems = [f"site {site!r}: no such module in {type(model).__name__}" for site in self.maps if site not in modules]
        for site, m in self.maps.items():
            expected = None if channels is None else channels.get(site)
            if expected is not None and expected != m.num_channels:
                problems.append(f"site {site!r}: map has {m.num_channels} channels, the module outputs {expected}")
        if problems:
            raise ValueError(f"maps do not fit this model ({len(problems)} mismatch{'es' if len(problems) > 1 else ''}):\n  " + "\n  ".join(problems))


def _read_metadata(path: Path, raw: str) -> tuple[list[str], dict[str, int], int, dict[str, Any]]:
    """``(sites, channels, format_version, metadata)`` from a map file's metadata, every field
    checked for its type; MapFileError naming the file otherwise."""
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise MapFileError(f"{path}: corrupt act_fast map metadata (not JSON): {err}") from err
    if not isinstance(meta, dict):
        raise MapFileError(f"{path}: corrupt act_fast map metadata: a JSON object expected, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise MapFileError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    sites, channels, version = meta.get("sites"), meta.get("channels"), meta.get("format_version")
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise MapFileError(f"{path}: metadata 'sites' must be a list of module names, got {type(sites).__name__}")
    if len(set(sites)) != len(sites):
        raise MapFileError(f"{path}: metadata lists sites more than once: {sorted({s for s in sites if sites.count(s) > 1})[:8]}")
    if not isinstance(channels, dict) or not all(isinstance(c, int) and not isinstance(c, bool) for c in channels.values()):
        raise MapFileError(f"{path}: metadata 'channels' must map each site to an int")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MapFileError(f"{path}: metadata 'format_version' must be an int, got {version!r}")
    return sites, channels, version, meta


def load_maps(path: str | os.PathLike, device: torch.device | str | None = None) -> SteeringMaps:
    """Reads a map file written by :meth:`SteeringMaps.save`, validating it.

    Also reads a GGUF control vector (``.gguf``, :func:`act_fast.interop.read_control_vector`), a
    folder holding ``maps.safetensors`` (a Hub repository's layout), and a Hugging Face Hub
    repository id ``owner/name`` that is no local path (:func:`act_fast.interop.load_from_hub`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``device`` is not usable here (e.g. CUDA with a CPU-only torch), before reading.
        MapFileError: a directory, a truncated or corrupt file, not an act_fast map file, a newer
            format version, metadata of the wrong types or listing a site twice, missing or
            misshapen tensors, NaN/Inf values or ``lo > hi``, tensor data that does not match the
            file's digest (changed after it was written); the message names the file.
    """
    check_device(device, "load_maps")
    foreign = _load_foreign(path, device)
    if foreign is not None:
        return foreign
    path = Path(path)
    metadata, tensors = read_safetensors(path, "map file", MapFileError)
    raw_meta = metadata.get(FORMAT_NAME)
    if raw_meta is None:
        raise MapFileError(f"{path}: a safetensors file, but not an act_fast map file (no '{FORMAT_NAME}' metadata)")
    sites, channels, version, meta = _read_metadata(path, raw_meta)
    if version > FORMAT_VERSION:
        raise MapFileError(f"{path}: map format version {version} is newer than this act_fast reads ({FORMAT_VERSION}); upgrade act_fast")
    expected_keys = set()
    maps: dict[str, AffineMap] = {}
    for site in sites:
        fields = {name: tensors.get(f"{site}/{name}") for name in _FIELDS}
        expected_keys.update(f"{site}/{name}" for name, t in fields.items() if t is not None)
        if fields["weight"] is None or fields["bias"] is None:
            raise MapFileError(f"{path}: site {site!r} has no weight or bias tensor")
        if fields["weight"].numel() != channels.get(site):
            raise MapFileError(f"{path}: site {site!r} weight has {fields['weight'].numel()} channels, metadata says {channels.get(site)}")
        try:
            maps[site] = AffineMap(**fields)
        except (ValueError, TypeError) as err:
            raise MapFileError(f"{path}: site {site!r}: {err}") from err
    extra = sorted(set(tensors) - expected_keys)
    if extra:
        raise MapFileError(f"{path}: tensors that belong to no listed site: {extra[:8]}")
    check_payload_digest(path, meta.get(DIGEST_KEY), tensors, MapFileError)
    loaded = SteeringMaps(maps, **{k: str(meta.get(k, "")) for k in _META_FIELDS})
    return loaded if device is None else loaded.to(device)


def _load_foreign(path: str | os.PathLike, device: torch.device | str | None) -> SteeringMaps | None:
    """A ``.gguf`` control vector, a Hub-layout folder or a Hub repository id, else None."""
    from act_fast.interop import gguf, hub

    if hub.looks_like_repo_id(path):
        return hub.load_from_hub(os.fspath(path), device=device)
    if Path(path).is_dir() and (Path(path) / hub.MAPS_FILE).is_file():
        return load_maps(Path(path) / hub.MAPS_FILE, device)
    if Path(path).is_file() and gguf.is_gguf(path):
        maps = gguf.read_control_vector(path)
        return maps if device is None else maps.to(device)
    return None
