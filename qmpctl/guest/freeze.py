"""Freeze and thaw the guest's filesystems (guest-fsfreeze-*), with a thaw that always happens.

A frozen guest blocks every write inside it, its own logging included, so a
freeze must never outlive the caller. :func:`frozen` is the safe form: it
thaws on every way out of its block (errors, timeouts, Ctrl-C), with a
deadline of its own since the caller's may be what ran out, and also when
the freeze itself was interrupted (the agent may have frozen the filesystems
after qmpctl stopped waiting). While frozen, qemu-ga itself refuses most
commands; :mod:`qmpctl.wire.agent` turns that refusal into a plain message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from qmpctl.timing import THAW_TIMEOUT
from qmpctl.guest.cleanup import recover_channel, shielded
from qmpctl.deadline import Deadline
from qmpctl.errors import Interrupted, ProtocolError, QmpctlError
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session


FROZEN = "frozen"
THAWED = "thawed"


def status_request() -> Request:
    return Request("guest-fsfreeze-status", protocol="qga")


def freeze_request(mountpoints: Sequence[str] = ()) -> Request:
    """Every local filesystem, or only those mounted at ``mountpoints``."""
    if mountpoints:
        return Request("guest-fsfreeze-freeze-list", {"mountpoints": list(mountpoints)}, protocol="qga")
    return Request("guest-fsfreeze-freeze", protocol="qga")


def thaw_request() -> Request:
    return Request("guest-fsfreeze-thaw", protocol="qga")


def _count(reply: dict[str, Any], request: Request) -> int:
    value = reply.get("return")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"the guest agent's {request.execute} reply is not a count", sent=request.as_dict(),
                            received=reply)
    return value


def status(session: Session, deadline: Deadline) -> str:
    """``"frozen"`` or ``"thawed"``."""
    request = status_request()
    reply = session.execute(request, deadline)
    value = reply.get("return")
    if value not in (FROZEN, THAWED):
        raise ProtocolError("the guest agent's guest-fsfreeze-status reply is neither frozen nor thawed",
                            sent=request.as_dict(), received=reply)
    return str(value)


def freeze(session: Session, deadline: Deadline, mountpoints: Sequence[str] = ()) -> int:
    """Freeze and return how many filesystems are frozen. The guest stays frozen: see :func:`frozen`."""
    request = freeze_request(mountpoints)
    return _count(session.execute(request, deadline), request)


def thaw(session: Session, deadline: Deadline) -> int:
    """Thaw and return how many filesystems were thawed (0 when nothing was frozen)."""
    request = thaw_request()
    return _count(session.execute(request, deadline), request)


def thaw_for_sure(session: Session, thaw_timeout: float = THAW_TIMEOUT) -> int:
    """The thaw of cleanup: its own deadline, the channel resynchronised, signals held off."""
    with shielded():
        deadline = Deadline(thaw_timeout)
        recover_channel(session, deadline)
        return thaw(session, deadline)


@dataclass
class FreezeReport:
    """What :func:`frozen` did: how many filesystems it froze and thawed, and for how long."""

    mountpoints: list[str] = field(default_factory=list)
    frozen: int = 0
    thawed: int | None = None
    frozen_at: float | None = None
    thawed_at: float | None = None

    @property
    def seconds(self) -> float | None:
        """How long the guest was frozen (from the freeze's reply to the thaw's)."""
        if self.frozen_at is None or self.thawed_at is None:
            return None
        return self.thawed_at - self.frozen_at

    def to_json(self) -> dict[str, Any]:
        seconds = self.seconds
        return {"frozen": self.frozen, "thawed": self.thawed,
                "seconds": None if seconds is None else round(seconds, 3),
                **({"mountpoints": self.mountpoints} if self.mountpoints else {})}


@contextmanager
def frozen(session: Session, deadline: Deadline, mountpoints: Sequence[str] = (), *,
           thaw_timeout: float = THAW_TIMEOUT) -> Iterator[FreezeReport]:
    """Freeze for the duration of the ``with`` block; the thaw is guaranteed.

    ``deadline`` bounds the freeze (syncing can take a while); the thaw gets
    ``thaw_timeout`` of its own. A failure to thaw after the block succeeded
    is raised. After a failed block the block's error wins, and says so when
    the thaw failed too: the guest may then still be frozen.
    """
    report = FreezeReport(list(mountpoints))
    try:
        report.frozen = freeze(session, deadline, mountpoints)
        report.frozen_at = time.monotonic()
        yield report
    except KeyboardInterrupt:
        raise _interrupted(_thaw_after_failure(session, report, thaw_timeout)) from None
    except QmpctlError as error:
        error.add_note(_thaw_after_failure(session, report, thaw_timeout))
        raise
    except BaseException:
        _thaw_after_failure(session, report, thaw_timeout)
        raise
    try:
        report.thawed = thaw_for_sure(session, thaw_timeout)
    except KeyboardInterrupt:
        # The signal came after the block ended but before the thaw held signals back (or while it let them
        # go again): thaw (again; a thawed guest answers 0) with signals now held by the handler.
        raise _interrupted(_thaw_after_failure(session, report, thaw_timeout)) from None
    report.thawed_at = time.monotonic()


def _interrupted(note: str) -> Interrupted:
    error = Interrupted("interrupted")
    error.add_note(note)
    return error


def _thaw_after_failure(session: Session, report: FreezeReport, thaw_timeout: float) -> str:
    """Thaw on the way out of a failure; the note to add to the failure ('' when thawed)."""
    try:
        report.thawed = thaw_for_sure(session, thaw_timeout)
    except QmpctlError as error:
        return (f"the guest's filesystems may still be frozen (the thaw failed: {error.message}); "
                "run qmpctl agent fsfreeze thaw")
    report.thawed_at = time.monotonic()
    return ""
