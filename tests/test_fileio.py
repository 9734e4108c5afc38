"""act_fast.fileio.atomic_write: a save killed at any moment leaves the target whole and its
temporaries confined to one folder that the next save removes."""

import os
import subprocess
import sys
import textwrap

import pytest

from act_fast.fileio import atomic_write

# A child that starts a save, lets safetensors write (it goes through its own ``.tmpXXXXXX`` file in
# the destination's folder), leaves one more side file, and is killed (SIGKILL) before the rename.
KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from act_fast.fileio import atomic_write

    def write(tmp):
        save_file({"x": torch.arange(1000.0)}, tmp)
        (Path(tmp).parent / ".tmpSIDE01").write_bytes(b"a writer's own temporary")
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write(sys.argv[1], write)
    """
)


def test_a_killed_save_leaves_one_temporary_folder_that_the_next_save_removes(tmp_path):
    target = tmp_path / "stats.safetensors"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"old"))
    child = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target)], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    assert target.read_bytes() == b"old"  # never half written
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[1] == "stats.safetensors", left  # nothing of the writer's beside the target
    folder = tmp_path / left[0]
    assert folder.is_dir() and folder.name.startswith(".stats.safetensors.") and folder.name.endswith(".tmp")
    assert (folder / ".tmpSIDE01").exists() and (folder / "stats.safetensors").exists()

    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.safetensors"]


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "maps.safetensors"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"old"))

    def failing(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    with pytest.raises(FileNotFoundError, match="produced no file"):
        atomic_write(target, lambda tmp: None)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.safetensors"]


def test_a_live_process_temporary_is_kept(tmp_path):
    alive = tmp_path / f".f.bin.{os.getppid()}.abcd1234.tmp"
    alive.mkdir()
    atomic_write(tmp_path / "f.bin", lambda tmp: open(tmp, "wb").write(b"x"))
    assert alive.is_dir()


def test_an_existing_file_keeps_its_mode(tmp_path):
    target = tmp_path / "maps.safetensors"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"old"))
    os.chmod(target, 0o600)
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o600
    os.chmod(target, 0o640)
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"newer"))
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_symlink_is_written_through(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "maps-v1.safetensors"
    atomic_write(real, lambda tmp: open(tmp, "wb").write(b"old"))
    os.chmod(real, 0o600)
    link = tmp_path / "maps.safetensors"
    link.symlink_to(real)
    atomic_write(link, lambda tmp: open(tmp, "wb").write(b"new"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new" and real.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.safetensors", "store"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["maps-v1.safetensors"]
    # a link whose target does not exist yet: the target is created, the link kept
    dangling = tmp_path / "next.safetensors"
    dangling.symlink_to("store/maps-v2.safetensors")
    atomic_write(dangling, lambda tmp: open(tmp, "wb").write(b"v2"))
    assert dangling.is_symlink() and (tmp_path / "store" / "maps-v2.safetensors").read_bytes() == b"v2"
