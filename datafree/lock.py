"""One owner per directory: an exclusive ``fcntl.flock`` on ``<dir>/.datafree.lock``.

A ``distill`` run holds the lock of its run directory for its whole life, and
``bench`` the lock of its suite folder, so a second process on the same
directory fails at once (exit 2) instead of mixing its files with the first
one's. The kernel drops a flock when its process dies, however it dies, so a
lock file left behind by a killed run never blocks a resume: only a living
holder does. The holder writes its pid (and host and start time) into the
file, for the error message of whoever comes second.

A holder that releases removes the file (while it still holds it), and the
folders its ``acquire`` created when they are left empty (a run refused before
it wrote anything leaves no trace). Whoever opened the file just before it was
removed finds, once it holds the lock, that the path no longer names the file
it locked, and takes the path again.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from typing import List, Optional

from .errors import DatafreeError

LOCK_NAME = ".datafree.lock"


class LockedError(DatafreeError):
    """Another living process holds the directory."""


class DirLock:
    """``with DirLock(path, "run directory"):`` holds ``path/.datafree.lock`` exclusively (non-blocking)."""

    def __init__(self, directory: str, what: str = "directory"):
        self.directory = os.path.abspath(directory)
        self.what = what
        self.path = os.path.join(self.directory, LOCK_NAME)
        self._fd: Optional[int] = None
        self._created: List[str] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "unknown pid"
        except OSError:
            return "unknown pid"

    def acquire(self) -> "DirLock":
        import fcntl

        if self._fd is not None:
            return self
        self._created = _missing_parents(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise LockedError(
                    f"{self.what} {self.directory} is in use by another process ({self.holder()}): "
                    "wait for it to finish or stop it; one directory has one owner at a time"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the last holder removed the file between our open and our lock: take the path again
        os.ftruncate(fd, 0)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # still held: nobody takes a file that is going away
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
        for d in self._created:  # deepest first: the folders this lock made, if nothing was written in them
            with contextlib.suppress(OSError):
                os.rmdir(d)
        self._created = []

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _missing_parents(directory: str) -> List[str]:
    """The folders ``os.makedirs(directory)`` would create, deepest first."""
    out = []
    while directory and not os.path.isdir(directory):
        out.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return out


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
