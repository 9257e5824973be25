"""``qmpctl agent ...``: guest-agent commands over the qemu-ga channel.

``agent exec`` is meant to feel like ssh in a script: the guest program's
output as raw bytes and its exit status as qmpctl's. Its own failures all
exit 125, usage mistakes included, since a guest program may exit 2 itself.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, BinaryIO, Callable, Optional

import click
import typer
from typer.core import TyperCommand

from qmpctl.cli import app
from qmpctl.cli.common import Common, command, emit, execute_one, print_dry_run, run
from qmpctl.deadline import Deadline
from qmpctl.errors import ExecFailed, ExecTimeout, ExitCode, Interrupted, QmpctlError, UsageError
from qmpctl.output import render_reply, to_json
from qmpctl.request import Request
from qmpctl.targets import AGENT, Target

agent_app = typer.Typer(help="Guest-agent (qemu-ga) commands.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")


def _simple(name: str, execute: str, summary: str, example: str) -> None:
    @command(AGENT)
    def handler(common: Common) -> int:
        request = Request(execute, protocol="qga")
        return run(common, execute_one(request), [request])

    handler.__doc__ = summary
    handler.__name__ = f"agent_{name}"
    agent_app.command(name, epilog=f"Example: {example}")(handler)


_simple("ping", "guest-ping", "Check that the guest agent answers (guest-ping).",
        "qmpctl agent ping -a /tmp/channel.sock")
_simple("info", "guest-info", "Show the agent's version and supported commands (guest-info).",
        "qmpctl agent info -a /tmp/channel.sock --pretty")
_simple("interfaces", "guest-network-get-interfaces", "Show the guest's network interfaces "
        "(guest-network-get-interfaces).", "qmpctl agent interfaces -a /tmp/channel.sock --pretty")


@agent_app.command("command", epilog="Example: qmpctl agent command -a /tmp/channel.sock "
                   "'{\"execute\":\"guest-get-osinfo\"}' --pretty")
@command(AGENT)
def agent_command(
    words: list[str] = typer.Argument(..., metavar="CMD...", help="A JSON request object, or a command name "
                                      "followed by its arguments as JSON members."),
    *, common: Common,
) -> int:
    """Send any guest-agent command, like virsh qemu-agent-command."""
    from qmpctl.rawcommand import parse_raw_command

    request = parse_raw_command(words, protocol="qga")
    return run(common, execute_one(request), [request])


class _ExecCommand(TyperCommand):
    """Command-line mistakes in ``agent exec`` exit 125 as well, never 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = ExitCode.EXEC_FAILED
            raise


def _own_failures_exit_125(function: Callable[..., Any]) -> Callable[..., Any]:
    """Report every failure of qmpctl itself as ExecFailed, so it cannot pass for the program's exit code."""

    @functools.wraps(function)
    def wrapper(**kwargs: Any) -> Any:
        try:
            return function(**kwargs)
        except (ExecFailed, ExecTimeout, Interrupted):
            raise
        except QmpctlError as exc:
            raise ExecFailed(exc.message, sent=exc.sent, received=exc.received) from exc

    return wrapper


def _write_bytes(stream: BinaryIO, data: bytes) -> None:
    """Raw guest output; a reader that went away (``| head``) is not an error."""
    if not data:
        return
    try:
        stream.write(data)
        stream.flush()
    except BrokenPipeError:
        pass


def _report(message: str) -> None:
    from qmpctl.cli import report

    report(message)


def _only_target(common: Common) -> Target:
    targets = common.targets()
    if len(targets) > 1:
        raise UsageError(f"agent exec runs a program on one guest, but {len(targets)} targets were given; "
                         "loop over them in the shell, or use 'agent exec --no-wait' per guest")
    return targets[0]


def _check_wait_timeout(wait_timeout: float | None) -> None:
    if wait_timeout is not None and wait_timeout < 0:
        raise UsageError(f"--wait-timeout must not be negative, got {wait_timeout:g}")


WAIT_TIMEOUT_HELP = "Give up waiting after this long: exit 124, the program keeps running [default: no limit]."
JSON_HELP = ("Print the decoded result as one JSON object: pid, exited, exitcode, signal, stdout, stderr "
             "(UTF-8 text, invalid bytes as U+FFFD), out-truncated, err-truncated.")


