"""A guest-agent session: resync first, then one request and its reply.

qemu-ga has no greeting and no ids of its own, and a reply can be stale, left
behind by an earlier client that gave up. So every connection starts with the
byte 0xFF (which resets the agent's parser) and ``guest-sync-delimited`` with
a fresh random id; everything up to the 0xFF-delimited reply carrying that id
is discarded.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from qmpctl.timing import NO_REPLY_GRACE_SECONDS
from qmpctl.wire.address import Address
from qmpctl.wire.connect import open_connection
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectionClosed, DeadlineExceeded, ProtocolError, QmpctlError, VmError
from qmpctl.wire.qmp import checked_reply, decode_message
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.session import WithoutEvents
from qmpctl.wire.trace import Exchange
from qmpctl.wire.transport import RECV_CHUNK, Connection

if TYPE_CHECKING:
    from typing import Any

SYNC_BYTE = b"\xff"
SILENT_HINT = "guest agent is not responding: is qemu-ga running in the guest?"
DISABLED_CLASS = "CommandNotFound"
MAX_DRAIN_READS = 64
NO_REPLY_COMMANDS = frozenset({"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"})
"""Commands qemu-ga answers only when they fail: on success the guest goes away instead."""


def _random_id() -> int:
    """A positive 31-bit id no earlier client can have left behind on the channel."""
    return int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF or 1


DISABLED_HINT = ("enable it in qemu-ga's configuration: the --block-rpcs (-b) and --allow-rpcs options, "
                 "the block-rpcs= and allow-rpcs= keys of qemu-ga.conf, or BLACKLIST_RPC / ALLOW_RPC in "
                 "/etc/sysconfig/qemu-ga")
UNKNOWN_HINT = "not known to this guest agent: an older qemu-ga, or one built without it"


def _says_disabled(error: VmError) -> bool:
    """A command the agent has but refuses to run, in every wording qemu-ga has used.

    qemu-ga 7.2: CommandNotFound "Command guest-exec has been disabled";
    qemu-ga 8.0 to 10 (which added --allow-rpcs): CommandNotFound "Command
    guest-exec has been disabled: the command is not allowed"; QEMU 2.x:
    GenericError "The command guest-exec has been disabled for this instance".
    """
    lowered = error.desc.lower()
    if error.error_class == DISABLED_CLASS:
        return "has been disabled" in lowered or "not allowed" in lowered
    return error.error_class == "GenericError" and lowered.startswith("the command ") and "has been disabled" in lowered


def _says_unknown(error: VmError) -> bool:
    """qemu-ga's CommandNotFound "The command guest-get-devices has not been found": not built in, not disabled."""
    return error.error_class == DISABLED_CLASS and "has not been found" in error.desc.lower()


def disabled_command_error(error: VmError, command: str, frozen: Callable[[], bool] = lambda: False) -> VmError:
    """Say plainly that a command is switched off in the agent (and where), or that the agent lacks it.

    qemu-ga refuses most commands while the guest's filesystems are frozen
    (7.2: "...has been disabled: the agent is in frozen state"): that is said
    as such, since a thaw, not the agent's configuration, is the remedy.
    qemu-ga 10 words both refusals alike ("...has been disabled: the command
    is not allowed"), so then ``frozen`` asks the agent (see :func:`is_frozen`).
    """
    if _says_disabled(error) and ("frozen" in error.desc.lower() or frozen()):
        return VmError(
            error.error_class,
            f"{command} is refused while the guest's filesystems are frozen (guest-fsfreeze-freeze); "
            f"thaw them first: qmpctl agent fsfreeze thaw (the agent said: {error.desc})",
            sent=error.sent, received=error.received,
        )
    if _says_disabled(error):
        desc = (f"{command} is disabled in the guest agent's configuration ({DISABLED_HINT}); "
                f"the agent said: {error.desc}")
    elif _says_unknown(error):
        desc = f"{error.desc} ({command} is {UNKNOWN_HINT})"
    else:
        return error
    return VmError(error.error_class, desc, sent=error.sent, received=error.received)


FREEZE_STATUS = "guest-fsfreeze-status"


def is_frozen(ask: Callable[[Request], dict[str, Any]]) -> bool:
    """Whether the guest's filesystems are frozen, by ``ask`` (one raw exchange, no refusal mapping).

    guest-fsfreeze-status is answered while frozen by every qemu-ga. Only asked
    after a refusal: when it cannot be told (the command blocked too, the
    deadline gone), the refusal stands as it is.
    """
    request = Request(FREEZE_STATUS, protocol="qga")
    try:
        return ask(request).get("return") == "frozen"
    except QmpctlError:
        return False


