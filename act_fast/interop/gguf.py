"""GGUF control vectors (llama.cpp ``--control-vector``, repeng's ``export_gguf``) ⇄ :class:`SteeringMaps`.

The format, as llama.cpp's loader (``common_control_vector_load_one``) and applier
(``llama_adapter_cvec``) read it: metadata ``general.architecture = "controlvector"``,
``controlvector.model_hint`` (the model architecture) and ``controlvector.layer_count`` (the number
of direction tensors); tensors ``direction.{il}``, F32, 1-D ``[n_embd]``, ``il ≥ 1``; llama.cpp adds
``direction.{il}`` to the output of decoder layer ``il`` (0-based; layer 0 is never steered). That
is an additive map ``w = 1, b = direction`` at the site ``model.layers.{il}``
(:mod:`act_fast.interop.additive`).

act_fast adds one string ``act_fast.maps`` (the JSON metadata of :meth:`SteeringMaps.metadata`)
so that an export → import round trip gives back the same sites and metadata; llama.cpp ignores
it. Read and written with the ``gguf`` package that llama.cpp publishes (``pip install gguf``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from act_fast.fileio import atomic_write
from act_fast.interop.additive import additive_maps, layer_index
from act_fast.maps import FORMAT_NAME, MapFileError, SteeringMaps

ARCH = "controlvector"
KEY_HINT = f"{ARCH}.model_hint"
KEY_COUNT = f"{ARCH}.layer_count"
KEY_ACT_FAST = FORMAT_NAME
_DIRECTION = re.compile(r"direction\.(\d+)")
_KEPT = ("method", "support", "pooling", "model_fingerprint", "created", "version")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as err:
        raise ImportError("GGUF control vectors need the gguf package: pip install 'act_fast[gguf]'") from err
    return gguf


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic (or, if unreadable, ends in ``.gguf``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return path.suffix.lower() == ".gguf"


def _field_value(field: Any) -> Any:
    return field.contents() if field is not None else None


def read_control_vector(path: str | os.PathLike, *, model_type: str | None = None, model: torch.nn.Module | None = None) -> SteeringMaps:
    """A GGUF control vector as additive :class:`SteeringMaps` at decoder-layer outputs.

    Args:
        path: a ``.gguf`` control vector (llama.cpp ``cvector-generator``, repeng ``export_gguf``,
            :meth:`SteeringMaps.to_gguf`).
        model_type: the model type to name the sites for when the file's ``model_hint`` should not
            be used (must agree with the file's act_fast metadata when present).
        model: name the sites after this model's decoder layers (and check that they exist).

    Raises:
        FileNotFoundError: no such file.
        MapFileError: not a GGUF file, not a control vector, a tensor that is not ``direction.{il}``,
            not F32/F16/F64, not 1-D, of different sizes, NaN/Inf; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such control vector file")
    if path.is_dir():
        raise MapFileError(f"{path}: is a directory, not a GGUF control vector")
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError / struct errors / IndexError on bad files
        raise MapFileError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from err
    arch = _field_value(reader.get_field("general.architecture"))
    if arch != ARCH:
        raise MapFileError(f"{path}: general.architecture is {arch!r}, expected {ARCH!r} (a control vector)")
    hint = _field_value(reader.get_field(KEY_HINT))
    if not isinstance(hint, str):
        raise MapFileError(f"{path}: {KEY_HINT} is missing or not a string")
    meta = _act_fast_metadata(path, reader)
    vectors: dict[Any, np.ndarray] = {}
    floats = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F64}
    for tensor in reader.tensors:
        match = _DIRECTION.fullmatch(tensor.name)
        if match is None:
            raise MapFileError(f"{path}: tensor {tensor.name!r} is not a control vector direction (direction.<layer>)")
        if tensor.tensor_type not in floats:
            raise MapFileError(f"{path}: tensor {tensor.name!r} is {tensor.tensor_type.name}; control vectors are F32 (F16/F64 read too)")
        if len(tensor.shape) != 1:
            raise MapFileError(f"{path}: tensor {tensor.name!r} has shape {list(tensor.shape)}; a direction is 1-D [n_embd]")
        layer = int(match.group(1))
        if layer in vectors:
            raise MapFileError(f"{path}: layer {layer} has two direction tensors")
        vectors[layer] = np.asarray(tensor.data)
    if not vectors:
        raise MapFileError(f"{path}: no direction tensors")
    kind = model_type or (meta.get("model_type") if meta else None) or hint
    sites = meta.get("sites") if meta else None
    keyed: dict[Any, np.ndarray] = vectors
    if model is None and isinstance(sites, list) and model_type in (None, meta.get("model_type")):
        by_layer = {layer_index(s): s for s in sites if isinstance(s, str)}
        if sorted(k for k in by_layer if k is not None) == sorted(vectors) and len(by_layer) == len(sites):
            keyed = {by_layer[layer]: v for layer, v in vectors.items()}
    try:
        maps = additive_maps(keyed, model=model, model_type=kind, source=f"{path}")
    except (ValueError, TypeError) as err:
        raise MapFileError(str(err)) from err
    if meta:
        for key in _KEPT:
            value = meta.get(key)
            if isinstance(value, str) and (key != "model_fingerprint" or model is None):
                setattr(maps, key, value)
    return maps


