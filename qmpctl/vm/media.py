"""CD-ROM and floppy media: insert (blockdev-change-medium) and eject, always with a format.

QEMU given a medium without a format probes it, and a qcow2 header names a
backing file QEMU then opens: a guest that wrote such a header into a raw
image would read that host file. So the format is given, or detected here
from the first bytes the way hotplug-disk detects it (a qcow2 that names
another file needs --format). The drive must be removable: a fixed disk is
refused before anything is sent.
"""

from __future__ import annotations

import os

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Optional

PERIPHERAL = "/machine/peripheral/"
ID_PLAN_NOTE = ("a plan, not the exact request (--dry-run connects to nothing): the run first checks on the VM that "
                "{device} is a CD-ROM or floppy drive")


class Drive(NamedTuple):
    """A removable drive from query-block."""

    name: str
    """Its device id, else its drive name."""
    qdev: str
    drive: str
    removable: bool
    locked: bool
    tray_open: Optional[bool]
    medium: Optional[str]


def _device_id(qdev: str) -> str:
    if not qdev.startswith("/"):
        return qdev
    return qdev[len(PERIPHERAL):].split("/", 1)[0] if qdev.startswith(PERIPHERAL) else ""


def drives(session: Session, deadline: Deadline) -> list[Drive]:
    reply = session.execute(Request("query-block"), deadline).get("return")
    found = []
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, dict):
            continue
        qdev = str(entry.get("qdev") or "")
        drive = str(entry.get("device") or "")
        inserted = entry.get("inserted")
        medium = str(inserted.get("file")) if isinstance(inserted, dict) and inserted.get("file") else None
        tray = entry.get("tray_open")
        found.append(Drive(_device_id(qdev) or drive, qdev, drive, bool(entry.get("removable")),
                           bool(entry.get("locked")), bool(tray) if tray is not None else None, medium))
    return found


def removable_drive(session: Session, deadline: Deadline, device: str) -> Drive:
    """The CD-ROM or floppy drive named ``device`` (its device id or drive name); exit 2 for anything else."""
    known = drives(session, deadline)
    for drive in known:
        if device in (drive.name, drive.drive) and device:
            if not drive.removable:
                raise UsageError(f"{device} is not a CD-ROM or floppy drive (its medium cannot be changed); "
                                 "for disks use hotplug-disk and unplug-disk")
            return drive
    names = ", ".join(drive.name for drive in known if drive.removable) or "none"
    raise UsageError(f"the VM has no drive {device!r} (its CD-ROM and floppy drives: {names})")


def _qmp_id(drive: Drive) -> dict[str, str]:
    """How QEMU is told the drive: ``id`` (the device id or QOM path) where it has one, else the drive name."""
    return {"id": drive.name if drive.name != drive.drive else drive.qdev} if drive.qdev else {"device": drive.drive}


def check_medium(path: str, image_format: Optional[str], *, is_local: bool) -> tuple[str, str]:
    """The absolute path and the format to send; exit 2 for a file that is missing or cannot be read."""
    from qmpctl.vm.block import check_image

    filename, detected = check_image(path, image_format, is_local=is_local)
    if is_local and not os.access(filename, os.R_OK):
        raise UsageError(f"cannot read {filename}: permission denied")
    return filename, detected


def change_request(target: dict[str, str], filename: str, image_format: str, read_only: bool) -> Request:
    arguments: dict[str, Any] = {**target, "filename": filename, "format": image_format}
    if read_only:
        arguments["read-only-mode"] = "read-only"
    return Request("blockdev-change-medium", arguments)


def eject_request(target: dict[str, str], force: bool) -> Request:
    arguments: dict[str, Any] = dict(target)
    if force:
        arguments["force"] = True
    return Request("eject", arguments)


def insert(session: Session, deadline: Deadline, device: str, filename: str, image_format: str,
           read_only: bool) -> dict[str, Any]:
    """Put ``filename`` into drive ``device`` (the old medium, if any, goes)."""
    drive = removable_drive(session, deadline, device)
    session.execute(change_request(_qmp_id(drive), filename, image_format, read_only), deadline)
    result: dict[str, Any] = {"device": drive.name, "filename": filename, "format": image_format}
    if drive.medium:
        result["replaced"] = drive.medium
    return result


def eject(session: Session, deadline: Deadline, device: str, force: bool) -> dict[str, Any]:
    """Take the medium out of drive ``device``; a tray the guest holds locked is QEMU's refusal unless forced."""
    drive = removable_drive(session, deadline, device)
    session.execute(eject_request(_qmp_id(drive), force), deadline)
    return {"device": drive.name, "ejected": drive.medium}
