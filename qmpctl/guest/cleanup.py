"""What guest-side cleanup (close a handle, thaw filesystems) needs on every path.

Cleanup runs after something already went wrong: the call's deadline may be
what ran out, a request may have been cut off half-way on the channel, and a
second Ctrl-C must not abort it. So cleanup gets its own short deadline,
resynchronises the agent channel first, and runs shielded from signals
(:func:`qmpctl.signals.shielded`, re-exported here).
"""

from __future__ import annotations

from qmpctl.timing import CLEANUP_SECONDS
from qmpctl.deadline import Deadline
from qmpctl.signals import shielded
from qmpctl.wire.targets import Session

__all__ = ["CLEANUP_SECONDS", "cleanup_deadline", "recover_channel", "shielded"]



def cleanup_deadline(seconds: float = CLEANUP_SECONDS) -> Deadline:
    """A fresh, short deadline for cleanup: it must run even when the call's own deadline has passed."""
    return Deadline(seconds)


def recover_channel(session: Session, deadline: Deadline) -> None:
    """Resynchronise an agent socket after an interrupted exchange, so the next request is read whole.

    A request cut off half-way leaves the agent inside a JSON text; the
    resync's 0xFF resets its parser and drops replies still in flight. A
    libvirt session has no channel of its own to repair.
    """
    session.resync(deadline)
