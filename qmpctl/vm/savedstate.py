"""A VM's whole state saved to a file and restored into a new QEMU, the way ``virsh save``/``restore`` do.

It is the migration stream of :mod:`qmpctl.vm.migration`, written into a file
qmpctl opens itself and hands to QEMU over the monitor socket (``getfd``
with SCM_RIGHTS, then an ``fd:`` URI): no ``exec:`` shell, no path QEMU must
be allowed to open, and no existing file overwritten. The same
:class:`~qmpctl.vm.migration.Handover` gives the VM back on every failure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from qmpctl.timing import CHECK_EVERY, MIGRATION_CLEANUP_SECONDS, MIGRATION_WAIT_TIMEOUT
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectionClosed, DeadlineExceeded, Interrupted, JobFailed, QmpctlError, UsageError, VmError
from qmpctl.vm.migration import (Handover,
                              after_wait, capabilities_request, check_destination, check_source,
                              dismiss_destination, failure, name_wait_timeout, parameters_request, run_state,
                              wait_destination, wait_for_source)
from qmpctl.wire.qmp import QmpSession
from qmpctl.wire.request import Request
from qmpctl.signals import shielded

from qmpctl.vm.migration import Progress

FD_NAME = "qmpctl-state"
"""The name the file descriptor gets in QEMU (``getfd``), for the ``fd:`` URI."""
THEN = ("stay", "cont", "quit")
"""What --to-file does with the VM once its state is on disk."""


def fd_passing_refused(what: str, where: str) -> UsageError:
    return UsageError(f"{what} needs the VM's unix QMP socket on this machine: qmpctl hands the file to QEMU as "
                      f"a file descriptor, which cannot travel over TCP or SSH ({where}); on QEMU 8.2 and later "
                      "QEMU can open the file itself (migrate with a file: URI)")


def require_fd_passing(session: QmpSession, what: str) -> None:
    """Saved state needs a unix monitor socket on this machine: a file descriptor cannot travel over TCP or SSH."""
    if not session.connection.passes_fds:
        raise fd_passing_refused(what, session.target)


def check_save_path(path: str, force: bool) -> str:
    """The absolute path to save to, or :class:`UsageError` (exit 2): checked before any VM is touched."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise UsageError(f"cannot save to {path}: the directory {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"cannot save to {path}: it is a directory")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path} exists; qmpctl does not overwrite saved state: choose a new name, or pass "
                         "--force to replace it once the new state is complete")
    return path


@dataclass
class SaveTarget:
    """The file qmpctl creates for a saved state; with --force it replaces FILE only once complete."""

    path: str
    force: bool = False
    writing: str = ""
    """The file written: FILE itself, or with --force a temporary name beside it."""
    fd: int = -1

    @classmethod
    def create(cls, path: str, force: bool) -> "SaveTarget":
        """Open a new file for writing; an existing FILE is refused (exit 2) unless ``force``, and never touched."""
        path = check_save_path(path, force)
        folder = os.path.dirname(path)
        writing = path if not force else os.path.join(folder, f".{os.path.basename(path)}.qmpctl-{os.getpid()}")
        try:
            fd = os.open(writing, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise UsageError(f"{path} exists; qmpctl does not overwrite saved state (pass --force)") from None
        except OSError as exc:
            raise UsageError(f"cannot create {writing}: {exc.strerror or exc}") from None
        return cls(path, force, writing, fd)

    def finish(self) -> None:
        """Flush to disk and put the file in place."""
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.writing != self.path:
            os.replace(self.writing, self.path)

    def discard(self) -> str:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.writing)
        except OSError:
            return f"could not remove the incomplete {self.writing}"
        return f"removed the incomplete {self.writing}" + (f"; {self.path} is as it was" if self.force else "")


def _hand_fd(session: QmpSession, deadline: Deadline, fd: int) -> None:
    """``getfd`` with ``fd`` attached; a stale descriptor of the same name (an earlier run) is closed first."""
    try:
        session.execute(Request("closefd", {"fdname": FD_NAME}), deadline)
    except VmError:
        pass  # none left over: the usual case
    session.execute(Request("getfd", {"fdname": FD_NAME}), deadline, fds=[fd])


def _close_fd(session: QmpSession, deadline: Deadline) -> None:
    """Close the named descriptor if QEMU did not take it (a migrate that was refused)."""
    try:
        session.execute(Request("closefd", {"fdname": FD_NAME}), deadline)
    except QmpctlError:
        pass  # taken by migrate, or the monitor is gone


def save_requests() -> list[Request]:
    """The requests of a save, as --dry-run shows them."""
    return [Request("stop"), capabilities_request({"events": True}), parameters_request(None, None),
            Request("getfd", {"fdname": FD_NAME}), Request("migrate", {"uri": f"fd:{FD_NAME}"})]


