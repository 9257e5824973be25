"""What every session and target offers, whatever stands behind it.

These protocols live in a module of their own, below both the socket sessions
(qmp.py, agent.py) and libvirt (libvirt.py), so that each of them can
name the contract without importing the modules that pick a session
(targets.py): imports point one way and no cycle is needed to type a session.

Workflows (waiting.py, jobs.py, backup.py ...) program against
:class:`Session` only; they never reach for a session's attributes by name.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request

MONITOR = "qmp"
AGENT = "qga"

HERE = "here"
"""The VM runs on this machine: its files are qmpctl's files."""
OVER_SSH = "ssh"
"""The VM's host is reached over ssh (an ``ssh://`` socket): its files are checked and written there."""
UNREACHABLE = "unreachable"
"""The VM runs on another host qmpctl has no way into (a TCP monitor, a libvirt domain on a remote URI)."""

if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Protocol
    from qmpctl.wire.address import SshHost
    from qmpctl.wire.ssh import RemoteFiles

    EventMatch = Callable[[dict[str, Any]], bool]
    """Accepts the events a wait is for (see :func:`qmpctl.wire.waiting.event_named`)."""
else:
    Protocol = object  # the contracts are for type checkers; at run time they are plain classes


class Session(Protocol):
    """One open connection to a monitor or a guest agent.

    ``supports_events`` says whether :meth:`wait_event` can ever see an event
    (a QMP socket); where it cannot (the agent, libvirt), callers poll, and
    ``events`` stays empty.
    """

    target: str
    supports_events: bool
    max_message_bytes: int | None
    """The largest request or reply the way in carries (libvirt's RPC: 4 MiB); None: no limit of its own."""

    @property
    def events(self) -> Iterable[dict[str, Any]]:
        """The events seen so far and not yet consumed by :meth:`wait_event`, oldest first."""
        ...

    def execute(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        """Send ``request``; return its reply (``return`` member set).

        :raise VmError: the peer answered with an error.
        :raise DeadlineExceeded: no answer within ``deadline``.
        :raise ProtocolError: the peer broke the protocol or went away.
        """
        ...

    def execute_no_reply(self, request: Request, deadline: Deadline) -> None:
        """Send a command that answers only when it fails (guest-shutdown); a refusal raises :class:`VmError`."""
        ...

    def wait_event(self, match: EventMatch, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        """Return (and consume) the first event ``match`` accepts, seen already or still to come.

        :raise DeadlineExceeded: none came within ``deadline`` (at once past it
            for sessions without events).
        """
        ...

    def listen_events(self, deadline: Deadline) -> None:
        """Have every event from now on reach :meth:`next_event` (a QMP socket: always; libvirt: subscribes).

        :raise UsageError: the session can deliver no events (the guest agent).
        """
        ...

    def next_event(self, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        """The next event in arrival order, kept or still to come.

        :raise DeadlineExceeded: none came within ``deadline``.
        :raise ConnectionClosed: QEMU went away (the monitor closed, the domain stopped).
        """
        ...

    def execute_closing(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        """Send a command after which QEMU exits (``quit``): the connection closing is its success.

        :raise UsageError: not through this session (libvirt must know the VM stops; the agent has no quit).
        """
        ...

    def resync(self, deadline: Deadline) -> None:
        """Make the channel usable again after an interrupted exchange (a request cut off half-way).

        The agent's socket needs its 0xFF reset and a fresh sync; QMP's ids and
        libvirt's own sync already keep stale replies apart, so there it does nothing.
        """
        ...

    def close(self) -> None: ...


class HostFiles(NamedTuple):
    """Where a VM's files (its images, a backup's target) are, as qmpctl can reach them: its target says.

    ``reach`` is :data:`HERE`, :data:`OVER_SSH` (``host`` then names the
    machine) or :data:`UNREACHABLE`. Nothing is connected to answer.
    """

    reach: str
    host: SshHost | None = None

    @property
    def is_local(self) -> bool:
        return self.reach == HERE

    @property
    def side(self) -> str:
        """How messages say where a path is: ``on HOST`` over ssh, else nothing."""
        return f"on {self.host}" if self.host is not None else ""

    def remote(self) -> RemoteFiles | None:
        """The VM host's file system through ssh (its master is set up on first use); None unless over ssh."""
        if self.host is None:
            return None
        from qmpctl.wire.ssh import RemoteFiles

        return RemoteFiles(self.host)


class Target(Protocol):
    """A VM's monitor or agent, by socket or by libvirt domain: something a :class:`Session` is opened to."""

    def open(self, deadline: Deadline) -> Session: ...

    def __str__(self) -> str: ...

    def host_files(self) -> HostFiles:
        """Where the VM's files are: this machine, its host over ssh, or out of reach."""
        ...

    @property
    def is_local(self) -> bool:
        """True when the VM's files are visible to qmpctl (same machine): ``host_files().is_local``."""
        ...


class WithoutEvents:
    """The event side of a session that never sees events (qemu-ga, libvirt): nothing kept, nothing to wait for."""

    supports_events = False

    @property
    def events(self) -> tuple[dict[str, Any], ...]:
        return ()

    target: str

    def wait_event(self, match: EventMatch, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        """No event can come, so the wait ends as a timeout at once rather than blocking for nothing."""
        raise deadline.exceeded(f"{waiting_for} (this connection delivers no events)")

    def listen_events(self, deadline: Deadline) -> None:
        """Waiting would be in vain: say so before anything is waited for."""
        raise UsageError(f"{self.target} delivers no events: events come from a VM's monitor (-s or -d)")

    def next_event(self, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        raise deadline.exceeded(f"{waiting_for} (this connection delivers no events)")

    def execute_closing(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        raise UsageError(f"{request.execute} is a monitor command: {self.target} cannot send it")
