"""Internal snapshots of a running VM: save, load, list and delete, all or nothing.

QEMU (6.0 and later) runs them as jobs (``snapshot-save``, ``snapshot-load``,
``snapshot-delete``) on block *nodes*. A snapshot is one tag on every
writable qcow2 disk, one of which also holds the VM state. What QEMU does not
protect against, qmpctl checks before it starts:

- a writable disk that cannot hold snapshots (raw) would fail the save after
  the others were written, so it is refused up front unless excluded;
- a failed ``snapshot-load`` stops a running VM and leaves it in
  ``restore-vm``, so the tag is looked up on every disk first;
- QEMU cannot rename a snapshot, so replacing one (``--force``) saves the new
  state under a temporary tag first, and there is a complete snapshot to go
  back to at every moment.

A save that fails or is interrupted deletes its tag from every disk again.
"""

from __future__ import annotations

import os
import time

from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, Interrupted, JobFailed, QmpctlError, UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.signals import shielded
from qmpctl.timing import SNAPSHOT_CLEANUP_GRACE
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Optional

PERIPHERAL = "/machine/peripheral/"
SNAPSHOT_DRIVERS = ("qcow2",)
"""Formats whose images hold internal snapshots (of those qmpctl attaches)."""
DEFAULT_WAIT = 3600.0
REPLACING_SUFFIX = ".qmpctl-new"
"""The temporary tag of a --force save; it names the new state until the old snapshot is gone."""


class Disk(NamedTuple):
    """One guest-visible drive with a medium, as query-block shows it."""

    name: str
    """The device id (vd0), else the drive name (-drive id=), else the node name."""
    node: str
    driver: str
    read_only: bool
    drive: str
    snapshots: list[dict[str, Any]]
    bitmaps: list[str]
    """Its dirty bitmaps (a backup chain's): QEMU refuses to load a snapshot onto a disk that has any."""

    def known_as(self, word: str) -> bool:
        return word in (self.name, self.node, self.drive) and word != ""

    @property
    def holds_snapshots(self) -> bool:
        return self.driver in SNAPSHOT_DRIVERS

    def has(self, tag: str) -> bool:
        return any(entry.get("name") == tag for entry in self.snapshots)

    def entry(self, tag: str) -> Optional[dict[str, Any]]:
        return next((entry for entry in self.snapshots if entry.get("name") == tag), None)


def _device_id(qdev: str) -> str:
    """``/machine/peripheral/vd0/virtio-backend`` or ``vd0`` -> ``vd0``; anonymous devices give ''."""
    if not qdev.startswith("/"):
        return qdev
    return qdev[len(PERIPHERAL):].split("/", 1)[0] if qdev.startswith(PERIPHERAL) else ""


def disks(session: Session, deadline: Deadline) -> list[Disk]:
    """Every drive with a medium in it (empty CD-ROM and floppy drives are left out)."""
    reply = session.execute(Request("query-block"), deadline).get("return")
    found = []
    for entry in reply if isinstance(reply, list) else []:
        inserted = entry.get("inserted") if isinstance(entry, dict) else None
        if not isinstance(inserted, dict) or not inserted.get("node-name"):
            continue
        image = inserted.get("image") or {}
        drive = str(entry.get("device") or "")
        node = str(inserted["node-name"])
        name = _device_id(str(entry.get("qdev") or "")) or drive or node
        snapshots = [snap for snap in image.get("snapshots") or [] if isinstance(snap, dict)]
        bitmaps = [str(bitmap.get("name")) for bitmap in inserted.get("dirty-bitmaps") or []
                   if isinstance(bitmap, dict)]
        found.append(Disk(name, node, str(inserted.get("drv", "")), bool(inserted.get("ro")), drive, snapshots,
                          bitmaps))
    return found


def _find(all_disks: list[Disk], word: str, option: str) -> Disk:
    for disk in all_disks:
        if disk.known_as(word):
            return disk
    names = ", ".join(disk.name for disk in all_disks) or "none"
    raise UsageError(f"{option} {word}: the VM has no such disk (its disks: {names})")


class Selection(NamedTuple):
    """Which disks a snapshot covers, and which it leaves out and why."""

    covered: list[Disk]
    vmstate: Disk
    read_only: list[Disk]
    excluded: list[Disk]

    def devices(self) -> list[str]:
        return [disk.node for disk in self.covered]

    def summary(self) -> dict[str, Any]:
        return {"disks": [disk.name for disk in self.covered], "vmstate": self.vmstate.name,
                "read-only": [disk.name for disk in self.read_only],
                "excluded": [disk.name for disk in self.excluded]}