def _act_fast_metadata(path: Path, reader: Any) -> dict[str, Any]:
    raw = _field_value(reader.get_field(KEY_ACT_FAST))
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError) as err:
        raise MapFileError(f"{path}: {KEY_ACT_FAST} is not JSON: {err}") from err
    if not isinstance(meta, dict):
        raise MapFileError(f"{path}: {KEY_ACT_FAST} must be a JSON object, got {type(meta).__name__}")
    return meta


def gguf_refusals(maps: SteeringMaps) -> list[str]:
    """``site: reason`` for each map llama.cpp cannot apply as a control vector (empty: all can)."""
    problems = []
    seen: dict[int, str] = {}
    for site, m in maps.items():
        layer = layer_index(site)
        why = []
        if layer is None:
            why.append("not a decoder-layer output (llama.cpp adds its vectors only to layer outputs)")
        elif layer == 0:
            why.append("decoder layer 0 (llama.cpp never applies a control vector to layer 0)")
        elif layer in seen:
            why.append(f"decoder layer {layer} already has a map at {seen[layer]!r}")
        if not bool((m.weight == 1).all()):
            why.append("per-channel scale w ≠ 1 (llama.cpp only adds a vector; AcT's scale cannot be expressed)")
        if m.lo is not None:
            why.append("has a support (llama.cpp adds the vector to every value; a support cannot be expressed)")
        if why:
            problems.append(f"{site}: " + "; ".join(why))
        elif layer is not None:
            seen[layer] = site
    if len({m.num_channels for m in maps.values()}) > 1:
        problems.append(f"channel counts differ between sites ({maps.channels()}); llama.cpp needs one n_embd")
    return problems


def write_control_vector(maps: SteeringMaps, path: str | os.PathLike, *, model_hint: str | None = None) -> Path:
    """Writes additive decoder-layer maps as a llama.cpp control vector (atomically); returns the path.

    ``model_hint``: the ``controlvector.model_hint`` (default: the maps' model type).

    Raises:
        ValueError: maps llama.cpp cannot apply, every such site listed with its reason
            (:func:`gguf_refusals`), or no model type to hint.
    """
    problems = gguf_refusals(maps)
    if problems:
        raise ValueError(f"{len(problems)} map(s) cannot be a llama.cpp control vector (one vector added per decoder-layer output):\n  " + "\n  ".join(problems))
    hint = model_hint or maps.model_type
    if not hint:
        raise ValueError("the maps record no model type; pass model_hint= (llama.cpp's architecture name, e.g. 'llama')")
    gguf = _gguf()
    ordered = sorted(maps.items(), key=lambda item: layer_index(item[0]))

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(KEY_HINT, hint)
        writer.add_int32(KEY_COUNT, len(ordered))
        writer.add_string(KEY_ACT_FAST, json.dumps(maps.metadata()))
        for site, m in ordered:
            writer.add_tensor(f"direction.{layer_index(site)}", m.bias.detach().to("cpu", torch.float32).numpy().copy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)
