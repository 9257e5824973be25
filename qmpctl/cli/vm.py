"""VM-wide commands: status, stop, cont and the raw monitor-command."""

from __future__ import annotations

import typer

from qmpctl.cli import app
from qmpctl.cli.common import Common, command, execute_one, register_simple, run
from qmpctl.cli.simple import SIMPLE_COMMANDS
from qmpctl.request import Request


for _words, _simple in SIMPLE_COMMANDS.items():
    if len(_words) == 1:
        register_simple(app, _words, _simple)


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

