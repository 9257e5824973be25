"""The guest's clock through its agent: read it against the host's, or set it from the host's.

``guest-get-time`` answers in nanoseconds since the epoch; the host's time is
taken halfway through the exchange, so the offset is off by at most half a
round trip (shown). ``guest-set-time`` is always given the time: without one
the agent would instead set the system clock from the guest's RTC. The agent
then writes the RTC with ``/sbin/hwclock``, and refuses the whole call when
the guest has none.
"""

from __future__ import annotations

import time

from qmpctl.deadline import Deadline
from qmpctl.errors import ProtocolError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session, Target

if TYPE_CHECKING:
    from typing import Any


def iso(nanoseconds: int) -> str:
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


def reading(session: Session, deadline: Deadline) -> dict[str, Any]:
    """The guest's time, the host's at the same moment, and the offset (guest minus host) in seconds."""
    request = Request("guest-get-time", protocol="qga")
    before = time.time_ns()
    reply = session.execute(request, deadline).get("return")
    after = time.time_ns()
    if not isinstance(reply, int) or isinstance(reply, bool):
        raise ProtocolError("the agent answered guest-get-time with something that is not a number",
                            sent=request.as_dict(), received=reply)
    host = (before + after) // 2
    return {"guest": iso(reply), "host": iso(host), "offset": round((reply - host) / 1e9, 3),
            "uncertainty": round((after - before) / 2e9, 3)}


def set_request(nanoseconds: int) -> Request:
    return Request("guest-set-time", {"time": nanoseconds}, protocol="qga")


def sync(session: Session, deadline: Deadline) -> dict[str, Any]:
    """Set the guest's clock (and RTC) to the host's; the offsets before and after."""
    before = reading(session, deadline)
    session.execute(set_request(time.time_ns()), deadline)
    after = reading(session, deadline)
    return {**after, "offset-before": before["offset"], "synced": True}


SYNC_AFTER_NOTE = "the guest's clock was not set"


def sync_after_resume(agent: Target, timeout: float, running: bool = True) -> dict[str, Any]:
    """After a VM came back (snapshot load, restored state): set its clock through ``agent`` (a Target).

    The load itself has succeeded by then, so an agent that cannot be reached
    or refuses is not an error: the result says ``"time-synced": false`` with
    the reason, for the caller to report as a warning.
    """
    from qmpctl.errors import QmpctlError

    if not running:
        return {"time-synced": False, "time-sync-warning": f"the VM is not running: {SYNC_AFTER_NOTE}"}
    deadline = Deadline(timeout)
    try:
        session = agent.open(deadline)
        try:
            synced = sync(session, deadline)
        finally:
            session.close()
    except QmpctlError as exc:
        return {"time-synced": False, "time-sync-warning": f"the guest agent at {agent} did not set the time "
                                                          f"({exc.message}): {SYNC_AFTER_NOTE}"}
    return {"time-synced": True, "time-offset-before": synced["offset-before"], "time-offset": synced["offset"]}
