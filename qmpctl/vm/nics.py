"""Network cards of a running VM: hotplug that rolls back, unplug that waits for the guest, a listing, links.

A NIC is two objects in QEMU: a backend (``netdev_add``: user networking, a
tap interface, a bridge) and the guest-visible device on it (``device_add``).
Hotplug removes the backend again when the device is refused. Unplug only
*asks* the guest (``device_del``); the backend goes once the guest has let the
device go, since deleting it earlier would leave the device with no network.
QEMU reports no link state, so the listing shows none.
"""

from __future__ import annotations

import re

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError, VmError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.vm.block import UndoStep

PERIPHERAL = "/machine/peripheral"
PERIPHERAL_ANON = "/machine/peripheral-anon"
MODELS = ("virtio-net-pci", "e1000", "e1000e", "rtl8139")
MAC_PATTERN = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
MAX_ID = 24
NETDEV_SUFFIX = "-net"
UNPLUG_PLAN_NOTE = ("a plan, not all the requests (--dry-run connects to nothing): once the guest has released the "
                    "device, netdev_del deletes its network backend, which the run reads from the device first")


def netdev_of(device_id: str) -> str:
    """The backend hotplug-nic adds for device ``device_id``."""
    return device_id + NETDEV_SUFFIX


class NicPlan(NamedTuple):
    """What hotplug-nic adds: the device id, model, MAC, backend and bus."""

    device_id: str
    model: str = "virtio-net-pci"
    mac: Optional[str] = None
    net: str = "user"
    bus: Optional[str] = None

    def check(self) -> "NicPlan":
        if not ID_PATTERN.match(self.device_id) or len(self.device_id) > MAX_ID:
            raise UsageError(f"--id {self.device_id!r} is not valid: use a letter, then letters, digits, '-', '.' "
                             f"or '_', at most {MAX_ID} characters")
        if self.mac is not None:
            if not MAC_PATTERN.match(self.mac):
                raise UsageError(f"--mac {self.mac!r} is not a MAC address: six hex pairs, 52:54:00:12:34:56")
            if int(self.mac[:2], 16) & 1:
                raise UsageError(f"--mac {self.mac}: a multicast address (the first byte is odd) cannot be a NIC's")
        self.netdev_add()  # a bad --net is a usage error before anything is sent
        return self

    def netdev_add(self) -> Request:
        kind, _, name = self.net.partition(":")
        arguments: dict[str, Any] = {"type": kind, "id": netdev_of(self.device_id)}
        if kind == "user" and not name:
            pass
        elif kind == "tap" and name:
            arguments.update({"ifname": name, "script": "no", "downscript": "no"})  # an interface set up already
        elif kind == "bridge" and name:
            arguments["br"] = name  # QEMU's setuid qemu-bridge-helper makes the tap and adds it to the bridge
        else:
            raise UsageError(f"--net {self.net!r}: give user, tap:IFNAME or bridge:BRIDGE")
        return Request("netdev_add", arguments)

    def device_add(self) -> Request:
        arguments: dict[str, Any] = {"driver": self.model, "id": self.device_id, "netdev": netdev_of(self.device_id)}
        if self.mac is not None:
            arguments["mac"] = self.mac.lower()
        if self.bus is not None:
            arguments["bus"] = self.bus
        return Request("device_add", arguments)

    def requests(self) -> list[Request]:
        return [self.netdev_add(), self.device_add()]


def _children(session: Session, path: str, deadline: Deadline) -> dict[str, str]:
    reply = session.execute(Request("qom-list", {"path": path}), deadline).get("return")
    children = {}
    for entry in reply if isinstance(reply, list) else []:
        kind = str(entry.get("type", "")) if isinstance(entry, dict) else ""
        if kind.startswith("child<") and kind.endswith(">"):
            children[str(entry.get("name"))] = kind[len("child<"):-1]
    return children


def _qom_get(session: Session, path: str, name: str, deadline: Deadline) -> Any:
    return session.execute(Request("qom-get", {"path": path, "property": name}), deadline).get("return")


def _nic_properties(session: Session, path: str, deadline: Deadline) -> Optional[tuple[str, str]]:
    """(mac, netdev) of the device at ``path``, or None when it is no NIC (it has no netdev property)."""
    try:
        netdev = _qom_get(session, path, "netdev", deadline)
    except VmError:
        return None
    return str(_qom_get(session, path, "mac", deadline) or ""), str(netdev or "")


def listing(session: Session, deadline: Deadline) -> list[dict[str, Any]]:
    """Every NIC: id (null for one without), model, MAC, netdev, QOM path. No link state: QEMU reports none."""
    found = []
    for base in (PERIPHERAL, PERIPHERAL_ANON):
        for name, model in sorted(_children(session, base, deadline).items()):
            path = f"{base}/{name}"
            properties = _nic_properties(session, path, deadline)
            if properties is None:
                continue
            mac, netdev = properties
            found.append({"id": name if base == PERIPHERAL else None, "model": model, "mac": mac,
                          "netdev": netdev or None, "path": path})
    return found


