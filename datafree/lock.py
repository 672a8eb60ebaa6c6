"""One owner per directory: an exclusive ``fcntl.flock`` on ``<dir>/.datafree.lock``.

A ``distill`` run holds the lock of its run directory for its whole life, and
``bench`` the lock of its suite folder, so a second process on the same
directory fails at once (exit 2) instead of mixing its files with the first
one's. The kernel drops a flock when its process dies, however it dies, so a
lock file left behind by a killed run never blocks a resume: only a living
holder does. The holder writes its pid (and host and start time) into the
file, for the error message of whoever comes second.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Optional

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
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockedError(
                f"{self.what} {self.directory} is in use by another process ({self.holder()}): "
                "wait for it to finish or stop it; one directory has one owner at a time"
            ) from None
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
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
