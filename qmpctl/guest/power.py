"""Shut the guest down through its agent (guest-shutdown), and optionally wait until QEMU saw it.

guest-shutdown answers only when it fails: success is the channel going
quiet. Whether the guest really went down only QEMU can tell, by its
``SHUTDOWN`` event (``RESET`` for a reboot QEMU survives) or by exiting. QMP
events are not buffered, so the monitor connection is opened before the
command is sent.
"""

from __future__ import annotations

import time

from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectionClosed, DeadlineExceeded
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any

MODES = ("powerdown", "reboot", "halt")


def shutdown_request(mode: str) -> Request:
    if mode not in MODES:
        from qmpctl.errors import UsageError

        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return Request("guest-shutdown", {"mode": mode}, protocol="qga")


def shutdown(session: Session, request: Request, deadline: Deadline) -> None:
    """Send guest-shutdown; a refusal within a second is raised, silence is success."""
    session.execute_no_reply(request, deadline)


def _stopped(mode: str) -> Any:
    names = {"SHUTDOWN", "RESET"} if mode == "reboot" else {"SHUTDOWN"}
    return lambda event: event.get("event") in names


def shutdown_and_wait(session: Session, request: Request, qmp: str, deadline: Deadline,
                      wait: Deadline) -> dict[str, Any]:
    """guest-shutdown, then wait (bounded by ``wait``) for QEMU's event or for QEMU to exit."""
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.qmp import QmpSession

    mode = (request.arguments or {}).get("mode", "powerdown")
    monitor = QmpSession.connect(parse_address(qmp), deadline)
    try:
        started = time.monotonic()
        shutdown(session, request, deadline)
        try:
            event = monitor.wait_event(_stopped(mode), wait, f"QEMU at {qmp} to report the guest's {mode}")
        except ConnectionClosed:
            return {"event": None, "qemu-exited": True, "seconds": round(time.monotonic() - started, 3)}
        except DeadlineExceeded as exc:
            if mode == "halt":
                exc.add_note("(a halted guest stops its CPUs without QEMU noticing: no event follows)", joined=" ")
            raise
        return {"event": event.get("event"), "data": event.get("data"),
                           "seconds": round(time.monotonic() - started, 3)}
    finally:
        monitor.close()
