"""Scripted fake peers on real unix sockets, for faults real QEMU cannot be made to show.

Each fake accepts connections and runs a *script* (a function of a
:class:`Peer`) per connection; everything it received is kept, so a test can
assert that qmpctl sent nothing when it should not have. A script's own
assertions count: leaving the ``with`` block fails the test with the first
error a script raised (a script is the test's other half; its failure must
not pass unseen).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"},
                    "capabilities": ["oob"]}}


class Peer:
    """The server side of one accepted connection."""

    def __init__(self, sock: socket.socket, log: bytearray) -> None:
        self.sock = sock
        self.log = log
        self.buffer = b""

    def send(self, data: bytes | dict[str, Any], end: bytes = b"\r\n") -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode() + end
        self.sock.sendall(data)

    def read_line(self, timeout: float = 10) -> bytes:
        """The next line from the client ('' on close)."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.log.extend(chunk)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read_request(self, timeout: float = 10) -> dict[str, Any]:
        line = self.read_line(timeout).lstrip(b"\xff")
        return json.loads(line) if line.strip() else {}

    def reply(self, request: dict[str, Any], value: Any = None, **extra: Any) -> None:
        message = {"return": {} if value is None else value}
        if "id" in request:
            message["id"] = request["id"]
        message.update(extra)
        self.send(message)

    def handshake(self) -> None:
        """Greeting plus a successful qmp_capabilities."""
        self.send(GREETING)
        self.reply(self.read_request())

    def drain(self, timeout: float = 10) -> None:
        """Keep reading (and logging) until the client goes away."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                self.log.extend(chunk)
        except OSError:
            return


Script = Callable[[Peer], None]
ACCEPT_POLL_SECONDS = 0.05
SCRIPT_GRACE_SECONDS = 2.0
"""How long a script may still run after its test is done (the client has gone: most end at once)."""


class FakeServer:
    """Listen on ``path``; run ``script`` for each accepted connection (``None``: accept, never answer)."""

    def __init__(self, path: Path, script: Script | None, *, accept: bool = True, backlog: int = 4) -> None:
        self.path = path
        self.script = script
        self.received = bytearray()
        self.connections = 0
        self.errors: list[BaseException] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(backlog)
        self._accept = accept
        self._stop = threading.Event()
        self._tearing_down = False
        self._peers: list[socket.socket] = []
        self._scripts: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "FakeServer":
        if self._accept:
            self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
        if not self.errors:
            return
        summary = (f"the fake server's script failed ({len(self.errors)} connection(s)): "
                   f"{type(self.errors[0]).__name__}: {self.errors[0]}")
        if error is None:
            raise AssertionError(summary) from self.errors[0]
        error.add_note(summary)  # the test failed anyway: keep its own error first

    def _serve(self) -> None:
        """Accept until told to stop and no client is left in the queue: every client that came gets its script."""
        self.listener.settimeout(ACCEPT_POLL_SECONDS)
        while True:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            self.connections += 1
            self._peers.append(conn)
            script = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._scripts.append(script)
            script.start()

    def _run(self, conn: socket.socket) -> None:
        peer = Peer(conn, self.received)
        try:
            if self.script is None:
                self._stop.wait(120)
            else:
                self.script(peer)
                peer.drain(timeout=5)
        except OSError:
            pass
        except BaseException as exc:  # surfaced when the with block ends (and to tests that look at .errors)
            if not self._tearing_down:  # not a consequence of close() pulling the socket away
                self.errors.append(exc)
        finally:
            conn.close()

    def close(self, grace: float = SCRIPT_GRACE_SECONDS) -> None:
        """Stop accepting; give running scripts ``grace`` seconds to end on their own, then cut them off."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        self.listener.close()
        until = time.monotonic() + grace
        for script in list(self._scripts):
            script.join(timeout=max(0.0, until - time.monotonic()))
        self._tearing_down = True
        for conn in self._peers:
            try:
                conn.close()
            except OSError:
                pass
        if self.thread.is_alive():
            self.thread.join(timeout=2)


# --- Helpers for the fault suite -------------------------------------------------

EVENT = {"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}


def send_slowly(peer: Peer, data: bytes, pause: float = 0.001) -> None:
    """One byte per write, so the reader sees a message split into many small reads."""
    for index in range(len(data)):
        peer.sock.sendall(data[index:index + 1])
        time.sleep(pause)


class FullListenQueue:
    """A listening socket whose accept queue is full and never drained: connects cannot complete.

    For a unix socket the kernel refuses further clients at once (EAGAIN); for
    TCP it drops their SYNs, so connect() hangs. Either way only the deadline
    can end the wait. That is what a QEMU monitor looks like with one client
    served and others already queued.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        family = socket.AF_UNIX if path is not None else socket.AF_INET
        self.listener = socket.socket(family)
        self.listener.bind(str(path) if path is not None else ("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = None if path is not None else self.listener.getsockname()[1]
        self.queued: list[socket.socket] = []
        self._fill()

    @property
    def address(self) -> str:
        return str(self.path) if self.path is not None else f"tcp:127.0.0.1:{self.port}"

    def _fill(self) -> None:
        target = str(self.path) if self.path is not None else ("127.0.0.1", self.port)
        for _ in range(8):
            client = socket.socket(self.listener.family)
            client.settimeout(0.3)
            try:
                client.connect(target)
            except OSError:
                client.close()
                return
            self.queued.append(client)
        raise RuntimeError("the listen queue never filled up")

    def __enter__(self) -> "FullListenQueue":
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.queued:
            client.close()
        self.listener.close()


class Tripwire:
    """A listening unix socket nobody should touch: no thread, so cheap enough for wide tables.

    It never accepts while the test runs (a client that connects would wait);
    :meth:`touched` then collects whatever connected and what it sent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(16)

    def touched(self) -> tuple[int, bytes]:
        """(connections, bytes received) since the socket was made."""
        self.listener.setblocking(False)
        connections, received = 0, b""
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return connections, received
            connections += 1
            with conn:
                conn.setblocking(False)
                try:
                    received += conn.recv(1 << 20)
                except BlockingIOError:
                    pass

    def __enter__(self) -> "Tripwire":
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


class ScriptedSocket:
    """Stands in for a connected socket: ``recv`` hands out ``chunks`` one at a time, then EOF (or ``end``).

    For driving :class:`qmpctl.wire.transport.Connection` and the sessions over
    exact chunkings in fuzz tests, with no threads or real sockets involved.
    ``chunks`` may be any iterable, even an endless generator.
    """

    def __init__(self, chunks: Any, end: BaseException | None = None) -> None:
        self.chunks = iter(chunks)
        self.pending = b""
        self.end = end
        self.sent = bytearray()
        self.received = 0

    def settimeout(self, value: float) -> None:
        assert value > 0, "a wait with no time left must raise DeadlineExceeded before reaching the socket"

    def recv(self, size: int) -> bytes:
        if not self.pending:
            self.pending = next(self.chunks, b"")
            if not self.pending:
                if self.end is not None:
                    raise self.end
                return b""
        chunk, self.pending = self.pending[:size], self.pending[size:]
        self.received += len(chunk)
        return chunk

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass
