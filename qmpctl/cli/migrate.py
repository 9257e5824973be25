"""The ``migrate`` command: live migration (--to), saved state (--to-file, --from-file), --status, --cancel.

The work, and every cleanup, happens in :mod:`qmpctl.vm.migration` and
:mod:`qmpctl.vm.savedstate`; this module checks the combination of options
before anything is contacted, and shows progress.
"""

from __future__ import annotations

import os

from qmpctl.cli.common import Common, printed_plan, run
from qmpctl.errors import ExitCode
from qmpctl.timing import CHECK_EVERY
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.wire.targets import Target


LIVE_PLAN_NOTE = (
    "a plan, not all the requests (--dry-run connects to nothing): the run first checks that the destination "
    "waits (query-status: inmigrate) and the source can go, sends the same migrate-set-capabilities to both, "
    "listens on a private unix socket in a new directory unless --uri says otherwise (tcp:HOST:0: the port the "
    "destination picks), then polls query-migrate on both until they agree; on a failure, a timeout or a "
    "signal it sends migrate_cancel, cont to a source that ran, and quit to a destination that never ran")
SAVE_PLAN_NOTE = (
    "a plan (--dry-run connects to nothing): the run first creates FILE, then checks the VM (query-status, "
    "query-migrate), passes FILE's descriptor with getfd (SCM_RIGHTS), polls query-migrate until completed "
    "and then applies --then; on a failure or a signal it sends migrate_cancel and cont, and removes FILE")
RESTORE_PLAN_NOTE = (
    "a plan (--dry-run connects to nothing): the run first checks that the QEMU waits (query-status: "
    "inmigrate), passes FILE's descriptor with getfd (SCM_RIGHTS), waits for completed (query-migrate), and "
    "sends cont only when the restored VM is not already running")
CANCEL_PLAN_NOTE = ("a plan (--dry-run connects to nothing): the run sends migrate_cancel only when a migration "
                    "is under way (query-migrate), then waits until QEMU reports it cancelled")


def _progress_printer(mode: str) -> Any:
    """A printer of migration readings on stderr (bar or JSON lines), or None for ``none``."""
    from qmpctl.cli.progress import printer_for
    from qmpctl.cli.readings import migration_bar_text, migration_json_text

    return printer_for(mode, bar=migration_bar_text, json=migration_json_text,
                       finished=lambda reading: reading.ended, changed=lambda reading: reading.transferred)


def _one_mode(to: Optional[str], to_file: Optional[str], from_file: Optional[str], status: bool,
              cancel: bool) -> str:
    chosen = [name for name, given in (("--to", to), ("--to-file", to_file), ("--from-file", from_file),
                                       ("--status", status), ("--cancel", cancel)) if given]
    if len(chosen) != 1:
        what = "none of them" if not chosen else " and ".join(chosen)
        raise UsageError(f"give one of --to ADDR, --to-file FILE, --from-file FILE, --status or --cancel, not {what}")
    return chosen[0]


def _refuse_options(mode: str, given: dict[str, bool]) -> None:
    for flag, used in given.items():
        if used:
            raise UsageError(f"{flag} does not go with {mode}")


def _one_socket_target(common: Common, what: str) -> list[Target]:
    """Exactly one VM, reached through its own monitor socket: never through libvirt (--domain)."""
    if common.domains:
        raise UsageError("migrate does not take --domain: libvirt owns the migration of its domains and would "
                         "lose track of one moved behind its back; use virsh migrate DOMAIN DEST_URI "
                         "(or virsh save / virsh restore for state files)")
    if common.dry_run:
        return []  # --dry-run resolves nothing
    targets = common.targets()
    if len(targets) != 1:
        raise UsageError(f"{what} works on exactly one VM, not {len(targets)}")
    return targets


