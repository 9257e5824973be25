"""``qmpctl agent ...``: guest-agent commands over the qemu-ga channel."""

from __future__ import annotations

import typer

from qmpctl.cli import app
from qmpctl.cli.common import Common, command, execute_one, run
from qmpctl.request import Request
from qmpctl.targets import AGENT

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
