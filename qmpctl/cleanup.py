"""What guest-side cleanup (close a handle, thaw filesystems) needs on every path.

Cleanup runs after something already went wrong: the call's deadline may be
what ran out, a request may have been cut off half-way on the channel, and a
second Ctrl-C must not abort it. So cleanup gets its own short deadline,
resynchronises the agent channel first, and runs shielded from signals.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from typing import Any

from qmpctl.deadline import Deadline
from qmpctl.targets import Session

CLEANUP_SECONDS = 5.0
"""How long closing a handle after a failure may take; a thaw has its own, documented limit."""


def cleanup_deadline(seconds: float = CLEANUP_SECONDS) -> Deadline:
    """A fresh, short deadline for cleanup: it must run even when the call's own deadline has passed."""
    return Deadline(seconds)


def shielded() -> ContextManager[Any]:
    """Hold off SIGINT/SIGTERM during cleanup, via :mod:`qmpctl.signals` where that exists."""
    try:
        from qmpctl import signals  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return contextlib.nullcontext()
    shield: ContextManager[Any] = signals.shielded()
    return shield


def recover_channel(session: Session, deadline: Deadline) -> None:
    """Resynchronise an agent socket after an interrupted exchange, so the next request is read whole.

    A request cut off half-way leaves the agent inside a JSON text; the
    resync's 0xFF resets its parser and drops replies still in flight. A
    libvirt session has no channel of its own to repair.
    """
    resync = getattr(session, "resync", None)
    if resync is not None:
        resync(deadline)