def migrate(common: Common, *, to: Optional[str], uri: Optional[str], speed: Optional[str],
            downtime: Optional[int], auto_converge: bool, postcopy_after: Optional[float],
            stall_timeout: Optional[float], wait: bool, wait_timeout: Optional[float], progress: str,
            status: bool, cancel: bool, to_file: Optional[str], from_file: Optional[str], then: str,
            force: bool, paused: bool, sync_time: bool, agent: Optional[str]) -> int:
    """Dispatch to the mode the options name; each refuses options that belong to another."""
    mode = _one_mode(to, to_file, from_file, status, cancel)
    if mode != "--from-file":
        _refuse_options(mode, {"--sync-time": sync_time, "-a/--agent": agent is not None})
    targets = _one_socket_target(common, "migrate")  # resolved once, handed to run()
    live_only = {"--uri": uri is not None, "--downtime": downtime is not None, "--auto-converge": auto_converge,
                 "--postcopy-after": postcopy_after is not None, "--stall-timeout": stall_timeout is not None,
                 "--no-wait": not wait}
    save_only = {"--then": then != "stay", "--force": force}
    if mode == "--to":
        _refuse_options(mode, {**save_only, "--paused": paused})
        return _live(common, targets, to or "", uri, speed, downtime, auto_converge, postcopy_after, stall_timeout,
                     wait, wait_timeout, progress)
    if mode == "--to-file":
        _refuse_options(mode, {**live_only, "--paused": paused})
        return _save(common, targets, to_file or "", then, force, speed, wait_timeout, progress)
    if mode == "--from-file":
        _refuse_options(mode, {**live_only, **save_only, "--speed": speed is not None})
        if sync_time and paused:
            raise UsageError("--sync-time does not go with --paused: the guest's clock is set once the VM runs "
                             "(qmpctl agent time --sync does it later)")
        return _restore(common, targets, from_file or "", paused, wait_timeout, sync_time, agent)
    _refuse_options(mode, {**live_only, **save_only, "--paused": paused, "--speed": speed is not None,
                           "--wait-timeout": wait_timeout is not None})
    return _status_or_cancel(common, targets, cancel)


def _wait_timeout(value: Optional[float]) -> float:
    from qmpctl.timing import MIGRATION_WAIT_TIMEOUT

    if value is None:
        return MIGRATION_WAIT_TIMEOUT
    if not 0 < value < float("inf"):
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {value:g}")
    return value


def _run_with_progress(common: Common, targets: list[Target], action: Any, requests: list[Request],
                       printer: Any) -> int:
    try:
        return run(common, action, requests, targets=targets)
    finally:
        if printer is not None:
            printer.close()


def _live(common: Common, targets: list[Target], to: str, uri: Optional[str], speed: Optional[str],
          downtime: Optional[int], auto_converge: bool, postcopy_after: Optional[float],
          stall_timeout: Optional[float], wait: bool, wait_timeout: Optional[float], progress: str) -> int:
    from qmpctl.vm import migration
    from qmpctl.wire.address import parse_address
    from qmpctl.backup.full import parse_speed

    options = migration.MigrateOptions(uri, parse_speed(speed) if speed else None, downtime, auto_converge,
                                       postcopy_after, stall_timeout, wait, _wait_timeout(wait_timeout))
    destination_address = parse_address(to)
    if not common.dry_run:
        (source_target,) = targets
        if str(source_target) == str(destination_address):
            raise UsageError("--to names the source itself: give the destination QEMU's monitor")
        if uri is None and not (source_target.is_local and _is_local(destination_address)):
            raise UsageError("the destination is on another host: give --uri tcp:HOST:PORT, an address the "
                             "destination QEMU can listen on and the source can reach")
    if printed_plan(common, options.setup_requests(uri or "unix:PRIVATE_DIR/channel.sock"), LIVE_PLAN_NOTE):
        return ExitCode.OK
    printer = _progress_printer(progress) if wait else None
    every = printer.every if printer is not None else CHECK_EVERY

    def action(source: Any, deadline: Any, target: Any) -> dict[str, Any]:
        from qmpctl.wire.qmp import QmpSession

        with QmpSession.connect(destination_address, deadline) as destination:
            return {"return": migration.migrate(source, destination, deadline, options, progress=printer,
                                                progress_every=every)}

    return _run_with_progress(common, targets, action, options.setup_requests(uri or "unix:PRIVATE_DIR/channel.sock"),
                              printer)


