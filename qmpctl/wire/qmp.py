"""A QMP session: greeting, capabilities negotiation, ids and events.

QEMU serves one client per monitor socket; a second client connects but gets
no greeting, which is why the greeting wait carries the "busy" hint. Events may
arrive at any point, even before a command's reply, so every line is sorted
into "our reply", "an event", or "someone else's" and only the first answers.
"""

from __future__ import annotations

import json
import os
from collections import deque

from qmpctl.wire.address import Address
from qmpctl.wire.connect import open_connection
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectionClosed, ProtocolError, VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request, parse_json
from qmpctl.wire.trace import Exchange
from qmpctl.wire.transport import Connection

if TYPE_CHECKING:
    from typing import Any, Sequence
    from qmpctl.wire.session import EventMatch

MAX_KEPT_EVENTS = 10_000
BUSY_HINT = "monitor busy (another client is connected) or not answering"


def decode_message(line: bytes, source: Address, waiting_for: str) -> dict[str, Any]:
    """Parse one line into a JSON object or raise :class:`ProtocolError` quoting it."""
    try:
        message = parse_json(line)
    except RecursionError:
        raise ProtocolError(f"{source} sent JSON nested too deeply to read while waiting for {waiting_for}",
                            received=line[:200]) from None
    except ValueError:
        excerpt = line[:80].decode("utf-8", "replace").strip()
        raise ProtocolError(
            f"{source} sent something that is not JSON while waiting for {waiting_for}: {excerpt!r}",
            received=line[:200],
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError(
            f"{source} sent a JSON {type(message).__name__} instead of an object while waiting for {waiting_for}",
            received=line[:200],
        )
    return message


def reply_error(reply: dict[str, Any], request: Request | dict[str, Any]) -> VmError:
    """The :class:`VmError` for an ``{"error": ...}`` reply."""
    error = reply.get("error")
    if not isinstance(error, dict):
        error = {"class": "GenericError", "desc": json.dumps(error)}
    sent = request.as_dict() if isinstance(request, Request) else request
    return VmError(str(error.get("class", "GenericError")), str(error.get("desc", "")), sent=sent, received=reply)


def checked_reply(reply: dict[str, Any], request: Request, source: str) -> dict[str, Any]:
    """``reply`` when it carries a ``return``; its error as :class:`VmError`; anything else is a protocol error."""
    if "error" in reply:
        raise reply_error(reply, request)
    if "return" not in reply:
        raise ProtocolError(f"{source} sent a reply with neither return nor error",
                            sent=request.as_dict(), received=reply)
    return reply


class QmpSession:
    """One short-lived, negotiated connection to a QEMU monitor."""

    supports_events = True
    max_message_bytes: int | None = None

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.target = str(connection.address)
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_EVENTS)
        self._prefix = f"qmpctl-{os.getpid()}-"
        self._counter = 0

    @classmethod
    def connect(cls, address: Address, deadline: Deadline) -> "QmpSession":
        """Connect, read the greeting and negotiate, all within ``deadline``."""
        session = cls(open_connection(address, deadline))
        try:
            with Exchange(session.target, None):
                session._read_greeting(deadline)
            session._negotiate(deadline)
        except BaseException:
            session.close()
            raise
        return session

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "QmpSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_message(self, deadline: Deadline, waiting_for: str, hint: str = "") -> dict[str, Any]:
        line = self.connection.read_line(deadline, waiting_for, hint)
        return decode_message(line, self.connection.address, waiting_for)

    def _read_greeting(self, deadline: Deadline) -> None:
        waiting_for = f"the QMP greeting from {self.target}"
        while True:
            message = self._read_message(deadline, waiting_for, BUSY_HINT)
            if "event" in message:
                self.events.append(message)
                continue
            if not isinstance(message.get("QMP"), dict):
                raise ProtocolError(
                    f"{self.target} is not a QMP monitor: its first message has no QMP greeting",
                    received=message,
                )
            return

    def _negotiate(self, deadline: Deadline) -> None:
        self._exchange(Request("qmp_capabilities"), deadline)

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}"

    def _exchange(self, request: Request, deadline: Deadline, fds: Sequence[int] = ()) -> dict[str, Any]:
        with Exchange(self.target, request.as_dict()):
            return self._send_and_read(request, deadline, fds)

    def _send_and_read(self, request: Request, deadline: Deadline, fds: Sequence[int]) -> dict[str, Any]:
        request_id = self._next_id()
        waiting_for = f"the reply to {request.execute} from {self.target}"
        self.connection.send(request.wire(request_id), deadline, request.execute, fds)
        while True:
            message = self._read_message(deadline, waiting_for)
            if "event" in message:
                self.events.append(message)
                continue
            if "id" not in message and "error" in message:
                error = message["error"] if isinstance(message["error"], dict) else {}
                raise ProtocolError(
                    f"{self.target} answered with an error that carries no id (it could not read the "
                    f"request): {error.get('class', '?')}: {error.get('desc', '')}",
                    sent=request.as_dict(), received=message,
                )
            if message.get("id") != request_id:
                continue  # a stale or foreign reply: never ours
            message.pop("id")
            return checked_reply(message, request, self.target)

    def execute(self, request: Request, deadline: Deadline, fds: Sequence[int] = ()) -> dict[str, Any]:
        """Send ``request``; return the reply object without qmpctl's id. Errors raise :class:`VmError`.

        ``fds`` are passed along with it (``getfd``, ``add-fd``), on a unix socket only.
        """
        return self._exchange(request, deadline, fds)

    def execute_no_reply(self, request: Request, deadline: Deadline) -> None:
        """Every QMP command answers, so this is :meth:`execute` with the reply dropped."""
        self.execute(request, deadline)

    def resync(self, deadline: Deadline) -> None:
        """Nothing to do: a reply to an abandoned request carries its id and is skipped."""

    def wait_event(self, match: EventMatch, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        """Return (and consume) the first event, already seen or still to come, that ``match`` accepts."""
        for event in list(self.events):
            if match(event):
                self.events.remove(event)
                return event
        with Exchange(self.target, None):
            return self._read_event(match, deadline, waiting_for)

    def _read_event(self, match: EventMatch, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        while True:
            message = self._read_message(deadline, waiting_for)
            if "event" in message:
                if match(message):
                    return message
                self.events.append(message)

    def listen_events(self, deadline: Deadline) -> None:
        """Nothing to do: QEMU sends every event to every negotiated monitor connection."""

    def next_event(self, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        """The next event in arrival order: one kept while waiting for a reply, else the next to come."""
        return self.wait_event(lambda event: True, deadline, waiting_for)

    def execute_closing(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        """Send a command after which QEMU closes the monitor (``quit``); the close is its success.

        QEMU answers and then exits, so the connection closing, before or after
        the reply, is what was asked for. Returns once it has closed, so the
        caller knows QEMU is on its way out.
        """
        try:
            reply = self._exchange(request, deadline)
        except ConnectionClosed:
            return {"return": {}}
        waiting_for = f"{self.target} to close after {request.execute}"
        try:
            while True:
                message = self._read_message(deadline, waiting_for)
                if "event" in message:
                    self.events.append(message)
        except ConnectionClosed:
            return reply
