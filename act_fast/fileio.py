"""Writing files so that nothing is ever written half: a temporary name in the same folder, fsync,
rename over the target, fsync of the folder.

Temporary files are named ``.<name>.<pid>.<random>.tmp`` and created with mode ``0666`` minus
the umask, like any file the user writes. A save that is killed leaves its temporary behind; the
next save to the same path removes temporaries whose process is gone.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of earlier saves to ``path`` whose writing process no longer exists."""
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

    The folder is created if needed; ``path`` keeps its old content (or stays absent) if ``write``
    raises or the process dies. Returns ``path`` as a :class:`Path`.

    Raises:
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    for tmp in _stale_temporaries(path):
        tmp.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # writers may recreate the file with their own mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


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