def set_link(session: Session, deadline: Deadline, name: str, up: bool) -> dict[str, Any]:
    """set_link on a NIC's id (or its netdev's); QEMU cannot read it back, so the result is what was asked."""
    session.execute(Request("set_link", {"name": name, "up": up}), deadline)
    return {"id": name, "link": "up" if up else "down"}


# -- hotplug -----------------------------------------------------------------------------------------

def hotplug(session: Session, deadline: Deadline, plan: NicPlan) -> dict[str, Any]:
    """netdev_add + device_add; the backend is removed again when the device cannot be added."""
    from qmpctl.vm.block import undo_all, with_notes

    if plan.device_id in _children(session, PERIPHERAL, deadline):
        raise UsageError(f"the VM already has a device with id {plan.device_id!r}: choose another --id")
    netdev = netdev_of(plan.device_id)
    undo: list[UndoStep] = []
    drop = (f"delete network backend {netdev}", lambda grace: _drop_backend(session, netdev, grace))
    try:
        try:
            session.execute(plan.netdev_add(), deadline)
        except VmError:
            raise  # QEMU refused it: nothing was added (the id may be someone else's)
        except BaseException:
            undo.append(drop)  # cut short after sending: it may have been added
            raise
        undo.append(drop)
        ask = (f"remove NIC {plan.device_id}", lambda grace: _ask_removal(session, plan.device_id, grace))
        try:
            session.execute(plan.device_add(), deadline)
        except VmError:
            raise
        except BaseException:
            undo.append(ask)  # cut short after sending: the device may be there
            raise
        undo.append(ask)
        mac = _qom_get(session, f"{PERIPHERAL}/{plan.device_id}", "mac", deadline)
    except BaseException as exc:
        raise with_notes(exc, undo_all(undo))  # noqa: B904 (the same exception, its message amended)
    return {"id": plan.device_id, "model": plan.model, "mac": mac, "netdev": netdev, "net": plan.net}


def _netdev_del(session: Session, netdev: str, deadline: Deadline) -> None:
    """Delete a network backend (an undo step: it has nothing to add)."""
    session.execute(Request("netdev_del", {"id": netdev}), deadline)
    return None


def _ask_removal(session: Session, device_id: str, deadline: Deadline) -> Optional[str]:
    """A PCI NIC leaves only when the guest lets it go: ask (if it is there), and say so when it did not go at once.

    Its backend, deleted right after, then stays until the NIC goes and goes with it (QEMU keeps a NIC's peer).
    """
    if device_id not in _children(session, PERIPHERAL, deadline):
        return None
    session.execute(Request("device_del", {"id": device_id}), deadline)
    if device_id in _children(session, PERIPHERAL, deadline):
        return (f"the NIC {device_id} qmpctl added is asked to go, and goes with its backend once the guest "
                "releases it")
    return None


def _drop_backend(session: Session, netdev: str, deadline: Deadline) -> None:
    """Delete the backend this call added, if it got as far as QEMU (netdev_del of a missing one: DeviceNotFound)."""
    try:
        _netdev_del(session, netdev, deadline)
    except VmError as exc:
        if exc.error_class != "DeviceNotFound":
            raise
    return None


# -- unplug ------------------------------------------------------------------------------------------

def _gone(session: Session, device_id: str, deadline: Deadline) -> Optional[bool]:
    return True if device_id not in _children(session, PERIPHERAL, deadline) else None


def _remove_left_behind(session: Session, device_id: str, deadline: Deadline) -> dict[str, Any]:
    """``unplug-nic ID`` of a device already gone: delete the backend hotplug-nic named after it, if it stayed."""
    netdev = netdev_of(device_id)
    try:
        _netdev_del(session, netdev, deadline)
    except VmError:
        raise UsageError(f"the VM has no device with id {device_id!r} ('qmpctl nics' lists the NICs)") from None
    return {"id": device_id, "deleted-netdev": netdev,
            "note": f"device {device_id} was already gone; deleted the network backend it left: {netdev}"}


def unplug(session: Session, deadline: Deadline, device_id: str, wait_seconds: float) -> dict[str, Any]:
    """device_del, wait until the guest let the NIC go (``wait_seconds``), then netdev_del its backend."""
    if device_id not in _children(session, PERIPHERAL, deadline):
        return _remove_left_behind(session, device_id, deadline)
    properties = _nic_properties(session, f"{PERIPHERAL}/{device_id}", deadline)
    if properties is None:
        raise UsageError(f"device {device_id!r} is not a NIC ('qmpctl nics' lists them)")
    netdev = properties[1] or None
    from qmpctl.vm.unplug import unplug_with_backend

    unplug_with_backend(session, deadline, device_id, wait_seconds, what="device",
                        gone=lambda within: _gone(session, device_id, within), backend=netdev, kind="network backend",
                        delete=lambda name, within: _netdev_del(session, name, within),
                        why_not="a guest without an OS, or without hotplug support, never does",
                        again=f"'qmpctl unplug-nic {device_id}'")
    return {"id": device_id, "deleted-netdev": netdev}
