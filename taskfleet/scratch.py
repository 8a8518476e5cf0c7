"""Per-process scratch folders that a crash does not leak.

Consumers and model servers write big temporary files (uploads, decoded media, outputs before
upload). A process killed mid-task (SIGKILL, the OOM killer) never runs its cleanup, and on a
shared work directory those files pile up until the disk is full. So each process works in its
own folder under a shared root and holds an ``flock`` on a lock file beside it for its lifetime.
The kernel drops that lock when the process dies, however it dies, so whichever process starts
next under the same root removes every folder whose lock it can take: their owners are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger("taskfleet.scratch")

LOCK_SUFFIX = ".owner-lock"


class Scratch:
    def __init__(self, root: str | Path | None, prefix: str) -> None:
        self.root = Path(root) if root else Path(tempfile.gettempdir()) / "taskfleet-scratch"
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = self.root / self.name
        self._lock_fd: int | None = None

    def open(self) -> Path:
        """Sweep the folders of dead owners, then create and lock our own."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / f"{self.name}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path.mkdir(exist_ok=True)
        removed = sweep(self.root, keep=self.name)
        if removed:
            log.info("removed %d scratch folder(s) left by dead processes under %s", removed, self.root)
        return self.path

    def mkdtemp(self, prefix: str) -> Path:
        """A fresh folder for one job inside this process's scratch folder."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.path))

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.root / f"{self.name}{LOCK_SUFFIX}")
            os.close(self._lock_fd)
            self._lock_fd = None


def sweep(root: Path, *, keep: str | None = None) -> int:
    """Remove the folder of every owner under ``root`` whose lock nobody holds; returns how many."""
    removed = 0
    for lock_path in root.glob(f"*{LOCK_SUFFIX}"):
        name = lock_path.name[: -len(LOCK_SUFFIX)]
        if name == keep:
            continue
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue  # swept by another starting process just now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner is alive
        try:
            shutil.rmtree(root / name, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            removed += 1
        finally:
            os.close(fd)
    return removed

