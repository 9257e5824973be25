"""Bytes over a socket, every wait bounded by a :class:`Deadline`.

This layer knows nothing about JSON: it connects, sends, and reads lines or
delimited records, capping how much an absurd peer can make it buffer.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time

from qmpctl.timing import QUEUE_FULL_RETRY_SECONDS, SIGNAL_CHECK_SECONDS
from qmpctl.wire import trace
from qmpctl.wire.address import Address
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectError, ConnectionClosed, DeadlineExceeded, ProtocolError, UsageError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Sequence

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A reply bigger than this is a protocol error, not a reason to exhaust memory."""

RECV_CHUNK = 256 * 1024
UNIX_PATH_MAX = 107
"""sun_path holds 108 bytes including the terminating NUL."""
QUEUE_FULL_HINT = "its listen queue is full: busy serving other clients"


COMMA_HINT = "a comma starts QEMU options; write ,, for a comma in a path"


def _describe_unix_failure(path: str, error: OSError, uncut: str | None = None) -> str:
    """Turn a failed unix connect into a message that names the likely cause."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if uncut is not None and os.path.exists(uncut):
            return f"no such socket: {path}, but {uncut} exists: {COMMA_HINT}"
        return f"no such socket: {path}"
    except PermissionError:
        return f"permission denied on {path} (run as a user who may open the socket)"
    except OSError as exc:
        return f"cannot reach {path}: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not a socket"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket"
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path} (run as a user who may open the socket)"
    if error.errno == errno.ECONNREFUSED:
        return f"connection refused by unix:{path} (stale socket: is the VM still running?)"
    return f"cannot connect to unix:{path}: {error.strerror or error}"


def _connect_unix(path: str, deadline: Deadline, waiting_for: str, uncut: str | None = None) -> socket.socket:
    """Connect to a unix socket; a full listen queue is waited out, within the deadline.

    QEMU listens with a backlog of 1 and serves one client: with one client
    served and others queued, the kernel refuses a new one at once (EAGAIN)
    instead of letting it wait. That is a busy monitor (exit 4), not a missing
    one (exit 3), so retry until the queue drains or the deadline ends.
    """
    encoded = os.fsencode(path)
    if len(encoded) > UNIX_PATH_MAX:  # Python's own error for this carries no errno to recognise
        raise ConnectError(f"socket path too long for unix sockets ({len(encoded)} bytes, the limit is "
                           f"{UNIX_PATH_MAX}): {path}")
    hint = ""
    while True:
        left = deadline.remaining(waiting_for, hint)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(left)
        try:
            sock.connect(encoded)
            return sock
        except BlockingIOError:
            sock.close()
            hint = QUEUE_FULL_HINT
            time.sleep(min(QUEUE_FULL_RETRY_SECONDS, left))
        except socket.timeout:
            sock.close()
            raise deadline.exceeded(waiting_for, hint) from None
        except OSError as exc:
            sock.close()
            raise ConnectError(_describe_unix_failure(path, exc, uncut)) from exc


class Connection:
    """A connected stream socket with a read buffer."""

    def __init__(self, sock: socket.socket, address: Address) -> None:
        self.sock = sock
        self.address = address
        self._buffer = bytearray()
        self._scanned = 0

    @classmethod
    def open(cls, address: Address, deadline: Deadline) -> "Connection":
        """Connect within the deadline; failures are :class:`ConnectError` (exit 3)."""
        waiting_for = f"a connection to {address}"
        if address.via is not None:  # a bug: its path is on another machine
            raise ValueError(f"{address} is opened through ssh: use qmpctl.wire.connect.open_connection")
        if address.path is not None:
            return cls(_connect_unix(address.path, deadline, waiting_for, address.uncut), address)
        try:
            sock = socket.create_connection(
                (address.host, address.port), timeout=deadline.remaining(waiting_for)
            )
        except socket.gaierror as exc:
            raise ConnectError(f"unknown host {address.host!r} in {address}: {exc.strerror}") from exc
        except socket.timeout:
            raise deadline.exceeded(waiting_for) from None
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                raise ConnectError(f"connection refused by {address} (nothing listening?)") from exc
            raise ConnectError(f"cannot connect to {address}: {exc.strerror or exc}") from exc
        return cls(sock, address)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    @property
    def passes_fds(self) -> bool:
        """Whether file descriptors can go along with a message: only a unix socket on this machine carries them."""
        return self.address.is_unix

    def send(self, data: bytes, deadline: Deadline, what: str, fds: Sequence[int] = ()) -> None:
        """Send all of ``data``; a peer that stops reading runs into the deadline.

        ``fds`` travel as SCM_RIGHTS with the first bytes (QEMU's ``getfd``
        takes them from the message that carries the command); the caller
        keeps its own copies and closes them.
        """
        if fds and not self.passes_fds:
            raise UsageError(f"cannot pass a file descriptor to {self.address}: only a unix socket on this machine "
                             "carries them")
        trace.sent(str(self.address), data if not fds else data.rstrip(b"\n") + f" [+{len(fds)} fd]".encode())
        try:
            self.sock.settimeout(deadline.remaining(f"{self.address} to accept {what}"))
            sent = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
            self.sock.sendall(data[sent:])
        except socket.timeout:
            raise deadline.exceeded(f"{self.address} to accept {what}") from None
        except OSError as exc:
            raise ConnectionClosed(
                f"connection to {self.address} closed while sending {what}: {exc.strerror or exc}"
            ) from exc

    def _fill(self, deadline: Deadline, waiting_for: str, hint: str) -> None:
        """Read what the peer sent next, in slices of :data:`~qmpctl.timing.SIGNAL_CHECK_SECONDS`: Python runs
        a signal's handler between bytecodes, so a Ctrl-C that lands just before a blocking read starts would
        otherwise wait for the peer or the deadline (a day, for ``events``)."""
        while True:
            try:
                left = deadline.remaining(waiting_for, hint)
                self.sock.settimeout(min(left, SIGNAL_CHECK_SECONDS))
                chunk = self.sock.recv(RECV_CHUNK)
                break
            except socket.timeout:
                if left > SIGNAL_CHECK_SECONDS:
                    continue  # a slice, not the deadline, ended: a pending signal's handler runs here
                raise self._unfinished(deadline.exceeded(waiting_for, hint)) from None
            except DeadlineExceeded as exc:
                raise self._unfinished(exc) from None
            except OSError as exc:
                raise ConnectionClosed(
                    f"connection to {self.address} failed while waiting for {waiting_for}: {exc.strerror or exc}",
                    received=bytes(self._buffer[:200]) or None,
                ) from exc
        if not chunk:
            detail = f" after {len(self._buffer)} bytes of an unfinished message" if self._buffer else ""
            raise ConnectionClosed(
                f"connection closed by {self.address} while waiting for {waiting_for}{detail}",
                received=bytes(self._buffer[:200]),
            )
        self._buffer += chunk

    def _unfinished(self, timeout: DeadlineExceeded) -> DeadlineExceeded:
        """``timeout`` with the start of a message that never ended, if one had begun."""
        if self._buffer:
            timeout.received = bytes(self._buffer[:200])
        return timeout

    def _take_until(self, delimiter: bytes, deadline: Deadline, waiting_for: str, hint: str) -> bytes:
        while True:
            index = self._buffer.find(delimiter, self._scanned)
            if index >= 0:
                record = bytes(self._buffer[: index + 1])
                del self._buffer[: index + 1]
                self._scanned = 0
                trace.received(str(self.address), record)
                return record
            self._scanned = len(self._buffer)
            if self._scanned > MAX_MESSAGE_BYTES:
                raise ProtocolError(
                    f"{self.address} sent a message over {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB "
                    f"without a line end while waiting for {waiting_for}",
                    received=bytes(self._buffer[:200]),
                )
            self._fill(deadline, waiting_for, hint)

    def read_line(self, deadline: Deadline, waiting_for: str, hint: str = "") -> bytes:
        """One ``\\n``-terminated line (QMP ends lines with CRLF, the agent with LF)."""
        return self._take_until(b"\n", deadline, waiting_for, hint)

