"""Writing files so that nothing is ever written half: the file is written in a private temporary
folder next to the target, fsynced, renamed over the target, and the folder is fsynced.

The temporary folder is named ``.<name>.<pid>.<random>.tmp``; the writer gets the path
``<that folder>/<name>``, so whatever the writer itself creates on the side stays inside it
(safetensors 0.8 writes through its own ``.tmpXXXXXX`` file in the destination's folder). The
file gets mode ``0666`` minus the umask, like any file the user writes. A save that is killed
leaves its temporary folder behind; the next save to the same path removes those whose process
is gone (and plain temporary files of that name, which earlier versions wrote).
"""

from __future__ import annotations

import os
import secrets
import shutil
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
    raises or the process dies. Returns ``path`` as a :class:`Path`.

    Raises:
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name")
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
        os.chmod(tmp, 0o666 & ~current_umask())  # writers create files with their own modes
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _remove(folder)
    _fsync_dir(path.parent)
    return path


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
