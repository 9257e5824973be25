"""Copy files into and out of the guest with qemu-ga's guest-file-* commands.

The agent moves file data as base64 inside JSON, one chunk per request, and
keeps every handle it opened until someone closes it. So this module sends
chunks big enough that the round trips do not dominate yet small enough for
the peer (qemu-ga parses at most 64 MiB of JSON; libvirt passes at most a
4 MiB string), closes the handle on every path, never overwrites without
being told to (qemu-ga 7.2 has no exclusive-create mode, so an existing guest
file is detected first and a new one opened for appending, which never
truncates), and can check the result with ``sha256sum`` run in the guest.
Local files are written to a temporary name and put in place only once
complete. The module never prints: progress goes to a callback.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import re
import time
from typing import Any, BinaryIO, NamedTuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from qmpctl.guest.cleanup import cleanup_deadline, recover_channel, shielded
from qmpctl.deadline import Deadline
from qmpctl.errors import (
    Interrupted,
    OutputError,
    ProtocolError,
    QmpctlError,
    UsageError,
    VerificationFailed,
    VmError,
)
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session


MiB = 1024 * 1024
WRITE_CHUNK = 256 * 1024
"""Bytes per guest-file-write on a socket. Measured under TCG (tests/bench), 256 KiB to 4 MiB move data
alike and bigger chunks are slower: qemu-ga parsing JSON in an emulated CPU is the bottleneck. Small
chunks keep each exchange well inside --timeout even on a loaded host (one took seconds at 1 MiB)."""
READ_CHUNK = 1024 * 1024
"""Bytes per guest-file-read on a socket (qemu-ga allows up to 48 MiB; 1 MiB reads as fast as 16 MiB)."""
LIBVIRT_READ_CHUNK = 2 * MiB
"""With --domain a reply must stay under libvirt's 4 MiB RPC string: 2 MiB is 2.7 MiB of base64."""
LIBVIRT_WRITE_CHUNK = 64 * 1024
"""With --domain, requests stay small: libvirt 9.0 passes a 175 KB guest-file-write on, but one of
262 KB never reaches the agent (the call times out and libvirt then calls the agent "not available")."""
MAX_READ_COUNT = 48 * MiB
GUEST_PREFIX = "guest:"
HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) after every chunk."""


def chunk_size(session: Session, wanted: int, libvirt_cap: int) -> int:
    """``wanted``, or ``libvirt_cap`` when that is less and the session's transport caps a message (libvirt)."""
    if session.max_message_bytes is not None:
        return min(wanted, libvirt_cap)
    return wanted


# ----------------------------------------------------------------------------- requests


def open_request(path: str, mode: str) -> Request:
    return Request("guest-file-open", {"path": path, "mode": mode}, protocol="qga")


def read_request(handle: int, count: int) -> Request:
    return Request("guest-file-read", {"handle": handle, "count": count}, protocol="qga")


def write_request(handle: int, data: bytes) -> Request:
    return Request("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode("ascii")},
                   protocol="qga")


def seek_request(handle: int, offset: int, whence: str) -> Request:
    return Request("guest-file-seek", {"handle": handle, "offset": offset, "whence": whence}, protocol="qga")


def close_request(handle: int) -> Request:
    return Request("guest-file-close", {"handle": handle}, protocol="qga")


def _return(reply: dict[str, Any], request: Request, kind: type, what: str) -> Any:
    value = reply.get("return")
    if kind is dict and isinstance(value, dict):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProtocolError(f"the guest agent's {request.execute} reply has no {what}", sent=request.as_dict(),
                        received=reply)


def _in_guest(error: VmError, path: str) -> VmError:
    """The guest's own error in one line, naming the guest path (qemu-ga leaves it out of read/write errors)."""
    desc = error.desc if path in error.desc else f"guest:{path}: {error.desc}"
    return VmError(error.error_class, desc, sent=error.sent, received=error.received)


# ----------------------------------------------------------------------------- one open handle


