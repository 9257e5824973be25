"""Which disk a name means: one lookup for every command that takes a DEVICE.

A disk has several names, and users reach for any of them: the guest device's
id (``vd0``), its QOM path as ``query-block`` reports it
(``/machine/peripheral/vd0/virtio-backend``, or for a device without an id
``/machine/peripheral-anon/device[0]/virtio-backend`` and the device itself,
``/machine/peripheral-anon/device[0]``), the ``-drive`` name of its
BlockBackend, and the node names of its top node and of the format node under
any filters (a ``throttle`` node, say). A node added with blockdev-add and not
attached to a device is found by its node name too. Whatever the name, the
answer is one :class:`Disk` with all of them; no match is a usage error that
lists the VM's disks.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.vm.block import block_devices, device_id_of, named_nodes
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Optional

FILTERS = frozenset({"throttle", "copy-on-read", "copy-before-write", "preallocate", "compress", "blkdebug",
                     "blklogwrites", "blkreplay", "blkverify"})
"""Block drivers that only pass their one child's data through: the disk's format is below them."""
BACKEND_SUFFIX = "/virtio-backend"
"""A virtio-blk device's block backend hangs off this child object of the device (query-block's ``qdev``)."""


class Disk(NamedTuple):
    """One disk of a VM under all its names (empty strings where it has none)."""

    device_id: str
    """The guest device's id (``vd0``); empty for a device added without one, or no device."""
    qdev: str
    """query-block's ``qdev``: the QOM path QEMU addresses the disk's device by (block_set_io_throttle's id)."""
    drive: str
    """The BlockBackend's name (``-drive`` disks); empty for a device on a blockdev node."""
    top: str
    """The node name of the top node (the one the device uses); empty without a medium."""
    node: str
    """The format node: ``top``, or the first node under it that is not a filter."""
    driver: str
    """The format node's driver (``qcow2``, ``raw``...)."""
    entry: dict[str, Any]
    """query-block's entry for the disk; empty for a node on no device."""
    info: dict[str, Any]
    """The top node's description: query-block's ``inserted``, or query-named-block-nodes' entry."""

    @property
    def block_name(self) -> str:
        """What block commands (drive-backup, block-dirty-bitmap-add...) get: the drive name, else the top node."""
        return self.drive or self.top

    @property
    def label(self) -> str:
        """The name messages use: the device id, else the drive name, QOM path or node name."""
        return self.device_id or self.drive or self.qdev or self.top


def _names(entry: dict[str, Any]) -> set[str]:
    """The names of a query-block entry that need no other query (not the format node under filters)."""
    qdev = str(entry.get("qdev") or "")
    inserted = entry.get("inserted")
    names = {qdev, str(entry.get("device") or ""), device_id_of(qdev) or ""}
    if qdev.endswith(BACKEND_SUFFIX):
        names.add(qdev[:-len(BACKEND_SUFFIX)])
    if isinstance(inserted, dict):
        names.add(str(inserted.get("node-name") or ""))
    return names - {""}


def _format_node(top: str, info: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The format node under ``top``'s filters, and its driver.

    A filter's ``image`` describes its child as its ``backing-image`` (format
    and file name, no node name), so the child is the named node with that
    driver on that file.
    """
    name, driver, image = top, str(info.get("drv") or ""), info.get("image")
    while driver in FILTERS and isinstance(image, dict) and isinstance(image.get("backing-image"), dict):
        image = image["backing-image"]
        wanted, filename = str(image.get("format") or ""), str(image.get("filename") or "")
        child = next((key for key, node in nodes.items() if key != name and node.get("drv") == wanted
                      and node.get("file") == filename), None)
        if child is None:
            break
        name, driver = child, wanted
    return name, driver


def _disk(entry: dict[str, Any], nodes: Optional[dict[str, dict[str, Any]]]) -> Disk:
    qdev = str(entry.get("qdev") or "")
    inserted = entry.get("inserted")
    info = inserted if isinstance(inserted, dict) else {}
    top = str(info.get("node-name") or "")
    node, driver = top, str(info.get("drv") or "")
    if top and driver in FILTERS and nodes is not None:
        node, driver = _format_node(top, info, nodes)
    return Disk(device_id_of(qdev) or "", qdev, str(entry.get("device") or ""), top, node, driver, entry, info)


def find_disk(session: Session, deadline: Deadline, name: str) -> Disk:
    """The disk ``name`` means: a device id, QOM path, drive name or node name (top or format node).

    No match is a :class:`UsageError` naming the disks the VM has.
    """
    entries = block_devices(session, deadline)
    nodes: Optional[dict[str, dict[str, Any]]] = None
    filtered = any(isinstance(entry.get("inserted"), dict) and entry["inserted"].get("drv") in FILTERS
                   for entry in entries)
    for entry in entries:
        if name in _names(entry):
            return _disk(entry, named_nodes(session, deadline) if filtered else None)
    nodes = named_nodes(session, deadline)
    for entry in entries:
        disk = _disk(entry, nodes)
        if name == disk.node:
            return disk
    info = nodes.get(name)
    if info is not None:
        node, driver = _format_node(name, info, nodes)
        return Disk("", "", "", name, node, driver, {}, info)
    known = sorted({_disk(entry, None).label for entry in entries} - {""})
    raise UsageError(f"the VM {session.target} has no disk {name!r} (disks: {', '.join(known) or 'none'}): give "
                     "a device id, QOM path, drive name or node name (qmpctl block and qmpctl block --nodes "
                     "list them)")
