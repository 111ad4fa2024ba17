"""Atomic file writes: a file appears whole or not at all, with the permissions of a plain ``open``.

Every output of lickd (``.lkd`` files, decoded images, weights, checkpoints, the autotune cache)
goes through here. The data is written to a temporary file in the destination's folder, flushed
to disk, given mode ``0o666 & ~umask`` (``mkstemp`` creates files 0600, which would make every
output private whatever the user's umask) and then renamed over, or hard-linked to, the
destination.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

__all__ = ["atomic_save", "atomic_write", "default_mode"]


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask. Linux reports it in /proc/self/status; elsewhere reading it means
    setting it, which is done under a lock so that threads writing files at once (a many-file
    encode) cannot leave it at 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the process's umask."""
    return 0o666 & ~_umask()


def atomic_save(path: os.PathLike, write: Callable[[str], None], force: bool = True) -> None:
    """Calls ``write(tmp)`` to fill a temporary file, then puts it at ``path``.

    With ``force`` an existing file is replaced; without it, ``FileExistsError`` is raised and the
    existing file is left alone, even one that appears while ``write`` runs (the file is linked
    into place, which fails if the name is taken). For writers that take a path, such as
    ``safetensors.torch.save_file``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, default_mode())
        if force:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: os.PathLike, data: bytes, force: bool = True) -> None:
    """Writes ``data`` to ``path`` atomically (see ``atomic_save``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_save(path, write, force)


def _link_new(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if path exists: no race with another writer
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(str(path)) from None
        os.replace(tmp, path)
