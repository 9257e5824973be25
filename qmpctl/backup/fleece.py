"""Image fleecing for chain runs (``backup --into DIR --fleece DIR2``): the guest never waits on DIR.

Without fleecing, a backup job copies each old cluster to its target before a
guest write to it goes through (copy-before-write), so the guest waits on DIR.
With fleecing, per disk, as qmpbackup does it (QEMU 7.1 or later):

1. a temporary qcow2 image the size of the disk, created exclusively in DIR2
   under an unpredictable name, is added (``<job>-fleece`` over
   ``<job>-fleece-file``);
2. a ``copy-before-write`` filter ``<job>-cbw`` goes over the node the device
   reads now (a throttle filter there stays under it), with that image as its
   target, ``on-cbw-error: break-snapshot`` and a ``cbw-timeout``: a broken
   scratch disk fails the backup, never the guest;
3. ``qom-set`` of the device's ``drive`` puts the filter in the device's path:
   this is the backup's instant;
4. a ``snapshot-access`` node ``<job>-snap`` over the filter shows the disk as
   of that instant, and the backup job reads it at the target's pace.

An incremental job needs its bitmap on the node it reads: a non-persistent
bitmap is added on ``<job>-snap`` and the chain's bitmap merged into it.
``qom-set`` is no transaction action, so several disks are switched with the
VM paused (``stop``, then ``cont`` on every path) to keep one instant.

Everything is taken back on every path, newest first: the snapshot node, the
drive put back on the node it had, the filter, the image node, the file. A
qmpctl killed with -9 leaves the filter in the device's path; the next run in
the same DIR (whose lock it then holds) knows the nodes by their names and the
file by its name, which carries DIR's folder tag, and takes them back.
"""

from __future__ import annotations

import contextlib
import os
import re
import time

from qmpctl.backup import qemu_img, safe_open
from qmpctl.deadline import Deadline
from qmpctl.errors import Busy, QmpctlError, UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.signals import shielded
from qmpctl.timing import CBW_TIMEOUT, ROLLBACK_GRACE
from qmpctl.vm.block import blockdev_del, named_nodes, undo_all
from qmpctl.wire.request import Request

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.vm.block import UndoStep
    from qmpctl.wire.targets import Session

MIN_QEMU = (7, 1)
"""copy-before-write with a target image and snapshot-access as fleecing needs them came with QEMU 7.1."""
FILE_NAME = re.compile(r"qmpctl-fleece-([0-9a-f]{8})-[A-Za-z0-9_.-]*-[0-9a-f]{16}\.qcow2\Z")
"""A temporary image of a run in DIR2: ``qmpctl-fleece-<DIR's folder tag>-<disk>-<random>.qcow2``."""
SNAP_BITMAP = "fleece"
"""The bitmap an incremental's job reads, on the snapshot node (which goes with it)."""
BROKEN_SNAPSHOT = "Permission denied"
"""How the job's reads fail once the filter broke the snapshot: copy-before-write answers them with EACCES."""


def nodes_of(job_id: str) -> tuple[str, str, str, str]:
    """The filter, the snapshot node, the temporary image and its file node of job ``job_id``."""
    return f"{job_id}-cbw", f"{job_id}-snap", f"{job_id}-fleece", f"{job_id}-fleece-file"


def pause_mark(job_id: str) -> str:
    """An empty node (null-co) that lives while the run has the VM paused: a run killed in that moment leaves it,
    and the next run knows the VM is paused because of it, not by its owner."""
    return f"{job_id}-paused"


def prepare_dir(path: str) -> str:
    """DIR2 as an absolute path: it must exist and be a folder on this host; usage errors before connecting."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise UsageError(f"--fleece {path}: {'it is not a directory' if os.path.lexists(path) else 'no such folder'}"
                         " (give an existing folder on a fast local disk)")
    return path


def check_qemu(session: Session, deadline: Deadline) -> None:
    """Refuse a QEMU older than 7.1 before anything is changed (exit 2)."""
    reply = session.execute(Request("query-version"), deadline).get("return")
    qemu = reply.get("qemu") if isinstance(reply, dict) else None
    if not isinstance(qemu, dict):
        return
    version = (int(qemu.get("major") or 0), int(qemu.get("minor") or 0))
    if version < MIN_QEMU:
        raise UsageError(f"--fleece needs QEMU 7.1 or later (this VM runs {qemu.get('major')}.{qemu.get('minor')}."
                         f"{qemu.get('micro')}); nothing was changed")


class FleecedDisk:
    """One disk's fleecing: its nodes, the node its device read before, and how far the set-up got."""

    def __init__(self, job_id: str, qdev: str, top: str, size: int, label: str) -> None:
        self.job_id = job_id
        self.qdev = qdev
        self.top = top
        """The node the device read before the switch, and reads again after it."""
        self.size = size
        self.label = label
        self.cbw, self.snap, self.image, self.file = nodes_of(job_id)
        self.path = ""
        self.image_added = False
        self.cbw_added = False
        self.switched = False
        self.snap_added = False


