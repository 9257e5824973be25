"""``media insert | eject``, ``hotplug-nic``, ``unplug-nic`` and ``nics`` (declared in :mod:`qmpctl.cli.spec`).

The work happens in :mod:`qmpctl.vm.media` and :mod:`qmpctl.vm.nics`,
imported inside the commands so that other commands do not pay for them.
"""

from __future__ import annotations

from qmpctl.cli.common import Common, enveloped, printed_plan, run
from qmpctl.errors import ExitCode
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional


def media_insert(common: Common, *, device: str, file: str, image_format: Optional[str], read_only: bool) -> int:
    from qmpctl.cli.block import _the_vm
    from qmpctl.vm import media
    from qmpctl.wire.session import OVER_SSH

    targets, files = _the_vm(common, "media insert changes one drive")
    if files.reach == OVER_SSH and not common.dry_run:  # FILE is QEMU's, on the VM's host: checked there
        from qmpctl.vm.block import check_image

        def insert_remote(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
            filename, detected = check_image(file, image_format, is_local=False, files=files.remote(),
                                             deadline=deadline)
            return {"return": media.insert(session, deadline, device, filename, detected, read_only)}

        return run(common, insert_remote, [], targets=targets)
    filename, detected = media.check_medium(file, image_format, is_local=files.is_local)  # before anything is sent
    request = media.change_request({"id": device}, filename, detected, read_only)
    if printed_plan(common, [request], media.ID_PLAN_NOTE.format(device=device)):
        return ExitCode.OK
    insert = enveloped(lambda session, deadline, target: media.insert(session, deadline, device, filename, detected,
                                                                       read_only))
    return run(common, insert, [request], targets=targets)


def media_eject(common: Common, *, device: str, force: bool) -> int:
    from qmpctl.vm import media

    request = media.eject_request({"id": device}, force)
    if printed_plan(common, [request], media.ID_PLAN_NOTE.format(device=device)):
        return ExitCode.OK
    eject = enveloped(lambda session, deadline, target: media.eject(session, deadline, device, force))
    return run(common, eject, [request])


def hotplug_nic(common: Common, *, device_id: Optional[str], model: str, mac: Optional[str], net: str,
                bus: Optional[str]) -> int:
    """netdev_add + device_add, all or nothing (help in :mod:`qmpctl.cli.spec`)."""
    from qmpctl.errors import UsageError
    from qmpctl.vm import nics

    if device_id is None:
        raise UsageError("hotplug-nic needs --id ID: the NIC's device id (its backend becomes ID-net)")

    plan = nics.NicPlan(device_id, model, mac, net, bus).check()
    return run(common, enveloped(lambda session, deadline, target: nics.hotplug(session, deadline, plan)),
               plan.requests())


def unplug_nic(common: Common, *, device_id: str, wait_timeout: float) -> int:
    """device_del, wait for the release, netdev_del (help in :mod:`qmpctl.cli.spec`)."""
    from qmpctl.errors import UsageError
    from qmpctl.vm import nics
    from qmpctl.wire.request import Request

    if not wait_timeout > 0:
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait_timeout:g}")
    request = Request("device_del", {"id": device_id})
    if printed_plan(common, [request], nics.UNPLUG_PLAN_NOTE):
        return ExitCode.OK
    unplug = enveloped(lambda session, deadline, target: nics.unplug(session, deadline, device_id, wait_timeout))
    return run(common, unplug, [request])


def list_nics(common: Common, *, link: Optional[str], state: Optional[str]) -> int:
    """The NICs (qom-list, qom-get), or set_link with --link ID up|down."""
    from qmpctl.errors import UsageError
    from qmpctl.vm import nics
    from qmpctl.wire.request import Request

    if link is None:
        if state is not None:
            raise UsageError(f"{state!r}: a link state goes with --link ID (nics --link ID up|down)")
        return run(common, enveloped(lambda session, deadline, target: nics.listing(session, deadline)),
                   [Request("qom-list", {"path": nics.PERIPHERAL})])
    if state not in ("up", "down"):
        raise UsageError("--link ID needs the state: up or down (nics --link net0 down)")
    up = state == "up"
    return run(common, enveloped(lambda session, deadline, target: nics.set_link(session, deadline, link, up)),
               [Request("set_link", {"name": link, "up": up})])


def vcpus(common: Common, *, count: Optional[int], wait_timeout: Optional[float]) -> int:
    """The vCPU slots (query-hotpluggable-cpus), or plug or unplug vCPUs until there are COUNT."""
    from qmpctl.wire.request import Request

    query = Request("query-hotpluggable-cpus")
    if count is None:
        from qmpctl.vm.cpus import listing

        return run(common, enveloped(lambda session, deadline, target: listing(session, deadline)), [query])
    from qmpctl.errors import UsageError
    from qmpctl.vm import cpus

    if count < 1:
        raise UsageError(f"N must be at least 1, got {count}")
    wait = cpus.DEFAULT_WAIT if wait_timeout is None else wait_timeout
    if not 0 < wait < float("inf"):
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait:g}")
    if printed_plan(common, [query], cpus.PLAN_NOTE):
        return ExitCode.OK
    return run(common, enveloped(lambda session, deadline, target: cpus.set_count(session, deadline, count, wait)),
               [query])


def hotplug_memory(common: Common, *, size: str, device_id: Optional[str]) -> int:
    """object-add + device_add pc-dimm, all or nothing (help in :mod:`qmpctl.cli.spec`)."""
    from qmpctl.errors import UsageError
    from qmpctl.units import parse_size
    from qmpctl.vm import memory

    if device_id is None:
        raise UsageError("hotplug-memory needs --id ID: the DIMM's device id (its backend becomes ID-mem)")
    if not memory.ID_PATTERN.match(device_id) or len(device_id) > memory.MAX_ID:
        raise UsageError(f"--id {device_id!r} is not valid: use a letter, then letters, digits, '-', '.' or '_', "
                         f"at most {memory.MAX_ID} characters")
    bytes_ = memory.check_size(parse_size(size, "SIZE"))
    requests = memory.add_requests(device_id, bytes_)  # exactly what a run sends, after its checks
    plug = enveloped(lambda session, deadline, target: memory.hotplug(session, deadline, device_id, bytes_))
    return run(common, plug, requests)


def unplug_memory(common: Common, *, device_id: str, wait_timeout: float) -> int:
    """device_del, wait for the release, object-del (help in :mod:`qmpctl.cli.spec`)."""
    from qmpctl.errors import UsageError
    from qmpctl.vm import memory
    from qmpctl.wire.request import Request

    if not wait_timeout > 0:
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait_timeout:g}")
    request = Request("device_del", {"id": device_id})
    if printed_plan(common, [request], memory.UNPLUG_PLAN_NOTE):
        return ExitCode.OK
    unplug = enveloped(lambda session, deadline, target: memory.unplug(session, deadline, device_id, wait_timeout))
    return run(common, unplug, [request])
