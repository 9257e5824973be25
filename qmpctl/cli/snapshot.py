"""``snapshot save | load | list | delete``: internal snapshots (declared in :mod:`qmpctl.cli.spec`).

The work happens in :mod:`qmpctl.vm.snapshot`; ``snapshot list`` is one
query-block and stays on the light start-up path.
"""

from __future__ import annotations

from qmpctl.cli.common import Common, printed_plan, run
from qmpctl.errors import ExitCode, UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request

if TYPE_CHECKING:
    from typing import Any, Optional


def _wait(wait_timeout: Optional[float]) -> float:
    from qmpctl.vm.snapshot import DEFAULT_WAIT

    if wait_timeout is None:
        return DEFAULT_WAIT
    if not wait_timeout > 0:
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait_timeout:g}")
    return wait_timeout


def snapshot_list(common: Common) -> int:
    from qmpctl.vm.snapshot import listing

    return run(common, lambda session, deadline, target: {"return": listing(session, deadline)},
               [Request("query-block")])


def _job_command(common: Common, verb: str, name: str, vmstate: Optional[str], action: Any) -> int:
    from qmpctl.vm import snapshot as snapshot_lib

    snapshot_lib.check_tag(name)
    requests = snapshot_lib.plan(verb, name, vmstate)
    if printed_plan(common, requests, snapshot_lib.PLAN_NOTE):
        return ExitCode.OK
    return run(common, lambda session, deadline, target: {"return": action(session, deadline, target)}, requests)


def snapshot_save(common: Common, *, name: str, vmstate: Optional[str], exclude: list[str], force: bool,
                  wait_timeout: Optional[float]) -> int:
    from qmpctl.vm import snapshot as snapshot_lib

    wait = _wait(wait_timeout)
    return _job_command(common, "save", name, vmstate, lambda session, deadline, target: snapshot_lib.save(
        session, deadline, name, vmstate=vmstate, exclude=exclude, force=force, wait_seconds=wait))


def snapshot_load(common: Common, *, name: str, exclude: list[str], wait_timeout: Optional[float],
                  sync_time: bool, agent: Optional[str]) -> int:
    from qmpctl.cli.common import time_sync_agent
    from qmpctl.vm import snapshot as snapshot_lib

    wait = _wait(wait_timeout)
    clock_agent = time_sync_agent(common, agent, sync_time)

    def action(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
        result = snapshot_lib.load(session, deadline, name, exclude=exclude, wait_seconds=wait)
        if clock_agent is not None:
            from qmpctl.guest.clock import sync_after_resume

            status = session.execute(Request("query-status"), deadline).get("return") or {}
            result.update(sync_after_resume(clock_agent, common.timeout, status.get("status") == "running"))
        return result

    if sync_time and common.dry_run:
        from qmpctl.guest.clock import set_request

        snapshot_lib.check_tag(name)
        requests = [*snapshot_lib.plan("load", name, None), Request("query-status"), set_request(0)]
        printed_plan(common, requests, snapshot_lib.PLAN_NOTE + SYNC_PLAN_NOTE)
        return ExitCode.OK
    return _job_command(common, "load", name, None, action)


SYNC_PLAN_NOTE = ("; with --sync-time, once the VM runs again, guest-set-time with the host's time then (in "
                  "nanoseconds) goes to the guest agent")


def snapshot_delete(common: Common, *, name: str, wait_timeout: Optional[float]) -> int:
    from qmpctl.vm import snapshot as snapshot_lib

    wait = _wait(wait_timeout)
    return _job_command(common, "delete", name, None, lambda session, deadline, target: snapshot_lib.delete(
        session, deadline, name, wait_seconds=wait))
