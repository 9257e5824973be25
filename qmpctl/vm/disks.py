"""Which disk a name means: one lookup for every command that takes a DEVICE.

A disk has several names, and users reach for any of them: the guest device's
id (``vd0``), its QOM path as ``query-block`` reports it
(``/machine/peripheral/vd0/virtio-backend``, or for a device without an id
``/machine/peripheral-anon/device[0]/virtio-backend`` and the device itself,
``/machine/peripheral-anon/device[0]``), the ``-drive`` name of its
BlockBackend, and the node names of its top node and of the format node under
any filters (a ``throttle`` node, say; the block graph tells which node is
under a filter). A node added with blockdev-add and not
attached to a device is found by its node name too. Whatever the name, the
answer is one :class:`Disk` with all of them; no match is a usage error that
lists the VM's disks.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import ProtocolError, UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.vm.block import block_devices, device_id_of, named_nodes
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Optional

FILTERS = frozenset({"throttle", "copy-on-read", "copy-before-write", "backup-top", "preallocate", "compress",
                     "blkdebug", "blklogwrites", "blkreplay", "blkverify"})
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
    filters: tuple[tuple[str, str], ...] = ()
    """(node name, driver) of each filter between ``top`` and ``node``, top first."""

    @property
    def block_name(self) -> str:
        """What block commands (drive-backup, block-dirty-bitmap-add...) get: the drive name, else the top node."""
        return self.drive or self.top

    @property
    def label(self) -> str:
        """The name messages use: the device id, else the drive name, QOM path or node name."""
        return self.device_id or self.drive or self.qdev or self.top

    @property
    def nodes(self) -> list[str]:
        """``top``, the filters under it, and ``node`` (the last): the disk's nodes down to its format node."""
        return list(dict.fromkeys([*(name for name, _ in self.filters), self.node])) if self.node else []

    @property
    def stable_names(self) -> list[str]:
        """The names that stay from one QEMU start to the next, most telling first: device id, QOM path, drive
        name, node names someone chose (those QEMU made up start with ``#``)."""
        path = self.qdev[:-len(BACKEND_SUFFIX)] if self.qdev.endswith(BACKEND_SUFFIX) else self.qdev
        names = [self.device_id, path if path.startswith("/") else "", self.qdev if self.qdev != path else "",
                 self.drive, *self.nodes]
        return list(dict.fromkeys(name for name in names if name and not name.startswith("#")))


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


class _Graph:
    """The block graph (x-debug-query-block-graph), asked for once per lookup and only when a filter is met."""

    def __init__(self, session: Session, deadline: Deadline) -> None:
        self.session = session
        self.deadline = deadline
        self.files: Optional[dict[str, str]] = None

    def child(self, node: str) -> Optional[str]:
        """The node a filter passes its data to (its ``file`` child)."""
        if self.files is None:
            graph = self.session.execute(Request("x-debug-query-block-graph"), self.deadline).get("return")
            graph = graph if isinstance(graph, dict) else {}
            names = {number: str(item.get("name")) for item in graph.get("nodes") or []
                     if isinstance(item, dict) and item.get("type") == "block-driver"
                     and isinstance((number := item.get("id")), int)}
            self.files = {names[edge["parent"]]: names[edge["child"]] for edge in graph.get("edges") or []
                          if isinstance(edge, dict) and edge.get("name") == "file"
                          and edge.get("parent") in names and edge.get("child") in names}
        return self.files.get(node)


def _below(top: str, driver: str, nodes: dict[str, dict[str, Any]], graph: _Graph) -> tuple[str, str,
                                                                                           tuple[tuple[str, str], ...]]:
    """The format node under ``top``'s filters, its driver, and the filters (node, driver), top first."""
    name, filters = top, list[tuple[str, str]]()
    while driver in FILTERS:
        child = graph.child(name)
        if child is None or child == name or child in (node for node, _ in filters):
            raise ProtocolError(f"cannot tell which node is under the filter {name} ({driver})")
        filters.append((name, driver))
        name, driver = child, str(nodes.get(child, {}).get("drv") or "")
    return name, driver, tuple(filters)


def _disk(entry: dict[str, Any], nodes: Optional[dict[str, dict[str, Any]]], graph: _Graph) -> Disk:
    qdev = str(entry.get("qdev") or "")
    inserted = entry.get("inserted")
    info = inserted if isinstance(inserted, dict) else {}
    top = str(info.get("node-name") or "")
    node, driver, filters = top, str(info.get("drv") or ""), tuple[tuple[str, str], ...]()
    if top and driver in FILTERS and nodes is not None:
        node, driver, filters = _below(top, driver, nodes, graph)
    return Disk(device_id_of(qdev) or "", qdev, str(entry.get("device") or ""), top, node, driver, entry, info,
                filters)


def list_disks(session: Session, deadline: Deadline) -> list[Disk]:
    """Every disk with a medium on a device of the VM, down to its format node."""
    entries = [entry for entry in block_devices(session, deadline)
               if isinstance(entry.get("inserted"), dict) and entry["inserted"].get("node-name")]
    nodes = named_nodes(session, deadline) if any(entry["inserted"].get("drv") in FILTERS
                                                  for entry in entries) else None
    graph = _Graph(session, deadline)
    return [_disk(entry, nodes, graph) for entry in entries]


def find_disk(session: Session, deadline: Deadline, name: str) -> Disk:
    """The disk ``name`` means: a device id, QOM path, drive name or node name (top, filter or format node).

    No match is a :class:`UsageError` naming the disks the VM has.
    """
    entries = block_devices(session, deadline)
    graph = _Graph(session, deadline)
    nodes: Optional[dict[str, dict[str, Any]]] = None
    filtered = any(isinstance(entry.get("inserted"), dict) and entry["inserted"].get("drv") in FILTERS
                   for entry in entries)
    for entry in entries:
        if name in _names(entry):
            return _disk(entry, named_nodes(session, deadline) if filtered else None, graph)
    nodes = named_nodes(session, deadline)
    for entry in entries:
        disk = _disk(entry, nodes, graph)
        if name in disk.nodes:
            return disk
    info = nodes.get(name)
    if info is not None:
        node, driver, filters = _below(name, str(info.get("drv") or ""), nodes, graph)
        return Disk("", "", "", name, node, driver, {}, info, filters)
    known = sorted({_disk(entry, None, graph).label for entry in entries} - {""})
    raise UsageError(f"the VM {session.target} has no disk {name!r} (disks: {', '.join(known) or 'none'}): give "
                     "a device id, QOM path, drive name or node name (qmpctl block and qmpctl block --nodes "
                     "list them)")