@agent_app.command(
    "exec", cls=_ExecCommand, context_settings={"allow_interspersed_args": False},
    epilog="Example: qmpctl agent exec -a /tmp/channel.sock -- sh -c 'uname -a; df -h /'",
)
@_own_failures_exit_125
@command(AGENT)
def agent_exec(
    program: list[str] = typer.Argument(..., metavar="PROGRAM [ARGS]...", help="The program to run in the guest "
                                        "(looked up in the agent's PATH) and its arguments; put -- before it."),
    stdin: bool = typer.Option(False, "--stdin", help="Send qmpctl's standard input (up to 16 MiB) to the "
                               "program; without it the program reads an empty input."),
    env: Optional[list[str]] = typer.Option(None, "--env", metavar="NAME=VALUE", help="Set an environment "
                                            "variable (repeatable). The guest agent then REPLACES the whole "
                                            "environment with these: include PATH=... if the program needs it."),
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", metavar="SECONDS", help=WAIT_TIMEOUT_HELP,
                                                 show_default=False),
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the agent's reply with the guest pid "
                                 '({"return":{"pid":N}}) and return; read the result with agent exec-status.'),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
    *, common: Common,
) -> int:
    """Run a program in the guest like ssh would (guest-exec + guest-exec-status).

    Its stdout and stderr come out as raw bytes on qmpctl's stdout and stderr,
    and qmpctl exits with its exit code (128+N when signal N killed it). Exit 124:
    it outlived --wait-timeout (its guest pid is printed on stderr). Exit 125:
    qmpctl itself failed (bad usage, cannot connect, agent not responding,
    guest-exec disabled, program cannot be started), with the reason on stderr.
    Each exchange with the agent is bounded by --timeout; the program may run longer.
    """
    from qmpctl import guest_exec

    _check_wait_timeout(wait_timeout)
    if no_wait and wait_timeout is not None:
        raise UsageError("--no-wait and --wait-timeout contradict each other")
    input_data = sys.stdin.buffer.read(guest_exec.MAX_INPUT_BYTES + 1) if stdin else None
    request = guest_exec.exec_request(program, env=env, input_data=input_data)
    if common.dry_run:
        print_dry_run(common, [request])
        return ExitCode.OK
    target = _only_target(common)
    deadline = Deadline(common.timeout)
    session = target.open(deadline)
    try:
        pid = guest_exec.start(session, request, deadline)
        if no_wait:
            emit(render_reply({"return": {"pid": pid}}, pretty=common.pretty, return_value=common.return_value))
            return ExitCode.OK
        try:
            status, _ = guest_exec.wait_for_exit(session, pid, reply_timeout=common.timeout,
                                                 wait_timeout=wait_timeout)
        except ExecTimeout as exc:
            if json_output:
                emit(to_json(guest_exec.ExecStatus(pid, exited=False).to_json(), common.pretty))
            raise ExecTimeout(f"{exc.message} and keeps running; read its result later with "
                              f"'qmpctl agent exec-status {pid}'") from None
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the program keeps running in the guest as pid {pid}") from None
    finally:
        session.close()
    if json_output:
        emit(to_json(status.to_json(), common.pretty))
    else:
        _write_bytes(sys.stdout.buffer, status.stdout)
        _write_bytes(sys.stderr.buffer, status.stderr)
    for stream, truncated in (("stdout", status.out_truncated), ("stderr", status.err_truncated)):
        if truncated:
            _report(f"the guest agent truncated the program's {stream} at 16 MiB")
    return status.exit_status


@agent_app.command("exec-status", epilog="Example: qmpctl agent exec-status -a /tmp/channel.sock 1234 --wait --json")
@command(AGENT)
def agent_exec_status(
    pid: int = typer.Argument(..., help="The guest pid that agent exec --no-wait printed."),
    wait: bool = typer.Option(False, "--wait", help="Poll until the program exits (backing off like agent exec)."),
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", metavar="SECONDS", show_default=False,
                                                 help="With --wait (implied): give up after this long, exit 124."),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP.replace("Print", "Instead of the agent's "
                                     "reply, print")),
    *, common: Common,
) -> int:
    """Show how a program started with agent exec --no-wait is doing (guest-exec-status).

    Prints the agent's reply as it is (out-data/err-data in base64), or with
    --json the decoded object agent exec --json prints. Once a reply has said
    the program exited, the agent forgets the pid: a second read exits 1.
    """
    from qmpctl import guest_exec

    _check_wait_timeout(wait_timeout)
    request = guest_exec.status_request(pid)

    def action(session: Any, deadline: Any, target: Target) -> dict[str, Any]:
        if wait or wait_timeout is not None:
            status, reply = guest_exec.wait_for_exit(session, pid, reply_timeout=common.timeout,
                                                     wait_timeout=wait_timeout)
        else:
            status, reply = guest_exec.read_status(session, pid, deadline)
        return {"return": status.to_json()} if json_output else reply

    if json_output:  # the decoded object alone, like agent exec --json
        common = common._replace(return_value=True)
    return run(common, action, [request])
