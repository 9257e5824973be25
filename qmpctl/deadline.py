"""One deadline for every phase of a call.

A call has several waits (connect, greeting, negotiation, sync, reply); each
asks the same :class:`Deadline` how long it may still block, so the sum can
never exceed ``--timeout``.
"""

from __future__ import annotations

import time

from qmpctl.errors import DeadlineExceeded
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterator


class Deadline:
    """A point in monotonic time after which every wait fails with exit code 4."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds

    def remaining(self, waiting_for: str, hint: str = "") -> float:
        """Seconds left; raises :class:`DeadlineExceeded` naming the phase when none are."""
        left = self.expires_at - time.monotonic()
        if left <= 0:
            raise self.exceeded(waiting_for, hint)
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def exceeded(self, waiting_for: str, hint: str = "") -> DeadlineExceeded:
        message = f"timed out after {self.seconds:g}s waiting for {waiting_for}"
        if hint:
            message += f" ({hint})"
        return DeadlineExceeded(message)

    def sub(self, seconds: float | None) -> "Deadline":
        """A deadline that ends at ``seconds`` from now or at this one, whichever is first."""
        if seconds is None:
            return self
        child = Deadline(seconds)
        if child.expires_at > self.expires_at:
            return self
        return child

    def within(self, call: "Deadline") -> "Deadline":
        """The bound of one exchange made during this (long) wait: the call's ``--timeout``, never past the wait.

        A VM that stops answering mid-wait is noticed after ``--timeout``, not
        at the end of a wait that may last a day.
        """
        return self.sub(call.seconds)

    def paused(self) -> "_Paused":
        """Time spent in the block does not count: it is a long wait, bounded by its own ``--wait-timeout``.

        So ``--timeout`` bounds all of a call's exchanges together, and a
        guest that takes its time to release a disk does not eat the time the
        requests after the wait are given.
        """
        return _Paused(self)


class _Paused:
    """What :meth:`Deadline.paused` returns (a class: ``contextlib`` costs every call half a millisecond)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self.deadline.expires_at += time.monotonic() - self.started


def backoff(first: float, longest: float, growth: float = 1.5) -> Iterator[float]:
    """Pauses between polls: ``first``, then growing by ``growth`` up to ``longest``.

    Short waits stay short and long ones stay cheap; every poll loop in qmpctl
    (job and device waits without events, agent exec status) paces itself so.
    """
    pause = first
    while True:
        yield pause
        pause = min(pause * growth, longest)
