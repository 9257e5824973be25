"""Files in a folder another user may write to (DIR of ``backup --into``, restore's TARGET folder), opened as root.

The folder is opened once (``O_DIRECTORY | O_NOFOLLOW``) and every name in it
is used relative to that descriptor (``dir_fd=``) with ``O_NOFOLLOW``: a
symbolic link planted where qmpctl creates, opens or renames a file is
refused, never followed. Files qmpctl creates are created exclusively
(``O_EXCL``), temporary ones under unpredictable names. A refusal is
:class:`~qmpctl.errors.VerificationFailed` (exit 6): the folder cannot be
trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from qmpctl.errors import UsageError, VerificationFailed
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterator, Optional

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW


def refused(where: str, why: str) -> VerificationFailed:
    return VerificationFailed(f"refused: {where} {why}; qmpctl never follows a symbolic link or uses another "
                              "user's folder where it creates or opens files")


def open_dir(name: str, where: str, *, dir_fd: Optional[int] = None) -> int:
    """The folder ``name`` (relative to ``dir_fd``) as a descriptor; a symbolic link or a non-folder is refused."""
    try:
        return os.open(name, DIRECTORY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refused(where, "is a symbolic link, not a folder") from None
        if exc.errno == errno.ENOTDIR:
            if _is_link(name, dir_fd):
                raise refused(where, "is a symbolic link, not a folder") from None
            raise UsageError(f"{where} is not a directory") from None
        if exc.errno == errno.ENOENT:
            raise UsageError(f"{where} does not exist") from None
        raise UsageError(f"cannot open {where}: {exc.strerror or exc}") from None


def _is_link(name: str, dir_fd: Optional[int]) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def check_owner(descriptor: int, where: str, allowed: set[int]) -> None:
    """Refuse a folder or file owned by someone not in ``allowed`` (root, this user, DIR's owner)."""
    owner = os.fstat(descriptor).st_uid
    if owner not in allowed:
        raise refused(where, f"belongs to user {owner}, not to root or to the owner of the folder it is in")


def trusted_owners(dir_fd: int) -> set[int]:
    """Who may own what qmpctl opens in the folder ``dir_fd``: root, this user, and the folder's owner."""
    return {0, os.geteuid(), os.fstat(dir_fd).st_uid}


def owned_like(dir_fd: int, *descriptors: Optional[int]) -> None:
    """Root backing up a VM whose QEMU runs as another user (libvirt's): the files QEMU must open belong to the
    owner of the folder ``dir_fd``, the folder that user was given."""
    if os.geteuid() != 0:
        return
    owner = os.fstat(dir_fd)
    if owner.st_uid == 0 and owner.st_gid == 0:
        return
    for descriptor in descriptors:
        if descriptor is not None:
            os.fchown(descriptor, owner.st_uid, owner.st_gid)


def create_exclusive(name: str, where: str, dir_fd: int, mode: int = 0o600, flags: int = os.O_RDWR) -> int:
    """A new empty file ``name`` in ``dir_fd``: never over anything that exists there, link or not."""
    try:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL | NOFOLLOW, mode, dir_fd=dir_fd)
    except FileExistsError:
        if _is_link(name, dir_fd):
            raise refused(where, "is a symbolic link") from None
        raise


def open_regular(name: str, where: str, dir_fd: Optional[int], flags: int = os.O_RDONLY) -> int:
    """An existing regular file ``name`` of ``dir_fd``, never through a link, a FIFO or a device."""
    try:
        descriptor = os.open(name, flags | os.O_NONBLOCK | NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refused(where, "is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise refused(where, "is not a regular file")
    os.set_blocking(descriptor, True)
    return descriptor


RANDOM_LENGTH = 16
"""Hex digits of the random part of :func:`create_unpredictable`'s names (64 bits)."""


def create_unpredictable(prefix: str, suffix: str, folder: str, dir_fd: int, mode: int = 0o600) -> tuple[str, int]:
    """A new file ``PREFIX<random>SUFFIX`` in the folder ``dir_fd`` (named ``folder`` in messages), created
    exclusively for writing: its name and its descriptor. None is free after 16 tries: refused (exit 6)."""
    for _ in range(16):
        candidate = f"{prefix}{secrets.token_hex(RANDOM_LENGTH // 2)}{suffix}"
        try:
            return candidate, create_exclusive(candidate, os.path.join(folder, candidate), dir_fd, mode, os.O_WRONLY)
        except FileExistsError:
            continue
    raise refused(os.path.join(folder, f"{prefix}*{suffix}"), "gave no new name after 16 tries")


def temporary(name: str, where: str, dir_fd: int, mode: int = 0o600) -> tuple[str, int]:
    """A new file next to ``name`` (at ``where``) under an unpredictable name (``.NAME.RANDOM.tmp``)."""
    return create_unpredictable(f".{name}.", ".tmp", os.path.dirname(where), dir_fd, mode)


def fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


@contextlib.contextmanager
def replacement(name: str, where: str, dir_fd: int, mode: int = 0o600, *, overwrite: bool = True) -> Iterator[int]:
    """A file that appears at ``name`` in ``dir_fd`` only whole and on disk: nobody ever sees it half-written.

    The block writes to the yielded descriptor of a temporary file next to
    ``name`` (:func:`temporary`). When it ends without an error, the file is
    synced and renamed over ``name`` (``overwrite``: a link there is replaced,
    never followed) or hard-linked to it (never over anything: a file that
    appeared meanwhile is a UsageError and stays), and the folder is synced.
    The temporary name is removed on every path.
    """
    partial, descriptor = temporary(name, where, dir_fd, mode)
    try:
        try:
            yield descriptor
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if overwrite:
            os.replace(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            try:
                os.link(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                raise UsageError(f"{where} appeared while qmpctl wrote it; it was left alone") from None
        fsync_dir(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial, dir_fd=dir_fd)


def write_all(descriptor: int, data: bytes) -> None:
    """All of ``data``: os.write may write less than it was given."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]
