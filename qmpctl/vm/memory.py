"""Memory of a running VM: DIMMs plugged all or nothing, and unplugged once the guest lets them go.

A DIMM is a RAM backend (``object-add memory-backend-ram``) and a ``pc-dimm``
device on it. QEMU takes DIMMs only when it was started with slots for them
(``-m SIZE,slots=N,maxmem=M``): without, qmpctl says so before sending
anything. Unplug only asks the guest (``device_del``); the backend goes once
the guest has released the DIMM.
"""

from __future__ import annotations

import re

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError, VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.vm.block import UndoStep

PERIPHERAL = "/machine/peripheral"
ALIGN = 2 * 1024 * 1024
MEMDEV_SUFFIX = "-mem"
ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
MAX_ID = 24
UNPLUG_PLAN_NOTE = ("a plan, not all the requests (--dry-run connects to nothing): once the guest has released the "
                    "DIMM, object-del deletes its memory backend, which the run reads from the VM first")


def memdev_of(device_id: str) -> str:
    return device_id + MEMDEV_SUFFIX


def add_requests(device_id: str, size: int) -> list[Request]:
    return [Request("object-add", {"qom-type": "memory-backend-ram", "id": memdev_of(device_id), "size": size}),
            Request("device_add", {"driver": "pc-dimm", "id": device_id, "memdev": memdev_of(device_id)})]


def check_size(size: int) -> int:
    if size % ALIGN:
        raise UsageError(f"SIZE must be a multiple of 2 MiB (QEMU's DIMM alignment), got {size} bytes")
    return size


def _machine_memory(session: Session, deadline: Deadline) -> dict[str, Any]:
    reply = session.execute(Request("qom-get", {"path": "/machine", "property": "memory"}), deadline).get("return")
    return reply if isinstance(reply, dict) else {}


def dimms(session: Session, deadline: Deadline) -> list[dict[str, Any]]:
    reply = session.execute(Request("query-memory-devices"), deadline).get("return")
    found = []
    for entry in reply if isinstance(reply, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("data"), dict):
            found.append(entry["data"])
    return found


def _device_ids(session: Session, deadline: Deadline) -> set[str]:
    reply = session.execute(Request("qom-list", {"path": PERIPHERAL}), deadline).get("return")
    return {str(entry.get("name")) for entry in reply if isinstance(entry, dict)} if isinstance(reply, list) else set()


def _mib(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB"


def hotplug(session: Session, deadline: Deadline, device_id: str, size: int) -> dict[str, Any]:
    """object-add + device_add pc-dimm; the backend is deleted again when the DIMM is refused."""
    from qmpctl.vm.block import undo_all, with_notes

    memory = _machine_memory(session, deadline)
    slots = int(memory.get("slots") or 0)
    if not slots:
        raise UsageError("the VM has no memory slots, so no DIMM can be added: start QEMU with "
                         "-m SIZE,slots=N,maxmem=M (for example -m 1G,slots=4,maxmem=8G)")
    plugged = dimms(session, deadline)
    if len(plugged) >= slots:
        raise UsageError(f"all {slots} memory slots of the VM are in use")
    base, most = int(memory.get("size") or 0), int(memory.get("max-size") or 0)
    used = base + sum(int(dimm.get("size") or 0) for dimm in plugged)
    if used + size > most:
        raise UsageError(f"{_mib(size)} more would exceed the VM's maxmem ({_mib(most)}; it has {_mib(used)}): "
                         f"at most {_mib(max(0, most - used))} can be added")
    if device_id in _device_ids(session, deadline):
        raise UsageError(f"the VM already has a device with id {device_id!r}: choose another --id")
    backend, device = add_requests(device_id, size)
    memdev = memdev_of(device_id)
    undo: list[UndoStep] = []
    drop = (f"delete memory backend {memdev}", lambda grace: _drop_backend(session, memdev, grace))
    try:
        try:
            session.execute(backend, deadline)
        except VmError:
            raise  # QEMU refused it: nothing was added (the id may be someone else's)
        except BaseException:
            undo.append(drop)  # cut short after sending: it may have been added
            raise
        undo.append(drop)
        ask = (f"remove DIMM {device_id}", lambda grace: _ask_removal(session, device_id, grace))
        try:
            session.execute(device, deadline)
        except VmError:
            raise
        except BaseException:
            undo.append(ask)  # cut short after sending: the DIMM may be there
            raise
    except BaseException as exc:
        raise with_notes(exc, undo_all(undo))  # noqa: B904 (the same exception, its message amended)
    return {"id": device_id, "size": size, "memdev": memdev, "memory": used + size, "max": most}


def _object_del(session: Session, memdev: str, deadline: Deadline) -> None:
    """Delete a memory backend (an undo step: it has nothing to add)."""
    session.execute(Request("object-del", {"id": memdev}), deadline)
    return None


def _ask_removal(session: Session, device_id: str, deadline: Deadline) -> Optional[str]:
    """A DIMM leaves only when the guest lets it go: ask (if it is there); say so when it did not go at once."""
    if device_id not in _device_ids(session, deadline):
        return None
    session.execute(Request("device_del", {"id": device_id}), deadline)
    if device_id in _device_ids(session, deadline):
        return (f"the DIMM {device_id} qmpctl added is asked to go; once the guest releases it, "
                f"'qmpctl unplug-memory {device_id}' deletes its backend")
    return None


def _drop_backend(session: Session, memdev: str, deadline: Deadline) -> None:
    """Delete the backend this call added, if it got as far as QEMU."""
    reply = session.execute(Request("qom-list", {"path": "/objects"}), deadline).get("return")
    if isinstance(reply, list) and any(isinstance(entry, dict) and entry.get("name") == memdev for entry in reply):
        _object_del(session, memdev, deadline)
    return None


def _gone(session: Session, device_id: str, deadline: Deadline) -> Optional[bool]:
    return True if device_id not in _device_ids(session, deadline) else None


def _remove_left_behind(session: Session, device_id: str, deadline: Deadline) -> dict[str, Any]:
    """``unplug-memory ID`` of a DIMM already gone: delete the backend hotplug-memory named after it, if it stayed."""
    memdev = memdev_of(device_id)
    try:
        _object_del(session, memdev, deadline)
    except VmError:
        raise UsageError(f"the VM has no DIMM with id {device_id!r} (query-memory-devices lists them)") from None
    return {"id": device_id, "deleted-memdev": memdev,
            "note": f"DIMM {device_id} was already gone; deleted the memory backend it left: {memdev}"}


def unplug(session: Session, deadline: Deadline, device_id: str, wait_seconds: float) -> dict[str, Any]:
    """device_del, wait until the guest released the DIMM (``wait_seconds``), then object-del its backend."""
    dimm = next((dimm for dimm in dimms(session, deadline) if dimm.get("id") == device_id), None)
    if dimm is None:
        return _remove_left_behind(session, device_id, deadline)
    memdev = str(dimm.get("memdev") or "").rsplit("/", 1)[-1] or None
    from qmpctl.vm.unplug import unplug_with_backend

    unplug_with_backend(session, deadline, device_id, wait_seconds, what="DIMM",
                        gone=lambda within: _gone(session, device_id, within), backend=memdev, kind="memory backend",
                        delete=lambda name, within: _object_del(session, name, within),
                        why_not="a guest without an OS, or one that uses the memory, does not",
                        again=f"'qmpctl unplug-memory {device_id}'")
    return {"id": device_id, "deleted-memdev": memdev}
