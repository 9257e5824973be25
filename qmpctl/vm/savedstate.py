"""A VM's whole state saved to a file and restored into a new QEMU, the way ``virsh save``/``restore`` do.

It is the migration stream of :mod:`qmpctl.vm.migration`, written into a file
qmpctl opens itself and hands to QEMU over the monitor socket (``getfd``
with SCM_RIGHTS, then an ``fd:`` URI): no ``exec:`` shell, no path QEMU must
be allowed to open, and no existing file overwritten. The same
:class:`~qmpctl.vm.migration.Handover` gives the VM back on every failure.

Like ``virsh save``, the file starts with a header of qmpctl's own
(:data:`HEADER_BYTES`, a magic line and a JSON record): the machine type and
QEMU version that saved it, the stream's length and its sha256. QEMU writes
and reads the stream after it (the descriptor is handed over positioned
there), so ``--from-file`` can refuse a truncated or corrupted file (exit 6)
or a destination of another machine type or an older QEMU (exit 2) before the
destination is touched. A file that starts with QEMU's own stream magic (an
earlier qmpctl's) is loaded as it is, unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from qmpctl.timing import CHECK_EVERY, MIGRATION_CLEANUP_SECONDS, MIGRATION_WAIT_TIMEOUT
from qmpctl.deadline import Deadline
from qmpctl.errors import (ConnectionClosed, DeadlineExceeded, Interrupted, JobFailed, QmpctlError, UsageError,
                           VerificationFailed, VmError)
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
HEADER_BYTES = 4096
"""qmpctl's header before QEMU's stream: a magic line, a JSON record, padding."""
MAGIC = b"qmpctl-saved-state 1\n"
QEMU_MAGIC = b"QEVM"
"""How QEMU's own migration stream starts (a file saved without qmpctl's header)."""
HASH_CHUNK = 1 << 20


def describe_vm(session: QmpSession, deadline: Deadline) -> dict[str, Any]:
    """What a saved state needs of the QEMU that loads it: the same machine type, a QEMU at least as new."""
    machine = session.execute(Request("qom-get", {"path": "/machine", "property": "type"}), deadline).get("return")
    version = session.execute(Request("query-version"), deadline).get("return", {}).get("qemu", {})
    return {"machine": str(machine).removesuffix("-machine"),
            "qemu": [int(version.get(part, 0)) for part in ("major", "minor", "micro")]}


def _header(record: dict[str, Any]) -> bytes:
    body = MAGIC + json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    if len(body) > HEADER_BYTES:
        raise ValueError("saved-state record longer than its header")
    return body.ljust(HEADER_BYTES, b" ")


def _stream_digest(fd: int, length: int) -> str:
    """sha256 of the ``length`` bytes after the header, read with pread (the descriptor's offset is QEMU's)."""
    digest = hashlib.sha256()
    offset = HEADER_BYTES
    while offset < HEADER_BYTES + length:
        chunk = os.pread(fd, min(HASH_CHUNK, HEADER_BYTES + length - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def read_record(fd: int, path: str) -> Optional[dict[str, Any]]:
    """The header's record after checking the stream against it; None for a bare QEMU stream (no header).

    :raise VerificationFailed: truncated, longer than recorded, incomplete, or a checksum that differs (exit 6).
    """
    start = os.pread(fd, HEADER_BYTES, 0)
    if start.startswith(QEMU_MAGIC):
        return None
    if not start.startswith(MAGIC):
        raise VerificationFailed(f"{path} is not a saved state: it has neither qmpctl's header nor QEMU's "
                                 "stream magic")
    try:
        record = json.loads(start[len(MAGIC):].split(b"\n", 1)[0])
        length, recorded_digest = int(record["stream-bytes"]), str(record["sha256"])
        str(record["machine"])
        [int(part) for part in record["qemu"]]
    except (ValueError, KeyError, TypeError):
        raise VerificationFailed(f"{path}: its header is damaged or the save never completed") from None
    size = os.fstat(fd).st_size
    if size != HEADER_BYTES + length:
        what = "truncated" if size < HEADER_BYTES + length else "longer than recorded"
        raise VerificationFailed(f"{path} is {what}: {size - HEADER_BYTES} bytes of state where {length} were "
                                 "saved; nothing was loaded")
    if _stream_digest(fd, length) != recorded_digest:
        raise VerificationFailed(f"{path} is corrupted: the state's sha256 checksum differs from the one recorded "
                                 "when it was saved; nothing was loaded")
    return dict(record)


def check_destination_matches(session: QmpSession, deadline: Deadline, record: dict[str, Any], path: str) -> None:
    """A destination of another machine type, or an older QEMU, is refused (exit 2) before it is touched."""
    here = describe_vm(session, deadline)
    if here["machine"] != record["machine"]:
        raise UsageError(f"{path} holds a {record['machine']} machine, and {session.target} is a {here['machine']} "
                         f"machine: start the destination with -machine {record['machine']}")
    if tuple(here["qemu"]) < tuple(record["qemu"]):
        saved, found = (".".join(map(str, version)) for version in (record["qemu"], here["qemu"]))
        raise UsageError(f"{path} was saved by QEMU {saved}, and {session.target} is QEMU {found}: an older "
                         "QEMU cannot load a newer QEMU's state")


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
            fd = os.open(writing, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise UsageError(f"{path} exists; qmpctl does not overwrite saved state (pass --force)") from None
        except OSError as exc:
            raise UsageError(f"cannot create {writing}: {exc.strerror or exc}") from None
        return cls(path, force, writing, fd)

    def reserve_header(self) -> None:
        """An incomplete header first: QEMU's stream goes after it, and a cut save never looks complete."""
        os.write(self.fd, _header({"complete": False}))

    def record(self, described: dict[str, Any]) -> None:
        """Write the finished header: what saved the stream, how long it is and its checksum."""
        length = os.fstat(self.fd).st_size - HEADER_BYTES
        record = {**described, "stream-bytes": length, "sha256": _stream_digest(self.fd, length),
                  "saved-at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(self.fd, _header(record), 0)

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
    return [Request("stop"), Request("qom-get", {"path": "/machine", "property": "type"}), Request("query-version"),
            capabilities_request({"events": True}), parameters_request(None, None),
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
        target.reserve_header()
    except BaseException:
        target.discard()
        raise
    started = time.monotonic()
    try:
        with Handover(session, None, was_running, "save", hands_over=False) as handover:
            session.execute(Request("stop"), deadline)
            described = describe_vm(session, deadline)
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
            target.record(described)
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
    return [Request("qom-get", {"path": "/machine", "property": "type"}), Request("query-version"),
            capabilities_request({"events": True}), Request("getfd", {"fdname": FD_NAME}),
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
        record = read_record(fd, path)
        os.lseek(fd, 0 if record is None else HEADER_BYTES, os.SEEK_SET)  # QEMU reads the stream from here
        return _restore(session, deadline, fd, paused, wait_timeout, record, path)
    finally:
        os.close(fd)


def _restore(session: QmpSession, deadline: Deadline, fd: int, paused: bool, wait_timeout: float,
             record: Optional[dict[str, Any]], path: str) -> dict[str, Any]:
    check_destination(session, deadline)
    if record is not None:
        check_destination_matches(session, deadline, record, path)
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
