"""Taking away a device the guest must let go of: disks, NICs and DIMMs alike.

``device_del`` only asks: the guest releases the device when it is ready
(an ACPI hot-unplug), and QEMU says so with ``DEVICE_DELETED``. Until then
the device's backend (block nodes, a netdev, a memory backend) must stay,
and after the guest let go it must not stay behind. :func:`request_release`
asks and waits within ``--wait-timeout``; :func:`interrupt_care` runs the
caller's clean-up when Ctrl-C or SIGTERM comes in between.
:func:`unplug_with_backend` is the whole unplug of a device with one backend
(a NIC's netdev, a DIMM's memory backend); disks have several nodes, which
``vm/block.py`` takes itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, Interrupted, QmpctlError
from qmpctl.signals import shielded
from qmpctl.timing import INTERRUPTED_UNPLUG_GRACE
from qmpctl.wire.request import Request
from qmpctl.wire.session import Session

Gone = Callable[[Deadline], Optional[bool]]
"""Asks QEMU whether the device is gone (True), or not yet (None), within the deadline given."""
Delete = Callable[[str, Deadline], None]
"""Deletes the named backend, within the deadline given."""


def wait_released(session: Session, device_id: str, gone: Gone, wait: Deadline, deadline: Deadline) -> None:
    """Until the guest released ``device_id`` (its DEVICE_DELETED, or ``gone`` says so), within ``wait``."""
    from qmpctl.wire.waiting import event_named, wait_until

    wait_until(session, lambda: gone(wait.within(deadline)), wait, f"the guest to release {device_id}",
               event=event_named("DEVICE_DELETED", device=device_id))


def request_release(session: Session, deadline: Deadline, device_id: str, wait_seconds: float, *, gone: Gone,
                    why_not: str, stays: str) -> None:
    """``device_del``, then wait up to ``wait_seconds`` (the call's deadline paused) for the guest to let go.

    :raise DeadlineExceeded: the guest did not release it in time; the message says why a guest may not
        (``why_not``), that nothing was deleted, and what stays (``stays``).
    """
    wait = Deadline(wait_seconds)
    request = Request("device_del", {"id": device_id})
    session.execute(request, deadline)
    try:
        with deadline.paused():
            wait_released(session, device_id, gone, wait, deadline)
    except DeadlineExceeded:
        if not wait.expired():
            raise
        raise DeadlineExceeded(f"the guest did not release {device_id} within {wait_seconds:g}s ({why_not}); "
                               f"nothing was deleted: {stays}", sent=request.as_dict()) from None


@contextmanager
def interrupt_care(device_id: str, after_interrupt: Callable[[], str]) -> Iterator[None]:
    """From ``device_del`` on, the device may go: Ctrl-C or SIGTERM runs ``after_interrupt`` (shielded from a
    second signal) so its backend does not stay behind, and ends the command saying what it did."""
    try:
        yield
    except KeyboardInterrupt:
        with shielded():
            note = after_interrupt()
        raise Interrupted(f"interrupted while unplugging {device_id}: {note}") from None


def unplug_with_backend(session: Session, deadline: Deadline, device_id: str, wait_seconds: float, *,
                        what: str, gone: Gone, backend: Optional[str], kind: str, delete: Delete, why_not: str,
                        again: str) -> None:
    """Ask the guest to let ``device_id`` go, wait for it, then delete its ``backend`` (a ``kind``, may be None).

    ``what`` names the device in messages ("DIMM", "device"); ``again`` is the
    command that deletes what is left once the guest lets go later. Ctrl-C or
    SIGTERM after ``device_del`` gives the guest a moment, deletes the backend
    if it did, and says which.
    """
    stays = f"; its {kind} {backend} stays" if backend else ""

    def after_interrupt() -> str:
        grace = Deadline(INTERRUPTED_UNPLUG_GRACE)
        try:
            wait_released(session, device_id, gone, grace, grace)
        except QmpctlError:
            kept = f"; its {kind} {backend} stays with it" if backend else ""
            return (f"{what} {device_id} stays with its unplug request pending{kept}; once the guest has "
                    f"released it, {again} deletes what is left")
        if not backend:
            return f"the guest released {device_id}"
        try:
            delete(backend, grace)
        except QmpctlError as exc:
            return f"the guest released {device_id}, but deleting {backend} failed ({exc.message}); {again} deletes it"
        return f"the guest released {device_id}; deleted its {kind} {backend}"

    with interrupt_care(device_id, after_interrupt):
        request_release(session, deadline, device_id, wait_seconds, gone=gone, why_not=why_not,
                        stays=f"the {what} stays with its unplug request pending{stays}")
        if backend:
            delete(backend, deadline)