def select(all_disks: list[Disk], vmstate: Optional[str], exclude: list[str]) -> Selection:
    """The writable qcow2 disks (less --exclude), the VM state's disk; raw writable disks are refused."""
    excluded = [_find(all_disks, word, "--exclude") for word in exclude]
    read_only = [disk for disk in all_disks if disk.read_only and disk not in excluded]
    writable = [disk for disk in all_disks if not disk.read_only and disk not in excluded]
    unable = [disk for disk in writable if not disk.holds_snapshots]
    if unable:
        listed = ", ".join(f"{disk.name} ({disk.driver})" for disk in unable)
        raise UsageError(f"cannot snapshot: writable disk(s) {listed} cannot hold snapshots (only qcow2 can); "
                         f"leave them out with --exclude {unable[0].name}, knowing they are not saved or restored")
    if not writable:
        raise UsageError("cannot snapshot: the VM has no writable qcow2 disk to hold the snapshot")
    if vmstate is None:
        state = writable[0]
    else:
        state = _find(all_disks, vmstate, "--vmstate")
        if state not in writable:
            raise UsageError(f"--vmstate {vmstate}: the VM state goes on one of the snapshot's disks: "
                             + ", ".join(disk.name for disk in writable))
    return Selection(writable, state, read_only, excluded)


MAX_TAG = 128 - len(REPLACING_SUFFIX)
"""Room for the temporary tag of a --force save."""


def check_tag(name: str) -> str:
    if not name or len(name) > MAX_TAG or any(ord(char) < 0x20 for char in name) or name.isdigit():
        raise UsageError(f"snapshot name {name!r} is not valid: 1 to {MAX_TAG} printable characters, not only "
                         "digits (QEMU reads a number as a snapshot id)")
    return name


# -- the requests ------------------------------------------------------------------------------------

def job_id(verb: str) -> str:
    return f"qmpctl-snapshot-{verb}-{os.getpid()}"


def save_request(tag: str, selection: Selection) -> Request:
    return Request("snapshot-save", {"job-id": job_id("save"), "tag": tag, "vmstate": selection.vmstate.node,
                                     "devices": selection.devices()})


def load_request(tag: str, vmstate: str, devices: list[str]) -> Request:
    return Request("snapshot-load", {"job-id": job_id("load"), "tag": tag, "vmstate": vmstate, "devices": devices})


def delete_request(tag: str, devices: list[str]) -> Request:
    return Request("snapshot-delete", {"job-id": job_id("delete"), "tag": tag, "devices": devices})


PLAN_NOTE = ("a plan, not the exact requests (--dry-run connects to nothing): the run sends the node names of the "
             "VM's writable qcow2 disks (disk0 stands for them here), checks the name on each of them first, and "
             "waits for each job and dismisses it")


def plan(verb: str, tag: str, vmstate: Optional[str]) -> list[Request]:
    """What --dry-run shows: the job requests with placeholder nodes."""
    state = vmstate or "disk0"
    if verb == "save":
        return [Request("snapshot-save", {"job-id": job_id("save"), "tag": tag, "vmstate": state,
                                          "devices": [state]})]
    if verb == "load":
        return [load_request(tag, state, [state])]
    return [delete_request(tag, [state])]


# -- jobs --------------------------------------------------------------------------------------------

def _run_job(session: Session, deadline: Deadline, request: Request, wait: Deadline) -> Optional[str]:
    """Start one snapshot job, wait until it has concluded, dismiss it; its error, or None.

    Whatever interrupts the wait (Ctrl-C, --wait-timeout, a lost monitor),
    the job is ended and dismissed before the exception goes on.
    """
    from qmpctl.vm import jobs

    identifier = str((request.arguments or {})["job-id"])
    try:
        session.execute(request, deadline)  # a signal right after QEMU accepted it still finds the job below
        with deadline.paused():
            state = jobs.wait_for_end(session, identifier, wait, deadline)
    except BaseException:
        with shielded():
            try:
                jobs.finish(session, identifier, Deadline(SNAPSHOT_CLEANUP_GRACE))
            except QmpctlError:
                pass  # the caller's cleanup says what is left
        raise
    jobs.dismiss(session, identifier, deadline)
    return state.error


