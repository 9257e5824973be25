"""Backup chains on dirty bitmaps: one full, then only what changed, for months, without breaking silently.

A chain lives in ``DIR/<chain>/``: ``0001-full.qcow2``, ``0002-inc.qcow2`` ...
each incremental backed by the one before (relative path, so the folder can
move), and ``chain.json``, the manifest, which lists an image only once its
job has succeeded (written to a temp file, then renamed).

Every backup adds a new dirty bitmap to the disk, in the transaction that
starts its job, as libvirt's checkpoints do: ``qmpctl-<folder>-<chain>-<n>-<r>``
(``<folder>`` tells this DIR from another DIR backing up the same disk,
``<chain>`` is the chain's id, ``<n>`` the image's number, ``<r>`` random, so a
name is never used twice). An incremental copies what the previous backup's
bitmap recorded (``sync=bitmap``, ``bitmap-mode=never``: QEMU never clears it);
that bitmap is removed only once the new image is recorded, and the manifest
entry names the bitmap that follows it. A disk whose bitmaps do not include
the one the chain's last image recorded is not the disk as of that backup (a
file put back from an older copy, a raw disk restarted, a bitmap removed): the
run starts a new chain with a full backup and says why.

The file-system side (lock, listing, images, manifest) is a
:class:`~qmpctl.backup.folder.ChainFolder`: DIR on this host, or on the host of
an ``ssh://`` VM, where QEMU opens the images.

When the bitmap cannot be trusted (missing, ``inconsistent`` after QEMU died,
disabled, the disk resized, an image of the chain gone), the run starts a new
chain with a full backup and says why. Nothing is ever overwritten: images are
created exclusively, formatted by qemu-img (or by QEMU on a remote host), then
attached with blockdev-add. What a killed run left behind in this DIR (a job,
its nodes, an unrecorded image, a bitmap) is cleaned up by the next run, which
holds the disk's lock and so knows its owner is gone.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import time

from qmpctl.backup import fleece
from qmpctl.backup.full import MAX_JOB_ID, target_nodes
from qmpctl.vm.block import ROLLBACK_GRACE, blockdev_del, named_nodes, undo_all, with_notes
from qmpctl.vm.disks import find_disk, list_disks
from qmpctl.backup.folder import LocalFolder, NewImage, View
from qmpctl.backup.manifest import MANIFEST_VERSION
from qmpctl.deadline import Deadline
from qmpctl.guest.freeze import FreezeReport
from qmpctl.errors import (Busy, ConnectError, DeadlineExceeded, Interrupted, JobFailed, ProtocolError, QmpctlError,
                           UsageError, VmError)
from qmpctl.vm.jobs import JobState, dismiss, failure_detail, find_job, finish, list_jobs, wait_for_end
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.signals import shielded
from qmpctl.timing import (BLOCK_JOB_WAIT_TIMEOUT, FLEECE_DRAIN_GRACE, FLEECE_JOB_WORKERS, FREEZE_TIMEOUT,
                           THAW_TIMEOUT)
from qmpctl.wire.targets import Session, Target
from qmpctl.wire.waiting import CHECK_EVERY

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.vm.block import UndoStep
    from qmpctl.backup.folder import ChainFolder
    from qmpctl.vm.jobs import Progress

BITMAP_PREFIX = "qmpctl-"
BITMAP_NAME = re.compile(r"qmpctl-([0-9a-f]{8})-([0-9a-f]{8})-(\d{4,})-([0-9a-f]{6})\Z")
"""A bitmap of a chain (version 2): folder tag, chain id, image number, random."""
IMAGE_NAME = re.compile(r"\d{4}-(full|inc)\.qcow2\Z")
CANCELLED = "Operation canceled"
"""The error of a job QEMU cancelled because another of its grouped transaction failed."""


# -- options ----------------------------------------------------------------------------------------

class ChainOptions:
    """What ``backup DEVICE... --into DIR`` was asked to do; invalid combinations are refused on construction.

    ``freeze`` is ``no``, ``yes`` (fail with exit 3 when the agent cannot be
    reached) or ``try`` (back up unfrozen then).
    """

    __slots__ = ("devices", "into", "full", "keep_chains", "speed", "wait_timeout", "freeze", "freeze_timeout",
                 "compress", "new_chain_after", "max_incrementals", "estimate", "skip_below", "fleece")

    def __init__(self, devices: tuple[str, ...], into: str, full: bool = False, keep_chains: Optional[int] = None,
                 speed: Optional[int] = None, wait_timeout: float = BLOCK_JOB_WAIT_TIMEOUT, freeze: str = "no",
                 freeze_timeout: float = FREEZE_TIMEOUT, *, compress: bool = False,
                 new_chain_after: Optional[float] = None, max_incrementals: Optional[int] = None,
                 estimate: bool = False, skip_below: Optional[int] = None, fleece: Optional[str] = None) -> None:
        self.devices = devices
        self.into = into
        self.full = full
        self.keep_chains = keep_chains
        self.speed = speed
        self.wait_timeout = wait_timeout
        self.freeze = freeze
        self.freeze_timeout = freeze_timeout
        self.compress = compress
        """Compressed qcow2 images (the job's ``compress``): smaller, and slower to write."""
        self.new_chain_after = new_chain_after
        """Seconds: a chain whose first backup started longer ago gets a new full instead of an incremental."""
        self.max_incrementals = max_incrementals
        """A chain with this many incrementals gets a new full instead of one more."""
        self.estimate = estimate
        """Only say what the next run would copy, per disk: nothing is started, locked or written."""
        self.skip_below = skip_below
        """Bytes: an incremental with less to copy is not made this run (its bitmap keeps recording)."""
        self.fleece = fleece
        """DIR2 (absolute, on this host): each job reads a snapshot whose copy-before-write goes to a temporary
        image there, not to DIR (:mod:`qmpctl.backup.fleece`)."""
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
        if self.new_chain_after is not None and not self.new_chain_after > 0:
            raise UsageError(f"--new-chain-after must be more than 0 seconds, got {self.new_chain_after:g}")
        if self.max_incrementals is not None and self.max_incrementals < 0:
            raise UsageError(f"--max-incrementals must be 0 or more (0: a full every run), got {self.max_incrementals}")

    def requests(self) -> list[Request]:
        """What --dry-run shows: the transaction of a first run (images and nodes are only known at run time)."""
        adds = [bitmap_add_action(device, f"{BITMAP_PREFIX}FOLDER-CHAIN-0001-RANDOM", True) for device in self.devices]
        backups = [backup_action(job_id_for(device), fleece.nodes_of(job_id_for(device))[1] if self.fleece else device,
                                 target_nodes(job_id_for(device))[0], None, self.speed, self.compress)
                   for device in self.devices]
        if self.fleece:
            return self._fleece_requests(adds, backups)
        if len(self.devices) == 1:
            return [transaction(adds + backups, grouped=False)]
        return [transaction(adds, grouped=False), transaction(backups, grouped=True)]

    def _fleece_requests(self, adds: list[dict[str, Any]], backups: list[dict[str, Any]]) -> list[Request]:
        """--dry-run with --fleece: each disk's temporary image and filter, the switch (qom-set) and snapshot node,
        then the jobs reading the snapshots."""
        assert self.fleece is not None
        requests, switches, snaps = [], [], []
        for device in self.devices:
            cbw, snap, image, file = fleece.nodes_of(job_id_for(device))
            path = os.path.join(self.fleece, f"qmpctl-fleece-FOLDER-{_label(device)}-RANDOM.qcow2")
            requests.append(Request("blockdev-add", {"driver": "qcow2", "node-name": image, "file": {
                "driver": "file", "node-name": file, "filename": path}}))
            requests.append(Request("blockdev-add", fleece.cbw_options(cbw, "TOP-NODE", image)))
            switches.append(fleece.qom_set_drive(f"/machine/peripheral/{_label(device)}/virtio-backend", cbw))
            snaps.append(Request("blockdev-add", {"driver": "snapshot-access", "node-name": snap, "file": cbw}))
        marks = [fleece.pause_mark(job_id_for(device)) for device in self.devices] if len(self.devices) > 1 else []
        window = [Request("blockdev-add", {"driver": "null-co", "node-name": mark, "size": 0}) for mark in marks]
        window += [Request("stop")] if marks else []
        window += [*switches, *snaps, transaction(adds, grouped=False)]
        window += [Request("cont")] if marks else []
        window += [Request("blockdev-del", {"node-name": mark}) for mark in marks]
        return requests + window + [transaction(backups, grouped=len(self.devices) > 1)]

    def plan_note(self, side: Optional[str] = None) -> str:
        """Why --dry-run shows a plan: what the run learns from DIR and the VM first. ``side``: DIR's host."""
        where = (f"DIR is {side}, worked on over SSH, and QEMU formats the images there with blockdev-create"
                 if side else "qemu-img formats the images")
        return ("a plan, not the exact requests (--dry-run connects to nothing): the run first locks each disk "
                "in DIR, reads its chains and asks the VM for the disk and its bitmaps; it creates each new image "
                f"exclusively and adds it (blockdev-add) before the transaction; {where}. Every run adds a new "
                f"bitmap ({BITMAP_PREFIX}<folder>-<chain>-<image number>-<random>) with its job; a later run "
                "copies what the previous run's bitmap recorded (sync=bitmap, bitmap-mode=never) and removes "
                "that bitmap once its image is recorded" + (
                    "; --fleece: TOP-NODE stands for the node the device reads and the qom-set path for its qdev "
                    "(query-block); the VM is paused (stop, cont) only while several disks of a running VM switch; "
                    "an incremental adds a bitmap on the snapshot node and merges the chain's into it; afterwards "
                    "the snapshot node goes, the drive is put back (qom-set) and the filter, the image node and "
                    "the temporary file go" if self.fleece else ""))


def _label(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", device.strip("#/")) or "disk"


def job_id_for(device: str) -> str:
    """The same job id for the same disk at every run: a second qmpctl on the same disk finds it taken.

    A name too long for a job id (a QOM path such as ``/machine/peripheral-anon/device[1]``) keeps its start
    and ends with a hash of the whole name, so two disks never share one (their nodes would clash).
    """
    whole = f"chain-{_label(device)}"
    if len(whole) <= MAX_JOB_ID:
        return whole.rstrip("-.")
    import hashlib

    digest = hashlib.sha256(device.encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return f"{whole[:MAX_JOB_ID - len(digest) - 1].rstrip('-.')}-{digest}"


# -- requests ---------------------------------------------------------------------------------------

def folder_tag(into: str) -> str:
    """What a bitmap's name says about the DIR of its chain: a hash of DIR's path where the VM runs."""
    import hashlib

    return hashlib.sha256(os.path.normpath(into).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def bitmap_name(tag: str, chain_id: str, number: int) -> str:
    """A new bitmap for image ``number`` of a chain; random at the end: a name is never used twice."""
    return f"{BITMAP_PREFIX}{tag}-{chain_id}-{number:04d}-{os.urandom(3).hex()}"


def bitmap_owner(name: str) -> Optional[tuple[str, str]]:
    """(folder tag, chain id) of a bitmap qmpctl named (version 2); None for any other name."""
    match = BITMAP_NAME.match(name)
    return (match[1], match[2]) if match else None


def bitmap_add_action(device: str, bitmap: str, persistent: bool) -> dict[str, Any]:
    return {"type": "block-dirty-bitmap-add", "data": {"node": device, "name": bitmap, "persistent": persistent}}


def backup_action(job_id: str, device: str, target: str, bitmap: Optional[str], speed: Optional[int],
                  compress: bool = False, copy_range: bool = True) -> dict[str, Any]:
    """``copy_range``: not from a fleecing snapshot, which QEMU cannot copy that way (it reads and writes then,
    after a first chunk as big as copy_file_range's, which --speed cannot pace)."""
    data: dict[str, Any] = {"job-id": job_id, "device": device, "target": target}
    if bitmap is None:
        data["sync"] = "full"
    else:
        data.update({"sync": "bitmap", "bitmap": bitmap, "bitmap-mode": "never"})
    if speed is not None:
        data["speed"] = speed
    if compress:
        data["compress"] = True
    elif copy_range:  # copy_file_range: the kernel copies, QEMU does not read and write every byte (tests/README)
        data["x-perf"] = {"use-copy-range": True}
    if not copy_range:  # fleecing: the guest's writes need threads of QEMU's pool too (see FLEECE_JOB_WORKERS)
        data["x-perf"] = {**data.get("x-perf", {}), "max-workers": FLEECE_JOB_WORKERS}
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


def _parse_time(text: str) -> Optional[datetime.datetime]:
    """A time :func:`now_text` wrote (UTC), or None."""
    try:
        found = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=datetime.timezone.utc)


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
            with guest_freeze.frozen(self.session, Deadline(self.timeout), thaw_timeout=THAW_TIMEOUT) as done:
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
        self.source_bitmap: Optional[str] = None
        """The bitmap an incremental copies: the one the chain's last image recorded (never cleared by QEMU)."""
        self.new_bitmap = ""
        """The bitmap this run adds, recorded with its image: what the next run copies."""
        self.obsolete: list[str] = []
        """Bitmaps removed once this run's image is recorded: the source, the replaced chain's."""
        self.new: Optional[NewImage] = None
        """The image this run adds, and how far its creation got."""
        self.size_written = 0
        self.create_job: Optional[str] = None
        self.target_added = False
        self.bitmap_added = False
        self.started = ""
        self.state: Optional[JobState] = None
        self.committed = False
        self.key = name
        """The disk's first stable name (its device id, else its QOM path...): one lock, job, chain per disk."""
        self.filters: list[tuple[str, str]] = []
        """(node, driver) of the filters above the format node, top first."""
        self.skipped: Optional[int] = None
        """The bytes an incremental skipped by --skip-below would have copied; None when it runs."""
        self.leftovers: list[str] = []
        """Images a killed qmpctl created in this DIR (its job's target node named them): removed before the job."""
        self.qdev = ""
        """query-block's ``qdev``: the QOM path whose ``drive`` --fleece switches; empty for a node on no device."""
        self.top = ""
        """The node the device reads (over the format node and its filters)."""
        self.fleeced: Optional[fleece.FleecedDisk] = None

    @property
    def bitmap(self) -> str:
        return self.new_bitmap

    @property
    def persistent(self) -> bool:
        return self.driver == "qcow2"

    @property
    def target(self) -> str:
        return target_nodes(self.job_id)[0]

    @property
    def image(self) -> str:
        return self.new.path if self.new is not None else ""


BACKUP_FILTERS = frozenset({"copy-before-write", "backup-top"})
"""A backup's filter: above a disk when no qmpctl job is, another tool is backing it up (fleecing)."""


def _find(session: Session, deadline: Deadline, name: str) -> Disk:
    """The disk ``name`` names (:func:`~qmpctl.vm.disks.find_disk`), with a chain's rules on top: a name QEMU
    made up is refused (it changes at the next start), the disk's key is its first stable name, and its bitmaps
    are those of its format node (under any filter, named in ``filters``)."""
    if name.startswith("#"):
        raise _made_up(session, deadline, name)
    found = find_disk(session, deadline, name)
    nodes = named_nodes(session, deadline)
    info = nodes.get(found.node, {})
    image = info.get("image") if isinstance(info.get("image"), dict) else {}
    assert isinstance(image, dict)
    bitmaps = {str(entry.get("name")): entry for entry in info.get("dirty-bitmaps") or []
               if isinstance(entry, dict) and entry.get("name")}
    key = (found.stable_names or [name])[0]
    disk = Disk(name, found.node, found.node, str(info.get("drv") or found.driver),
                int(image.get("virtual-size") or 0), bitmaps, job_id_for(key))
    disk.key = key
    disk.filters = list(found.filters)
    disk.qdev, disk.top = found.qdev, found.top
    return disk


def _made_up(session: Session, deadline: Deadline, name: str) -> UsageError:
    """Why a node name QEMU made up cannot name a chain's disk, with the stable names of the disk it is part of
    (one of its nodes down to the format node, or the file under that)."""
    nodes = named_nodes(session, deadline)
    for disk in list_disks(session, deadline):
        file = nodes.get(disk.node, {}).get("file")
        if name in disk.nodes or bool(file) and nodes.get(name, {}).get("file") == file:
            names = disk.stable_names
            said = (f"give one of {', '.join(names)} (qmpctl block lists them)" if names else
                    "this disk has none: give it a device id")
            return UsageError(f"{name} is a node name QEMU made up at this start, and it changes at the next: a "
                              f"chain needs a name that stays; {said}")
    return UsageError(f"{name} is a node name QEMU made up at this start, and it changes at the next: give "
                      "the disk's device id, QOM path, drive name or a node name you chose (qmpctl block)")


def recorded_bitmap(manifest: dict[str, Any]) -> Optional[str]:
    """The bitmap that follows the chain's last image (version 2); None for a chain of version 1."""
    images = manifest.get("images") or []
    if manifest.get("version") != MANIFEST_VERSION or not manifest.get("id") or not images:
        return None
    last = images[-1]
    return str(last["bitmap"]) if isinstance(last, dict) and last.get("bitmap") else None


def _why_not_incremental(disk: Disk, folder: ChainFolder, chain_dir: str, manifest: dict[str, Any],
                         sizes: dict[str, Optional[int]]) -> Optional[str]:
    """None when the chain can be extended; else why a new chain must start (``sizes``: its folder's files)."""
    images = manifest["images"]
    if not images:
        return f"the chain {folder.where(chain_dir)} lists no image"
    bitmap = recorded_bitmap(manifest)
    if bitmap is None:
        return (f"the chain {folder.where(chain_dir)} was made by an earlier qmpctl, with one bitmap for the whole "
                "chain: a disk put back from an older copy could not be told from the disk as of its last backup")
    info = disk.bitmaps.get(bitmap)
    if info is None:
        ours = sorted(name for name in disk.bitmaps if (bitmap_owner(name) or ("", ""))[1] == manifest["id"])
        if ours:
            return (f"{disk.name} does not carry bitmap {bitmap}, which the chain's last backup added, but "
                    f"{', '.join(ours)} of the same chain: the disk was put back from an older copy (or its "
                    "bitmap removed), so an incremental would build on content it no longer has")
        if not disk.persistent:
            return (f"bitmap {bitmap} is not on {disk.name}: bitmaps of {disk.driver} disks live in QEMU's memory "
                    f"only (a {disk.driver} image cannot store one), and QEMU was restarted (or the bitmap removed) "
                    "since the chain's last backup")
        return (f"bitmap {bitmap} is not on {disk.name}: QEMU was restarted and the disk is not qcow2 (bitmaps of "
                "raw disks live in memory only), QEMU was killed before it ever closed the disk cleanly, the disk "
                "was put back from a copy older than the chain, or the bitmap was removed")
    if info.get("busy"):
        raise Busy(f"busy: bitmap {bitmap} of {disk.name} is in use by a running job (another backup?); "
                   "nothing was changed")
    if info.get("inconsistent"):
        return f"bitmap {bitmap} is inconsistent: QEMU did not close {disk.name} cleanly (it crashed or was killed)"
    if not info.get("recording", True):
        return f"bitmap {bitmap} was disabled: it did not record every write"
    if int(manifest.get("size") or 0) != disk.size:
        return f"{disk.name} changed size from {manifest.get('size')} to {disk.size} bytes"
    unlisted = [name for name in unlisted_images(manifest, sizes)
                if os.path.join(chain_dir, name) not in disk.leftovers]
    if unlisted:
        return (f"{folder.where(os.path.join(chain_dir, unlisted[0]))} is not in the chain's manifest: a run was "
                "killed after its job started, or the file is not qmpctl's; it is left as it is")
    for entry in images:
        name = str(entry.get("file"))
        path = folder.where(os.path.join(chain_dir, name))
        if sizes.get(name) is None:
            return f"{path} of the chain is missing"
        if sizes[name] != entry.get("size"):
            return f"{path} of the chain changed size since it was written"
    return None


def unlisted_images(manifest: dict[str, Any], sizes: dict[str, Optional[int]]) -> list[str]:
    """Images in a chain's folder its manifest does not list: what a killed run left (never a recorded one)."""
    listed = {str(entry.get("file")) for entry in manifest.get("images") or []}
    return sorted(name for name in sizes if IMAGE_NAME.match(name) and name not in listed)


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
        self.progress: Optional[Progress] = None
        self.stamp = ""
        self.fleecing: Optional[fleece.Fleecing] = None
        """--fleece: each disk's temporary image, filter and snapshot node, and how far they got."""

    # planning

    def chains(self, disk: Disk) -> list[tuple[str, dict[str, Any]]]:
        """The chain folders of ``disk`` in DIR when the run looked, oldest first: by its stable key, whatever
        name a run gave it (by the name given, for chains that recorded no key)."""
        return [(os.path.join(self.into, name), manifest) for name, manifest in self.view.chains
                if manifest.get("disk") == disk.key or "disk" not in manifest and manifest.get("device") == disk.name]

    @property
    def tags(self) -> set[str]:
        """This DIR's folder tags: of its path, and those its chains recorded (DIR may have moved since)."""
        return {folder_tag(self.into)} | {str(manifest["folder-tag"]) for _, manifest in self.view.chains
                                          if manifest.get("folder-tag")}

    def plan(self, stamp: str, view: Optional[View] = None) -> None:
        """Where each disk's chain stands, and what this run adds to it (``view``: DIR as it is, when known)."""
        self.stamp = stamp
        self.view = self.folder.scan(self.deadline) if view is None else view
        taken = self.view.names
        for disk in self.disks:
            chains = self.chains(disk)
            previous = chains[-1] if chains else None
            reason = None
            if previous is not None and not self.options.full:
                sizes = self.view.files.get(os.path.basename(previous[0]), {})
                reason = _why_not_incremental(disk, self.folder, *previous, sizes)
                if reason is None:
                    reason = self._due(previous[1])
                if reason is None:
                    disk.chain_dir, disk.manifest = previous[0], json.loads(json.dumps(previous[1]))
                    disk.full = False
                    disk.source_bitmap = recorded_bitmap(disk.manifest)
                    assert disk.source_bitmap is not None
                    disk.obsolete.append(disk.source_bitmap)
                    disk.new_bitmap = bitmap_name(str(disk.manifest["folder-tag"]), str(disk.manifest["id"]),
                                                  len(disk.manifest["images"]) + 1)
                    continue
            if previous is None:
                reason = f"no chain of {disk.name} in {self.folder.where(self.into)} yet"
            elif self.options.full:
                reason = "--full starts a new chain"
            disk.reason = reason
            if previous is not None:  # the replaced chain's bitmap: kept until the new full is recorded
                old = recorded_bitmap(previous[1]) or str(previous[1].get("bitmap"))
                if old in disk.bitmaps:
                    disk.obsolete.append(old)
            name = stamp if len(self.disks) == 1 else f"{stamp}-{_label(disk.key)}"
            disk.chain_dir = _unique_dir(self.into, name, taken)
            chain = os.path.basename(disk.chain_dir)
            taken |= {chain}
            chain_id, tag = os.urandom(4).hex(), folder_tag(self.into)
            disk.new_bitmap = bitmap_name(tag, chain_id, 1)
            disk.manifest = {"version": MANIFEST_VERSION, "chain": chain, "id": chain_id, "folder-tag": tag,
                             "device": disk.name, "disk": disk.key, "node": disk.node, "bitmap": disk.new_bitmap,
                             "persistent": disk.persistent, "size": disk.size, "qemu": self.qemu_version,
                             "created": stamp, "images": []}

    def _due(self, manifest: dict[str, Any]) -> Optional[str]:
        """Why the chain policy wants a new full now (--max-incrementals, --new-chain-after), or None."""
        images = manifest["images"]
        limit = self.options.max_incrementals
        if limit is not None and len(images) - 1 >= limit:
            return (f"the chain {manifest.get('chain')} has {len(images) - 1} incremental(s): --max-incrementals "
                    f"{limit} starts a new chain")
        after = self.options.new_chain_after
        if after is not None:
            started = _parse_time(str(images[0].get("started") or ""))
            age = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() if started else None
            if age is None or age >= after:
                since = f"started {age:.0f}s ago" if age is not None else "has no start time qmpctl can read"
                return f"the chain {manifest.get('chain')} {since}: --new-chain-after {after:g}s starts a new chain"
        return None

    def to_copy(self, disk: Disk) -> int:
        """What this run would copy for ``disk``: its bitmap's ``count`` for an incremental, the format node's
        allocated size (qemu-img info's disk size) for a full."""
        if not disk.full:
            assert disk.source_bitmap is not None
            return int(disk.bitmaps.get(disk.source_bitmap, {}).get("count") or 0)
        image = named_nodes(self.session, self.deadline).get(disk.node, {}).get("image")
        return int(image.get("actual-size") or disk.size) if isinstance(image, dict) else disk.size

    def skip_small(self) -> None:
        """--skip-below: incrementals with less to copy leave this run; their bitmaps go on recording."""
        limit = self.options.skip_below
        if limit is None:
            return
        for disk in self.disks:
            if not disk.full and (count := self.to_copy(disk)) < limit:
                disk.skipped = count
                disk.obsolete = []
        self.disks = [disk for disk in self.disks if disk.skipped is None]

    def check_not_busy(self) -> None:
        """A job or node of a disk's chain job: another qmpctl's, unless it works in this DIR (whose lock this run
        holds: its owner is gone), then it is cleaned up with what it made."""
        jobs = list_jobs(self.session, self.deadline)
        nodes = named_nodes(self.session, self.deadline)
        left: list[Disk] = []
        for disk in self.disks:
            if disk.job_id not in jobs and not any(node in nodes for node in target_nodes(disk.job_id)):
                continue
            image = str(nodes.get(target_nodes(disk.job_id)[1], {}).get("file") or "")
            if image and os.path.dirname(os.path.dirname(image)) == self.into and IMAGE_NAME.match(
                    os.path.basename(image)):
                left.append(disk)
                continue
            raise Busy(f"busy: the VM already has a backup job or node {disk.job_id} for {disk.name} "
                       "(another qmpctl backing it up, or one that was killed: qmpctl jobs --dismiss "
                       f"{disk.job_id} clears a concluded one); nothing was changed")
        if left:
            self._clean_up_after(left, jobs, nodes)
            nodes = named_nodes(self.session, self.deadline)
        fleeced = []
        for disk in self.disks:
            notes = fleece.leftovers(self.session, self.deadline, disk.job_id, disk.name, disk.qdev, disk.filters,
                                     disk.node, nodes, self.tags, self.folder.where(self.into))
            if notes:
                self.notes += notes
                fleeced.append(disk)
        self._look_again(fleeced)
        for disk in self.disks:
            fleecing = [node for node, driver in disk.filters if driver in BACKUP_FILTERS]
            if fleecing:
                raise Busy(f"busy: another tool is backing {disk.name} up right now (its backup filter "
                           f"{fleecing[0]} is above the disk); nothing was changed")

    def _clean_up_after(self, disks: list[Disk], jobs: dict[str, JobState], nodes: dict[str, Any]) -> None:
        """The jobs and nodes a killed qmpctl left in this DIR: cancelled, dismissed, deleted, with a note each.

        Its image is not in any manifest: :meth:`drop_broken_bitmaps` removes it (``leftovers``), and its
        bitmap, which no chain recorded; the chain's recorded bitmap was never cleared (``bitmap-mode=never``).
        """
        for disk in disks:
            with shielded():
                for job_id in (f"{disk.job_id}-create", disk.job_id):
                    if job_id in jobs:
                        state = finish(self.session, job_id, Deadline(ROLLBACK_GRACE))
                        error = state.error if state is not None else None
                        status = "cancelled" if error == CANCELLED else "dismissed"
                        failed = f", which had failed: {error}" if error not in (None, CANCELLED) else ""
                        self.notes.append(f"{status} job {job_id} of {disk.name}{failed}, left by a qmpctl that is "
                                          f"gone (it held the lock in {self.folder.where(self.into)})")
                image = str(nodes.get(target_nodes(disk.job_id)[1], {}).get("file") or "")
                if image:
                    disk.leftovers.append(image)
                for node in target_nodes(disk.job_id)[:2]:
                    if node in nodes:
                        blockdev_del(self.session, node, Deadline(ROLLBACK_GRACE))
                        self.notes.append(f"deleted block node {node} left by a qmpctl that is gone")
        self._look_again(disks)  # the job's filter node is gone from above the disk

    def _look_again(self, disks: list[Disk]) -> None:
        """The disks as they are now, after nodes above them were taken away."""
        for disk in disks:
            fresh = _find(self.session, self.deadline, disk.name)
            disk.device, disk.node, disk.driver, disk.size, disk.bitmaps, disk.filters, disk.qdev, disk.top = (
                fresh.device, fresh.node, fresh.driver, fresh.size, fresh.bitmaps, fresh.filters, fresh.qdev,
                fresh.top)

    def drop_broken_bitmaps(self) -> None:
        """Before the jobs: bitmaps of this DIR no chain will use (leftovers of killed runs, of deleted or
        rotated chains, of a disk put back from a copy), broken ones, and images no manifest lists."""
        leftovers: list[NewImage] = []
        for disk in self.disks:
            for name in list(disk.obsolete):
                info = disk.bitmaps.get(name, {})
                if info.get("inconsistent") or not info.get("recording", True):
                    bitmap_remove(self.session, disk.device, name, self.deadline)
                    disk.obsolete.remove(name)
            for name, why in self._orphans(disk):
                if disk.bitmaps.get(name, {}).get("busy"):
                    continue
                bitmap_remove(self.session, disk.device, name, self.deadline)
                self.notes.append(f"removed bitmap {name} of {disk.name}: {why}")
            for path in disk.leftovers:
                name = os.path.basename(os.path.dirname(path))
                if os.path.basename(path) in self.view.files.get(name, {}) and os.path.basename(path) not in {
                        str(entry.get("file")) for chain, manifest in self.view.chains if chain == name
                        for entry in manifest["images"]}:
                    image = NewImage(os.path.dirname(path), path, 0, None, make_dir=False)
                    image.created = True  # to remove: a killed run created it, and no manifest lists it
                    leftovers.append(image)
        if leftovers:
            self.notes += [note.replace("the incomplete", "the unrecorded image of a killed run,")
                           for note in self.folder.discard(leftovers, Deadline(ROLLBACK_GRACE))]
        unborn = sorted(os.path.join(self.into, name) for name in self.view.dirs - self.view.marked)
        for path in self.folder.remove_unborn(unborn, [_label(disk.key) for disk in self.disks],
                                              Deadline(ROLLBACK_GRACE)):
            self.notes.append(f"removed {self.folder.where(path)}: the first run of a chain that was killed "
                              "before it wrote the chain's manifest")

    def _live(self) -> dict[str, str]:
        """Chain id -> folder of every chain in DIR with a manifest (of any disk)."""
        return {str(manifest["id"]): name for name, manifest in self.view.chains if manifest.get("id")}

    def _orphans(self, disk: Disk) -> list[tuple[str, str]]:
        """This DIR's bitmaps on ``disk`` no chain will use, with why; another DIR's or tool's are never listed."""
        tags, live = self.tags, self._live()
        latest: dict[str, dict[str, Any]] = {}  # each disk's newest chain in DIR: only its bitmap goes on
        for _, manifest in self.view.chains:
            latest[str(manifest.get("disk") or manifest.get("device"))] = manifest
        kept = {disk.new_bitmap, *disk.obsolete}
        kept |= {str(recorded_bitmap(manifest)) for manifest in latest.values() if recorded_bitmap(manifest)}
        newest = {str(manifest.get("id")) for manifest in latest.values()}
        found = []
        for name in sorted(disk.bitmaps):
            owner = bitmap_owner(name)
            if name in kept:
                continue
            if owner is not None and owner[0] in tags:
                if owner[1] in live and owner[1] not in newest:
                    found.append((name, f"chain {live[owner[1]]} was followed by a newer chain of its disk (the "
                                        "bitmap came back with a disk put back from an older copy)"))
                elif owner[1] in live:
                    found.append((name, f"chain {live[owner[1]]} did not record it (a run that was killed, or "
                                        "a disk put back from an older copy)"))
                else:
                    found.append((name, "its chain is gone from this DIR (deleted or rotated), or it never got "
                                        "a manifest (a first run that was killed)"))
            elif owner is None and name.startswith(BITMAP_PREFIX):  # version 1: named after the chain's folder
                folder = name[len(BITMAP_PREFIX):]
                if folder in self.view.dirs and folder not in self.view.marked and \
                        os.path.join(self.into, folder) != disk.chain_dir:
                    found.append((name, "its chain never got a manifest (a first run that was killed)"))
        return found

    # the run

    def create_images(self) -> None:
        """Every new image, exclusively (never over a file), in one go: one round trip to a remote host."""
        for disk in self.disks:
            number = len(disk.manifest["images"]) + 1
            image = os.path.join(disk.chain_dir, f"{number:04d}-{'full' if disk.full else 'inc'}.qcow2")
            backing = None if disk.full else str(disk.manifest["images"][-1]["file"])
            marker = (f"{_label(disk.key)}\nthe first run of a qmpctl chain of {disk.name}, started {self.stamp} "
                      f"by process {os.getpid()}; removed with the first manifest\n")
            disk.new = NewImage(disk.chain_dir, image, disk.size, backing, make_dir=disk.full,  # a new name
                                marker=marker)
        self.folder.create([disk.new for disk in self.disks if disk.new is not None], self.deadline)

    def add_targets(self) -> None:
        for disk in self.disks:
            target, file_node, _ = target_nodes(disk.job_id)
            disk.target_added = True  # before sending: an interrupt may come between request and reply
            # Two nodes, as backup's blockdev flow adds them: jobs --dismiss of a job left behind by a killed
            # qmpctl then deletes them (and the image, when the job failed) the same way.
            self.session.execute(Request("blockdev-add", {"driver": "file", "node-name": file_node,
                                                          "filename": disk.image, "cache": {"no-flush": True}}),
                                  self.deadline)
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
        """Each disk's new bitmap and its job in one transaction; several disks: all jobs grouped, from the same
        instant.

        QEMU refuses bitmap actions in a grouped transaction, so with several
        disks the new bitmaps are added just before: a write in between is in
        the backup and in the new bitmap, copied once more next time, never lost.
        """
        adds = [bitmap_add_action(disk.device, disk.new_bitmap, disk.persistent) for disk in self.disks]
        backups = [backup_action(disk.job_id, disk.device, disk.target, disk.source_bitmap, self.options.speed,
                                 self.options.compress) for disk in self.disks]
        for disk in self.disks:
            disk.bitmap_added = True  # before sending: an interrupt may come between request and reply
        if self.fleecing is not None:
            self._start_fleeced(self.fleecing, adds)
            return
        if len(self.disks) == 1:
            self.session.execute(transaction(adds + backups, grouped=False), self.deadline)
        else:
            self.session.execute(transaction(adds, grouped=False), self.deadline)
            self.session.execute(transaction(backups, grouped=True), self.deadline)
        started = now_text()
        for disk in self.disks:
            disk.started = started

    def set_up_fleecing(self) -> None:
        """--fleece: each disk's temporary image in DIR2, its node and the filter over the node its device reads
        (not yet in the device's path: nothing the guest sees changes yet)."""
        assert self.options.fleece is not None
        self.fleecing = fleece.Fleecing(self.session, self.deadline, self.options.fleece, folder_tag(self.into))
        for disk in self.disks:
            disk.fleeced = self.fleecing.add(disk.job_id, disk.qdev, disk.top, disk.size, _label(disk.key), disk.name)
        self.fleecing.create_images()
        self.fleecing.add_nodes()

    def _start_fleeced(self, fleecing: fleece.Fleecing, adds: list[dict[str, Any]]) -> None:
        """The switch is the instant: the new bitmaps at it (in the window of a paused VM), or just before it (one
        disk of a running VM: a write in between is in the backup and in the new bitmap, copied once more next
        time, never lost); an incremental's bitmap on the snapshot node merged from the chain's after it."""
        with fleecing.instant(len(self.disks) > 1) as one_instant:
            if not one_instant:
                self.session.execute(transaction(adds, grouped=False), self.deadline)
                adds = []
            fleecing.switch()
            started = now_text()
            actions = list(adds)
            for disk in self.disks:
                if disk.source_bitmap is not None and disk.fleeced is not None:
                    granularity = disk.bitmaps.get(disk.source_bitmap, {}).get("granularity")
                    actions += fleece.bitmap_actions(disk.fleeced.snap, disk.device, disk.source_bitmap,
                                                     int(granularity) if granularity else None)
            if actions:
                self.session.execute(transaction(actions, grouped=False), self.deadline)
        backups = []
        for disk in self.disks:
            assert disk.fleeced is not None
            source = None if disk.source_bitmap is None else fleece.SNAP_BITMAP
            backups.append(backup_action(disk.job_id, disk.fleeced.snap, disk.target, source, self.options.speed,
                                         self.options.compress, copy_range=False))
        self.session.execute(transaction(backups, grouped=len(self.disks) > 1), self.deadline)
        for disk in self.disks:
            disk.started = started

    def _drain_jobs(self) -> None:
        """--fleece, after a failure: the jobs cancelled and waited for (:data:`~qmpctl.timing.FLEECE_DRAIN_GRACE`),
        so their snapshots can go and the drives be put back within the usual grace."""
        grace = Deadline(FLEECE_DRAIN_GRACE)
        for disk in self.disks:
            if disk.state is not None and disk.state.concluded:
                continue
            try:
                state = find_job(self.session, disk.job_id, Deadline(ROLLBACK_GRACE))
                if state is None or state.concluded:
                    continue
                with contextlib.suppress(VmError):  # it ended meanwhile
                    self.session.execute(Request("job-cancel", {"id": disk.job_id}), Deadline(ROLLBACK_GRACE))
                wait_for_end(self.session, disk.job_id, grace, Deadline(ROLLBACK_GRACE))
            except QmpctlError as exc:
                self.notes.append(f"job {disk.job_id} did not end within {FLEECE_DRAIN_GRACE:g}s of its "
                                  f"cancellation: {exc.message}")

    def end_fleecing(self) -> None:
        """After the jobs: snapshot nodes gone, drives back on their nodes, filters, image nodes and files gone."""
        if self.fleecing is not None:
            self.notes += self.fleecing.take_back()

    def wait(self, wait: Deadline, progress: Optional[Progress], every: float) -> None:
        self.progress = progress
        with self.deadline.paused():  # the copy has its own bound, --wait-timeout
            for disk in self.disks:
                disk.state = wait_for_end(self.session, disk.job_id, wait, self.deadline, progress, every)
                if progress is not None:
                    progress(disk.state)  # the job's end, with its outcome: a log's last line for it
        failed = [disk for disk in self.disks if disk.state is not None and disk.state.error]
        if not failed:
            return
        failed.sort(key=lambda disk: disk.state is not None and disk.state.error == CANCELLED)  # the cause first
        cause = failed[0]
        assert cause.state is not None
        message = (f"backup job {cause.job_id} of {cause.name} failed{failure_detail(self.session, cause.job_id)}: "
                   f"{cause.state.error}")
        if self.fleecing is not None:
            message += self.fleecing.explain(cause.state.error)
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
            reported = disk.state is not None and disk.state.concluded
            state = finish(self.session, disk.job_id, grace)
            if state is not None:
                disk.state = state
                if self.progress is not None and state.concluded and not reported:
                    self.progress(state)  # cancelled: its end is reported as a finished one is
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
        """Record every new image (with the bitmap that follows it) in its manifest; then what the success makes
        obsolete goes: the bitmap the incremental copied, the replaced chain's, and rotated chains."""
        # Reading the images back takes as long as their size: --wait-timeout again, not what --timeout has left.
        measured = self.folder.measure([disk.image for disk in self.disks], Deadline(self.options.wait_timeout))
        for disk, (size, sha256) in zip(self.disks, measured, strict=True):
            assert disk.state is not None
            disk.size_written = size
            entry = {"file": os.path.basename(disk.image), "level": "full" if disk.full else "incremental",
                     "started": disk.started, "bytes": disk.state.total, "size": size, "sha256": sha256,
                     "bitmap": disk.new_bitmap}
            disk.manifest["images"].append(entry)
            disk.manifest["bitmap"] = disk.new_bitmap
            self.folder.write_manifest(disk.chain_dir, disk.manifest, self.deadline)
            disk.committed = True
        deleted = []
        for disk in self.disks:
            for name in disk.obsolete:
                try:
                    bitmap_remove(self.session, disk.device, name, Deadline(ROLLBACK_GRACE))
                except QmpctlError as exc:
                    self.notes.append(f"could not remove the obsolete bitmap {name}: {exc.message}")
            if self.options.keep_chains is not None:
                deleted += self._rotate(disk)
        return deleted

    def _rotate(self, disk: Disk) -> list[str]:
        """The disk's oldest chains beyond --keep-chains (as the run found them: the lock kept them so), with
        their bitmaps."""
        chains = [(path, manifest) for path, manifest in self.chains(disk) if path != disk.chain_dir]
        surplus = chains[:max(len(chains) - (self.options.keep_chains or 1) + 1, 0)]
        surplus = [(path, manifest) for path, manifest in surplus if not self._held_by_instant(path)]
        if surplus:
            self.notes += self.folder.remove_trees([path for path, _ in surplus], Deadline(ROLLBACK_GRACE))
            gone = {str(manifest.get("id")) for _, manifest in surplus if manifest.get("id")}
            for name in sorted(disk.bitmaps):
                owner = bitmap_owner(name)
                if owner is not None and owner[0] in self.tags and owner[1] in gone and name not in disk.obsolete:
                    try:
                        bitmap_remove(self.session, disk.device, name, Deadline(ROLLBACK_GRACE))
                    except QmpctlError as exc:
                        self.notes.append(f"could not remove bitmap {name} of a deleted chain: {exc.message}")
        return [path for path, _ in surplus]

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
        """After a failure: jobs ended, nodes gone, new images and this run's bitmaps removed, manifests untouched.

        The bitmap an incremental copied was never cleared (``bitmap-mode=never``): the next run copies all it
        recorded, including what this run copied.
        """
        if self.fleecing is not None:
            self._drain_jobs()
        self.end_jobs()
        self.end_fleecing()
        steps: list[UndoStep] = []
        for disk in self.disks:
            if not disk.committed and disk.bitmap_added:
                steps.append((f"remove bitmap {disk.new_bitmap} of {disk.name}", self._remove_bitmap(disk)))
        self.notes += undo_all(steps)
        self.discard()

    def discard(self) -> None:
        """Remove the images (and new folders) of disks not recorded, under a deadline of its own."""
        self.notes += self.folder.discard([disk.new for disk in self.disks if disk.new is not None
                                           and not disk.committed], Deadline(ROLLBACK_GRACE))

    def _remove_bitmap(self, disk: Disk) -> Any:
        def step(grace: Deadline) -> None:
            try:
                bitmap_remove(self.session, disk.device, disk.new_bitmap, grace)
            except VmError:
                pass  # it was never added (the transaction failed)
            disk.bitmap_added = False
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


def _skipped_summary(disk: Disk, options: ChainOptions) -> dict[str, Any]:
    return {"device": disk.name, "level": "skipped", "chain": disk.chain_dir, "bytes": disk.skipped,
            "reason": f"{disk.skipped} bytes changed since the last backup, below --skip-below {options.skip_below}: "
                      f"bitmap {disk.source_bitmap} keeps recording for the next run"}


def _estimate(session: Session, deadline: Deadline, options: ChainOptions, disks: list[Disk],
              folder: ChainFolder) -> dict[str, Any]:
    """--estimate: what the next run would do and copy per disk, from DIR and the VM as they are; nothing is
    locked, created, added or removed."""
    run = ChainRun(session, deadline, options, disks, folder, "")
    empty = folder.host is None and not os.path.isdir(folder.into)  # DIR is not there yet: every disk starts one
    run.plan(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
             View(frozenset(), [], frozenset(), frozenset(), {}) if empty else None)
    summaries = []
    for disk in disks:
        summary: dict[str, Any] = {"device": disk.name, "level": "full" if disk.full else "incremental",
                                   "chain": disk.chain_dir, "bytes": run.to_copy(disk)}
        if (not disk.full and options.skip_below is not None and summary["bytes"] < options.skip_below):
            summary["level"] = "skipped"
            summary["reason"] = f"below --skip-below {options.skip_below}"
        elif disk.reason is not None:
            summary["reason"] = disk.reason
        if folder.host is not None:
            summary["host"] = folder.host
        summaries.append(summary)
    result: dict[str, Any] = {"estimate": True, **summaries[0]} if len(summaries) == 1 else {
        "estimate": True, "disks": summaries, "bytes": sum(summary["bytes"] for summary in summaries)}
    return result


def backup_chain(session: Session, deadline: Deadline, options: ChainOptions, *, agent: Optional[Target] = None,
                 progress: Optional[Progress] = None, progress_every: float = CHECK_EVERY,
                 folder: Optional[ChainFolder] = None) -> dict[str, Any]:
    """Extend each disk's chain in ``options.into`` by one incremental, or start one with a full backup.

    ``folder`` is DIR where the VM's QEMU is (:func:`qmpctl.backup.remote_folder.folder_for`); this host's by default.
    """
    if folder is None:
        folder = LocalFolder(prepare_dir(options.into, is_local=True))
    if options.fleece is not None:
        if folder.host is not None:
            raise UsageError(f"--fleece is not supported with a VM reached over ssh:// (DIR2 would have to be on "
                             f"{folder.host}, where QEMU runs); nothing was changed")
        fleece.check_qemu(session, deadline)
    disks = [_find(session, deadline, name) for name in options.devices]
    for number, disk in enumerate(disks):
        same = [other.name for other in disks[:number] if other.key == disk.key]
        if same:
            raise UsageError(f"{same[0]} and {disk.name} are the same disk ({disk.key}): give it once")
    if options.estimate:
        return _estimate(session, deadline, options, disks, folder)
    deleted: list[str] = []
    with folder.lock([(disk.name, _label(disk.key)) for disk in disks], deadline):
        disks = [_find(session, deadline, name) for name in options.devices]  # as it is now, under the lock
        run = ChainRun(session, deadline, options, disks, folder, _qemu_version(session, deadline))
        run.check_not_busy()
        run.plan(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        run.skip_small()
        freezer = Freezer(agent, options.freeze if run.disks else "no", options.freeze_timeout)
        freezer.connect(deadline)
        started = time.monotonic()
        wait = Deadline(options.wait_timeout)
        try:
            if run.disks:
                run.drop_broken_bitmaps()
                run.create_images()
                run.add_targets()
                if options.fleece is not None:
                    run.set_up_fleecing()
                with freezer.frozen():
                    run.start_jobs()
                run.wait(wait, progress, progress_every)
                with shielded():  # the jobs are done: record them whole, a Ctrl-C waits (the steps are bounded)
                    run.end_jobs()
                    run.end_fleecing()
                    deleted = run.commit()
        except BaseException as exc:
            with shielded():  # a second Ctrl-C must not cut the taking back short; every step has a deadline
                failure = _failed(run, exc, wait, options)
            raise failure from None
        finally:
            freezer.close()
    seconds = round(time.monotonic() - started, 3)
    summaries = [_skipped_summary(disk, options) if disk.skipped is not None else _disk_summary(disk, seconds)
                 for disk in disks]
    if folder.host is not None:
        for summary in summaries:
            summary["host"] = folder.host
    result: dict[str, Any] = dict(summaries[0]) if len(summaries) == 1 else {"disks": summaries, "seconds": seconds}
    if freezer.report:
        result["freeze"] = freezer.report
    if run.fleecing is not None:
        result["fleece"] = run.fleecing.where
        if run.fleecing.paused_for:
            result["paused"] = run.fleecing.paused_for
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
        if run.fleecing is not None:
            run.notes += run.fleecing.discard_files()
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
