"""Checks on the files qmpctl creates for the user (backups, saved state), made before any VM is touched."""

from __future__ import annotations

import os

from qmpctl.errors import UsageError


def check_new_file(path: str, *, force: bool, doing: str, refusal: str) -> str:
    """The absolute path of a file to create, or :class:`UsageError` (exit 2) naming what is wrong.

    ``doing`` completes "cannot ... PATH" ("back up to", "save to"); ``refusal``
    says why an existing file is refused unless ``force``.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UsageError(f"cannot {doing} {path}: the directory {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"cannot {doing} {path}: it is a directory")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path} exists; {refusal}")
    return path
