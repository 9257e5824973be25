"""``events``, ``powerdown``, ``reset`` and ``quit``: change the VM's state and wait for it, with exit codes."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from qmpctl.cli.common import MAX_TIMEOUT, Common, emit, fleet_line, run
from qmpctl.deadline import Deadline
from qmpctl.errors import ExitCode, UsageError
from qmpctl.output import to_json
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session, Target

if TYPE_CHECKING:
    from typing import Any


def events(common: Common, *, count: int | None, wait: list[str], match: list[str]) -> int:
    """Print events as JSON lines; --wait/--count end it (bounded by --timeout), else Ctrl-C does (exit 0)."""
    from qmpctl.wire import events as events_lib

    if count is not None and count < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    keep = events_lib.EventFilter(events_lib.parse_names(wait) if wait else frozenset(),
                                  tuple(events_lib.parse_match(text) for text in match))
    bounded = bool(wait) or count is not None
    if common.dry_run:
        return ExitCode.OK  # nothing would be sent but the negotiation
    targets = common.targets()
    shared = Deadline(common.timeout) if bounded else None  # with --wait/--count, --timeout is the time to wait

    def stream(target: Target) -> Iterator[dict[str, Any]]:
        deadline = shared or Deadline(common.timeout)
        session = target.open(deadline)
        try:
            session.listen_events(deadline)
            events_lib.check_names(session, keep.names, deadline)
            yield from events_lib.follow(session, shared or Deadline(MAX_TIMEOUT), keep,
                                         count or (1 if wait else None), until_closed=not bounded)
        finally:
            session.close()

    try:
        if len(targets) == 1:
            for event in stream(targets[0]):
                emit(to_json(events_lib.event_line(event), common.pretty))
            return ExitCode.OK
        worst = 0
        producers = [functools.partial(stream, target) for target in targets]
        for index, arrived, error in events_lib.interleave(producers):
            if error is not None:
                emit(to_json(fleet_line(targets[index], error=error), common.pretty))
                worst = max(worst, int(error.exit_code))
            elif arrived is not None:
                emit(to_json({"target": str(targets[index]), **events_lib.event_line(arrived)}, common.pretty))
        return worst
    except KeyboardInterrupt:
        return ExitCode.OK  # stopping a stream is its normal end


def powerdown(common: Common, *, wait: bool, wait_timeout: float | None, force_after: float | None) -> int:
    """Press the ACPI power button and wait for SHUTDOWN (exit 4 if ignored; --force-after quits QEMU)."""
    from qmpctl.timing import POWERDOWN_WAIT
    from qmpctl.vm import lifecycle
    from qmpctl.cli.diagnostics import report

    for name, value in (("--wait-timeout", wait_timeout), ("--force-after", force_after)):
        if value is not None and not 0 < value <= MAX_TIMEOUT:
            raise UsageError(f"{name} must be more than 0 seconds, got {value:g}")
    if wait_timeout is not None and not wait:
        raise UsageError("--wait-timeout is how long to wait: it cannot be combined with --no-wait")
    if force_after is not None and not wait:
        raise UsageError("--force-after waits before it forces: it cannot be combined with --no-wait")
    if force_after is not None and common.domains:
        raise UsageError(f"--force-after: {lifecycle.QUIT_REFUSED}")
    seconds = (wait_timeout or POWERDOWN_WAIT) if wait else None

    def action(session: Session, deadline: Deadline, target: Target) -> dict[str, Any]:
        result = lifecycle.powerdown(session, deadline, wait_seconds=seconds, force_after=force_after)
        if result.get("forced"):
            report(f"{target}: the guest did not shut down within {force_after:g} s: made QEMU quit")
        return {"return": result}

    requests = [Request("system_powerdown")] + ([Request("quit")] if force_after is not None else [])
    return run(common, action, requests)


def reset(common: Common) -> int:
    """Reset the machine (system_reset) and return once QEMU reports the RESET."""
    from qmpctl.vm import lifecycle

    return run(common, lambda session, deadline, target: {"return": lifecycle.reset(session, deadline)},
               [Request("system_reset")])


def quit(common: Common) -> int:
    """Make QEMU exit at once (quit); the monitor closing afterwards is the success."""
    from qmpctl.vm import lifecycle

    if common.domains:
        raise UsageError(lifecycle.QUIT_REFUSED)
    return run(common, lambda session, deadline, target: lifecycle.quit_vm(session, deadline), [Request("quit")])
