"""Backup chains on dirty bitmaps: one full, then only what changed, for months, without breaking silently.

A chain lives in ``DIR/<chain>/``: ``0001-full.qcow2``, ``0002-inc.qcow2`` ...
each incremental backed by the one before (relative path, so the folder can
move), and ``chain.json``, the manifest, which lists an image only once its
job has succeeded (written to a temp file, then renamed). The disk carries a
dirty bitmap named after the chain; an incremental copies what it recorded
(``sync=bitmap``, ``bitmap-mode=on-success``: a failed or cancelled job keeps
every bit for the next run).

The file-system side (lock, listing, images, manifest) is a
:class:`~qmpctl.backup.folder.ChainFolder`: DIR on this host, or on the host of
an ``ssh://`` VM, where QEMU opens the images.

When the bitmap cannot be trusted (missing after a restart with a raw disk or
removal by hand, ``inconsistent`` after QEMU died, disabled, the disk
resized, an image of the chain gone), the run starts a new chain with a full
backup and says why. Nothing is ever overwritten: images are created
exclusively, formatted by qemu-img (or by QEMU on a remote host), then
attached with blockdev-add.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import time

from qmpctl.backup.full import DEFAULT_WAIT_TIMEOUT, MAX_JOB_ID, target_nodes
from qmpctl.vm.block import ROLLBACK_GRACE, blockdev_del, named_nodes, undo_all, with_notes
from qmpctl.vm.disks import find_disk
from qmpctl.backup.folder import LocalFolder, NewImage, View
from qmpctl.backup.manifest import MANIFEST_VERSION
from qmpctl.deadline import Deadline
from qmpctl.guest.freeze import FreezeReport
from qmpctl.errors import (Busy, ConnectError, DeadlineExceeded, Interrupted, JobFailed, ProtocolError, QmpctlError,
                           UsageError, VmError)
from qmpctl.vm.jobs import JobState, dismiss, failure_detail, finish, list_jobs, wait_for_end
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.signals import shielded
from qmpctl.wire.targets import Session, Target
from qmpctl.wire.waiting import CHECK_EVERY

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.vm.block import UndoStep
    from qmpctl.backup.folder import ChainFolder
    from qmpctl.vm.jobs import Progress

BITMAP_PREFIX = "qmpctl-"
DEFAULT_FREEZE_TIMEOUT = 10.0
THAW_GRACE = 10.0
"""The thaw's own deadline: it must run even when the call's deadline is spent."""
IMAGE_NAME = re.compile(r"\d{4}-(full|inc)\.qcow2\Z")
CANCELLED = "Operation canceled"
"""The error of a job QEMU cancelled because another of its grouped transaction failed."""


# -- options ----------------------------------------------------------------------------------------

class ChainOptions:
    """What ``backup DEVICE... --into DIR`` was asked to do; invalid combinations are refused on construction.

    ``freeze`` is ``no``, ``yes`` (fail with exit 3 when the agent cannot be
    reached) or ``try`` (back up unfrozen then).
    """

    __slots__ = ("devices", "into", "full", "keep_chains", "speed", "wait_timeout", "freeze", "freeze_timeout")

    def __init__(self, devices: tuple[str, ...], into: str, full: bool = False, keep_chains: Optional[int] = None,
                 speed: Optional[int] = None, wait_timeout: float = DEFAULT_WAIT_TIMEOUT, freeze: str = "no",
                 freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT) -> None:
        self.devices = devices
        self.into = into
        self.full = full
        self.keep_chains = keep_chains
        self.speed = speed
        self.wait_timeout = wait_timeout
        self.freeze = freeze
        self.freeze_timeout = freeze_timeout
        if not self.devices:
            raise UsageError("give at least one DEVICE to back up")
        if len(set(self.devices)) != len(self.devices):
            raise UsageError("each DEVICE may be given once")
        if self.keep_chains is not None and self.keep_chains < 1:
            raise UsageError(f"--keep-chains must be 1 or more (the current chain is always kept), "
                             f"got {self.keep_chains}")
        if not self.wait_timeout > 0:
            raise UsageError(f"--wait-timeout must be more than 0 seconds, got {self.wait_timeout:g}")
        if self.freeze not in ("no", "yes", "try"):
            raise UsageError(f"--freeze takes no value or 'try', got {self.freeze!r}")
        if not self.freeze_timeout > 0:
            raise UsageError(f"--freeze-timeout must be more than 0 seconds, got {self.freeze_timeout:g}")

    def requests(self) -> list[Request]:
        """What --dry-run shows: the transaction of a first run (images and nodes are only known at run time)."""
        adds = [bitmap_add_action(device, f"{BITMAP_PREFIX}CHAIN", True) for device in self.devices]
        backups = [backup_action(job_id_for(device), device, target_nodes(job_id_for(device))[0], None, self.speed)
                   for device in self.devices]
        if len(self.devices) == 1:
            return [transaction(adds + backups, grouped=False)]
        return [transaction(adds, grouped=False), transaction(backups, grouped=True)]

    def plan_note(self, side: Optional[str] = None) -> str:
        """Why --dry-run shows a plan: what the run learns from DIR and the VM first. ``side``: DIR's host."""
        where = (f"DIR is {side}, worked on over SSH, and QEMU formats the images there with blockdev-create"
                 if side else "qemu-img formats the images")
        return ("a plan, not the exact requests (--dry-run connects to nothing): the run first locks each disk "
                "in DIR, reads its chains and asks the VM for the disk and its bitmaps; it creates each new image "
                f"exclusively and adds it (blockdev-add) before the transaction; {where}. A first run or --full "
                f"adds the bitmap {BITMAP_PREFIX}<chain> as shown; a later run adds none and copies what the "
                "chain's bitmap recorded (sync=bitmap)")


