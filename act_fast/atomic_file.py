"""Writing safetensors files atomically: a temporary file in the same folder, fsync, rename, fsync
of the folder. A reader (or a process killed at any moment) sees the old complete file or the new
complete file, never a partial one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import Tensor


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temporaries(path: Path) -> list[Path]:
    """Temporary files left by interrupted saves to ``path`` (``.NAME.*.tmp`` beside it)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def save_safetensors_atomic(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Writes ``tensors`` (contiguous CPU tensors) and string ``metadata`` to ``path`` atomically.

    Temporaries of earlier interrupted saves to the same path are removed first. The file gets the
    permissions of any file the user creates (``0666`` less the umask), not ``mkstemp``'s ``0600``.
    Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name to write to")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)
    return path
