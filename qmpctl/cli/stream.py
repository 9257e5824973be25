"""``stream -s SOCK DEVICE``: make a disk standalone while its VM runs (the work is in :mod:`qmpctl.vm.stream`)."""

from __future__ import annotations

from qmpctl.cli.common import Common, printed_plan, run
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional


def stream(common: Common, *, device: str, speed: Optional[str], wait: bool, wait_timeout: Optional[float],
           progress: str) -> int:
    from qmpctl.backup.full import parse_speed
    from qmpctl.timing import BLOCK_JOB_WAIT_TIMEOUT
    from qmpctl.cli.chain import _printer
    from qmpctl.vm import stream as stream_lib

    if wait_timeout is not None and not wait:
        raise UsageError("--wait-timeout is how long to wait: it cannot be combined with --no-wait")
    if wait_timeout is not None and not wait_timeout > 0:
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait_timeout:g}")
    rate = parse_speed(speed) if speed else None
    request = stream_lib.stream_request(stream_lib.job_id_for(device), device, rate)
    if printed_plan(common, [request], "the device name is resolved to its node when connected"):
        return 0
    show, every, printer = _printer(progress) if wait else (None, 1.0, None)

    def action(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
        done = stream_lib.stream(session, deadline, device, speed=rate, wait=wait,
                                 wait_timeout=BLOCK_JOB_WAIT_TIMEOUT if wait_timeout is None else wait_timeout,
                                 progress=show, progress_every=every)
        if done.get("standalone") and done.get("backing") and target.is_local:
            from qmpctl.backup.holds import release_for

            released = release_for(str(done["backing"]), str(done["image"]))
            if released is not None:
                done["released"] = released
        return {"return": done}

    try:
        return run(common, action, [request])
    finally:
        if printer is not None:
            printer.close()
