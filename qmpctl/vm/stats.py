"""How a VM performs: disk I/O counters, vCPU threads, balloon size, the hypervisor's own counters.

One sample is one JSON document gathered from several queries. A piece the
VM cannot give (no balloon device, a QEMU before 7.1, TCG without counters)
is left out with a note: a monitoring script must get the rest rather than
an error. Watching computes rates between consecutive samples of a VM.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from qmpctl.vm.block import device_id_of
from qmpctl.deadline import Deadline
from qmpctl.errors import VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any

RATE_COUNTERS = ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations")
"""The counters a watch turns into per-second rates."""

NO_BALLOON = "no balloon device (add -device virtio-balloon-pci to see and set the guest's memory)"
NO_QUERY_STATS = "query-stats is not available (QEMU 7.1 or later has it)"
EMPTY_QUERY_STATS = ("query-stats returned nothing: no statistics provider is active "
                     "(KVM provides them; under TCG QEMU has none)")


def _optional(session: Session, request: Request, deadline: Deadline,
              missing: dict[str, str]) -> tuple[Any, str | None]:
    """The ``return`` of ``request``, or None and a note when QEMU says it lacks the thing asked for.

    ``missing`` maps QEMU error classes to the note that explains them; any
    other error is a real failure and propagates.
    """
    try:
        return session.execute(request, deadline).get("return"), None
    except VmError as exc:
        note = missing.get(exc.error_class)
        if note is None:
            raise
        return None, note


def disk_stats(entry: dict[str, Any]) -> dict[str, Any]:
    """One disk of query-blockstats: how it is named, then its numeric counters."""
    qdev = str(entry.get("qdev") or "")
    disk: dict[str, Any] = {"device": device_id_of(qdev) or entry.get("device") or None, "qdev": qdev or None,
                            "node-name": entry.get("node-name")}
    counters = entry.get("stats")
    if isinstance(counters, dict):
        disk.update({key: value for key, value in counters.items()
                     if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return disk


def collect(session: Session, deadline: Deadline) -> dict[str, Any]:
    """One sample of the VM: ``disks``, ``vcpus``, ``balloon``, ``query-stats`` and ``notes``."""
    notes: list[str] = []
    blockstats = session.execute(Request("query-blockstats"), deadline).get("return")
    cpus = session.execute(Request("query-cpus-fast"), deadline).get("return")
    document: dict[str, Any] = {
        "disks": [disk_stats(entry) for entry in blockstats if isinstance(entry, dict)]
        if isinstance(blockstats, list) else [],
        "vcpus": [{key: cpu.get(key) for key in ("cpu-index", "thread-id", "qom-path")}
                  for cpu in cpus if isinstance(cpu, dict)] if isinstance(cpus, list) else [],
    }
    balloon, note = _optional(session, Request("query-balloon"), deadline, {"DeviceNotActive": NO_BALLOON})
    if isinstance(balloon, dict):
        document["balloon"] = balloon
    if note:
        notes.append(note)
    hypervisor: dict[str, Any] = {}
    for target in ("vm", "vcpu"):
        found, note = _optional(session, Request("query-stats", {"target": target}), deadline,
                                {"CommandNotFound": NO_QUERY_STATS})
        if note:
            notes.append(note)
            break
        if found:
            hypervisor[target] = found
    else:
        if hypervisor:
            document["query-stats"] = hypervisor
        else:
            notes.append(EMPTY_QUERY_STATS)
    if notes:
        document["notes"] = notes
    return document


def _disk_key(disk: dict[str, Any]) -> tuple[Any, ...]:
    return (disk.get("qdev"), disk.get("device"), disk.get("node-name"))


def add_rates(previous: dict[str, Any] | None, current: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``current`` with each disk's ``rates`` (per second) since ``previous``; the first sample has none.

    A counter that went down (the disk was replaced, QEMU restarted) gives no
    rate rather than a negative one.
    """
    if previous is None or seconds <= 0:
        return current
    before = {_disk_key(disk): disk for disk in previous.get("disks", [])}
    for disk in current.get("disks", []):
        old = before.get(_disk_key(disk))
        if old is None:
            continue
        rates = {}
        for counter in RATE_COUNTERS:
            now, then = disk.get(counter), old.get(counter)
            if isinstance(now, (int, float)) and isinstance(then, (int, float)) and now >= then:
                rates[f"{counter}_per_s"] = round((now - then) / seconds, 3)
        disk["rates"] = rates
    current["interval"] = round(seconds, 3)
    return current


def ticks(interval: float, count: int | None, *, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[float]:
    """Sleep until each sampling time, every ``interval`` seconds, ``count`` times or forever; yield the time.

    Ticks are kept on a fixed schedule, so a slow sample does not make the
    next one late too; ticks missed entirely are skipped, not made up in a burst.
    """
    taken = 0
    next_at = clock()
    while count is None or taken < count:
        pause = next_at - clock()
        if pause > 0:
            sleep(pause)
        yield clock()
        taken += 1
        next_at += interval
        next_at = max(next_at, clock())


class Rates:
    """Turns each VM's successive samples into rates (see :func:`add_rates`)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, dict[str, Any]]] = {}

    def update(self, key: str, document: dict[str, Any], at: float) -> dict[str, Any]:
        """``document`` (sampled at monotonic time ``at``) with ``time`` and rates since ``key``'s last sample."""
        document["time"] = round(time.time(), 3)
        previous = self._last.get(key)
        self._last[key] = (at, document)
        if previous is None:
            return document
        return add_rates(previous[1], document, at - previous[0])
