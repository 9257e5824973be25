"""VM-wide commands: status, stop, cont and the raw monitor-command."""

from __future__ import annotations

from typing import Optional

import typer

from qmpctl.cli import app
from qmpctl.cli.common import Common, command, execute_one, run
from qmpctl.request import Request


def _simple(name: str, execute: str, summary: str, example: str) -> None:
    """Register a command that sends one argument-less request."""

    @command()
    def handler(common: Common) -> int:
        request = Request(execute)
        return run(common, execute_one(request), [request])

    handler.__doc__ = summary
    handler.__name__ = name.replace("-", "_")
    app.command(name, epilog=f"Example: {example}")(handler)


_simple("status", "query-status", "Show the VM's run state (query-status).",
        "qmpctl status -s /tmp/vm.sock --return-value")
_simple("stop", "stop", "Pause the VM's CPUs (stop).", "qmpctl stop -s /tmp/vm.sock")
_simple("cont", "cont", "Resume a paused VM (cont).", "qmpctl cont -s /tmp/vm.sock")


@app.command("monitor-command", epilog="Examples: qmpctl monitor-command -s /tmp/vm.sock "
             "'{\"execute\":\"query-block\"}' --pretty;  qmpctl monitor-command -s /tmp/vm.sock --hmp 'info block'")
@command()
def monitor_command(
    words: list[str] = typer.Argument(..., metavar="CMD...", help="A JSON request object, or a command "
                                      "name followed by its arguments as JSON members (like virsh)."),
    hmp: bool = typer.Option(False, "--hmp", help="Send the text as an HMP command line and print its text."),
    *, common: Common,
) -> int:
    """Send any QMP command, like virsh qemu-monitor-command.

    The words are joined with spaces. Text that starts with { must be a request
    object: {"execute": NAME, "arguments": {...}}. Otherwise the first word is
    the command name and the rest its arguments as JSON members.
    """
    if hmp:
        request = Request("human-monitor-command", {"command-line": " ".join(words)})
        return run(common, execute_one(request), [request], text=True)
    from qmpctl.rawcommand import parse_raw_command

    request = parse_raw_command(words)
    return run(common, execute_one(request), [request])


_ = Optional  # keeps the typing import explicit for Typer's annotation resolution