class AgentSession(WithoutEvents):
    """One short-lived, resynchronised connection to qemu-ga (which has no events)."""

    max_message_bytes: int | None = None

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.target = str(connection.address)

    @classmethod
    def connect(cls, address: Address, deadline: Deadline) -> AgentSession:
        session = cls(open_connection(address, deadline))
        try:
            session.resync(deadline)
        except BaseException:
            session.close()
            raise
        return session

    def close(self) -> None:
        """Read what is pending first: a unix socket closed with unread data resets the
        connection, and qemu-ga 7.2 in unix-listen mode exits when its read fails so."""
        sock = self.connection.sock
        try:
            sock.setblocking(False)
            for _ in range(MAX_DRAIN_READS):
                if not sock.recv(RECV_CHUNK):
                    break
        except OSError:
            pass
        self.connection.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resync(self, deadline: Deadline) -> None:
        """Flush the channel until the agent answers our own sync id.

        Only a line holding a 0xFF can carry the answer, and only what follows
        its last 0xFF: valid UTF-8 JSON never contains that byte, so anything
        before it is junk (a partial line, a stale reply, the agent's error for
        our flush byte) whatever it looks like.
        """
        sync_id = _random_id()
        request = Request("guest-sync-delimited", {"id": sync_id}, protocol="qga")
        with Exchange(self.target, request.as_dict()):
            self._sync(sync_id, request, deadline)

    def _sync(self, sync_id: int, request: Request, deadline: Deadline) -> None:
        waiting_for = f"the guest agent at {self.target} to answer guest-sync-delimited"
        self.connection.send(SYNC_BYTE + request.wire(), deadline, "guest-sync-delimited")
        while True:
            line = self.connection.read_line(deadline, waiting_for, SILENT_HINT)
            marker = line.rfind(SYNC_BYTE)
            if marker < 0:
                continue  # not delimited: stale output of an earlier client
            try:
                message = decode_message(line[marker + 1:], self.connection.address, waiting_for)
            except ProtocolError:
                continue  # junk between sync bytes belongs to nobody
            if message.get("return") == sync_id:
                return

    def execute(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        """Send ``request`` and return the agent's reply object; errors raise :class:`VmError`.

        The request carries a fresh id, which qemu-ga echoes: a reply with some
        other id is someone else's and is skipped. A reply without any id is
        taken as ours, for agents that do not echo ids.
        """
        with Exchange(self.target, request.as_dict()):
            return self._checked(self._exchange(request, deadline), request, deadline)

    def _exchange(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        """Send ``request`` with a fresh id and read our reply, as it came."""
        request_id = _random_id()
        waiting_for = f"the reply to {request.execute} from the guest agent at {self.target}"
        self.connection.send(request.wire(request_id), deadline, request.execute)
        return self._our_reply(request_id, deadline, waiting_for, SILENT_HINT)

    def _our_reply(self, request_id: int, deadline: Deadline, waiting_for: str, hint: str) -> dict[str, Any]:
        """The next reply that is ours (its id removed), past blank lines, sync bytes and others' replies."""
        while True:
            line = self.connection.read_line(deadline, waiting_for, hint).lstrip(SYNC_BYTE)
            if not line.strip():
                continue
            message = decode_message(line, self.connection.address, waiting_for)
            if message.pop("id", request_id) == request_id:
                return message

    def _checked(self, reply: dict[str, Any], request: Request, deadline: Deadline) -> dict[str, Any]:
        try:
            return checked_reply(reply, request, f"the guest agent at {self.target}")
        except VmError as error:
            def ask(status: Request) -> dict[str, Any]:
                return checked_reply(self._exchange(status, deadline), status, f"the guest agent at {self.target}")

            raise disabled_command_error(error, request.execute, lambda: is_frozen(ask)) from None

    def execute_no_reply(self, request: Request, deadline: Deadline) -> None:
        """For guest-shutdown and friends, which answer only when they fail.

        A short grace period catches a refusal (a disabled command, bad
        arguments); silence, or the channel closing as the guest goes down,
        means the agent took the command.
        """
        request_id = _random_id()
        with Exchange(self.target, request.as_dict()):
            self.connection.send(request.wire(request_id), deadline, request.execute)
            grace = deadline.sub(NO_REPLY_GRACE_SECONDS)
            waiting_for = f"a refusal of {request.execute} from the guest agent at {self.target}"
            try:
                reply = self._our_reply(request_id, grace, waiting_for, "")
            except (DeadlineExceeded, ConnectionClosed):
                return
            self._checked(reply, request, deadline)
