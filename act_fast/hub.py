"""Reaching the Hugging Face hub before ``from_pretrained`` does: when the hub cannot be reached,
``transformers`` retries each file with back-off (about 30–60 s) before it fails. A hub name that is
not in the local cache then fails at once, and a cached one loads from the cache only.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse


class HubUnreachable(OSError):
    """The hub cannot be reached and the model is not in the local cache; the message says why."""


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 -- an invalid repo id is simply not cached
        return False


def _unreachable_reason(timeout: float) -> str | None:
    """Why the hub cannot be reached (offline by setting, or a failed connection), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"no connection to {url.hostname}:{port}: {err.strerror or type(err).__name__}"
    return None


def hub_kwargs(name: str, *, timeout: float = 5.0) -> dict[str, bool]:
    """Extra ``from_pretrained`` arguments for model ``name``: none for a local folder or a
    reachable hub; ``local_files_only=True`` for a cached hub model when the hub is unreachable.

    Raises:
        HubUnreachable: a hub name that is not cached while the hub is unreachable (no network,
            or HF_HUB_OFFLINE=1); checked in at most ``timeout`` seconds, not after the retries.
    """
    if name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists():
        return {}
    reason = _unreachable_reason(timeout)
    if reason is None:
        return {}
    if _cached(name):
        return {"local_files_only": True}
    raise HubUnreachable(
        f"the Hugging Face hub is unreachable ({reason}) and {name!r} is not in the local cache; download it where the "
        "hub is reachable, or give a local model folder"
    )