def _delete_everywhere(session: Session, tag: str, nodes: list[str]) -> Optional[str]:
    """Take a half-made ``tag`` off ``nodes`` (a missing tag is no error); a note when that failed."""
    if not nodes:
        return None
    grace = Deadline(SNAPSHOT_CLEANUP_GRACE)
    with shielded():
        try:
            error = _run_job(session, grace, delete_request(tag, nodes), grace)
        except QmpctlError as exc:
            error = exc.message
    if error:
        return f"snapshot {tag!r} may be left on {', '.join(nodes)} ({error}): 'qmpctl snapshot delete' removes it"
    return None


def _with_note(error: BaseException, note: Optional[str]) -> BaseException:
    if note and isinstance(error, QmpctlError):
        error.message = f"{error.message}; {note}"
        error.args = (error.message,)
    return error


def _save_tag(session: Session, deadline: Deadline, tag: str, selection: Selection, wait: Deadline,
              keep_note: str = "") -> None:
    """snapshot-save ``tag``; on any failure no trace of ``tag`` is left on any disk."""
    request = save_request(tag, selection)
    try:
        error = _run_job(session, deadline, request, wait)
        if error is not None:
            raise JobFailed(f"snapshot-save {tag!r} failed: {error}", sent=request.as_dict())
    except KeyboardInterrupt:
        note = _delete_everywhere(session, tag, selection.devices())
        left = note or f"no part of snapshot {tag!r} is left on any disk"
        raise Interrupted(f"interrupted while saving snapshot {tag!r}: {left}{keep_note}") from None
    except BaseException as exc:
        if isinstance(exc, JobFailed) and "already exists" in exc.message:
            raise  # another client saved the tag meanwhile: it is theirs, not ours to delete
        note = _delete_everywhere(session, tag, selection.devices())
        if isinstance(exc, DeadlineExceeded) and wait.expired():
            exc = DeadlineExceeded(f"snapshot-save {tag!r} took longer than --wait-timeout; it was stopped",
                                   sent=request.as_dict())
        raise _with_note(exc, (note or f"no part of snapshot {tag!r} is left on any disk") + keep_note) from None


def _holders(all_disks: list[Disk], tag: str) -> list[Disk]:
    return [disk for disk in all_disks if disk.has(tag)]


def save(session: Session, deadline: Deadline, tag: str, *, vmstate: Optional[str], exclude: list[str],
         force: bool, wait_seconds: float) -> dict[str, Any]:
    """Save the VM state and every writable qcow2 disk under ``tag`` (see the module's docstring)."""
    check_tag(tag)
    all_disks = disks(session, deadline)
    selection = select(all_disks, vmstate, exclude)
    wait = Deadline(wait_seconds)
    old = [disk for disk in _holders(all_disks, tag) if not disk.read_only]
    result = {"name": tag, **selection.summary()}
    if old and not force:
        raise UsageError(f"snapshot {tag!r} already exists on {', '.join(disk.name for disk in old)}: "
                         "choose another name, or --force to replace it")
    if not old:
        _save_tag(session, deadline, tag, selection, wait)
        return result
    temporary = tag + REPLACING_SUFFIX
    if _holders(all_disks, temporary):
        raise UsageError(f"snapshot {temporary!r} exists (a replacement cut short): 'qmpctl snapshot delete "
                         f"{temporary}' first, once you know you do not need it")
    _save_tag(session, deadline, temporary, selection, wait)
    old_nodes = [disk.node for disk in old]
    kept = f"; the new state is kept as snapshot {temporary!r}"
    try:
        error = _run_job(session, deadline, delete_request(tag, old_nodes), wait)
        if error is not None:
            raise JobFailed(f"deleting the old snapshot {tag!r} failed: {error}")
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while replacing snapshot {tag!r}{kept}") from None
    except QmpctlError as exc:
        raise _with_note(exc, kept.lstrip("; ")) from None
    _save_tag(session, deadline, tag, selection, wait, keep_note=kept)
    note = _delete_everywhere(session, temporary, selection.devices())
    result["replaced"] = True
    if note:
        result["note"] = note
    return result


