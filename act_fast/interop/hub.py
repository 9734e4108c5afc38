"""Steering maps on the Hugging Face Hub: a repository (or a local folder laid out like one) holds
``maps.safetensors`` (:meth:`SteeringMaps.save`) and a model card ``README.md`` (method, support,
model type and fingerprint, sites). Through ``huggingface_hub``; ``HF_HUB_OFFLINE=1`` reads the
local cache only."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from act_fast.maps import SteeringMaps

MAPS_FILE = "maps.safetensors"
CARD_FILE = "README.md"
# A Hub repository id: "name" or "owner/name" (letters, digits, - _ .), not a path that exists.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError("maps on the Hub need huggingface_hub: pip install 'act_fast[hub]'") from err
    return huggingface_hub


def looks_like_repo_id(path: str | os.PathLike) -> bool:
    """``owner/name`` that is no existing path and has no map-file suffix."""
    text = os.fspath(path)
    return (
        isinstance(text, str)
        and _REPO_ID.fullmatch(text) is not None
        and not Path(text).exists()
        and not text.endswith((".safetensors", ".gguf"))
    )


def model_card(maps: SteeringMaps) -> str:
    """The repository's ``README.md``: YAML front matter for the Hub and what the maps are."""
    rows = "\n".join(f"| `{site}` | {m.num_channels} | {'yes' if m.lo is not None else 'no'} |" for site, m in maps.items())
    return (
        "---\nlibrary_name: act_fast\ntags:\n- act_fast\n- activation-steering\n"
        f"- {maps.method or 'steering-maps'}\n---\n\n"
        f"# act_fast steering maps: {maps.method or 'hand-made'} on {maps.model_type or 'an unknown model type'}\n\n"
        "Per-channel affine maps `y = x + λ((w − 1) x + b)` (applied where `lo < x < hi` when there is a support), "
        "for [act_fast](https://pypi.org/project/act_fast/):\n\n"
        "```python\nimport act_fast as af\nmaps = af.load_maps(\"<this repo id>\")\nhandle = af.steer(model, maps, strength=1.0)\n```\n\n"
        f"- method: `{maps.method or '?'}`\n- support: `{maps.support or 'none'}`\n- pooling: `{maps.pooling or '?'}`\n"
        f"- model type: `{maps.model_type or '?'}`\n- model config fingerprint (sha256): `{maps.model_fingerprint or '?'}`\n"
        f"- created: {maps.created}, act_fast {maps.version}\n- sites: {len(maps)}\n\n"
        f"| site | channels | support |\n|---|---|---|\n{rows}\n"
    )


def save_folder(maps: SteeringMaps, folder: str | os.PathLike) -> Path:
    """Writes ``maps.safetensors`` and ``README.md`` into ``folder`` (created), the layout of a Hub
    repository; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    maps.save(folder / MAPS_FILE)
    (folder / CARD_FILE).write_text(model_card(maps), encoding="utf-8")
    return folder


def push_to_hub(
    maps: SteeringMaps,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload act_fast steering maps",
    api: Any = None,
) -> Any:
    """Creates ``repo_id`` (a model repository) if needed and uploads the maps and their card in one
    commit; returns huggingface_hub's ``CommitInfo``. ``api``: an ``HfApi`` (default: a new one with
    ``token``)."""
    hub = _hub()
    api = api or hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="act_fast_hub_") as tmp:
        save_folder(maps, tmp)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision, repo_type="model")


def load_from_hub(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  device: torch.device | str | None = None) -> SteeringMaps:
    """The maps of Hub repository ``repo_id`` (downloaded once into the Hugging Face cache; with
    ``HF_HUB_OFFLINE=1`` from the cache only).

    Raises:
        FileNotFoundError: the repository (or its ``maps.safetensors``) is neither reachable nor cached.
        MapFileError: the file is not a valid map file (as :func:`act_fast.load_maps`).
    """
    from act_fast.maps import load_maps

    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = hub.hf_hub_download(repo_id, MAPS_FILE, revision=revision, cache_dir=cache_dir)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{repo_id}: no such file, and no Hub repository {repo_id!r} with {MAPS_FILE} in the Hugging Face cache "
            f"(HF_HUB_OFFLINE={constants.HF_HUB_OFFLINE}): {err}"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise FileNotFoundError(f"{repo_id}: no such file, and the Hub has no {MAPS_FILE} there: {err}") from err
    return load_maps(path, device=device)
