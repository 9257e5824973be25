"""``agent exec``: run a guest program the way ssh would, its output raw and its exit status qmpctl's.

Every failure of qmpctl itself in ``agent exec`` exits 125, usage mistakes
included: a guest program may exit 2 or 3 on its own, and a script must be
able to tell the two apart.
"""

from __future__ import annotations

import sys

from qmpctl.cli.common import Common, emit, print_dry_run, result_decided
from qmpctl.deadline import Deadline
from qmpctl.errors import ExecFailed, ExecLost, ExecTimeout, ExitCode, Interrupted, OutputError, QmpctlError, UsageError
from qmpctl.output import render_reply, to_json
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.targets import Target

if TYPE_CHECKING:
    from typing import Any, BinaryIO, Optional


class ExecOptions(NamedTuple):
    """What ``agent exec`` was asked to do (a NamedTuple: dataclasses cost milliseconds to import)."""

    program: list[str]
    stdin: bool = False
    env: Optional[list[str]] = None
    wait_timeout: Optional[float] = None
    no_wait: bool = False
    json_output: bool = False


def check_wait_timeout(wait_timeout: float | None) -> None:
    if wait_timeout is not None and not wait_timeout >= 0:
        raise UsageError(f"--wait-timeout must not be negative, got {wait_timeout:g}")


def _write_bytes(stream: BinaryIO, data: bytes) -> None:
    """Raw guest output; a reader that went away (``| head``) is not an error."""
    if not data:
        return
    try:
        stream.write(data)
        stream.flush()
    except BrokenPipeError:
        pass
    except OSError as exc:
        raise OutputError(f"the program ran, but its output could not be written: {exc.strerror or exc}") from None


def _only_target(common: Common) -> Target:
    targets = common.targets()
    if len(targets) > 1:
        raise UsageError(f"agent exec runs a program on one guest, but {len(targets)} targets were given; "
                         "loop over them in the shell, or use 'agent exec --no-wait' per guest")
    return targets[0]


class own_failures_exit_125:  # noqa: N801  (used like a function: ``with own_failures_exit_125():``)
    """Report every failure of qmpctl itself as ExecFailed, so it cannot pass for the program's exit code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        kept = (ExecFailed, ExecTimeout, Interrupted, OutputError)
        if isinstance(error, QmpctlError) and not isinstance(error, kept):
            raise ExecFailed(error.message, sent=error.sent, received=error.received) from error


def execute_exec(options: ExecOptions, common: Common) -> int:
    """Run the program and return its exit status; qmpctl's own failures become ExecFailed (125)."""
    with own_failures_exit_125():
        return _execute(options, common)


def _execute(options: ExecOptions, common: Common) -> int:
    from qmpctl.guest import exec as guest_exec
    from qmpctl.cli.diagnostics import report

    check_wait_timeout(options.wait_timeout)
    if options.no_wait and options.wait_timeout is not None:
        raise UsageError("--no-wait and --wait-timeout contradict each other")
    input_data = sys.stdin.buffer.read(guest_exec.MAX_INPUT_BYTES + 1) if options.stdin else None
    request = guest_exec.exec_request(options.program, env=options.env, input_data=input_data)
    if common.dry_run:
        print_dry_run(common, [request])
        return ExitCode.OK
    target = _only_target(common)
    deadline = Deadline(common.timeout)
    session = target.open(deadline)
    try:
        pid = guest_exec.start(session, request, deadline)
        if options.no_wait:
            emit(render_reply({"return": {"pid": pid}}, pretty=common.pretty, return_value=common.return_value),
                 final=True)
            return ExitCode.OK
        try:
            status, _ = guest_exec.wait_for_exit(session, pid, reply_timeout=common.timeout,
                                                 wait_timeout=options.wait_timeout)
        except ExecTimeout as exc:
            if isinstance(exc, ExecLost):
                raise  # the agent went silent: its message says what may be running
            if options.json_output:
                emit(to_json(guest_exec.ExecStatus(pid, exited=False).to_json(), common.pretty))
            exc.add_note(f"and keeps running; read its result later with 'qmpctl agent exec-status {pid}'",
                         joined=" ")
            raise
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the program keeps running in the guest as pid {pid}") from None
    finally:
        session.close()
    if options.json_output:
        emit(to_json(status.to_json(), common.pretty), final=True)
    else:
        result_decided()
        _write_bytes(sys.stdout.buffer, status.stdout)
        _write_bytes(sys.stderr.buffer, status.stderr)
    for stream, truncated in (("stdout", status.out_truncated), ("stderr", status.err_truncated)):
        if truncated:
            report(f"the guest agent truncated the program's {stream} at 16 MiB")
    return status.exit_status


def agent_exec(common: Common, *, program: list[str], stdin: bool, env: list[str], wait_timeout: Optional[float],
               no_wait: bool, json_output: bool) -> int:
    """The handler of ``agent exec``: an absent --env leaves the guest's environment alone."""
    options = ExecOptions(program=program, stdin=stdin, env=env or None, wait_timeout=wait_timeout,
                          no_wait=no_wait, json_output=json_output)
    return execute_exec(options, common)
