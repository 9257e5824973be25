"""``stats``, ``throttle`` and ``balloon``: see and limit how a VM performs."""

from __future__ import annotations

from qmpctl.cli.common import Common, emit, fleet_line, print_dry_run, printed_plan, run
from qmpctl.deadline import Deadline
from qmpctl.errors import ExitCode, QmpctlError, UsageError
from qmpctl.output import render_reply, to_json
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session, Target

if TYPE_CHECKING:
    from typing import Any

STATS_REQUESTS = ("query-blockstats", "query-cpus-fast", "query-balloon")


def _stats_requests() -> list[Request]:
    return [Request(name) for name in STATS_REQUESTS] + [
        Request("query-stats", {"target": target}) for target in ("vm", "vcpu")]


def _collect(session: Session, deadline: Deadline, target: Target) -> dict[str, Any]:
    from qmpctl.vm.stats import collect

    return {"return": collect(session, deadline)}


def stats(common: Common, *, watch: float | None, count: int | None) -> int:
    """One JSON document per VM; with --watch one line per sample, with rates, until --count or Ctrl-C."""
    if count is not None and watch is None:
        raise UsageError("--count needs --watch SECONDS")
    if count is not None and count < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    if watch is not None and not 0 < watch <= 86400:
        raise UsageError(f"--watch wants seconds between samples, more than 0 and at most a day, got {watch:g}")
    if watch is None:
        return run(common, _collect, _stats_requests())
    if common.dry_run:
        print_dry_run(common, _stats_requests())
        return ExitCode.OK
    try:
        return _watch(common, watch, count)
    except KeyboardInterrupt:
        return ExitCode.OK  # stopping a watch is its normal end


def _watch(common: Common, interval: float, count: int | None) -> int:
    from qmpctl.wire.events import interleave
    from qmpctl.vm.stats import Rates, ticks

    targets = common.targets()
    rates = Rates()
    worst = 0

    def sample(target: Target) -> Any:
        def produce() -> Any:
            deadline = Deadline(common.timeout)  # each sample has the whole --timeout
            session = target.open(deadline)
            try:
                yield _collect(session, deadline, target)
            finally:
                session.close()
        return produce

    for at in ticks(interval, count):
        results: dict[int, tuple[Any, QmpctlError | None]] = {}
        for index, reply, error in interleave([sample(target) for target in targets]):
            if reply is not None or error is not None:
                results[index] = (reply, error)
        for index, target in enumerate(targets):
            reply, error = results[index]
            if error is not None:
                if len(targets) == 1:
                    raise error
                emit(to_json(fleet_line(target, error=error), common.pretty))
                worst = max(worst, int(error.exit_code))
                continue
            reply["return"] = rates.update(str(target), reply["return"], at)
            if len(targets) == 1:
                emit(render_reply(reply, pretty=common.pretty, return_value=common.return_value))
            else:
                emit(to_json(fleet_line(target, reply), common.pretty))
    return worst



def _limits(values: dict[str, Any]) -> dict[str, int]:
    """The limits named on the command line, in bytes or operations; rates in bytes take suffixes."""
    from qmpctl.vm.throttle import option_name
    from qmpctl.units import parse_size

    changes: dict[str, int] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name.startswith("bps") and not name.endswith("_length"):
            changes[name] = parse_size(str(value), option_name(name), "bytes per second", allow_zero=True)
        elif name == "iops_size":
            changes[name] = parse_size(str(value), "--iops-size", "bytes", allow_zero=True)
        else:
            if int(value) < 0:
                raise UsageError(f"{option_name(name)} must be 0 or more, got {value}")
            changes[name] = int(value)
    return changes


def throttle(common: Common, *, device: str, off: bool, group: str | None,
             bps: str | None, bps_rd: str | None, bps_wr: str | None,
             iops: int | None, iops_rd: int | None, iops_wr: int | None,
             bps_max: str | None, bps_rd_max: str | None, bps_wr_max: str | None,
             iops_max: int | None, iops_rd_max: int | None, iops_wr_max: int | None,
             bps_max_length: int | None, bps_rd_max_length: int | None, bps_wr_max_length: int | None,
             iops_max_length: int | None, iops_rd_max_length: int | None, iops_wr_max_length: int | None,
             iops_size: str | None) -> int:
    """Show a disk's I/O limits, or change the named ones (read-modify-write), printing what is in force."""
    from qmpctl.vm import throttle as throttle_lib

    changes = _limits({
        "bps": bps, "bps_rd": bps_rd, "bps_wr": bps_wr, "iops": iops, "iops_rd": iops_rd, "iops_wr": iops_wr,
        "bps_max": bps_max, "bps_rd_max": bps_rd_max, "bps_wr_max": bps_wr_max, "iops_max": iops_max,
        "iops_rd_max": iops_rd_max, "iops_wr_max": iops_wr_max, "bps_max_length": bps_max_length,
        "bps_rd_max_length": bps_rd_max_length, "bps_wr_max_length": bps_wr_max_length,
        "iops_max_length": iops_max_length, "iops_rd_max_length": iops_rd_max_length,
        "iops_wr_max_length": iops_wr_max_length, "iops_size": iops_size})
    if off and (changes or group is not None):
        raise UsageError("--off clears every limit: it cannot be combined with limits or --group")
    if group is not None and not group:
        raise UsageError("--group wants a name")
    throttle_lib.check_changes(changes)
    setting = off or bool(changes) or group is not None
    wanted: dict[str, Any] = {**changes, **({"group": group} if group is not None else {})}

    def action(session: Session, deadline: Deadline, target: Target) -> dict[str, Any]:
        if not setting:
            return {"return": throttle_lib.show(session, deadline, device)}
        return {"return": throttle_lib.set_limits(session, deadline, device, changes, off=off, group=group)}

    requests = [Request("query-block")]
    if setting and common.dry_run:  # shown as it would be with no limits in force yet
        requests.append(throttle_lib.plan({"qdev": device, "inserted": {}}, wanted, off=off))
        if printed_plan(common, requests, throttle_lib.PLAN_NOTE):
            return ExitCode.OK
    return run(common, action, requests)


def balloon(common: Common, *, size: str | None, wait_timeout: float | None) -> int:
    """Show the balloon's size, or ask the guest for SIZE bytes (and wait with --wait-timeout)."""
    from qmpctl.vm import balloon as balloon_lib
    from qmpctl.units import parse_size

    if size is None:
        if wait_timeout is not None:
            raise UsageError("--wait-timeout needs a SIZE to wait for")
        return run(common, lambda session, deadline, target: {"return": balloon_lib.query(session, deadline)},
                   [Request("query-balloon")])
    value = parse_size(size, "SIZE", "bytes")
    if wait_timeout is not None and not 0 < wait_timeout <= 86400:
        raise UsageError(f"--wait-timeout must be more than 0 and at most a day, got {wait_timeout:g}")

    def action(session: Session, deadline: Deadline, target: Target) -> dict[str, Any]:
        wait = Deadline(wait_timeout) if wait_timeout is not None else None
        return {"return": balloon_lib.set_target(session, deadline, value, wait)}

    return run(common, action, [Request("balloon", {"value": value})])