class GuestFile:
    """An open guest-file handle; use :func:`open_guest_file`, which always closes it."""

    def __init__(self, session: Session, path: str, handle: int) -> None:
        self.session = session
        self.path = path
        self.handle = handle
        self.closed = False

    def _execute(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        try:
            return self.session.execute(request, deadline)
        except VmError as error:
            raise _in_guest(error, self.path) from None

    def read(self, count: int, deadline: Deadline) -> tuple[bytes, bool]:
        """Up to ``count`` bytes and whether the end of the file was reached."""
        request = read_request(self.handle, count)
        reply = self._execute(request, deadline)
        result = _return(reply, request, dict, "result object")
        try:
            data = base64.b64decode(result.get("buf-b64", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ProtocolError("the guest agent sent file data that is not base64", received=reply) from None
        if result.get("count") != len(data):
            raise ProtocolError(f"the guest agent says it read {result.get('count')!r} bytes but sent {len(data)}",
                                received={"return": {k: v for k, v in result.items() if k != "buf-b64"}})
        return data, result.get("eof") is True or not data

    def write(self, data: bytes, deadline: Deadline) -> None:
        request = write_request(self.handle, data)
        reply = self._execute(request, deadline)
        written = _return(reply, request, dict, "result object").get("count")
        if written != len(data):
            raise VmError("GenericError", f"guest:{self.path}: the guest wrote {written!r} of {len(data)} bytes",
                          received=reply)

    def seek(self, offset: int, whence: str, deadline: Deadline) -> int:
        """Move the file position; returns the new one (seeking to the end gives the size)."""
        request = seek_request(self.handle, offset, whence)
        result = _return(self._execute(request, deadline), request, dict, "position")
        position = result.get("position")
        if not isinstance(position, int) or isinstance(position, bool):
            raise ProtocolError("the guest agent's guest-file-seek reply has no position", received=result)
        return position

    def close(self, deadline: Deadline) -> None:
        """Close once; a failure to close (data not flushed, ENOSPC) is the guest's error."""
        if self.closed:
            return
        self._execute(close_request(self.handle), deadline)
        self.closed = True


def open_handle(session: Session, path: str, mode: str, deadline: Deadline) -> int:
    request = open_request(path, mode)
    try:
        reply = session.execute(request, deadline)
    except VmError as error:
        raise _in_guest(error, path) from None
    return int(_return(reply, request, int, "handle"))


@contextmanager
def open_guest_file(session: Session, path: str, mode: str, deadline: Deadline) -> Iterator[GuestFile]:
    """Open ``path`` in the guest; the handle is closed whatever happens inside, Ctrl-C included.

    On the failure path the channel is resynchronised first (a request cut off
    half-way would swallow the close) and the close gets its own short
    deadline, since the call's own may be what ran out. A long transfer closes
    the file itself with a fresh exchange deadline; ``deadline`` is then spent.
    """
    guest_file = GuestFile(session, path, open_handle(session, path, mode, deadline))
    try:
        yield guest_file
    except BaseException:
        with shielded():
            close_quietly(guest_file)
        raise
    try:
        guest_file.close(deadline)
    except KeyboardInterrupt:  # the signal came as the block ended, before or during the close
        with shielded():
            close_quietly(guest_file)
        raise


def close_quietly(guest_file: GuestFile) -> bool:
    """Close after a failure; the failure that got us here matters more than one closing it."""
    if guest_file.closed:
        return True
    deadline = cleanup_deadline()
    try:
        recover_channel(guest_file.session, deadline)
        guest_file.close(deadline)
    except QmpctlError:
        return False
    return True


# ----------------------------------------------------------------------------- locations


class Location(NamedTuple):
    """One side of a copy: a guest path, a local path, or ``-`` (stdin/stdout)."""

    path: str
    in_guest: bool

    @property
    def stdio(self) -> bool:
        return not self.in_guest and self.path == "-"

    def __str__(self) -> str:
        return GUEST_PREFIX + self.path if self.in_guest else self.path


def parse_location(text: str) -> Location:
    if text.startswith(GUEST_PREFIX):
        path = text[len(GUEST_PREFIX):]
        if not (path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path)):
            raise UsageError(f"a guest path must be absolute (guest:/path or guest:C:\\path), got {text!r}")
        return Location(path, True)
    if not text:
        raise UsageError("an empty path is not a file")
    return Location(text, False)


def plan_copy(source: str, destination: str) -> tuple[Location, Location]:
    """Exactly one side in the guest; a guest directory (trailing /) or local directory gets the source's name."""
    src, dst = parse_location(source), parse_location(destination)
    if src.in_guest == dst.in_guest:
        raise UsageError("one side of agent cp must be in the guest (guest:/path) and the other local "
                         f"(a path or -), got {source!r} and {destination!r}")
    name = _basename(src)
    if dst.in_guest and dst.path.endswith(("/", "\\")):
        if not name:
            raise UsageError(f"name the guest file: {destination} is a directory and the data comes from stdin")
        dst = Location(dst.path + name, True)
    elif not dst.in_guest and not dst.stdio and os.path.isdir(dst.path):
        if not name:
            raise UsageError(f"{source} names no file to copy into the directory {destination}")
        dst = Location(os.path.join(dst.path, name), False)
    return src, dst


def _basename(location: Location) -> str:
    if location.stdio:
        return ""
    return re.split(r"[\\/]", location.path.rstrip("/\\"))[-1]


def check_local_source(path: str) -> int | None:
    """Refuse what cannot be copied before connecting; the size, when it is a regular file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    import stat

    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is a directory; agent cp copies one file")
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def check_local_destination(path: str, force: bool) -> None:
    """Refused before anything is read from the guest: never overwrite without --force."""
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path} exists; use --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path}: no directory {parent}")


@contextmanager
def local_output(path: str, force: bool) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` that takes its name only once complete, and is deleted otherwise."""
    check_local_destination(path, force)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.qmpctl-{os.getpid()}")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
        _publish(temporary, path, force)
    except BaseException:
        with shielded():
            try:
                os.unlink(temporary)
            except OSError:
                pass
        raise


def _publish(temporary: str, path: str, force: bool) -> None:
    if force:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails, rather than replaces, if something took the name meanwhile
    except FileExistsError:
        raise UsageError(f"{path} exists; use --force to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        if os.path.lexists(path):  # a filesystem without hard links
            raise UsageError(f"{path} exists; use --force to overwrite it") from None
        os.rename(temporary, path)
        return
    os.unlink(temporary)


# ----------------------------------------------------------------------------- copies


class CopyResult(NamedTuple):
    source: str
    destination: str
    bytes: int
    seconds: float
    sha256: str
    verified: bool | None = None
    """True: the guest's sha256sum matches; None: not checked (see verify_note)."""
    verify_note: str | None = None

    def to_json(self) -> dict[str, Any]:
        rate = self.bytes / self.seconds if self.seconds > 0 else None
        return {"source": self.source, "destination": self.destination, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "bytes-per-second": None if rate is None else round(rate),
                "sha256": self.sha256, "verified": self.verified,
                **({"verify-note": self.verify_note} if self.verify_note else {})}


class Transfer(NamedTuple):
    """How a copy talks to the agent: the whole copy's deadline, each exchange's limit, chunk sizes."""

    deadline: Deadline
    exchange_seconds: float
    write_chunk: int = WRITE_CHUNK
    read_chunk: int = READ_CHUNK

    def exchange(self) -> Deadline:
        """One request and its reply: --timeout, within what the whole copy may still take."""
        return self.deadline.sub(self.exchange_seconds)


def refuse_existing_guest_file(session: Session, path: str, deadline: Deadline) -> None:
    """Exit 2 if ``path`` exists in the guest; a directory is the guest's own error (exit 1)."""
    try:
        handle = open_handle(session, path, "r", deadline)
    except VmError as error:
        if "No such file or directory" in error.desc:
            return
        raise
    with_handle = GuestFile(session, path, handle)
    try:
        with_handle.read(1, deadline)  # a directory opens for reading but says EISDIR here
    except VmError as error:
        if "Is a directory" in error.desc:
            raise
    finally:
        with shielded():
            close_quietly(with_handle)
    raise UsageError(f"guest:{path} exists; use --force to overwrite it")


def copy_to_guest(session: Session, source: BinaryIO, source_name: str, path: str, transfer: Transfer, *,
                  force: bool = False, total: int | None = None, verify: bool = True,
                  progress: Progress | None = None) -> CopyResult:
    """Stream ``source`` into the guest file ``path``.

    Without ``force`` an existing file is refused (exit 2) before anything is
    written. After a failure once writing began the error names the partial
    guest file, which is left in place (the agent cannot delete files).
    """
    started = time.monotonic()
    if not force:
        refuse_existing_guest_file(session, path, transfer.exchange())
    digest = hashlib.sha256()
    written = 0
    chunk = chunk_size(session, transfer.write_chunk, LIBVIRT_WRITE_CHUNK)
    began = False
    try:
        with open_guest_file(session, path, "w" if force else "a", transfer.exchange()) as guest_file:
            if not force and guest_file.seek(0, "end", transfer.exchange()):
                raise UsageError(f"guest:{path} exists (it appeared while qmpctl checked); use --force to "
                                 "overwrite it")
            began = True
            while True:
                data = _read_local(source, chunk, source_name)
                if not data:
                    break
                guest_file.write(data, transfer.exchange())
                digest.update(data)
                written += len(data)
                if progress is not None:
                    progress(written, total)
            guest_file.close(transfer.exchange())
    except KeyboardInterrupt:
        interrupted = Interrupted("interrupted")
        if began:
            interrupted.add_note(_partial(path, written))
        raise interrupted from None
    except QmpctlError as error:
        if began:
            error.add_note(_partial(path, written))
        raise
    seconds = time.monotonic() - started
    result = CopyResult(source_name, GUEST_PREFIX + path, written, seconds, digest.hexdigest())
    return _verified(session, path, result, transfer) if verify else result


def copy_from_guest(session: Session, path: str, sink: BinaryIO, sink_name: str, transfer: Transfer, *,
                    verify: bool = True, progress: Progress | None = None) -> CopyResult:
    """Stream the guest file ``path`` into ``sink`` (the caller owns it: see :func:`local_output`)."""
    started = time.monotonic()
    digest = hashlib.sha256()
    done = 0
    chunk = min(chunk_size(session, transfer.read_chunk, LIBVIRT_READ_CHUNK), MAX_READ_COUNT)
    with open_guest_file(session, path, "r", transfer.exchange()) as guest_file:
        total = guest_file.seek(0, "end", transfer.exchange())
        if total:
            guest_file.seek(0, "set", transfer.exchange())
        while True:
            data, eof = guest_file.read(chunk, transfer.exchange())
            if data:
                _write_local(sink, data, sink_name)
                digest.update(data)
                done += len(data)
                if progress is not None:
                    progress(done, total or None)
            if eof:
                break
        guest_file.close(transfer.exchange())
    _flush_local(sink, sink_name)
    seconds = time.monotonic() - started
    result = CopyResult(GUEST_PREFIX + path, sink_name, done, seconds, digest.hexdigest())
    return _verified(session, path, result, transfer) if verify else result


def _partial(path: str, written: int) -> str:
    return f"the partial file guest:{path} is left in the guest ({written} bytes written)"


def _read_local(source: BinaryIO, count: int, name: str) -> bytes:
    try:
        return source.read(count)
    except OSError as exc:
        raise OutputError(f"cannot read {name}: {exc.strerror or exc}") from None


def _write_local(sink: BinaryIO, data: bytes, name: str) -> None:
    try:
        sink.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {name}: {exc.strerror or exc}") from None


def _flush_local(sink: BinaryIO, name: str) -> None:
    try:
        sink.flush()
    except OSError as exc:
        raise OutputError(f"cannot write {name}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- verification


def guest_sha256(session: Session, path: str, transfer: Transfer) -> tuple[str | None, str | None]:
    """The guest's ``sha256sum`` of ``path`` through guest-exec: (hash, None) or (None, why not)."""
    from qmpctl.guest import exec as guest_exec

    request = guest_exec.exec_request(["sha256sum", path])
    try:
        pid = guest_exec.start(session, request, transfer.exchange())
    except VmError as error:
        return None, f"not verified: the guest cannot run sha256sum ({error.desc})"
    remaining = max(transfer.deadline.expires_at - time.monotonic(), 0.0)
    status, _ = guest_exec.wait_for_exit(session, pid, reply_timeout=transfer.exchange_seconds,
                                         wait_timeout=remaining)
    words = status.stdout.decode("ascii", "replace").split()
    if status.exit_status != 0 or not words or not HEX_SHA256.match(words[0]):
        detail = status.stderr.decode("utf-8", "replace").strip() or f"exit status {status.exit_status}"
        return None, f"not verified: sha256sum in the guest failed ({detail})"
    return words[0], None


def _verified(session: Session, path: str, result: CopyResult, transfer: Transfer) -> CopyResult:
    guest_hash, note = guest_sha256(session, path, transfer)
    if guest_hash is None:
        return result._replace(verify_note=note)
    if guest_hash != result.sha256:
        raise VerificationFailed(f"verification failed: guest:{path} has sha256 {guest_hash}, the copy "
                                 f"{'sent' if result.destination.startswith(GUEST_PREFIX) else 'received'} "
                                 f"has {result.sha256} ({result.bytes} bytes)")
    return result._replace(verified=True)
