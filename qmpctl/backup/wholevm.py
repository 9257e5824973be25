"""The whole VM: which of its disks a chain run backs up, which it leaves out and why, and what the VM is called.

``backup --into DIR`` with no DEVICE backs up every disk that holds data the
guest can change and qmpctl can copy through QMP: every block device with a
medium and a guest device that is writable, the UEFI variables
(``pflash1``) included. It lists what it leaves out under ``skipped``:
read-only media (a CD-ROM, the firmware's code), empty drives, drives no
guest device uses, and a TPM, whose state swtpm keeps in its own folder.
``--exclude NAME`` and DEVICEs given by name narrow the set; every name goes
through :func:`qmpctl.vm.disks.find_disk`, so any of a disk's names works.

The copy itself is :func:`qmpctl.backup.chain.backup_chain`: every chosen
disk in one grouped transaction, as with DEVICEs given by hand.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from qmpctl.backup import chain
from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError, VmError
from qmpctl.vm.block import block_devices
from qmpctl.vm.disks import Disk, find_disk
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session, Target

if TYPE_CHECKING:
    from qmpctl.backup.folder import ChainFolder
    from qmpctl.vm.jobs import Progress

PFLASH_QDEV = "/machine/system.flash"
"""query-block's ``qdev`` of the pc and q35 machines' flash devices (``flash0`` code, ``flash1`` variables)."""
PFLASH_NOTE = ("UEFI variables on pflash: QEMU cannot store a bitmap in a flash image, so its bitmap lives in "
               "QEMU's memory only; once QEMU restarts, the next run starts a new chain with a full copy (a small "
               "one)")
TPM_REASON = ("a TPM's state is kept by swtpm in its own folder on the VM's host, not in a block device: qmpctl "
              "cannot copy it through QMP (back that folder up with the VM's other host files)")
DISK_KEYS = ("device", "level", "chain", "image", "bitmap", "bytes", "size", "seconds", "reason", "host")
"""The members of one disk's summary (chain.py prints one disk's summary as the whole result)."""
VM_NAME = re.compile(r"[^/\x00]+\Z")


class Selection(NamedTuple):
    """The disks a run backs up (by the name its chains carry), what it leaves out, and notes per disk."""

    devices: tuple[str, ...]
    skipped: list[dict[str, str]]
    notes: dict[str, str]


def _key(disk: Disk) -> tuple[str, str, str]:
    return disk.qdev, disk.drive, disk.top


def chain_name(disk: Disk) -> str:
    """The name a disk's chains carry: stable across QEMU starts and distinct between disks: the device id,
    the drive name (``-drive``), else the node name (``-blockdev``, named by whoever started QEMU)."""
    return disk.device_id or disk.drive or disk.top or disk.qdev


def _skip_reason(disk: Disk) -> Optional[str]:
    if not disk.qdev:
        return "no guest device uses this drive"
    if not disk.top:
        return "no medium (an empty drive)"
    if disk.info.get("ro"):
        if disk.qdev.startswith(PFLASH_QDEV):
            return "read-only firmware code: it comes with the firmware package, not from the guest"
        return "read-only medium (a CD-ROM or another read-only image): the guest cannot change it"
    return None


def _tpms(session: Session, deadline: Deadline) -> list[dict[str, str]]:
    """Every TPM the VM has, as a skipped entry; none when this QEMU has no TPM support at all."""
    try:
        reply = session.execute(Request("query-tpm"), deadline).get("return")
    except VmError:  # the VM answered with an error: a QEMU built without TPM
        return []
    tpms = reply if isinstance(reply, list) else []
    return [{"device": str(tpm.get("id") or "tpm"), "reason": TPM_REASON} for tpm in tpms if isinstance(tpm, dict)]


def select_disks(session: Session, deadline: Deadline, devices: tuple[str, ...],
                 exclude: tuple[str, ...]) -> Selection:
    """The disks of this run: ``devices`` as named (all the VM's copyable disks when empty), less ``exclude``."""
    left_out = {_key(find_disk(session, deadline, name)) for name in exclude}
    notes: dict[str, str] = {}
    skipped: list[dict[str, str]] = []
    chosen: list[str] = []
    if devices:
        for name in devices:
            disk = find_disk(session, deadline, name)
            if _key(disk) not in left_out:
                chosen.append(name)
                if disk.qdev.startswith(PFLASH_QDEV):
                    notes[name] = PFLASH_NOTE
    else:
        for entry in block_devices(session, deadline):
            name = str(entry.get("qdev") or entry.get("device") or "")
            if not name:
                continue
            disk = find_disk(session, deadline, name)
            if _key(disk) in left_out:
                continue
            reason = _skip_reason(disk)
            if reason is not None:
                skipped.append({"device": disk.label, "reason": reason})
                continue
            chosen.append(chain_name(disk))
            if disk.qdev.startswith(PFLASH_QDEV):
                notes[chain_name(disk)] = PFLASH_NOTE
        skipped += _tpms(session, deadline)
    if not chosen:
        what = "every DEVICE given was excluded" if devices else "the VM has no disk qmpctl can back up"
        raise UsageError(f"{what}: nothing to back up" + (f" (skipped: {', '.join(item['device'] for item in skipped)})"
                                                          if skipped else ""))
    return Selection(tuple(chosen), skipped, notes)


def as_disks(result: dict[str, Any]) -> dict[str, Any]:
    """One disk's result in the form of several: ``{"disks": [...], "seconds": ...}`` and the run's members;
    an estimate as several disks' estimate, ``{"estimate": true, "disks": [...], "bytes": ...}`` (it ran no
    job, so it has no ``seconds``)."""
    if "disks" in result:
        return result
    disk = {key: value for key, value in result.items() if key in DISK_KEYS}
    if result.get("estimate"):
        return {"estimate": True, "disks": [disk], "bytes": disk.get("bytes") or 0,
                **{key: value for key, value in result.items() if key not in DISK_KEYS and key != "estimate"}}
    whole: dict[str, Any] = {"disks": [disk], "seconds": result.get("seconds")}
    whole.update({key: value for key, value in result.items() if key not in DISK_KEYS})
    return whole


def backup_vm(session: Session, deadline: Deadline, options_for: Callable[[tuple[str, ...]], chain.ChainOptions],
              devices: tuple[str, ...], exclude: tuple[str, ...], *, agent: Optional[Target] = None,
              progress: Optional[Progress] = None, progress_every: float,
              folder: Optional[ChainFolder] = None) -> dict[str, Any]:
    """Back up the VM's disks (:func:`select_disks`) as one chain run; the result lists the disks and ``skipped``."""
    selection = select_disks(session, deadline, devices, exclude)
    result = as_disks(chain.backup_chain(session, deadline, options_for(selection.devices), agent=agent,
                                          progress=progress, progress_every=progress_every, folder=folder))
    for disk in result["disks"]:
        note = selection.notes.get(str(disk.get("device")))
        if note is not None:
            disk["note"] = note
    result["skipped"] = selection.skipped
    return result


# -- the VM's name, for a fleet's DIR/<vm>/ -----------------------------------------------------------

def check_vm_name(name: str, where: str) -> str:
    """``name`` as a folder of DIR: no ``/``, not starting with ``.``, not empty."""
    if not VM_NAME.match(name) or name.startswith("."):
        raise UsageError(f"the VM's name {name!r} ({where}) cannot be a folder of DIR: a name with '/' or starting "
                         "with '.' is refused (give the VM another -name, or back it up on its own with --into)")
    return name


def vm_name(session: Session, deadline: Deadline, target: Target) -> str:
    """What the VM is called: QEMU's ``-name`` (libvirt sets the domain's), else its socket's file name."""
    reply = session.execute(Request("query-name"), deadline).get("return")
    name = reply.get("name") if isinstance(reply, dict) else None
    if isinstance(name, str) and name:
        return check_vm_name(name, "its -name")
    domain = getattr(target, "uri", False) is not False and getattr(target, "name", None)
    if isinstance(domain, str) and domain:
        return check_vm_name(domain, "its libvirt domain")
    path = getattr(getattr(target, "address", None), "path", None)
    if isinstance(path, str) and path:
        return check_vm_name(os.path.splitext(os.path.basename(path))[0], f"from its socket {path}")
    raise UsageError(f"the VM at {target} has no -name and no socket file to name it by: give it -name NAME")


def fallback_name(target: Any) -> str:
    """A VM's name without asking it (it could not be reached): libvirt's domain, its socket's file name."""
    name = getattr(target, "name", None) if getattr(target, "uri", False) is not False else None
    path = getattr(getattr(target, "address", None), "path", None)
    if not name and isinstance(path, str) and path:
        name = os.path.splitext(os.path.basename(path))[0]
    return str(name or target)


def make_vm_folder(root: str, name: str) -> str:
    """``root/name`` on this host, made if missing, belonging to ``root``'s owner as the chains in it will
    (QEMU, as that user, writes the images); never through a link."""
    from qmpctl.backup import safe_open

    dir_fd = safe_open.open_dir(root, f"--into {root}")
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        except FileExistsError:
            return os.path.join(root, name)
        owner = os.fstat(dir_fd)
        if owner.st_uid != os.geteuid() or owner.st_gid != os.getegid():
            descriptor = safe_open.open_dir(name, os.path.join(root, name), dir_fd=dir_fd)
            try:
                os.fchown(descriptor, owner.st_uid, owner.st_gid)
            finally:
                os.close(descriptor)
    finally:
        os.close(dir_fd)
    return os.path.join(root, name)