def load(session: Session, deadline: Deadline, tag: str, *, exclude: list[str], wait_seconds: float) -> dict[str, Any]:
    """Go back to snapshot ``tag`` on every disk it covers; refused before anything is touched when one lacks it."""
    all_disks = disks(session, deadline)
    excluded = [_find(all_disks, word, "--exclude") for word in exclude]
    writable = [disk for disk in all_disks if not disk.read_only and disk.holds_snapshots and disk not in excluded]
    holders = [disk for disk in writable if disk.has(tag)]
    if not holders:
        raise UsageError(f"no snapshot {tag!r} on any disk of the VM ('qmpctl snapshot list' shows them)")
    missing = [disk for disk in writable if not disk.has(tag)]
    if missing:
        raise UsageError(f"snapshot {tag!r} is missing on {', '.join(disk.name for disk in missing)}: loading it "
                         "would leave those disks as they are now, out of step with the rest; nothing was "
                         f"changed (--exclude {missing[0].name} loads the others anyway)")
    tracked = [disk for disk in holders if disk.bitmaps]
    if tracked:
        listed = "; ".join(f"{disk.name}: {', '.join(disk.bitmaps)}" for disk in tracked)
        raise UsageError(f"snapshot {tag!r} cannot be loaded while its disks have dirty bitmaps ({listed}): QEMU "
                         "refuses, and a refused load leaves the VM stopped in restore-vm; nothing was changed. "
                         "Remove the bitmaps first (block-dirty-bitmap-remove); for a backup chain's bitmap, the "
                         "next backup --into then starts a new chain")
    state = next((disk for disk in holders if int((disk.entry(tag) or {}).get("vm-state-size") or 0) > 0), None)
    if state is None:
        raise UsageError(f"snapshot {tag!r} has no VM state on any disk (a disk-only snapshot): qmpctl loads "
                         "whole-VM snapshots only")
    request = load_request(tag, state.node, [disk.node for disk in holders])
    try:
        error = _run_job(session, deadline, request, Deadline(wait_seconds))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while loading snapshot {tag!r}: {_run_state(session)}") from None
    if error is not None:
        raise JobFailed(f"snapshot-load {tag!r} failed: {error}; {_run_state(session)}", sent=request.as_dict())
    return {"name": tag, "disks": [disk.name for disk in holders], "vmstate": state.name,
                       "excluded": [disk.name for disk in excluded]}


def _run_state(session: Session) -> str:
    try:
        reply = session.execute(Request("query-status"), Deadline(SNAPSHOT_CLEANUP_GRACE)).get("return") or {}
    except QmpctlError:
        return "the VM's state is unknown"
    status = reply.get("status", "unknown")
    if status == "restore-vm":
        return ("the VM is stopped in state restore-vm with memory that may be half loaded: load a snapshot "
                "again, or reset it")
    return f"the VM is {status}"


def delete(session: Session, deadline: Deadline, tag: str, *, wait_seconds: float) -> dict[str, Any]:
    """Delete snapshot ``tag`` from every writable disk that holds it."""
    all_disks = disks(session, deadline)
    holders = _holders(all_disks, tag)
    if not holders:
        raise UsageError(f"no snapshot {tag!r} on any disk of the VM ('qmpctl snapshot list' shows them)")
    writable = [disk for disk in holders if not disk.read_only]
    result: dict[str, Any] = {"name": tag, "disks": [disk.name for disk in writable]}
    kept = [disk.name for disk in holders if disk.read_only]
    if kept:
        result["kept-on-read-only"] = kept
    if not writable:
        raise UsageError(f"snapshot {tag!r} is only on read-only disk(s) {', '.join(kept)}: nothing to delete")
    request = delete_request(tag, [disk.node for disk in writable])
    try:
        error = _run_job(session, deadline, request, Deadline(wait_seconds))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while deleting snapshot {tag!r}; 'qmpctl snapshot list' shows what "
                          "is left") from None
    if error is not None:
        raise JobFailed(f"snapshot-delete {tag!r} failed: {error}", sent=request.as_dict())
    return result


# -- listing -----------------------------------------------------------------------------------------

def _clock(seconds: int, nanoseconds: int) -> str:
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{second:02d}.{nanoseconds // 1_000_000:03d}"


def listing(session: Session, deadline: Deadline) -> list[dict[str, Any]]:
    """Every snapshot tag, with the disks holding it, its date, VM state size and VM clock."""
    found: dict[str, dict[str, Any]] = {}
    for disk in disks(session, deadline):
        for entry in disk.snapshots:
            name = str(entry.get("name", ""))
            seconds = int(entry.get("date-sec") or 0)
            item = found.setdefault(name, {
                "name": name, "disks": [],
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)),
                "vm-state-size": 0,
                "vm-clock": _clock(int(entry.get("vm-clock-sec") or 0), int(entry.get("vm-clock-nsec") or 0)),
            })
            item["disks"].append(disk.name)
            size = int(entry.get("vm-state-size") or 0)
            if size:
                item["vm-state-size"] = size
                item["vmstate"] = disk.name
    return sorted(found.values(), key=lambda item: (item["date"], item["name"]))
