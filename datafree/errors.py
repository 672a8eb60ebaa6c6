"""User-facing errors.

Every error a user can cause by bad input derives from :class:`DatafreeError`.
The CLI prints the message (no traceback) and exits with status 2; library
callers can catch the class. Messages name the problem and the fix.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class DatafreeError(Exception):
    """Bad input: an unknown name, missing data, a checkpoint that does not fit."""


class UnknownNameError(DatafreeError, KeyError):
    """A name that no registry (or config section) knows."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        self.known = sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}."
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        shown = ", ".join(self.known[:40]) + (" ..." if len(self.known) > 40 else "")
        head, sep, tail = kind.partition(" in ")  # "key in synth (dafl)" -> "keys in synth (dafl)"
        msg += f" Known {head}s{sep}{tail}: {shown or '(none registered)'}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DataNotFoundError(DatafreeError, FileNotFoundError):
    """A dataset's files are not where they must be."""


class CheckpointError(DatafreeError):
    """A checkpoint that is missing or does not fit the model it is loaded into."""


class ConfigError(DatafreeError, ValueError):
    """A configuration value that cannot be used."""


class MissingPackageError(DatafreeError, ImportError):
    """An optional package that a chosen feature needs is not installed (the message says what to pip install)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's are often several)."""
    return (str(e).splitlines() or [""])[0]
