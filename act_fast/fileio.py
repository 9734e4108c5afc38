"""Writing files so that nothing is ever written half: the file is written in a private temporary
folder next to the target, fsynced, renamed over the target, and the folder is fsynced.

The temporary folder is named ``.<name>.<pid>.<random>.tmp``; the writer gets the path
``<that folder>/<name>``, so whatever the writer itself creates on the side stays inside it
(safetensors 0.8 writes through its own ``.tmpXXXXXX`` file in the destination's folder). A new
file gets mode ``0666`` minus the umask, like any file the user writes; a file that exists keeps
its mode (``chmod 600`` stays private). A symbolic link is written through: its target (created if
missing) is replaced, the link stays. A save that is killed leaves its temporary folder behind;
the next save to the same path removes those whose process is gone (and plain temporary files of
that name, which earlier versions wrote).

Files also carry a digest of their tensor payload (:func:`payload_digest`), checked on load.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporary folders (or files) of earlier saves to ``path`` whose writing process no longer
    exists."""
    stale = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 : -len(".tmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.append(tmp)
        except PermissionError:  # alive, another user's
            continue
    return stale


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else by setting
    and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_name)`` to produce the file, then moves it over ``path`` atomically.

    ``tmp_name`` is ``<private temporary folder>/<path's name>`` on the same file system as ``path``.

    The folder is created if needed; ``path`` keeps its old content (or stays absent) if ``write``
    raises or the process dies. An existing file keeps its mode; a symbolic link keeps pointing at
    its target, which is what gets written. Returns ``path`` as a :class:`Path`.

    Raises:
        IsADirectoryError: ``path`` is a folder (or a link to one).
    """
    link = Path(path)
    if link.is_dir():
        raise IsADirectoryError(f"{link} is a directory; give a file name")
    path = Path(os.path.realpath(link)) if link.is_symlink() else link
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_temporaries(path):
        _remove(stale)
    folder = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    folder.mkdir(mode=0o700)
    tmp = folder / path.name
    try:
        write(str(tmp))
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer of {path} produced no file")
        os.chmod(tmp, mode)  # writers create files with their own modes
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _remove(folder)
    _fsync_dir(path.parent)
    return link


def _remove(tmp: Path) -> None:
    """Removes a temporary folder with what is inside it, or a temporary file."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def read_safetensors(
    path: str | os.PathLike, what: str, error: type[Exception], *, tensors: bool = True
) -> tuple[dict[str, str], dict[str, "torch.Tensor"]]:
    """``(metadata, tensors)`` of a safetensors file (tensors only when asked), read on the CPU.

    ``what`` names the kind of file for messages (``"map file"``); ``error`` is raised for a folder
    and for an unreadable file (truncated or corrupt: the first line of safetensors' reason);
    FileNotFoundError for a missing one.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a directory, not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            data = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types for bad headers and lengths
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise error(f"{path}: not a readable safetensors file (truncated or corrupt?): {reason}") from None
    return metadata, data


DIGEST_KEY = "payload_sha256"


def payload_digest(tensors: dict[str, "torch.Tensor"]) -> str:
    """SHA-256 (hex) of a file's tensors: per tensor in name order its name, dtype, shape and raw
    bytes (CPU, contiguous, as stored). Written in the metadata of map and statistics files and
    compared on load, so a byte changed in the tensor data is refused instead of loaded."""
    import torch

    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def check_payload_digest(path: Path, expected: object, tensors: dict[str, "torch.Tensor"], error: type[Exception]) -> None:
    """Raises ``error`` naming ``path`` when ``expected`` (the metadata's digest; None for files
    written before digests existed, which are accepted) is malformed or differs from the tensors'."""
    if expected is None:
        return
    if not isinstance(expected, str) or len(expected) != 64:
        raise error(f"{path}: metadata '{DIGEST_KEY}' must be a 64-digit hex string, got {expected!r}")
    if payload_digest(tensors) != expected:
        raise error(
            f"{path}: the tensor data does not match the {DIGEST_KEY} digest saved with it "
            "(the file was changed or damaged after it was written); refusing to load it"
        )
