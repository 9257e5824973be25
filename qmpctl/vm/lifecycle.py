"""Power the VM down and wait until it is off, reset it, or make QEMU quit.

Each waits on the same connection that sent the command, and listens before
sending, so the event that answers it cannot slip by unseen (QEMU does not
keep events for clients that connect later).
"""

from __future__ import annotations

import time

from qmpctl.timing import FORCE_GRACE, POWERDOWN_WAIT
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded
from qmpctl.wire.events import EventFilter, wait_for
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any

SHUTDOWN = EventFilter(frozenset({"SHUTDOWN"}))
RESET_OR_SHUTDOWN = EventFilter(frozenset({"RESET", "SHUTDOWN"}))
NO_REBOOT_NOTE = "QEMU runs with -no-reboot (or --action reboot=shutdown): the reset shut the VM down"
QUIT_REFUSED = ("quit is refused through libvirt: libvirt must know the VM stops; use virsh destroy DOMAIN "
                "(or virsh shutdown / qmpctl powerdown -d DOMAIN for a graceful stop)")


def quit_vm(session: Session, deadline: Deadline) -> dict[str, Any]:
    """Make QEMU exit at once; returns when it has closed the monitor (the close is the success).

    :raise UsageError: through libvirt, which must know the VM stops (``virsh destroy``).
    """
    return session.execute_closing(Request("quit"), deadline)


def powerdown(session: Session, deadline: Deadline, *, wait_seconds: float | None = POWERDOWN_WAIT,
              force_after: float | None = None) -> dict[str, Any]:
    """Press the ACPI power button; unless ``wait_seconds`` is None, wait for ``SHUTDOWN``.

    ``force_after`` waits that long instead and then quits QEMU, reporting
    ``"forced": true``; without it, a guest that ignores the button is
    :class:`DeadlineExceeded` (exit 4).
    """
    request = Request("system_powerdown")
    if wait_seconds is None and force_after is None:
        pressed: dict[str, Any] = session.execute(request, deadline)["return"]
        return pressed
    session.listen_events(deadline)
    started = time.monotonic()
    session.execute(request, deadline)
    wait = Deadline(force_after if force_after is not None else wait_seconds or POWERDOWN_WAIT)
    try:
        event = wait_for(session, SHUTDOWN, wait)
    except DeadlineExceeded:
        if force_after is None:
            raise DeadlineExceeded(f"the guest did not shut down within {wait.seconds:g} s of the power button "
                                   "(it may ignore ACPI; --force-after SECONDS quits QEMU then)") from None
        quit_vm(session, Deadline(FORCE_GRACE))
        return {"forced": True, "seconds": round(time.monotonic() - started, 3)}
    return {"forced": False, "seconds": round(time.monotonic() - started, 3), "event": event}


def reset(session: Session, deadline: Deadline) -> dict[str, Any]:
    """Reset the machine (``system_reset``) and return once QEMU reports it (``RESET``).

    A QEMU started with ``-no-reboot`` turns the reset into a shutdown; that
    is reported with a note, since the VM is now off rather than rebooting.
    """
    session.listen_events(deadline)
    session.execute(Request("system_reset"), deadline)
    event = wait_for(session, RESET_OR_SHUTDOWN, deadline)
    result: dict[str, Any] = {"event": event}
    if event.get("event") == "SHUTDOWN":
        result["note"] = NO_REBOOT_NOTE
    return result
