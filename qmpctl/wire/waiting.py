"""Wait for something QEMU will do: by its event where the session delivers events, else by polling.

A socket session sees QEMU's events on the same connection, so qmpctl learns
of a finished job or a released device the moment it happens. A libvirt
session has no events; there a check is polled, starting fast and backing off
so short waits stay short and long ones stay cheap. Either way the check is
what decides, so both paths end on the same, freshly read state.
"""

from __future__ import annotations

import time

from qmpctl.timing import CHECK_EVERY as CHECK_EVERY  # backup imports it from here
from qmpctl.timing import POLL_FIRST, POLL_MAX
from qmpctl.deadline import Deadline, backoff
from qmpctl.errors import DeadlineExceeded
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.session import Session

if TYPE_CHECKING:
    from typing import Any, Callable, Iterator, Optional, TypeVar
    from qmpctl.wire.session import EventMatch

    T = TypeVar("T")




def event_named(name: str, **data: Any) -> EventMatch:
    """A matcher for event ``name`` whose data has all the given members."""
    def match(event: dict[str, Any]) -> bool:
        found = event.get("data", {})  # RESUME, STOP ... carry no data at all
        return event.get("event") == name and isinstance(found, dict) and all(
            found.get(key) == value for key, value in data.items())
    return match


def wait_until(session: Optional[Session], check: Callable[[], Optional[T]], wait: Deadline, waiting_for: str, *,
               event: Optional[EventMatch] = None, every: float = CHECK_EVERY,
               pauses: Optional[Iterator[float]] = None, check_first: bool = False,
               timeout: Optional[Callable[[], BaseException]] = None,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """Return the first value ``check`` gives that is not None, bounded by ``wait``: every wait of qmpctl.

    With events (``event`` given and a session that delivers them),
    ``check`` runs as soon as a matching event arrives, and every ``every``
    seconds in between; without, it is polled, pausing as long as ``pauses`` says at
    first (``pauses``; by default 10 ms, backing off to 200 ms). ``check_first`` runs it once before
    any pause (for retries, where the first try is the common case). ``wait``
    running out raises what ``timeout`` builds, else :class:`DeadlineExceeded`
    naming ``waiting_for``; ``check`` may raise to end the wait its own way.
    """
    if check_first:
        result = check()
        if result is not None:
            return result
    if pauses is None:
        pauses = backoff(POLL_FIRST, POLL_MAX)
    while True:
        if event is not None and session is not None and session.supports_events:
            window = wait.sub(every)
            try:
                session.wait_event(event, window, waiting_for)
            except DeadlineExceeded:
                if window is wait:
                    if timeout is not None:
                        raise timeout() from None
                    raise
        else:
            if wait.expired():
                raise timeout() if timeout is not None else wait.exceeded(waiting_for)
            sleep(max(0.0, min(next(pauses), wait.expires_at - time.monotonic())))
        result = check()
        if result is not None:
            return result
