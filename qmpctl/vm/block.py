"""A running VM's disks: what is attached, hotplug that rolls back, unplug that waits for the guest.

Hotplug is one blockdev-add (a ``file`` node under a ``qcow2`` or ``raw``
node) and one device_add, plus a virtio-scsi controller when a SCSI disk has
none to sit on. Every step that succeeded is undone when a later one fails,
so a refused hotplug leaves the VM as it was. Unplug only *asks* the guest
(device_del); the nodes go only after the guest has let the device go.
"""

from __future__ import annotations

import itertools
import os
import re
import stat

from qmpctl.timing import INTERRUPTED_UNPLUG_GRACE, NODE_RELEASE_GRACE
from qmpctl.timing import ROLLBACK_GRACE as ROLLBACK_GRACE  # backup imports it from here
from qmpctl.deadline import Deadline
from qmpctl.errors import QmpctlError, UsageError, VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.signals import shielded
from qmpctl.wire.targets import Session
from qmpctl.wire.waiting import wait_until

if TYPE_CHECKING:
    from typing import Any, Callable, Optional
    from qmpctl.wire.ssh import RemoteFiles

PERIPHERAL = "/machine/peripheral"
PERIPHERAL_ANON = "/machine/peripheral-anon"

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_HEADER_READ = 64 * 1024
"""Enough for the header, its extensions and a backing file name (QEMU caps names at 1023 bytes)."""
OTHER_IMAGE_MAGICS = (
    (0, b"KDMV", "vmdk"), (0, b"# Disk DescriptorFile", "vmdk"), (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"), (0, b"QED\x00", "qed"), (0, b"LUKS\xba\xbe", "luks"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
)
"""Image formats qmpctl does not attach: auto-detection refuses them rather than expose them as raw bytes."""

ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
MAX_DEVICE_ID = 24
"""QEMU node names are at most 31 characters; the longest one derived from a device id adds 7."""

BUSES = {"virtio": "virtio-blk-pci", "scsi": "scsi-hd"}
SCSI_CONTROLLER = "virtio-scsi-pci"
UNPLUG_PLAN_NOTE = ("a plan, not all the requests (--dry-run connects to nothing): once the guest has released "
                    "the device, blockdev-del deletes its block nodes, which the run finds by asking the VM")


# -- what the VM has -----------------------------------------------------------------------------

def _listed(session: Session, request: Request, deadline: Deadline) -> list[dict[str, Any]]:
    """The objects in a reply that should be a list of objects (anything else is skipped)."""
    reply = session.execute(request, deadline).get("return")
    return [entry for entry in reply if isinstance(entry, dict)] if isinstance(reply, list) else []


def qom_children(session: Session, path: str, deadline: Deadline) -> dict[str, str]:
    """The child objects under a QOM path, name -> type (``child<virtio-blk-pci>`` -> ``virtio-blk-pci``)."""
    children = {}
    for entry in _listed(session, Request("qom-list", {"path": path}), deadline):
        kind = str(entry.get("type", ""))
        if kind.startswith("child<") and kind.endswith(">"):
            children[str(entry.get("name"))] = kind[len("child<"):-1]
    return children


def named_nodes(session: Session, deadline: Deadline) -> dict[str, dict[str, Any]]:
    """Every named block node, attached or not (query-named-block-nodes), by node name."""
    nodes = _listed(session, Request("query-named-block-nodes"), deadline)
    return {str(node["node-name"]): node for node in nodes if node.get("node-name")}


def block_devices(session: Session, deadline: Deadline) -> list[dict[str, Any]]:
    """The guest-visible drives (query-block)."""
    return _listed(session, Request("query-block"), deadline)


def device_id_of(qdev: str) -> Optional[str]:
    """``/machine/peripheral/vd0/virtio-backend`` or ``vd0`` -> ``vd0``; anonymous devices have none."""
    if not qdev:
        return None
    if not qdev.startswith("/"):
        return qdev
    prefix = PERIPHERAL + "/"
    return qdev[len(prefix):].split("/", 1)[0] if qdev.startswith(prefix) else None


def first_free(prefix: str, taken: Callable[[str], bool], start: int = 0) -> str:
    """The first of ``prefix0``, ``prefix1``... (from ``start``) that is not taken."""
    return next(name for name in (f"{prefix}{number}" for number in itertools.count(start)) if not taken(name))


def check_id(value: str, what: str, longest: int) -> str:
    if not ID_PATTERN.match(value) or len(value) > longest:
        raise UsageError(f"{what} {value!r} is not valid: use a letter, then letters, digits, '-', '.' or '_', "
                         f"at most {longest} characters")
    return value


# -- images -----------------------------------------------------------------------------------------

def _read_header(path: str, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as image:
            return image.read(size)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def detect_format(path: str, header: Optional[bytes] = None) -> str:
    """``qcow2`` when the header says so, ``raw`` otherwise; other image formats are refused.

    ``header``: the image's first bytes when they were read elsewhere (on the VM's host over SSH).
    """
    if header is None:
        header = _read_header(path)
    if header.startswith(QCOW2_MAGIC):
        return "qcow2"
    for offset, magic, name in OTHER_IMAGE_MAGICS:
        if header[offset:offset + len(magic)] == magic:
            raise UsageError(f"{path} looks like a {name} image; qmpctl attaches qcow2 and raw images "
                             "(pass --format raw to attach its bytes as they are)")
    return "raw"


QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_EXT_END = 0


def qcow2_external_files(header: bytes) -> list[str]:
    """What a qcow2 header makes QEMU open besides the image: ``backing file X``, ``data file Y``.

    Read from the header only (backing file name, the external-data-file
    feature bit, the data file header extension), so nothing else is opened.
    """
    found: list[str] = []
    if len(header) < 72:
        return found
    version = int.from_bytes(header[4:8], "big")
    backing_offset = int.from_bytes(header[8:16], "big")
    backing_size = int.from_bytes(header[16:20], "big")
    if backing_offset:
        name = header[backing_offset:backing_offset + backing_size].decode("utf-8", "replace")
        found.append(f"backing file {name!r}" if name else "a backing file")
    if version < 3 or len(header) < 104:
        return found
    data_file: Optional[str] = None
    external = bool(int.from_bytes(header[72:80], "big") & QCOW2_INCOMPAT_DATA_FILE)
    offset = int.from_bytes(header[100:104], "big")
    while 0 < offset and offset + 8 <= len(header):
        kind = int.from_bytes(header[offset:offset + 4], "big")
        length = int.from_bytes(header[offset + 4:offset + 8], "big")
        if kind == QCOW2_EXT_END:
            break
        if kind == QCOW2_EXT_DATA_FILE:
            data_file = header[offset + 8:offset + 8 + length].decode("utf-8", "replace")
        offset += 8 + (length + 7) // 8 * 8
    if external or data_file is not None:
        found.append(f"data file {data_file!r}" if data_file else "an external data file")
    return found


def _refuse_probed_references(path: str, header: Optional[bytes] = None) -> None:
    """A probed qcow2 that names other files is refused: the guest may have written that header.

    A guest owns the bytes of a raw disk; it can make them look like a qcow2
    header naming any host file as backing or data file. Attached with a
    probed format, the guest would then read that file. So such an image
    needs --format qcow2, given by someone who knows what it is (libvirt
    refuses to probe for the same reason).
    """
    if header is None:
        header = _read_header(path, QCOW2_HEADER_READ)
    names = qcow2_external_files(header)
    if names:
        raise UsageError(f"{path} looks like a qcow2 image that makes QEMU open another file ({', '.join(names)}); "
                         "a probed format never attaches such an image, since a guest writing a raw disk can "
                         "forge that header to read host files: pass --format qcow2 if you know it is a qcow2 "
                         "image, or --format raw")


def check_image(path: str, image_format: Optional[str], *, is_local: bool, files: Optional["RemoteFiles"] = None,
                deadline: Optional[Deadline] = None) -> tuple[str, str]:
    """The absolute path and format to attach, or :class:`UsageError` for what qmpctl can tell in advance.

    ``files`` is the VM host's file system when it is reached over SSH: the same checks run there.
    """
    if files is not None and deadline is not None:
        return _check_remote_image(path, image_format, files, deadline)
    if not is_local:
        if not os.path.isabs(path):
            raise UsageError(f"{path}: give an absolute path: the VM runs on another host")
        if image_format is None:
            raise UsageError(f"pass --format: qmpctl cannot read {path} to detect it, the VM runs on another host")
        return path, image_format
    path = os.path.abspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"no such image file: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot use {path}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise UsageError(f"{path} is not an image file (neither a regular file nor a block device)")
    return path, _checked_format(path, image_format, lambda: None)


def _checked_format(path: str, image_format: Optional[str], header: Callable[[], Optional[bytes]]) -> str:
    """The format to attach: detected from the header unless given; a probed qcow2 naming other files refused."""
    detected = detect_format(path, header()) if image_format in (None, "qcow2") else image_format
    if image_format == "qcow2" and detected != "qcow2":
        raise UsageError(f"{path} is not a qcow2 image (its header lacks the QFI\\xfb magic)")
    if image_format is None and detected == "qcow2":
        _refuse_probed_references(path, header())
    return str(detected)


def _check_remote_image(path: str, image_format: Optional[str], files: "RemoteFiles",
                        deadline: Deadline) -> tuple[str, str]:
    """check_image on the VM's host: the path is QEMU's, so it is looked up and read there, not here."""
    if not path.startswith("/"):
        raise UsageError(f"{path}: give an absolute path {files.side}, where the VM runs")
    (kind,) = files.kinds([path], deadline)
    if kind == "missing":
        raise UsageError(f"no such image file {files.side}: {path}")
    if kind not in ("file", "block"):
        raise UsageError(f"{path} {files.side} is not an image file (neither a regular file nor a block device)")
    read: list[bytes] = []

    def header() -> bytes:
        if not read:
            read.append(files.head(path, QCOW2_HEADER_READ, deadline))
        return read[0]

    return path, _checked_format(f"{path} {files.side}", image_format, header)


# -- undo --------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    UndoStep = tuple[str, Callable[[Deadline], Optional[str]]]
    """What the step undoes, and the step; it may return a note on what is left to happen."""


def undo_all(steps: list[UndoStep]) -> list[str]:
    """Run undo steps newest first, within one short grace; return notes and what could not be undone."""
    grace = Deadline(ROLLBACK_GRACE)
    notes = []
    with shielded():  # a Ctrl-C now waits until what this call added is taken back (within the grace)
        for what, step in reversed(steps):
            try:
                note = step(grace)
            except QmpctlError as exc:
                note = f"could not {what}: {exc.message}"
            if note:
                notes.append(note)
    return notes


def with_notes(error: BaseException, notes: list[str]) -> BaseException:
    """Add what cleanup could not do to an error's message, so the user learns of it."""
    if isinstance(error, QmpctlError):
        for note in notes:
            error.add_note(note)
    return error


def blockdev_del(session: Session, node: str, deadline: Deadline) -> None:
    session.execute(Request("blockdev-del", {"node-name": node}), deadline)


# -- hotplug -----------------------------------------------------------------------------------------

class HotplugPlan:
    """What ``hotplug-disk`` attaches: checked image, bus, and the device id (None: pick a free one)."""

    __slots__ = ("filename", "format", "bus", "device_id", "readonly")

    def __init__(self, filename: str, format: str, bus: str = "virtio", device_id: Optional[str] = None,
                 readonly: bool = False) -> None:
        self.filename = filename
        self.format = format
        self.bus = bus
        self.device_id = device_id
        self.readonly = readonly
        if self.device_id is not None:
            check_id(self.device_id, "--id", MAX_DEVICE_ID)

    @staticmethod
    def node_names(device_id: str) -> tuple[str, str]:
        """The format node and the file node under it, named after the device."""
        return f"{device_id}-format", f"{device_id}-file"

    def blockdev_add(self, device_id: str) -> Request:
        node, file_node = self.node_names(device_id)
        file_options: dict[str, Any] = {"driver": "file", "node-name": file_node, "filename": self.filename}
        options: dict[str, Any] = {"driver": self.format, "node-name": node, "file": file_options}
        if self.readonly:
            options["read-only"] = file_options["read-only"] = True
        return Request("blockdev-add", options)

    def device_add(self, device_id: str, bus: Optional[str] = None) -> Request:
        arguments = {"driver": BUSES[self.bus], "id": device_id, "drive": self.node_names(device_id)[0]}
        if bus is not None:
            arguments["bus"] = bus
        return Request("device_add", arguments)

    def requests(self) -> list[Request]:
        """The requests as --dry-run shows them (a free id is only known once the VM is asked)."""
        device_id = self.device_id or "disk1"
        return [self.blockdev_add(device_id), self.device_add(device_id)]

    def plan_note(self) -> Optional[str]:
        """None when :meth:`requests` are exactly what a run sends; else what the run decides with the VM."""
        unknown = []
        if self.device_id is None:
            unknown.append("the device id is the first free diskN of the VM (disk1 stands for it here)")
        if self.bus == "scsi":
            unknown.append(f"device_add gets the bus of the VM's {SCSI_CONTROLLER}, and a {SCSI_CONTROLLER} "
                           "controller is added first when the VM has none")
        if not unknown:
            return None
        return "a plan, not the exact requests (--dry-run connects to nothing): " + "; ".join(unknown)


def _scsi_bus(session: Session, devices: dict[str, str], deadline: Deadline) -> tuple[Optional[str], bool]:
    """(bus, found): the bus of a virtio-scsi controller the VM has; bus None lets QEMU pick an anonymous one."""
    for device_id, kind in sorted(devices.items()):
        if kind == SCSI_CONTROLLER:
            return f"{device_id}.0", True
    anonymous = qom_children(session, PERIPHERAL_ANON, deadline)
    return None, SCSI_CONTROLLER in anonymous.values()


def hotplug(session: Session, deadline: Deadline, plan: HotplugPlan) -> dict[str, Any]:
    """Attach ``plan``'s image; on any failure remove what this call added and re-raise."""
    devices = qom_children(session, PERIPHERAL, deadline)
    nodes = named_nodes(session, deadline)

    def taken(device_id: str) -> bool:
        return device_id in devices or any(node in nodes for node in plan.node_names(device_id))

    device_id = plan.device_id or first_free("disk", taken, start=1)
    if device_id in devices:
        raise UsageError(f"the VM already has a device with id {device_id!r}: choose another --id")
    for node in plan.node_names(device_id):
        if node in nodes:
            raise UsageError(f"the VM already has a block node named {node!r}: choose another --id")
    node, file_node = plan.node_names(device_id)
    result: dict[str, Any] = {"device": device_id, "node-name": node, "file-node-name": file_node,
                              "driver": BUSES[plan.bus], "format": plan.format, "filename": plan.filename,
                              "read-only": plan.readonly}
    undo: list[UndoStep] = []
    try:
        session.execute(plan.blockdev_add(device_id), deadline)
        undo.append((f"delete block node {node}", lambda grace: blockdev_del(session, node, grace)))
        bus = None
        if plan.bus == "scsi":
            bus, found = _scsi_bus(session, devices, deadline)
            if not found:
                controller = first_free("scsi", lambda name: name in devices)
                session.execute(Request("device_add", {"driver": SCSI_CONTROLLER, "id": controller}), deadline)
                undo.append((f"remove the {SCSI_CONTROLLER} controller {controller} qmpctl added",
                             lambda grace: _ask_removal(session, controller, grace)))
                bus = f"{controller}.0"
                result["added-controller"] = controller
            if bus is not None:
                result["scsi-bus"] = bus
        session.execute(plan.device_add(device_id, bus), deadline)
    except BaseException as exc:
        raise with_notes(exc, undo_all(undo))  # noqa: B904 (the same exception, its message amended)
    return result


def _ask_removal(session: Session, device_id: str, deadline: Deadline) -> Optional[str]:
    """A PCI device leaves only when the guest lets it go: ask, and say so when it did not go at once."""
    session.execute(Request("device_del", {"id": device_id}), deadline)
    if device_id in qom_children(session, PERIPHERAL, deadline):
        return (f"the {SCSI_CONTROLLER} controller {device_id} qmpctl added is asked to go, "
                "and goes once the guest releases it")
    return None


# -- unplug ------------------------------------------------------------------------------------------

def _disk_nodes(session: Session, device_id: str, deadline: Deadline) -> list[str]:
    """The named nodes behind a disk device: its format node, then file nodes of the same file.

    File nodes given inline to blockdev-add go away with their parent; one
    added on its own (as libvirt does) stays and is deleted after it.
    """
    for entry in block_devices(session, deadline):
        if device_id_of(str(entry.get("qdev", ""))) == device_id:
            inserted = entry.get("inserted") or {}
            top = inserted.get("node-name")
            if not top:
                return []
            nodes = named_nodes(session, deadline)
            filename = nodes.get(top, {}).get("file")
            below = [name for name, info in nodes.items() if name != top and not name.startswith("#")
                     and info.get("drv") in ("file", "host_device") and info.get("file") == filename]
            return [top] + below
    raise UsageError(f"device {device_id!r} is not a disk (query-block does not list it)")


def _delete_released_node(session: Session, node: str, deadline: Deadline) -> bool:
    """blockdev-del ``node`` unless it already went (with its parent, or a -drive's own cleanup).

    QEMU lets go of a node only when the device object is finalized, which is
    when it sends DEVICE_DELETED. A client that polls sees the device leave the
    QOM tree a moment earlier, so the node may still be in use: retry briefly.
    """
    release = Deadline(NODE_RELEASE_GRACE)

    def deleted() -> Optional[bool]:
        if node not in named_nodes(session, deadline):
            return False
        try:
            blockdev_del(session, node, deadline)
            return True
        except VmError:
            if release.expired():
                raise
            return None

    return wait_until(session, deleted, deadline, f"QEMU to release node {node}", check_first=True)


def _delete_nodes(session: Session, nodes: list[str], deadline: Deadline) -> tuple[list[str], list[dict[str, str]]]:
    """Delete ``nodes`` in order; returns the deleted ones and, with the reason, the ones that stay."""
    deleted: list[str] = []
    kept: list[dict[str, str]] = []
    for node in nodes:
        try:
            if _delete_released_node(session, node, deadline):
                deleted.append(node)
        except VmError as exc:  # QEMU said no (a job or another device uses it); a timeout ends the call
            kept.append({"node-name": node, "reason": exc.message})
    return deleted, kept


def _nodes_result(device_id: str, deleted: list[str], kept: list[dict[str, str]]) -> dict[str, Any]:
    result: dict[str, Any] = {"device": device_id, "deleted-nodes": deleted}
    if kept:
        result["kept-nodes"] = kept
    return result


def _left_behind(session: Session, device_id: str, deadline: Deadline) -> list[str]:
    """The nodes hotplug-disk named after ``device_id`` that are still there (a device gone without them)."""
    nodes = named_nodes(session, deadline)
    return [node for node in HotplugPlan.node_names(device_id) if node in nodes]


def _remove_left_behind(session: Session, device_id: str, deadline: Deadline) -> dict[str, Any]:
    """``unplug-disk ID`` of a device already gone: delete the nodes it left, which hold the image's lock."""
    nodes = _left_behind(session, device_id, deadline)
    if not nodes:
        raise UsageError(f"the VM has no device with id {device_id!r} (qmpctl block lists the disks)")
    deleted, kept = _delete_nodes(session, nodes, deadline)
    if kept:
        raise VmError("GenericError", f"device {device_id} is gone, but its block node(s) "
                      f"{', '.join(item['node-name'] for item in kept)} could not be deleted: "
                      + "; ".join(item["reason"] for item in kept),
                      sent=Request("blockdev-del", {"node-name": kept[0]["node-name"]}).as_dict())
    result = _nodes_result(device_id, deleted, kept)
    result["note"] = (f"device {device_id} was already gone; deleted the block node(s) it left behind: "
                      + ", ".join(deleted))
    return result


def _after_interrupt(session: Session, device_id: str, nodes: list[str]) -> str:
    """Ctrl-C or SIGTERM after device_del: give the guest a moment, then take the nodes, or say what is left.

    A guest usually releases the device within a second; the nodes would then
    stay behind, holding the image's write lock, with no device to unplug.
    """
    grace = Deadline(INTERRUPTED_UNPLUG_GRACE)
    again = f"'qmpctl unplug-disk {device_id}'"
    from qmpctl.vm.unplug import wait_released

    try:
        wait_released(session, device_id, lambda within: _gone(session, device_id, within), grace, grace)
    except QmpctlError:
        listed = f"; its block node(s) {', '.join(nodes)} stay with it" if nodes else ""
        return (f"device {device_id} stays attached with its unplug request pending{listed}; once the guest "
                f"has released it, {again} deletes what is left")
    try:
        deleted, kept = _delete_nodes(session, nodes, grace)
    except QmpctlError as exc:
        return f"the guest released {device_id}, but deleting its block node(s) failed ({exc.message}); {again} " \
               "deletes what is left"
    if kept:
        return (f"the guest released {device_id}, but block node(s) "
                f"{', '.join(item['node-name'] for item in kept)} stay; {again} deletes them")
    return f"the guest released {device_id}; deleted its block node(s) {', '.join(deleted) or '(none left)'}"


def _gone(session: Session, device_id: str, deadline: Deadline) -> Optional[bool]:
    return True if device_id not in qom_children(session, PERIPHERAL, deadline) else None


def unplug(session: Session, deadline: Deadline, device_id: str, wait_seconds: float) -> dict[str, Any]:
    """device_del, wait until the guest released the device, then delete the nodes behind it.

    ``deadline`` (``--timeout``) bounds the exchanges; the wait for the guest
    is bounded by ``wait_seconds`` and does not count against it. A device
    already gone whose nodes stayed behind (an unplug cut short) has them deleted.
    """
    if device_id not in qom_children(session, PERIPHERAL, deadline):
        return _remove_left_behind(session, device_id, deadline)
    nodes = _disk_nodes(session, device_id, deadline)
    from qmpctl.vm.unplug import interrupt_care, request_release

    kept = f"; its block node {nodes[0]} stays" if nodes else ""
    with interrupt_care(device_id, lambda: _after_interrupt(session, device_id, nodes)):
        request_release(session, deadline, device_id, wait_seconds,
                        gone=lambda within: _gone(session, device_id, within),
                        why_not="a guest without an OS, or without hotplug support, never does",
                        stays=f"the device stays attached with its unplug request pending{kept}")
        deleted, kept_nodes = _delete_nodes(session, nodes, deadline)
    return _nodes_result(device_id, deleted, kept_nodes)
