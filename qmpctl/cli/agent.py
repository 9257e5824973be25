"""``qmpctl agent ...``: guest-agent commands over the qemu-ga channel.

``agent exec`` is meant to feel like ssh in a script: the guest program's
output as raw bytes and its exit status as qmpctl's. Its own failures all
exit 125, usage mistakes included, since a guest program may exit 2 itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import click
import typer
from typer.core import TyperCommand

from qmpctl.cli import app
from qmpctl.cli.common import Common, SharedOption, command, execute_one, register_simple, run
from qmpctl.cli.exec_run import (EXEC_OPTIONS, JSON_HELP, ExecOptions, check_wait_timeout, execute_exec,
                                 own_failures_exit_125)
from qmpctl.cli.simple import SIMPLE_COMMANDS
from qmpctl.errors import ExitCode
from qmpctl.targets import AGENT, Target

agent_app = typer.Typer(help="Guest-agent (qemu-ga) commands.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")


for _words, _simple in SIMPLE_COMMANDS.items():
    if _words[0] == "agent":
        register_simple(agent_app, _words, _simple)


@agent_app.command("command", epilog="Example: qmpctl agent command -a /tmp/channel.sock "
                   "'{\"execute\":\"guest-get-osinfo\"}' --pretty")
@command(AGENT)
def agent_command(
    words: list[str] = typer.Argument(..., metavar="CMD...", help="A JSON request object, or a command name "
                                      "followed by its arguments as JSON members."),
    *, common: Common,
) -> int:
    """Send any guest-agent command, like virsh qemu-agent-command.

    guest-shutdown and guest-suspend-* answer only when they fail: for them
    qmpctl waits a second for a refusal and prints nothing on success.
    """
    from qmpctl.agent import NO_REPLY_COMMANDS
    from qmpctl.rawcommand import parse_raw_command

    request = parse_raw_command(words, protocol="qga")
    if request.execute in NO_REPLY_COMMANDS:
        return run(common, lambda session, deadline, target: session.execute_no_reply(request, deadline), [request])
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
    """Checks of the shared options happen around the command: they are qmpctl's own failures too."""

    @functools.wraps(function)
    def wrapper(**kwargs: Any) -> Any:
        with own_failures_exit_125():
            return function(**kwargs)

    return wrapper


def _typer_option(option: SharedOption) -> Any:
    """A Typer option from ``agent exec``'s option table (shared with the fast path)."""
    return typer.Option(option.default, *option.flags, metavar=option.metavar, help=option.help, show_default=False)


_STDIN, _ENV, _WAIT_TIMEOUT, _NO_WAIT, _JSON = (_typer_option(option) for option in EXEC_OPTIONS)


@agent_app.command(
    "exec", cls=_ExecCommand, context_settings={"allow_interspersed_args": False},
    epilog="Example: qmpctl agent exec -a /tmp/channel.sock -- sh -c 'uname -a; df -h /'",
)
@_own_failures_exit_125
@command(AGENT)
def agent_exec(
    program: list[str] = typer.Argument(..., metavar="PROGRAM [ARGS]...", help="The program to run in the guest "
                                        "(looked up in the agent's PATH) and its arguments; put -- before it."),
    stdin: bool = _STDIN,
    env: Optional[list[str]] = _ENV,
    wait_timeout: Optional[float] = _WAIT_TIMEOUT,
    no_wait: bool = _NO_WAIT,
    json_output: bool = _JSON,
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
    options = ExecOptions(program=program, stdin=stdin, env=env, wait_timeout=wait_timeout, no_wait=no_wait,
                          json_output=json_output)
    return execute_exec(options, common)


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

    check_wait_timeout(wait_timeout)
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