class Fleecing:
    """The fleecing of one run's disks in DIR2: set up, switched at one instant, and taken back on every path."""

    def __init__(self, session: Session, deadline: Deadline, where: str, tag: str) -> None:
        self.session = session
        self.deadline = deadline
        self.where = where
        self.tag = tag
        self.disks: list[FleecedDisk] = []
        self.paused_for = 0.0
        """Seconds the VM was paused to switch several disks at one instant (0: it was not)."""
        self.dir_fd: Optional[int] = None
        self.notes: list[str] = []

    def explain(self, error: Optional[str]) -> str:
        """Why a fleeced job's read was refused, which QEMU's own message ("Permission denied") does not say."""
        if error != BROKEN_SNAPSHOT:
            return ""
        return (f"; the snapshot broke: the old data of a guest write could not be kept in {self.where} "
                f"(full or failing, or slower than {CBW_TIMEOUT}s), and the guest's write went through")

    def add(self, job_id: str, qdev: str, top: str, size: int, label: str, name: str) -> FleecedDisk:
        if not qdev or not top:
            raise UsageError(f"--fleece: {name} is on no guest device, whose drive the filter would go under; "
                             "nothing was changed")
        disk = FleecedDisk(job_id, qdev, top, size, label)
        self.disks.append(disk)
        return disk

    # set-up

    def create_images(self) -> None:
        """Each disk's temporary image in DIR2, created exclusively (never over a file) and formatted by qemu-img."""
        if self.dir_fd is None:
            self.dir_fd = safe_open.open_dir(self.where, f"--fleece {self.where}")
        self._remove_unused()
        for disk in self.disks:
            name, descriptor = safe_open.create_unpredictable(self._prefix(disk), ".qcow2", self.where, self.dir_fd)
            disk.path = os.path.join(self.where, name)  # before formatting: a failure must remove it
            try:
                safe_open.owned_like(self.dir_fd, descriptor)
                qemu_img.create(disk.path, disk.size, self.deadline, descriptor=descriptor)
            finally:
                os.close(descriptor)

    def _prefix(self, disk: FleecedDisk) -> str:
        return f"qmpctl-fleece-{self.tag}-{disk.label[:200]}-"

    def _remove_unused(self) -> None:
        """Temporary images of this DIR's disks in DIR2 that no node uses: a run killed between creating one and
        adding it left them (the run holds these disks' locks in DIR: their owner is gone)."""
        assert self.dir_fd is not None
        prefixes = [self._prefix(disk) for disk in self.disks]
        for name in sorted(os.listdir(self.dir_fd)):
            if FILE_NAME.match(name) and any(name.startswith(prefix)
                                             and len(name) == len(prefix) + safe_open.RANDOM_LENGTH + len(".qcow2")
                                             for prefix in prefixes):
                try:
                    os.unlink(name, dir_fd=self.dir_fd)
                    self.notes.append(f"removed {os.path.join(self.where, name)}: the temporary image of a run "
                                      "that was killed before it used it")
                except OSError:
                    pass

    def add_nodes(self) -> None:
        """The temporary image and the filter over the node each device reads (not yet in its path)."""
        for disk in self.disks:
            disk.image_added = True  # before sending: an interrupt may come between request and reply
            self.session.execute(Request("blockdev-add", {
                "driver": "qcow2", "node-name": disk.image,
                "file": {"driver": "file", "node-name": disk.file, "filename": disk.path}}), self.deadline)
            disk.cbw_added = True
            self.session.execute(Request("blockdev-add", cbw_options(disk.cbw, disk.top, disk.image)), self.deadline)

    @contextlib.contextmanager
    def instant(self, several: bool) -> Iterator[bool]:
        """Around the switches: the VM paused when several disks of a running VM switch (and running again on
        every path, a second Ctrl-C included); True when the window is one instant (a paused VM, or one disk)."""
        status = self.session.execute(Request("query-status"), self.deadline).get("return")
        running = isinstance(status, dict) and bool(status.get("running"))
        if not (running and several):
            yield not running
            return
        started = time.monotonic()
        stopped = False
        marks: list[str] = []
        try:
            for disk in self.disks:
                marks.append(pause_mark(disk.job_id))  # before sending: an interrupt may come before the reply
                self.session.execute(Request("blockdev-add", {"driver": "null-co", "node-name": marks[-1],
                                                              "size": 0}), self.deadline)
            stopped = True
            self.session.execute(Request("stop"), self.deadline)
            yield True
        finally:
            with shielded():  # a VM left paused is a lost VM: cont runs whatever happened, within its grace
                grace = Deadline(ROLLBACK_GRACE)
                try:
                    if stopped:
                        try:
                            self.session.execute(Request("cont"), grace)
                        except QmpctlError as exc:
                            self.notes.append(f"could not let the VM run again after the switch (cont): "
                                              f"{exc.message}")
                        self.paused_for = round(time.monotonic() - started, 3)
                finally:
                    self._delete_marks(marks, grace)

    def _delete_marks(self, marks: list[str], grace: Deadline) -> None:
        for mark in marks:
            try:
                if mark in named_nodes(self.session, grace):  # an interrupt may have come before it was added
                    blockdev_del(self.session, mark, grace)
            except QmpctlError as exc:
                self.notes.append(f"could not delete block node {mark}: {exc.message}")

    def switch(self) -> None:
        """Each device's drive onto its filter (the instant), then the snapshot node over the filter."""
        for disk in self.disks:
            disk.switched = True
            self.session.execute(qom_set_drive(disk.qdev, disk.cbw), self.deadline)
        for disk in self.disks:
            disk.snap_added = True
            self.session.execute(Request("blockdev-add", {"driver": "snapshot-access", "node-name": disk.snap,
                                                          "file": disk.cbw}), self.deadline)

    # taking back

    def undo_steps(self) -> list[UndoStep]:
        """Oldest first (:func:`~qmpctl.vm.block.undo_all` runs them newest first): the file, the image node,
        the filter, the drive put back, the snapshot node."""
        steps: list[UndoStep] = []
        for disk in self.disks:
            if disk.path:
                steps.append((f"remove the temporary image {disk.path}", self._remove_file(disk)))
            if disk.image_added:
                steps.append((f"delete block node {disk.image}", self._delete(disk, "image_added", disk.image)))
            if disk.cbw_added:
                steps.append((f"delete block node {disk.cbw}", self._delete(disk, "cbw_added", disk.cbw)))
            if disk.switched:
                steps.append((f"put the drive of {disk.qdev} back on {disk.top}", self._switch_back(disk)))
            if disk.snap_added:
                steps.append((f"delete block node {disk.snap}", self._delete(disk, "snap_added", disk.snap)))
        return steps

    def take_back(self) -> list[str]:
        """Every node gone, every drive on its own node, every file removed (bounded, never raises)."""
        notes = self.notes + undo_all(self.undo_steps())
        self.notes = []
        self.close()
        return notes

    def discard_files(self) -> list[str]:
        """The VM went away and its nodes with it: only the files are left to remove."""
        notes = []
        for disk in self.disks:
            note = self._remove_file(disk)(Deadline(ROLLBACK_GRACE))
            if note:
                notes.append(note)
        self.close()
        return notes

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def _delete(self, disk: FleecedDisk, flag: str, node: str) -> Any:
        def step(grace: Deadline) -> None:
            if node in named_nodes(self.session, grace):  # an interrupt may have come before it was added
                blockdev_del(self.session, node, grace)
            setattr(disk, flag, False)
        return step

    def _switch_back(self, disk: FleecedDisk) -> Any:
        def step(grace: Deadline) -> None:
            self.session.execute(qom_set_drive(disk.qdev, disk.top), grace)
            disk.switched = False
        return step

    def _remove_file(self, disk: FleecedDisk) -> Any:
        def step(grace: Deadline) -> Optional[str]:
            if not disk.path:
                return None
            try:
                if self.dir_fd is None:
                    self.dir_fd = safe_open.open_dir(self.where, f"--fleece {self.where}")
                os.unlink(os.path.basename(disk.path), dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                return f"could not remove the temporary image {disk.path}: {exc.strerror or exc}"
            except QmpctlError as exc:
                return f"could not remove the temporary image {disk.path}: {exc.message}"
            disk.path = ""
            return None
        return step


def cbw_options(node: str, file: str, target: str) -> dict[str, Any]:
    """The filter's blockdev-add arguments; no ``bitmap``: the snapshot then covers the whole disk, as a full
    needs (with one, clusters outside it read as the disk is now)."""
    return {"driver": "copy-before-write", "node-name": node, "file": file, "target": target,
            "on-cbw-error": "break-snapshot", "cbw-timeout": CBW_TIMEOUT}


def qom_path(qdev: str) -> str:
    """query-block's ``qdev`` as a QOM path: a device with an id (a ``scsi-hd``) is named by its id alone, and
    lives under /machine/peripheral; the others by their path (a virtio-blk device's backend, a pflash)."""
    return qdev if qdev.startswith("/") else f"/machine/peripheral/{qdev}"


def qom_set_drive(qdev: str, node: str) -> Request:
    return Request("qom-set", {"path": qom_path(qdev), "property": "drive", "value": node})


def bitmap_actions(snap: str, node: str, source: str, granularity: Optional[int]) -> list[dict[str, Any]]:
    """An incremental's bitmap on the snapshot node: the chain's bitmap (on the disk's format node) merged in."""
    data: dict[str, Any] = {"node": snap, "name": SNAP_BITMAP, "persistent": False}
    if granularity:
        data["granularity"] = granularity
    return [{"type": "block-dirty-bitmap-add", "data": data},
            {"type": "block-dirty-bitmap-merge", "data": {"node": snap, "target": SNAP_BITMAP,
                                                          "bitmaps": [{"node": node, "name": source}]}}]


# -- what a killed run left ------------------------------------------------------------------------

def leftovers(session: Session, deadline: Deadline, job_id: str, name: str, qdev: str,
              filters: list[tuple[str, str]], format_node: str, nodes: dict[str, Any], tags: set[str],
              where: str) -> list[str]:
    """Take back the fleecing nodes and file of job ``job_id`` a killed qmpctl left, when its file names one of
    ``tags`` (this DIR's, whose lock the run holds); notes saying so. Another DIR's are Busy."""
    cbw, snap, image, file = nodes_of(job_id)
    found = [node for node in (cbw, snap, image, file) if node in nodes]
    if not found:
        return _paused_by(session, job_id, nodes, where)
    path = str(nodes.get(file, {}).get("file") or nodes.get(image, {}).get("file") or "")
    match = FILE_NAME.match(os.path.basename(path)) if path else None
    if match is None or match[1] not in tags:
        raise Busy(f"busy: the VM already has the fleecing node {found[0]} for {name} (another qmpctl backing it "
                   f"up into another DIR{f', with {path}' if path else ''}); nothing was changed")
    below = [node for node, _ in filters] + [format_node]
    disk = FleecedDisk(job_id, qdev, below[below.index(cbw) + 1] if cbw in below[:-1] else "", 0, "")
    disk.path = path
    disk.image_added, disk.cbw_added, disk.snap_added = image in nodes, cbw in nodes, snap in nodes
    disk.switched = bool(filters) and filters[0][0] == cbw and bool(disk.top)
    fleecing = Fleecing(session, deadline, os.path.dirname(path), match[1])
    fleecing.disks.append(disk)
    with shielded():
        notes = fleecing.take_back()
    said = [f"took back the fleecing of {name} a qmpctl that is gone left (it held the lock in {where}): "
            f"{', '.join(found)}" + (f", the drive put back on {disk.top}" if cbw in below[:-1] else "")
            + ("" if disk.path else f", {path} removed")]
    return said + notes + _paused_by(session, job_id, nodes, where)


def _paused_by(session: Session, job_id: str, nodes: dict[str, Any], where: str) -> list[str]:
    """A run killed while it had the VM paused left its mark: the VM runs again (if it is still paused)."""
    mark = pause_mark(job_id)
    if mark not in nodes:
        return []
    notes = []
    with shielded():
        grace = Deadline(ROLLBACK_GRACE)
        try:
            status = session.execute(Request("query-status"), grace).get("return")
            if isinstance(status, dict) and status.get("status") == "paused":
                session.execute(Request("cont"), grace)
                notes.append(f"let the VM run again: a qmpctl that is gone (it held the lock in {where}) had "
                             "paused it to switch its drives")
            blockdev_del(session, mark, grace)
        except QmpctlError as exc:
            notes.append(f"could not take back {mark}, left by a qmpctl that is gone: {exc.message}")
    return notes
