"""A disk's I/O limits: read them, change only the ones named, read back what is in force.

``block_set_io_throttle`` wants all six base limits and resets whatever it is
not given, so changing one limit means reading the others first
(``query-block`` → ``inserted``) and sending them back unchanged. The disk is
addressed by its qdev path (``/machine/peripheral/vd0/virtio-backend``): on
QEMU 7.2 the bare device id of a virtio-blk disk is refused ("Device does not
have a block device backend").
"""

from __future__ import annotations

from collections.abc import Mapping

from qmpctl.vm.block import device_id_of
from qmpctl.vm.disks import find_disk
from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError, VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any

KINDS = ("bps", "iops")
BASE = ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")
MAXES = tuple(f"{name}_max" for name in BASE)
LENGTHS = tuple(f"{name}_max_length" for name in BASE)
LIMITS = BASE + MAXES + LENGTHS + ("iops_size",)
"""Every numeric limit, named as QEMU names it (``--bps-rd-max`` is ``bps_rd_max``)."""
VALUE_MAX = 10 ** 15
"""QEMU's THROTTLE_VALUE_MAX."""
LENGTH_MAX = 86400


PLAN_NOTE = ("a plan, not the exact requests (--dry-run connects to nothing): the run reads the disk's limits "
             "first (query-block), keeps those not named, addresses the disk by its qdev path, and reads the "
             "limits back afterwards")


def option_name(field: str) -> str:
    """``bps_rd_max`` -> ``--bps-rd-max``: how messages name a limit."""
    return "--" + field.replace("_", "-")


def current_limits(disk: dict[str, Any]) -> dict[str, Any]:
    """The limits in force on a disk: all six base values, and the optional ones QEMU reports."""
    inserted = disk.get("inserted")
    if not isinstance(inserted, dict):
        raise VmError("DeviceNotActive", f"disk {disk.get('qdev') or disk.get('device')} has no medium: "
                      "there is nothing to throttle")
    limits: dict[str, Any] = {name: int(inserted.get(name) or 0) for name in BASE}
    for name in MAXES + LENGTHS + ("iops_size",):
        if isinstance(inserted.get(name), int) and inserted[name]:
            limits[name] = inserted[name]
    if limits_on(limits) and isinstance(inserted.get("group"), str):
        limits["group"] = inserted["group"]
    return limits


def limits_on(limits: Mapping[str, Any]) -> bool:
    return any(limits.get(name) for name in BASE)


