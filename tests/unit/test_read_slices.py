"""A blocking read gives Python a chance to run signal handlers every slice, not only at the deadline.

Python runs a handler between bytecodes: a SIGINT that lands after its last look and before a
read starts polling is only handled when that poll returns. ``qmpctl events`` once waited out its
one-day deadline that way after a Ctrl-C (seen in CI, then one run in a few dozen on a quiet
machine). Every read must therefore poll in short slices.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded
from qmpctl.timing import SIGNAL_CHECK_SECONDS
from qmpctl.wire.address import Address
from qmpctl.wire.transport import Connection


class Recording:
    """A socket that remembers every timeout a read was given."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeouts: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)
        self.sock.settimeout(value)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def test_a_long_wait_polls_in_slices_and_still_gets_the_line():
    ours, peer = socket.socketpair()
    with ours, peer:
        connection = Connection(ours, Address(path="/fake"))
        recording = Recording(ours)
        connection.sock = recording  # type: ignore[assignment]
        sender = threading.Timer(2.5 * SIGNAL_CHECK_SECONDS, peer.sendall, [b'{"event": "STOP"}\n'])
        sender.start()
        try:
            line = connection.read_line(Deadline(86400), "an event")
        finally:
            sender.cancel()
        assert line == b'{"event": "STOP"}\n'
        assert len(recording.timeouts) >= 3, recording.timeouts
        assert all(value is not None and value <= SIGNAL_CHECK_SECONDS for value in recording.timeouts)


def test_the_deadline_still_ends_a_sliced_wait_with_what_had_arrived():
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(b'{"retu')
        connection = Connection(ours, Address(path="/fake"))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            connection.read_line(Deadline(1.2), "the reply")
        assert 1.1 < time.monotonic() - started < 3
        assert caught.value.received == b'{"retu'
        assert "the reply" in caught.value.message
