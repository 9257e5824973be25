"""vCPUs of a running VM: how many, how many at most, and plugging more.

``query-hotpluggable-cpus`` lists every slot the machine has (up to
``maxcpus``) with the device type and the properties that place a CPU in it
(socket, die, core, thread, node); a plugged slot has a ``qom-path``. A new
vCPU is ``device_add`` of that type with all of those properties. Taking
vCPUs away needs the guest's help (it must offline and eject them), so this
module only adds; a failed plug asks the CPUs it added to go again.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Callable, Optional
    from qmpctl.vm.block import UndoStep

PERIPHERAL = "/machine/peripheral/"
PLACEMENT = ("socket-id", "die-id", "cluster-id", "module-id", "core-id", "thread-id", "node-id")
"""The properties that place a CPU, in the order free slots are filled."""
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
        raise UsageError(f"the VM has {present} vCPUs; qmpctl adds vCPUs but does not take them away (the guest "
                         "must offline and release them): give {present} or more".replace("{present}", str(present)))
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
