"""``agent time`` and ``agent guestinfo`` (declared in :mod:`qmpctl.cli.spec`); the work is in the guest wing."""

from __future__ import annotations

from qmpctl.cli.common import Common, printed_plan, run
from qmpctl.errors import ExitCode
from qmpctl.wire.request import Request

SYNC_PLAN_NOTE = ("a plan, not the exact request (--dry-run connects to nothing): the time sent is the host's clock "
                  "when the run sends it, read just before, with guest-get-time before and after")


def agent_time(common: Common, *, sync: bool) -> int:
    from qmpctl.guest import clock

    if not sync:
        return run(common, lambda session, deadline, target: {"return": clock.reading(session, deadline)},
                   [Request("guest-get-time", protocol="qga")])
    import time

    requests = [clock.set_request(time.time_ns())]
    if printed_plan(common, requests, SYNC_PLAN_NOTE):
        return ExitCode.OK
    return run(common, lambda session, deadline, target: {"return": clock.sync(session, deadline)}, requests)


def guestinfo(common: Common) -> int:
    from qmpctl.guest import facts

    return run(common, lambda session, deadline, target: {"return": facts.guest_facts(session, deadline)},
               facts.requests())
