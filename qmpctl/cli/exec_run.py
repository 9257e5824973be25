"""``agent exec`` without Typer: its options, its command-line shortcut, and what it does.

``agent exec -- true`` should cost about what ``agent ping`` costs, and ping
takes the fast path past Typer (:mod:`qmpctl.cli.fastpath`), whose import alone
costs more than the exec round trips. So the command's work lives here, free of
Typer, and both the Typer command (:mod:`qmpctl.cli.agent`) and the shortcut
call :func:`execute_exec`. Lines the shortcut does not fully understand go to
Typer, the single source of help and usage errors.

Every failure of qmpctl itself in ``agent exec`` exits 125, usage mistakes
included: a guest program may exit 2 or 3 on its own, and a script must be
able to tell the two apart.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO, Mapping, NamedTuple, Optional

from qmpctl.cli.common import Common, SharedOption, emit, make_common, print_dry_run, shared_options
from qmpctl.deadline import Deadline
from qmpctl.errors import ExecFailed, ExecLost, ExecTimeout, ExitCode, Interrupted, QmpctlError, UsageError
from qmpctl.output import render_reply, to_json
from qmpctl.targets import AGENT, Target

WAIT_TIMEOUT_HELP = "Give up waiting after this long: exit 124, the program keeps running [default: no limit]."
JSON_HELP = ("Print the decoded result as one JSON object: pid, exited, exitcode, signal, stdout, stderr "
             "(UTF-8 text, invalid bytes as U+FFFD), out-truncated, err-truncated.")

EXEC_OPTIONS: tuple[SharedOption, ...] = (
    SharedOption("stdin", ("--stdin",), "flag", False, None, None,
                 "Send qmpctl's standard input (up to 16 MiB) to the program; without it the program reads "
                 "an empty input."),
    SharedOption("env", ("--env",), "list", None, None, "NAME=VALUE",
                 "Set an environment variable (repeatable). The guest agent then REPLACES the whole "
                 "environment with these: include PATH=... if the program needs it."),
    SharedOption("wait_timeout", ("--wait-timeout",), "float", None, None, "SECONDS", WAIT_TIMEOUT_HELP),
    SharedOption("no_wait", ("--no-wait",), "flag", False, None, None,
                 'Print the agent\'s reply with the guest pid ({"return":{"pid":N}}) and return; read the '
                 "result with agent exec-status."),
    SharedOption("json_output", ("--json",), "flag", False, None, None, JSON_HELP),
)
"""The options of ``agent exec`` besides the shared ones, for both parsers."""


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
        if isinstance(error, QmpctlError) and not isinstance(error, (ExecFailed, ExecTimeout, Interrupted)):
            raise ExecFailed(error.message, sent=error.sent, received=error.received) from error


def execute_exec(options: ExecOptions, common: Common) -> int:
    """Run the program and return its exit status; qmpctl's own failures become ExecFailed (125)."""
    with own_failures_exit_125():
        return _execute(options, common)


def _execute(options: ExecOptions, common: Common) -> int:
    from qmpctl import guest_exec
    from qmpctl.cli import report

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
            emit(render_reply({"return": {"pid": pid}}, pretty=common.pretty, return_value=common.return_value))
            return ExitCode.OK
        try:
            status, _ = guest_exec.wait_for_exit(session, pid, reply_timeout=common.timeout,
                                                 wait_timeout=options.wait_timeout)
        except ExecTimeout as exc:
            if isinstance(exc, ExecLost):
                raise  # the agent went silent: its message says what may be running
            if options.json_output:
                emit(to_json(guest_exec.ExecStatus(pid, exited=False).to_json(), common.pretty))
            raise ExecTimeout(f"{exc.message} and keeps running; read its result later with "
                              f"'qmpctl agent exec-status {pid}'") from None
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the program keeps running in the guest as pid {pid}") from None
    finally:
        session.close()
    if options.json_output:
        emit(to_json(status.to_json(), common.pretty))
    else:
        _write_bytes(sys.stdout.buffer, status.stdout)
        _write_bytes(sys.stderr.buffer, status.stderr)
    for stream, truncated in (("stdout", status.out_truncated), ("stderr", status.err_truncated)):
        if truncated:
            report(f"the guest agent truncated the program's {stream} at 16 MiB")
    return status.exit_status


class ExecInvocation:
    """``agent exec`` as read by the shortcut, ready to run."""

    def __init__(self, options: ExecOptions, shared: dict[str, Any]) -> None:
        self.options = options
        self.shared = shared
        """The shared options' values, as Typer hands them to a command."""

    def run(self) -> int:
        with own_failures_exit_125():
            common = make_common(AGENT, self.shared)
        return execute_exec(self.options, common)


def parse_exec(tokens: list[str], environ: Mapping[str, str]) -> ExecInvocation | None:
    """The words after ``agent exec``, read as Typer would; None when only Typer should judge them."""
    from qmpctl.cli.fastpath import read_command_line

    read = read_command_line(shared_options(AGENT) + EXEC_OPTIONS, tokens, environ, positionals=True)
    if read is None:
        return None
    values, program = read
    if not program:
        return None  # Typer says what is missing
    own = {option.name: values.pop(option.name) for option in EXEC_OPTIONS}
    return ExecInvocation(ExecOptions(program=program, **own), values)
