"""Wait for something QEMU will do: by its event where the session delivers events, else by polling.

A socket session sees QEMU's events on the same connection, so qmpctl learns
of a finished job or a released device the moment it happens. A libvirt
session has no events; there a check is polled, starting fast and backing off
so short waits stay short and long ones stay cheap. Either way the check is
what decides, so both paths end on the same, freshly read state.
"""

from __future__ import annotations

import time

from qmpctl.deadline import Deadline, backoff
from qmpctl.errors import DeadlineExceeded
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.session import Session

if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TypeVar
    from qmpctl.wire.session import EventMatch

    T = TypeVar("T")


POLL_FIRST = 0.01
POLL_MAX = 0.2
CHECK_EVERY = 1.0
"""With events: how often the check runs anyway (progress, and a guard against a missed event)."""


def event_named(name: str, **data: Any) -> EventMatch:
    """A matcher for event ``name`` whose data has all the given members."""
    def match(event: dict[str, Any]) -> bool:
        found = event.get("data", {})  # RESUME, STOP ... carry no data at all
        return event.get("event") == name and isinstance(found, dict) and all(
            found.get(key) == value for key, value in data.items())
    return match


def wait_until(session: Session, check: Callable[[], Optional[T]], wait: Deadline, waiting_for: str, *,
               event: EventMatch, every: float = CHECK_EVERY) -> T:
    """Return the first value ``check`` gives that is not None, bounded by ``wait``.

    With events, ``check`` runs as soon as a matching ``event`` arrives, and
    every ``every`` seconds in between; without, it is polled, pausing
    10 ms at first and backing off to 200 ms. ``wait`` running out raises :class:`DeadlineExceeded`.
    """
    pauses = backoff(POLL_FIRST, POLL_MAX)
    while True:
        if session.supports_events:
            window = wait.sub(every)
            try:
                session.wait_event(event, window, waiting_for)
            except DeadlineExceeded:
                if window is wait:
                    raise
        else:
            time.sleep(min(next(pauses), wait.remaining(waiting_for)))
        result = check()
        if result is not None:
            return result