def save(session: QmpSession, deadline: Deadline, path: str, *, force: bool = False, then: str = "stay",
         speed: Optional[int] = None, wait_timeout: float = MIGRATION_WAIT_TIMEOUT, progress: Optional[Progress] = None,
         progress_every: float = CHECK_EVERY) -> dict[str, Any]:
    """Pause the VM and write its whole state into a new file ``path``; then leave it paused, ``cont`` or ``quit`` it.

    The file is created (never over an existing one unless ``force``) before
    the VM is touched. On any failure the VM runs again if it was running, the
    incomplete file is removed and an existing FILE (``--force``) is as it was.
    """
    if then not in THEN:
        raise UsageError(f"--then must be one of {', '.join(THEN)}, got {then!r}")
    require_fd_passing(session, "saving the VM's state")
    target = SaveTarget.create(path, force)
    try:
        was_running = check_source(session, deadline)
    except BaseException:
        target.discard()
        raise
    started = time.monotonic()
    try:
        with Handover(session, None, was_running, "save", hands_over=False) as handover:
            session.execute(Request("stop"), deadline)
            session.execute(capabilities_request({"events": True}), deadline)
            session.execute(parameters_request(speed, None), deadline)
            _hand_fd(session, deadline, target.fd)
            try:
                session.execute(Request("migrate", {"uri": f"fd:{FD_NAME}"}), deadline)
            except BaseException:
                _close_fd(session, Deadline(MIGRATION_CLEANUP_SECONDS))
                raise
            wait = Deadline(wait_timeout)
            try:
                final = wait_for_source(session, wait, deadline.seconds, None, progress, progress_every, "save")
            except DeadlineExceeded as exc:
                name_wait_timeout(exc, wait, wait_timeout, "save")
                raise
            if final.status != "completed":
                raise failure(final, "save")
            target.finish()
            handover.completed = True
    except BaseException as exc:
        note = target.discard()
        if isinstance(exc, QmpctlError):
            exc.add_note(note)
        raise
    finishing = after_wait(deadline)
    if then == "cont":
        session.execute(Request("cont"), finishing)
    elif then == "quit":
        try:
            session.execute(Request("quit"), finishing)
        except ConnectionClosed:
            pass
    state = "exited" if then == "quit" else run_state(session, finishing)
    return {"file": target.path, "bytes": os.path.getsize(target.path), "run-state": state,
                       "downtime-ms": final.downtime, "seconds": round(time.monotonic() - started, 3)}


def open_saved(path: str) -> int:
    """Open FILE for reading before any monitor is touched; a missing one is exit 2."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def restore_requests() -> list[Request]:
    return [capabilities_request({"events": True}), Request("getfd", {"fdname": FD_NAME}),
            Request("migrate-incoming", {"uri": f"fd:{FD_NAME}"}), Request("cont")]


def restore(session: QmpSession, deadline: Deadline, path: str, *, paused: bool = False,
            wait_timeout: float = MIGRATION_WAIT_TIMEOUT) -> dict[str, Any]:
    """Load the state saved in ``path`` into a QEMU started with ``-incoming defer``; ``cont`` it unless ``paused``.

    A load that fails or is interrupted leaves the file untouched and tells a
    QEMU that never ran to quit (QEMU 7.2 exits by itself after a failed load).
    """
    require_fd_passing(session, "restoring a saved state")
    fd = open_saved(path)
    try:
        return _restore(session, deadline, fd, paused, wait_timeout)
    finally:
        os.close(fd)


def _restore(session: QmpSession, deadline: Deadline, fd: int, paused: bool, wait_timeout: float) -> dict[str, Any]:
    check_destination(session, deadline)
    started = time.monotonic()
    try:
        session.execute(capabilities_request({"events": True}), deadline)
        _hand_fd(session, deadline, fd)
        session.execute(Request("migrate-incoming", {"uri": f"fd:{FD_NAME}"}), deadline)
        try:
            state = wait_destination(session, Deadline(wait_timeout), deadline.seconds)
        except ConnectionClosed:
            raise JobFailed(f"{session.target} exited while loading the saved state: it is not a state this "
                            "QEMU can load (other hardware or version?); its log says why") from None
    except BaseException as exc:
        with shielded():
            note = dismiss_destination(session, Deadline(MIGRATION_CLEANUP_SECONDS))
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted while restoring; {note}") from None
        if isinstance(exc, QmpctlError):
            exc.add_note(note)
        raise
    if not paused and state != "running":
        finishing = after_wait(deadline)
        session.execute(Request("cont"), finishing)
        state = run_state(session, finishing)
    return {"run-state": state, "seconds": round(time.monotonic() - started, 3)}