def merge(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The limits to send: ``current`` with ``changes`` applied, the rest kept as they are.

    Setting a total limit (``--bps``) clears the read/write limits of the same
    kind, and setting a read or write limit clears the total, along with their
    bursts: QEMU refuses both at once, and the user asked for the new one. A
    limit set to 0 takes its burst along, and the last operations limit
    ``--iops-size``, unless those are named too.
    """
    merged = dict(current)
    for kind in KINDS:
        total = {kind, f"{kind}_max", f"{kind}_max_length"}
        split = {f"{kind}_{side}{suffix}" for side in ("rd", "wr") for suffix in ("", "_max", "_max_length")}
        if total & set(changes):
            for name in split:
                merged.pop(name, None)
        elif split & set(changes):
            for name in total:
                merged.pop(name, None)
    merged.update(changes)
    for name in BASE:
        merged[name] = merged.get(name) or 0
    for name in MAXES + LENGTHS + ("iops_size",):
        if not merged.get(name):
            merged.pop(name, None)  # 0 means "not set" for the optional ones
    for base in BASE:  # a limit turned off takes its burst along, unless the burst is named too
        if not merged[base] and f"{base}_max" not in changes and f"{base}_max_length" not in changes:
            merged.pop(f"{base}_max", None)
            merged.pop(f"{base}_max_length", None)
    if not any(merged[name] for name in ("iops", "iops_rd", "iops_wr")) and "iops_size" not in changes:
        merged.pop("iops_size", None)
    if not limits_on(merged):
        merged.pop("group", None)
    return merged


def check_changes(changes: Mapping[str, Any]) -> None:
    """Contradictions on the command line itself: a total together with read/write of the same kind."""
    for kind in KINDS:
        for suffix in ("", "_max", "_max_length"):
            total = f"{kind}{suffix}"
            split = [f"{kind}_{side}{suffix}" for side in ("rd", "wr") if changes.get(f"{kind}_{side}{suffix}")]
            if changes.get(total) and split:
                raise UsageError(f"{option_name(total)} limits reads and writes together: it cannot be combined "
                                 f"with {' or '.join(option_name(name) for name in split)}")


def check_limits(limits: Mapping[str, Any]) -> None:
    """QEMU's own rules for a limit set, checked before anything is sent (exit 2 with the reason)."""
    for name in LIMITS:
        value = limits.get(name, 0)
        ceiling = LENGTH_MAX if name in LENGTHS else VALUE_MAX
        if not 0 <= value <= ceiling:
            raise UsageError(f"{option_name(name)} must be between 0 and {ceiling}, got {value}")
    for base in BASE:
        burst, length = limits.get(f"{base}_max", 0), limits.get(f"{base}_max_length", 0)
        if length and not burst:
            raise UsageError(f"{option_name(base + '_max_length')} needs a burst rate: "
                             f"give {option_name(base + '_max')}")
        if burst and not limits.get(base):
            raise UsageError(f"{option_name(base + '_max')} is a burst above {option_name(base)}, which is not set")
        if burst and burst < limits[base]:
            raise UsageError(f"{option_name(base + '_max')} ({burst}) cannot be lower than "
                             f"{option_name(base)} ({limits[base]})")
    if limits.get("iops_size") and not any(limits.get(name) for name in ("iops", "iops_rd", "iops_wr")):
        raise UsageError("--iops-size needs an operations limit: give --iops, --iops-rd or --iops-wr")


def throttle_request(qdev: str, limits: Mapping[str, Any]) -> Request:
    return Request("block_set_io_throttle", {"id": qdev, **limits})


def plan(disk: dict[str, Any], changes: Mapping[str, Any], *, off: bool = False) -> Request:
    """The request that applies ``changes`` (or clears everything with ``off``) to ``disk``."""
    qdev = disk.get("qdev")
    if not qdev:
        raise UsageError(f"disk {disk.get('device')!r} is not attached to a guest device: QEMU throttles a "
                         "disk through its device")
    if off:
        return throttle_request(str(qdev), {name: 0 for name in BASE})
    check_changes(changes)
    merged = merge(current_limits(disk), changes)
    if "group" in changes and not limits_on(merged):
        raise UsageError("--group puts the disk's limits in a group, and the disk has none: give limits too")
    check_limits(merged)
    return throttle_request(str(qdev), merged)


def _entry(session: Session, deadline: Deadline, device: str) -> dict[str, Any]:
    """query-block's entry of the disk ``device`` names (see :func:`~qmpctl.vm.disks.find_disk`)."""
    disk = find_disk(session, deadline, device)
    if not disk.entry:
        raise UsageError(f"node {disk.top!r} is not attached to a guest device: QEMU throttles a disk through "
                         "its device")
    return disk.entry


def show(session: Session, deadline: Deadline, device: str) -> dict[str, Any]:
    """``{"device", "qdev", "limits"}`` of ``device`` as QEMU reports them now."""
    disk = _entry(session, deadline, device)
    return {"device": device_id_of(str(disk.get("qdev") or "")) or disk.get("device"), "qdev": disk.get("qdev"),
            "limits": current_limits(disk)}


def set_limits(session: Session, deadline: Deadline, device: str, changes: Mapping[str, Any], *,
               off: bool = False, group: str | None = None) -> dict[str, Any]:
    """Change the named limits of ``device`` (or clear all with ``off``); return what is in force afterwards."""
    disk = _entry(session, deadline, device)
    wanted = dict(changes)
    if group is not None:
        wanted["group"] = group
    session.execute(plan(disk, wanted, off=off), deadline)
    return show(session, deadline, device)
