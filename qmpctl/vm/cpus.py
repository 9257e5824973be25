"""vCPUs of a running VM: how many, how many at most, and plugging more.

``query-hotpluggable-cpus`` lists every slot the machine has (up to
``maxcpus``) with the device type and the properties that place a CPU in it
(socket, die, core, thread, node); a plugged slot has a ``qom-path``. A new
vCPU is ``device_add`` of that type with all of those properties. Taking
vCPUs away needs the guest's help: ``device_del`` asks it (through ACPI) to
offline and eject the CPU, and QEMU sends ``DEVICE_DELETED`` once it did. So
an unplug waits for that, under ``--wait-timeout``, highest vCPU first, and
only vCPUs that were hot-plugged (they have a device id) can go: the ones
the VM started with cannot. A failed plug asks the CPUs it added to go again.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, Interrupted, QmpctlError, UsageError, VmError
from qmpctl.signals import shielded
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session
from qmpctl.timing import INTERRUPTED_UNPLUG_GRACE

if TYPE_CHECKING:
    from typing import Any, Callable, Optional
    from qmpctl.vm.block import UndoStep

PERIPHERAL = "/machine/peripheral/"
PLACEMENT = ("socket-id", "die-id", "cluster-id", "module-id", "core-id", "thread-id", "node-id")
"""The properties that place a CPU, in the order free slots are filled."""
DEFAULT_WAIT = 30.0
"""How long the guest may take to release all the vCPUs an unplug asks to go (--wait-timeout)."""
PLAN_NOTE = ("a plan, not the exact requests (--dry-run connects to nothing): the run reads the VM's free vCPU slots "
             "(query-hotpluggable-cpus) and sends one device_add per slot, of the CPU type and with every "
             "property QEMU names for it, until the VM has N vCPUs")


def slots(session: Session, deadline: Deadline) -> list[dict[str, Any]]:
    reply = session.execute(Request("query-hotpluggable-cpus"), deadline).get("return")
    found = [slot for slot in reply if isinstance(slot, dict)] if isinstance(reply, list) else []
    return sorted(found, key=lambda slot: tuple(int((slot.get("props") or {}).get(key, -1)) for key in PLACEMENT))


def _count(found: list[dict[str, Any]]) -> int:
    return sum(int(slot.get("vcpus-count") or 1) for slot in found)


def _device_id(qom_path: str) -> Optional[str]:
    return qom_path[len(PERIPHERAL):] if qom_path.startswith(PERIPHERAL) else None


def listing(session: Session, deadline: Deadline) -> dict[str, Any]:
    """How many vCPUs are plugged, the most the VM can have, and every slot."""
    found = slots(session, deadline)
    plugged = [slot for slot in found if slot.get("qom-path")]
    shown = [{"plugged": bool(slot.get("qom-path")), "id": _device_id(str(slot.get("qom-path") or "")),
              "type": slot.get("type"), "vcpus": int(slot.get("vcpus-count") or 1), "props": slot.get("props") or {},
              **({"qom-path": slot["qom-path"]} if slot.get("qom-path") else {})} for slot in found]
    return {"vcpus": _count(plugged), "max": _count(found), "slots": shown}


def add_request(slot: dict[str, Any], device_id: str) -> Request:
    return Request("device_add", {"driver": str(slot.get("type")), "id": device_id, **(slot.get("props") or {})})


def _free_ids(session: Session, deadline: Deadline, count: int) -> list[str]:
    reply = session.execute(Request("qom-list", {"path": PERIPHERAL.rstrip("/")}), deadline).get("return")
    taken = {str(entry.get("name")) for entry in reply if isinstance(entry, dict)} if isinstance(reply, list) else set()
    ids: list[str] = []
    number = 1
    while len(ids) < count:
        if f"vcpu{number}" not in taken:
            ids.append(f"vcpu{number}")
        number += 1
    return ids


def plug(session: Session, deadline: Deadline, wanted: int) -> dict[str, Any]:
    """Add vCPUs until the VM has ``wanted``; all or nothing (the ones added are asked to go on a failure)."""
    from qmpctl.vm.block import undo_all, with_notes

    found = slots(session, deadline)
    most = _count(found)
    present = _count([slot for slot in found if slot.get("qom-path")])
    if wanted > most:
        raise UsageError(f"the VM can have at most {most} vCPUs (its maxcpus), not {wanted}: start QEMU with "
                         f"-smp {present},maxcpus=M for more")
    if wanted < present:
        raise UsageError(f"the VM has {present} vCPUs, not fewer than {wanted}: vcpus N below the current count "
                         "unplugs (qmpctl vcpus N)")
    chosen: list[dict[str, Any]] = []
    total = present
    for slot in (slot for slot in found if not slot.get("qom-path")):
        if total >= wanted:
            break
        chosen.append(slot)
        total += int(slot.get("vcpus-count") or 1)
    if total != wanted:
        raise UsageError(f"{wanted} vCPUs cannot be reached: each free slot adds {chosen[-1].get('vcpus-count')} "
                         f"(the VM has {present})")
    added: list[str] = []
    undo: list[UndoStep] = []
    try:
        for slot, device_id in zip(chosen, _free_ids(session, deadline, len(chosen)), strict=True):
            session.execute(add_request(slot, device_id), deadline)
            added.append(device_id)
            undo.append((f"remove vCPU {device_id}", _removal(session, device_id)))
    except BaseException as exc:
        raise with_notes(exc, undo_all(undo))  # noqa: B904 (the same exception, its message amended)
    return {"vcpus": wanted, "was": present, "max": most, "added": added}


def _removal(session: Session, device_id: str) -> Callable[[Deadline], Optional[str]]:
    return lambda grace: _ask_removal(session, device_id, grace)


def _ask_removal(session: Session, device_id: str, deadline: Deadline) -> Optional[str]:
    session.execute(Request("device_del", {"id": device_id}), deadline)
    reply = session.execute(Request("qom-list", {"path": PERIPHERAL.rstrip("/")}), deadline).get("return")
    if isinstance(reply, list) and any(isinstance(entry, dict) and entry.get("name") == device_id for entry in reply):
        return f"vCPU {device_id} that qmpctl added is asked to go, and goes once the guest releases it"
    return None


def _placement(slot: dict[str, Any]) -> str:
    props = slot.get("props") or {}
    return ", ".join(f"{key}={props[key]}" for key in PLACEMENT if key in props)


def _removable(slot: dict[str, Any]) -> Optional[str]:
    """The device id of a plugged vCPU that was hot-plugged (device_del takes it); None for a boot vCPU."""
    return _device_id(str(slot.get("qom-path") or ""))


def _plugged_ids(session: Session, deadline: Deadline) -> set[str]:
    return {device_id for device_id in (_removable(slot) for slot in slots(session, deadline)
                                        if slot.get("qom-path")) if device_id}


def set_count(session: Session, deadline: Deadline, wanted: int, wait_seconds: float = DEFAULT_WAIT) -> dict[str, Any]:
    """Plug or unplug vCPUs until the VM has ``wanted``."""
    found = slots(session, deadline)
    present = _count([slot for slot in found if slot.get("qom-path")])
    if wanted < present:
        return unplug(session, deadline, wanted, wait_seconds, found)
    return plug(session, deadline, wanted)


def unplug(session: Session, deadline: Deadline, wanted: int, wait_seconds: float,
           found: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """device_del the highest hot-plugged vCPUs, one at a time, each awaited (DEVICE_DELETED), until ``wanted``.

    Refused before anything is sent when that would take a vCPU the VM
    started with. ``wait_seconds`` bounds the whole wait for the guest, which
    does not count against ``deadline``; running out is exit 4, with the vCPU
    still asked to go named (QEMU keeps the request pending).
    """
    found = slots(session, deadline) if found is None else found
    plugged = [slot for slot in found if slot.get("qom-path")]
    present = _count(plugged)
    most = _count(found)
    chosen: list[str] = []
    total = present
    for slot in reversed(plugged):
        device_id = _removable(slot)
        if total <= wanted or device_id is None:
            continue
        chosen.append(device_id)
        total -= int(slot.get("vcpus-count") or 1)
    if total > wanted:
        at_start = [slot for slot in plugged if _removable(slot) is None]
        named = "; ".join(f"{slot.get('qom-path')} ({_placement(slot)})" for slot in at_start)
        raise UsageError(f"the VM cannot go down to {wanted} vCPUs: {len(at_start)} were present at start and "
                         f"cannot be unplugged ({named}); only hot-plugged vCPUs can go, so {_count(at_start)} is "
                         "the fewest; nothing was changed")
    if total != wanted:
        raise UsageError(f"{wanted} vCPUs cannot be reached by unplugging whole slots (the VM has {present})")
    wait = Deadline(wait_seconds)
    removed: list[str] = []
    for device_id in chosen:
        _unplug_one(session, deadline, device_id, wait, wait_seconds, removed)
        removed.append(device_id)
    return {"vcpus": wanted, "was": present, "max": most, "removed": removed}


def _unplug_one(session: Session, deadline: Deadline, device_id: str, wait: Deadline, wait_seconds: float,
                removed: list[str]) -> None:
    from qmpctl.wire.waiting import event_named, wait_until

    done = f"; unplugged before it: {', '.join(removed)}" if removed else ""
    request = Request("device_del", {"id": device_id})
    try:
        try:
            session.execute(request, deadline)
        except VmError as exc:
            exc.add_note(f"vCPU {device_id} was not asked to go{done}" + (
                " (QEMU takes vCPU unplug requests once the guest OS has switched ACPI CPU hotplug to its modern "
                "interface: a VM that has not booted an OS, or runs only firmware, refuses them)"
                if "not supported device type" in exc.message else ""))
            raise
        try:
            with deadline.paused():
                wait_until(session, lambda: _released(session, device_id, wait.within(deadline)), wait,
                           f"the guest to release vCPU {device_id}",
                           event=event_named("DEVICE_DELETED", device=device_id))
        except DeadlineExceeded:
            if not wait.expired():
                raise
            raise DeadlineExceeded(
                f"the guest did not release vCPU {device_id} within {wait_seconds:g}s (a guest without an OS, or "
                f"without CPU hot-unplug, never does); vCPU {device_id} stays with its unplug request "
                f"pending{done}", sent=request.as_dict()) from None
    except KeyboardInterrupt:
        with shielded():
            note = _after_interrupt(session, device_id)
        raise Interrupted(f"interrupted while unplugging vCPU {device_id}: {note}{done}") from None


def _released(session: Session, device_id: str, deadline: Deadline) -> Optional[bool]:
    return True if device_id not in _plugged_ids(session, deadline) else None


def _after_interrupt(session: Session, device_id: str) -> str:
    """Ctrl-C or SIGTERM after device_del: give the guest a moment, then say whether the vCPU went."""
    from qmpctl.wire.waiting import event_named, wait_until

    grace = Deadline(INTERRUPTED_UNPLUG_GRACE)
    try:
        wait_until(session, lambda: _released(session, device_id, grace), grace,
                   f"the guest to release vCPU {device_id}", event=event_named("DEVICE_DELETED", device=device_id))
    except QmpctlError:
        return (f"vCPU {device_id} stays with its unplug request pending: it goes once the guest releases it "
                "('qmpctl vcpus' shows whether it did)")
    return f"the guest released vCPU {device_id}"