def _is_local(address: Any) -> bool:
    from qmpctl.wire.targets import SocketTarget

    return SocketTarget(address).is_local


def _save(common: Common, targets: list[Target], path: str, then: str, force: bool, speed: Optional[str],
          wait_timeout: Optional[float], progress: str) -> int:
    from qmpctl.vm import savedstate
    from qmpctl.backup.full import parse_speed

    rate = parse_speed(speed) if speed else None
    timeout = _wait_timeout(wait_timeout)
    _require_unix_socket(targets, "--to-file")
    savedstate.check_save_path(path, force)  # before connecting to anything
    if printed_plan(common, savedstate.save_requests(), SAVE_PLAN_NOTE):
        return ExitCode.OK
    printer = _progress_printer(progress)
    every = printer.every if printer is not None else CHECK_EVERY

    def action(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
        return {"return": savedstate.save(session, deadline, path, force=force, then=then, speed=rate,
                                          wait_timeout=timeout, progress=printer, progress_every=every)}

    return _run_with_progress(common, targets, action, savedstate.save_requests(), printer)


def _restore(common: Common, targets: list[Target], path: str, paused: bool, wait_timeout: Optional[float],
             sync_time: bool, agent: Optional[str]) -> int:
    from qmpctl.cli.common import time_sync_agent
    from qmpctl.vm import savedstate

    timeout = _wait_timeout(wait_timeout)
    clock_agent = time_sync_agent(common, agent, sync_time)
    _require_unix_socket(targets, "--from-file")
    if not os.access(path, os.R_OK) or os.path.isdir(path):
        raise UsageError(f"cannot read {path}: " + ("it is a directory" if os.path.isdir(path) else
                                                    "no such file, or no permission"))

    def action(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
        result = savedstate.restore(session, deadline, path, paused=paused, wait_timeout=timeout)
        if clock_agent is not None:
            from qmpctl.guest.clock import sync_after_resume

            result.update(sync_after_resume(clock_agent, common.timeout, result.get("run-state") == "running"))
        return {"return": result}

    requests = savedstate.restore_requests()
    note = RESTORE_PLAN_NOTE
    if sync_time:
        from qmpctl.guest.clock import set_request

        requests.append(set_request(0))
        note += ("; with --sync-time, once the VM runs, guest-set-time with the host's time then (in "
                 "nanoseconds) goes to the guest agent")
    if printed_plan(common, [request for request in requests if not (paused and request.execute == "cont")],
                    note):
        return ExitCode.OK
    return run(common, action, requests, targets=targets)


def _require_unix_socket(targets: list[Target], flag: str) -> None:
    """Refused before connecting: a file descriptor cannot travel over TCP or SSH (none given: --dry-run)."""
    from qmpctl.wire.targets import SocketTarget

    if not targets:
        return
    (target,) = targets
    address = target.address if isinstance(target, SocketTarget) else None
    if address is not None and not address.is_unix:
        from qmpctl.vm.savedstate import fd_passing_refused

        raise fd_passing_refused(flag, str(address))


def _status_or_cancel(common: Common, targets: list[Target], cancel: bool) -> int:
    from qmpctl.vm import migration

    def action(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
        return {"return": migration.cancel(session, deadline) if cancel else migration.status(session, deadline)}

    if cancel:
        if printed_plan(common, [Request("migrate_cancel")], CANCEL_PLAN_NOTE):
            return ExitCode.OK
        return run(common, action, [], targets=targets)
    return run(common, action, [Request("query-migrate"), Request("query-status")], targets=targets)