def _label(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", device.strip("#/")) or "disk"


def job_id_for(device: str) -> str:
    """The same job id for the same disk at every run: a second qmpctl on the same disk finds it taken."""
    return f"chain-{_label(device)}"[:MAX_JOB_ID].rstrip("-.")


# -- requests ---------------------------------------------------------------------------------------

def bitmap_add_action(device: str, bitmap: str, persistent: bool) -> dict[str, Any]:
    return {"type": "block-dirty-bitmap-add", "data": {"node": device, "name": bitmap, "persistent": persistent}}


def backup_action(job_id: str, device: str, target: str, bitmap: Optional[str], speed: Optional[int]) -> dict[str, Any]:
    data: dict[str, Any] = {"job-id": job_id, "device": device, "target": target}
    if bitmap is None:
        data["sync"] = "full"
    else:
        data.update({"sync": "bitmap", "bitmap": bitmap, "bitmap-mode": "on-success"})
    if speed is not None:
        data["speed"] = speed
    data["auto-dismiss"] = False
    return {"type": "blockdev-backup", "data": data}


def transaction(actions: list[dict[str, Any]], grouped: bool) -> Request:
    arguments: dict[str, Any] = {"actions": actions}
    if grouped:
        arguments["properties"] = {"completion-mode": "grouped"}
    return Request("transaction", arguments)


def bitmap_remove(session: Session, device: str, bitmap: str, deadline: Deadline) -> None:
    session.execute(Request("block-dirty-bitmap-remove", {"node": device, "name": bitmap}), deadline)


# -- manifests --------------------------------------------------------------------------------------

def now_text() -> str:
    """UTC, milliseconds, ``Z``: sortable as text, readable by ``datetime.fromisoformat``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the guest's filesystems ------------------------------------------------------------------------

class Freezer:
    """The guest's filesystems frozen while the jobs start (:func:`qmpctl.guest.freeze.frozen` thaws them on
    every path), with the agent reached before anything starts and ``try`` falling back to no freeze."""

    def __init__(self, agent: Optional[Target], mode: str, timeout: float) -> None:
        self.agent = agent
        self.mode = mode
        self.timeout = timeout
        self.session: Optional[Session] = None
        self.done: Optional[FreezeReport] = None
        self.skipped: Optional[str] = None

    @property
    def report(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"frozen": False, "reason": self.skipped}
        return self.done.to_json() if self.done is not None else {}

    def connect(self, deadline: Deadline) -> None:
        """Reach the agent (within the call's ``deadline``) before anything starts: exit 3 without one,
        unless ``try``."""
        if self.mode == "no":
            return
        if self.agent is None:
            if self.mode == "try":
                self.skipped = "no guest agent was given (-a AGENT or --domain)"
                return
            raise UsageError("--freeze needs the guest agent: pass -a AGENT (its channel socket) or --domain")
        try:
            self.session = self.agent.open(deadline)
        except (ConnectError, DeadlineExceeded, ProtocolError) as exc:
            if self.mode == "try":
                self.skipped = f"the guest agent at {self.agent} cannot be reached: {exc.message}"
                return
            raise ConnectError(f"--freeze: cannot reach the guest agent at {self.agent}: {exc.message}; "
                               "nothing was started (--freeze-try backs up without freezing)") from None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        if self.session is None:
            yield
            return
        from qmpctl.guest import freeze as guest_freeze

        entered = False
        try:
            with guest_freeze.frozen(self.session, Deadline(self.timeout), thaw_timeout=THAW_GRACE) as done:
                entered, self.done = True, done
                yield
        except QmpctlError as exc:
            if isinstance(exc, ProtocolError):  # the agent broke off, not the VM: QEMU still needs cleaning up
                raise ConnectError(f"the guest agent at {self.agent} broke off: {exc.message}") from None
            if entered or isinstance(exc, Interrupted):
                raise
            if self.mode == "try":
                self.skipped = f"the guest did not freeze: {exc.message}"
                self.done = None
                yield
                return
            if isinstance(exc, DeadlineExceeded):
                raise DeadlineExceeded(f"the guest agent did not freeze the guest's filesystems within "
                                       f"--freeze-timeout {self.timeout:g}s; they were thawed and nothing was "
                                       f"started ({exc.message})") from None
            raise with_notes(exc, ["nothing was started"])  # noqa: B904 (the same exception, its message amended)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


# -- one disk of one run ----------------------------------------------------------------------------

class Disk:
    """One DEVICE of this run: where its chain stands, and what this run adds to it."""

    def __init__(self, name: str, device: str, node: str, driver: str, size: int,
                 bitmaps: dict[str, dict[str, Any]], job_id: str) -> None:
        self.name = name
        self.device = device
        self.node = node
        self.driver = driver
        self.size = size
        self.bitmaps = bitmaps
        self.job_id = job_id
        self.chain_dir = ""
        self.manifest: dict[str, Any] = {}
        self.full = True
        self.reason: Optional[str] = None
        self.stale_bitmap: Optional[str] = None
        """The previous chain's bitmap, removed once the new chain's full backup succeeded."""
        self.new: Optional[NewImage] = None
        """The image this run adds, and how far its creation got."""
        self.size_written = 0
        self.create_job: Optional[str] = None
        self.target_added = False
        self.bitmap_added = False
        self.started = ""
        self.state: Optional[JobState] = None
        self.committed = False

    @property
    def bitmap(self) -> str:
        return str(self.manifest["bitmap"])

    @property
    def persistent(self) -> bool:
        return self.driver == "qcow2"

    @property
    def target(self) -> str:
        return target_nodes(self.job_id)[0]

    @property
    def image(self) -> str:
        return self.new.path if self.new is not None else ""


def _find(session: Session, deadline: Deadline, name: str) -> Disk:
    found = find_disk(session, deadline, name)
    if not found.top:
        raise UsageError(f"disk {found.label!r} has no medium: there is nothing to back up")
    info = found.info
    image = info.get("image") if isinstance(info.get("image"), dict) else {}
    assert isinstance(image, dict)
    bitmaps = {str(entry.get("name")): entry for entry in info.get("dirty-bitmaps") or []
               if isinstance(entry, dict) and entry.get("name")}
    return Disk(name, found.block_name, found.top, str(info.get("drv") or ""),
                int(image.get("virtual-size") or 0), bitmaps, job_id_for(name))


def _why_not_incremental(disk: Disk, folder: ChainFolder, chain_dir: str, manifest: dict[str, Any],
                         sizes: dict[str, Optional[int]]) -> Optional[str]:
    """None when the chain can be extended; else why a new chain must start (``sizes``: its folder's files)."""
    bitmap = str(manifest.get("bitmap"))
    info = disk.bitmaps.get(bitmap)
    if info is None:
        return (f"bitmap {bitmap} is not on {disk.name}: QEMU was restarted and the disk is not qcow2 (bitmaps of "
                "raw disks live in memory only), QEMU was killed before it ever closed the disk cleanly, or the "
                "bitmap was removed")
    if info.get("busy"):
        raise Busy(f"busy: bitmap {bitmap} of {disk.name} is in use by a running job (another backup?); "
                   "nothing was changed")
    if info.get("inconsistent"):
        return f"bitmap {bitmap} is inconsistent: QEMU did not close {disk.name} cleanly (it crashed or was killed)"
    if not info.get("recording", True):
        return f"bitmap {bitmap} was disabled: it did not record every write"
    if int(manifest.get("size") or 0) != disk.size:
        return f"{disk.name} changed size from {manifest.get('size')} to {disk.size} bytes"
    images = manifest["images"]
    if not images:
        return f"the chain {folder.where(chain_dir)} lists no image"
    listed = {str(entry.get("file")) for entry in images}
    unlisted = sorted(name for name in sizes if IMAGE_NAME.match(name) and name not in listed)
    if unlisted:
        return (f"{folder.where(os.path.join(chain_dir, unlisted[0]))} is not in the chain's manifest: a run was "
                "killed after its job started, and QEMU may have cleared the bitmap when that job completed")
    for entry in images:
        name = str(entry.get("file"))
        path = folder.where(os.path.join(chain_dir, name))
        if sizes.get(name) is None:
            return f"{path} of the chain is missing"
        if sizes[name] != entry.get("size"):
            return f"{path} of the chain changed size since it was written"
    return None


def _unique_dir(into: str, name: str, taken: frozenset[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    return os.path.join(into, candidate)


class ChainRun:
    """One run over one or more disks: what it created, so any failure can take it all back."""

    def __init__(self, session: Session, deadline: Deadline, options: ChainOptions, disks: list[Disk],
                 folder: ChainFolder, qemu_version: str) -> None:
        self.session = session
        self.deadline = deadline
        self.options = options
        self.disks = disks
        self.folder = folder
        self.into = folder.into
        self.qemu_version = qemu_version
        self.notes: list[str] = []
        self.view = View(frozenset(), [], frozenset(), frozenset(), {})

    # planning

    def chains(self, device: str) -> list[tuple[str, dict[str, Any]]]:
        """The chain folders of ``device`` in DIR when the run looked, oldest first."""
        return [(os.path.join(self.into, name), manifest) for name, manifest in self.view.chains
                if manifest.get("device") == device]

    def plan(self, stamp: str) -> None:
        self.view = self.folder.scan(self.deadline)
        taken = self.view.names
        for disk in self.disks:
            chains = self.chains(disk.name)
            previous = chains[-1] if chains else None
            reason = None
            if previous is not None and not self.options.full:
                sizes = self.view.files.get(os.path.basename(previous[0]), {})
                reason = _why_not_incremental(disk, self.folder, *previous, sizes)
                if reason is None:
                    disk.chain_dir, disk.manifest = previous[0], json.loads(json.dumps(previous[1]))
                    disk.full = False
                    continue
            if previous is None:
                reason = f"no chain of {disk.name} in {self.folder.where(self.into)} yet"
            elif self.options.full:
                reason = "--full starts a new chain"
            disk.reason = reason
            if previous is not None and str(previous[1].get("bitmap")) in disk.bitmaps:
                disk.stale_bitmap = str(previous[1]["bitmap"])
            name = stamp if len(self.disks) == 1 else f"{stamp}-{_label(disk.name)}"
            disk.chain_dir = _unique_dir(self.into, name, taken)
            chain = os.path.basename(disk.chain_dir)
            taken |= {chain}
            bitmap = f"{BITMAP_PREFIX}{chain}"
            while bitmap in disk.bitmaps:
                bitmap += "x"
            disk.manifest = {"version": MANIFEST_VERSION, "chain": chain, "device": disk.name, "node": disk.node,
                             "bitmap": bitmap, "persistent": disk.persistent, "size": disk.size,
                             "qemu": self.qemu_version, "created": stamp, "images": []}

    def check_not_busy(self) -> None:
        jobs = list_jobs(self.session, self.deadline)
        nodes = named_nodes(self.session, self.deadline)
        for disk in self.disks:
            if disk.job_id in jobs or any(node in nodes for node in target_nodes(disk.job_id)):
                raise Busy(f"busy: the VM already has a backup job or node {disk.job_id} for {disk.name} "
                           "(another qmpctl backing it up, or one that was killed: qmpctl jobs --dismiss "
                           f"{disk.job_id} clears a concluded one); nothing was changed")

    def drop_broken_bitmaps(self) -> None:
        """A bitmap that is inconsistent or disabled is useless and blocks nothing but itself: remove it now."""
        for disk in self.disks:
            stale = disk.stale_bitmap
            if stale is not None:
                info = disk.bitmaps[stale]
                if info.get("inconsistent") or not info.get("recording", True):
                    bitmap_remove(self.session, disk.device, stale, self.deadline)
                    disk.stale_bitmap = None
            for name in self._unborn_chains(disk):
                bitmap_remove(self.session, disk.device, name, self.deadline)
                self.notes.append(f"removed bitmap {name} of {disk.name}: its chain never got a manifest "
                                  "(a first run that was killed)")

    def _unborn_chains(self, disk: Disk) -> list[str]:
        """Bitmaps of this folder's chains whose full backup never completed: they would record for nothing."""
        unborn = []
        for name, info in disk.bitmaps.items():
            folder = name[len(BITMAP_PREFIX):]
            if (name.startswith(BITMAP_PREFIX) and not info.get("busy") and folder in self.view.dirs
                    and folder not in self.view.marked and os.path.join(self.into, folder) != disk.chain_dir):
                unborn.append(name)
        return unborn

    # the run

    def create_images(self) -> None:
        """Every new image, exclusively (never over a file), in one go: one round trip to a remote host."""
        for disk in self.disks:
            number = len(disk.manifest["images"]) + 1
            image = os.path.join(disk.chain_dir, f"{number:04d}-{'full' if disk.full else 'inc'}.qcow2")
            backing = None if disk.full else str(disk.manifest["images"][-1]["file"])
            disk.new = NewImage(disk.chain_dir, image, disk.size, backing, make_dir=disk.full)  # a new name
        self.folder.create([disk.new for disk in self.disks if disk.new is not None], self.deadline)

    def add_targets(self) -> None:
        for disk in self.disks:
            target, file_node, _ = target_nodes(disk.job_id)
            disk.target_added = True  # before sending: an interrupt may come between request and reply
            # Two nodes, as backup's blockdev flow adds them: jobs --dismiss of a job left behind by a killed
            # qmpctl then deletes them (and the image, when the job failed) the same way.
            self.session.execute(Request("blockdev-add", {"driver": "file", "node-name": file_node,
                                                          "filename": disk.image}), self.deadline)
            if not self.folder.formats_images:
                self._format(disk, file_node)
            self.session.execute(Request("blockdev-add", {"driver": "qcow2", "node-name": target, "backing": None,
                                                          "file": file_node}), self.deadline)

    def _format(self, disk: Disk, file_node: str) -> None:
        """QEMU writes the qcow2 header into the empty image (blockdev-create): the VM's host needs no qemu-img.

        The backing file is named relative to the chain's folder, as qemu-img names it.
        """
        assert disk.new is not None
        options: dict[str, Any] = {"driver": "qcow2", "file": file_node, "size": disk.size}
        if disk.new.backing is not None:
            options.update({"backing-file": disk.new.backing, "backing-fmt": "qcow2"})
        disk.create_job = f"{disk.job_id}-create"
        request = Request("blockdev-create", {"job-id": disk.create_job, "options": options})
        self.session.execute(request, self.deadline)
        state = wait_for_end(self.session, disk.create_job, self.deadline, self.deadline)
        dismiss(self.session, disk.create_job, self.deadline)
        disk.create_job = None
        if state.error:
            raise JobFailed(f"QEMU could not format {self.folder.where(disk.image)}: {state.error}",
                            sent=request.as_dict(), received=state._asdict())

    def start_jobs(self) -> None:
        """Bitmaps and jobs in one transaction; several disks: all jobs grouped, from the same instant.

        QEMU refuses bitmap actions in a grouped transaction, so with several
        disks the new bitmaps are added just before: a write in between is in
        the full backup and in the bitmap, copied once more next time, never lost.
        """
        adds = [bitmap_add_action(disk.device, disk.bitmap, disk.persistent) for disk in self.disks if disk.full]
        backups = [backup_action(disk.job_id, disk.device, disk.target, None if disk.full else disk.bitmap,
                                 self.options.speed) for disk in self.disks]
        for disk in self.disks:
            disk.bitmap_added = disk.full
        if len(self.disks) == 1:
            self.session.execute(transaction(adds + backups, grouped=False), self.deadline)
        else:
            if adds:
                self.session.execute(transaction(adds, grouped=False), self.deadline)
            self.session.execute(transaction(backups, grouped=True), self.deadline)
        started = now_text()
        for disk in self.disks:
            disk.started = started

    def wait(self, wait: Deadline, progress: Optional[Progress], every: float) -> None:
        with self.deadline.paused():  # the copy has its own bound, --wait-timeout
            for disk in self.disks:
                disk.state = wait_for_end(self.session, disk.job_id, wait, self.deadline, progress, every)
        failed = [disk for disk in self.disks if disk.state is not None and disk.state.error]
        if not failed:
            return
        failed.sort(key=lambda disk: disk.state is not None and disk.state.error == CANCELLED)  # the cause first
        cause = failed[0]
        assert cause.state is not None
        message = (f"backup job {cause.job_id} of {cause.name} failed{failure_detail(self.session, cause.job_id)}: "
                   f"{cause.state.error}")
        others = [disk.name for disk in failed[1:]]
        if others:
            message += f" (and so the jobs of {', '.join(others)}, started with it, were cancelled)"
        raise JobFailed(message)

    def end_jobs(self) -> None:
        """Cancel what still runs, dismiss every job, delete the target nodes (bounded, never raises)."""
        steps: list[UndoStep] = []
        for disk in self.disks:
            if disk.create_job is not None:
                steps.append((f"end job {disk.create_job}", self._end_create(disk, disk.create_job)))
            if disk.target_added:
                steps.append((f"delete block node {disk.target}", self._del_target(disk)))
            steps.append((f"end job {disk.job_id}", self._end_job(disk)))
        self.notes += undo_all(steps)

    def _end_job(self, disk: Disk) -> Any:
        def step(grace: Deadline) -> None:
            state = finish(self.session, disk.job_id, grace)
            if state is not None:
                disk.state = state
        return step

    def _end_create(self, disk: Disk, job_id: str) -> Any:
        def step(grace: Deadline) -> None:
            finish(self.session, job_id, grace)
            disk.create_job = None
        return step

    def _del_target(self, disk: Disk) -> Any:
        def step(grace: Deadline) -> None:
            for node in target_nodes(disk.job_id)[:2]:  # the qcow2 node, then the file node under it
                if node in named_nodes(self.session, grace):
                    blockdev_del(self.session, node, grace)
            disk.target_added = False
        return step

    def commit(self) -> list[str]:
        """Record every new image in its manifest; then what the success makes obsolete goes."""
        # Reading the images back takes as long as their size: --wait-timeout again, not what --timeout has left.
        measured = self.folder.measure([disk.image for disk in self.disks], Deadline(self.options.wait_timeout))
        for disk, (size, sha256) in zip(self.disks, measured, strict=True):
            assert disk.state is not None
            disk.size_written = size
            entry = {"file": os.path.basename(disk.image), "level": "full" if disk.full else "incremental",
                     "started": disk.started, "bytes": disk.state.total, "size": size, "sha256": sha256}
            disk.manifest["images"].append(entry)
            self.folder.write_manifest(disk.chain_dir, disk.manifest, self.deadline)
            disk.committed = True
        deleted = []
        for disk in self.disks:
            if disk.stale_bitmap is not None:
                try:
                    bitmap_remove(self.session, disk.device, disk.stale_bitmap, Deadline(ROLLBACK_GRACE))
                except QmpctlError as exc:
                    self.notes.append(f"could not remove the old chain's bitmap {disk.stale_bitmap}: {exc.message}")
            if self.options.keep_chains is not None:
                deleted += self._rotate(disk)
        return deleted

    def _rotate(self, disk: Disk) -> list[str]:
        """The disk's oldest chains beyond --keep-chains (as the run found them: the lock kept them so)."""
        chains = [path for path, _ in self.chains(disk.name) if path != disk.chain_dir]
        surplus = chains[:max(len(chains) - (self.options.keep_chains or 1) + 1, 0)]
        surplus = [path for path in surplus if not self._held_by_instant(path)]
        if surplus:
            self.notes += self.folder.remove_trees(surplus, Deadline(ROLLBACK_GRACE))
        return surplus

    def _held_by_instant(self, chain_dir: str) -> bool:
        """A chain an overlay of ``restore --instant`` may still read is kept, and the run says so."""
        from qmpctl.backup.holds import references

        held = references(self.view.files.get(os.path.basename(chain_dir), {}))
        if held:
            self.notes.append(f"kept the old chain {self.folder.where(chain_dir)}: an instant restore may still "
                              f"read it ({', '.join(held)}; stream its disk, or delete the file once that disk "
                              "is gone)")
        return bool(held)

    def take_back(self) -> None:
        """After a failure: jobs ended, nodes gone, new images and bitmaps removed, manifests untouched.

        An incremental whose job completed but was not recorded cleared its
        bitmap; that bitmap is removed too, so the next run starts a new chain
        and says so, instead of building on a bitmap that lost bits.
        """
        self.end_jobs()
        steps: list[UndoStep] = []
        for disk in self.disks:
            if disk.committed:
                continue
            completed = disk.state is not None and disk.state.concluded and not disk.state.error
            if disk.bitmap_added or completed:
                steps.append((f"remove bitmap {disk.bitmap} of {disk.name}", self._remove_bitmap(disk, completed)))
        self.notes += undo_all(steps)
        self.discard()

    def discard(self) -> None:
        """Remove the images (and new folders) of disks not recorded, under a deadline of its own."""
        self.notes += self.folder.discard([disk.new for disk in self.disks if disk.new is not None
                                           and not disk.committed], Deadline(ROLLBACK_GRACE))

    def _remove_bitmap(self, disk: Disk, completed: bool) -> Any:
        def step(grace: Deadline) -> Optional[str]:
            try:
                bitmap_remove(self.session, disk.device, disk.bitmap, grace)
            except VmError:
                return None  # it was never added (the transaction failed)
            if completed and not disk.full:
                return (f"the job of {disk.name} had completed, which cleared bitmap {disk.bitmap}; "
                        "it was removed, so the next run starts a new chain")
            return None
        return step


def _qemu_version(session: Session, deadline: Deadline) -> str:
    reply = session.execute(Request("query-version"), deadline).get("return")
    if not isinstance(reply, dict) or not isinstance(reply.get("qemu"), dict):
        return ""
    qemu = reply["qemu"]
    text = f"{qemu.get('major')}.{qemu.get('minor')}.{qemu.get('micro')}"
    return f"{text} ({reply['package']})" if reply.get("package") else text


def prepare_dir(into: str, *, is_local: bool, side: Optional[str] = None) -> str:
    """The absolute chain folder, made if only the last level is missing; usage errors before connecting.

    ``side`` (``on root@hv1``): DIR is on the VM's host over SSH; only that it is absolute can be told here.
    """
    if side is not None:
        if not into.startswith("/"):
            raise UsageError(f"--into {into}: give an absolute path {side}, where the VM runs")
        return os.path.normpath(into)
    if not is_local:
        raise UsageError("--into needs the VM on this host or reached over ssh://: qmpctl creates the chain's "
                         "images where QEMU opens them")
    into = os.path.abspath(into)
    if os.path.isdir(into):
        return into
    if os.path.lexists(into):
        raise UsageError(f"--into {into}: it exists and is not a directory")
    if not os.path.isdir(os.path.dirname(into)):
        raise UsageError(f"--into {into}: the directory {os.path.dirname(into)} does not exist")
    return into


def _disk_summary(disk: Disk, seconds: float) -> dict[str, Any]:
    assert disk.state is not None
    summary: dict[str, Any] = {"device": disk.name, "level": "full" if disk.full else "incremental",
                               "chain": disk.chain_dir, "image": disk.image, "bitmap": disk.bitmap,
                               "bytes": disk.state.total, "size": disk.size_written, "seconds": seconds}
    if disk.reason is not None:
        summary["reason"] = disk.reason
    return summary


def backup_chain(session: Session, deadline: Deadline, options: ChainOptions, *, agent: Optional[Target] = None,
                 progress: Optional[Progress] = None, progress_every: float = CHECK_EVERY,
                 folder: Optional[ChainFolder] = None) -> dict[str, Any]:
    """Extend each disk's chain in ``options.into`` by one incremental, or start one with a full backup.

    ``folder`` is DIR where the VM's QEMU is (:func:`qmpctl.backup.remote_folder.folder_for`); this host's by default.
    """
    if folder is None:
        folder = LocalFolder(prepare_dir(options.into, is_local=True))
    with folder.lock([(device, _label(device)) for device in options.devices], deadline):
        disks = [_find(session, deadline, name) for name in options.devices]
        run = ChainRun(session, deadline, options, disks, folder, _qemu_version(session, deadline))
        run.check_not_busy()
        run.plan(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        freezer = Freezer(agent, options.freeze, options.freeze_timeout)
        freezer.connect(deadline)
        started = time.monotonic()
        wait = Deadline(options.wait_timeout)
        try:
            run.drop_broken_bitmaps()
            run.create_images()
            run.add_targets()
            with freezer.frozen():
                run.start_jobs()
            run.wait(wait, progress, progress_every)
            with shielded():  # the jobs are done: record them whole, a Ctrl-C waits (the steps are bounded)
                run.end_jobs()
                deleted = run.commit()
        except BaseException as exc:
            with shielded():  # a second Ctrl-C must not cut the taking back short; every step has a deadline
                failure = _failed(run, exc, wait, options)
            raise failure from None
        finally:
            freezer.close()
    seconds = round(time.monotonic() - started, 3)
    summaries = [_disk_summary(disk, seconds) for disk in disks]
    if folder.host is not None:
        for summary in summaries:
            summary["host"] = folder.host
    result: dict[str, Any] = dict(summaries[0]) if len(summaries) == 1 else {"disks": summaries, "seconds": seconds}
    if freezer.report:
        result["freeze"] = freezer.report
    if deleted:
        result["deleted-chains"] = deleted
    warnings = run.notes
    if warnings:
        result["warnings"] = warnings
    return result


def _failed(run: ChainRun, exc: BaseException, wait: Deadline, options: ChainOptions) -> BaseException:
    """Take the run back and say what happened, with the exit code of the cause."""
    if isinstance(exc, ProtocolError):
        run.discard()
        error: BaseException = ProtocolError(f"the VM went away during the chain backup ({exc.message})")
        return with_notes(error, run.notes)
    run.take_back()
    jobs = ", ".join(disk.job_id for disk in run.disks)
    if isinstance(exc, KeyboardInterrupt):
        error = Interrupted(f"interrupted: backup job(s) {jobs} cancelled; the manifest is unchanged")
    elif isinstance(exc, DeadlineExceeded) and wait.expired():
        error = DeadlineExceeded(f"backup job(s) {jobs} did not finish within --wait-timeout "
                                 f"{options.wait_timeout:g}s and were cancelled; the manifest is unchanged")
    else:
        error = exc
    return with_notes(error, run.notes)
