"""The guest's memory through the balloon device: ask for a size, and see how far the guest got.

``balloon`` only asks; the guest's driver gives memory back (or takes it)
at its own pace and may stop short, so ``query-balloon``'s ``actual`` is the
only truth, and waiting means polling it.
"""

from __future__ import annotations


from qmpctl.timing import BALLOON_POLL_FIRST, BALLOON_POLL_MAX
from qmpctl.deadline import Deadline, backoff
from qmpctl.errors import DeadlineExceeded, VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.waiting import wait_until
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any

NO_BALLOON_HINT = "the VM has no balloon device: start it with -device virtio-balloon-pci"
CLOSE_ENOUGH = 1024 * 1024
"""The guest moves memory in pages and may keep a little: within 1 MiB of the target counts as reached."""


def _balloon_error(exc: VmError) -> VmError:
    if exc.error_class == "DeviceNotActive":
        return VmError(exc.error_class, f"{exc.desc}: {NO_BALLOON_HINT}", sent=exc.sent, received=exc.received)
    return exc


def query(session: Session, deadline: Deadline) -> dict[str, Any]:
    """What ``query-balloon`` returns (``actual`` in bytes); no balloon device is :class:`VmError` with the hint."""
    try:
        reply: dict[str, Any] = session.execute(Request("query-balloon"), deadline)["return"]
        return reply
    except VmError as exc:
        raise _balloon_error(exc) from None


def set_target(session: Session, deadline: Deadline, size: int, wait: Deadline | None = None) -> dict[str, Any]:
    """Ask the guest for ``size`` bytes; with ``wait``, poll until ``actual`` is there.

    Returns ``{"actual": N, "target": size}``; a wait that runs out
    raises :class:`DeadlineExceeded` saying how far the guest got.
    """
    try:
        session.execute(Request("balloon", {"value": size}), deadline)
    except VmError as exc:
        raise _balloon_error(exc) from None
    actual = query(session, deadline).get("actual")
    if wait is not None:
        seen = [actual]

        def reached() -> int | None:
            actual = seen[0]
            return actual if isinstance(actual, int) and abs(actual - size) <= CLOSE_ENOUGH else None

        def read() -> int | None:
            try:
                seen[0] = query(session, wait).get("actual")
            except DeadlineExceeded:
                raise short() from None
            return reached()

        def short() -> DeadlineExceeded:
            return DeadlineExceeded(f"the guest did not reach {size} bytes within {wait.seconds:g} s: "
                                    f"it has {seen[0]} bytes", received={"actual": seen[0], "target": size})

        if reached() is None:
            actual = wait_until(session, read, wait, "the balloon", timeout=short,
                                pauses=backoff(BALLOON_POLL_FIRST, BALLOON_POLL_MAX))
    return {"actual": actual, "target": size}
