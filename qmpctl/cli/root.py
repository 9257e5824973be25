"""The Typer application: the root command, its options, and every command module registered on it.

Imported only when a command line needs Typer (see :mod:`qmpctl.cli.fastpath`).
"""

from __future__ import annotations

import copy
import os
from typing import Optional

import typer

from qmpctl import __version__

app = typer.Typer(
    name="qmpctl",
    help="Talk to QEMU VMs over QMP and to their guest agents, one command at a time, "
    "with validated requests and exit codes scripts can trust.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"qmpctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Talk to QEMU VMs over QMP and to their guest agents.

    Exit codes: 0 success, 1 the VM or agent answered with an error, 2 bad usage or
    invalid input (nothing sent), 3 could not connect, 4 timed out (also a busy
    monitor), 5 protocol error, 6 a block job failed, 70 internal error (a bug in
    qmpctl), 124 agent exec: program outlived --wait-timeout, 125 agent exec: qmpctl
    could not run it, 130 interrupted.
    """


# Registration order is the order of the help listing: VM-wide first, then disks, then the agent.
from qmpctl.cli import vm as _vm  # noqa: E402,F401  (registers commands)
from qmpctl.cli import block as _block  # noqa: E402,F401
from qmpctl.cli import agent as _agent  # noqa: E402,F401


def command_tree_for(args: list[str]) -> typer.Typer:
    """The app reduced to the command ``args`` names: Typer builds every registered command up front.

    Turning each command into a click command costs about a millisecond, more
    than a tenth of a whole call once there are a dozen. A command line that
    starts with a command's name gets an app holding that command alone (within
    ``agent``, that subcommand alone); anything else (root options, help, a
    typo, shell completion) gets the whole app, so listings and suggestions
    stay complete.
    """
    if "_QMPCTL_COMPLETE" in os.environ:
        return app
    return _pruned(app, args)


def _pruned(group: typer.Typer, args: list[str]) -> typer.Typer:
    if not args or args[0].startswith("-"):
        return group
    for info in group.registered_commands:
        if info.name == args[0]:
            only = copy.copy(group)
            only.registered_commands, only.registered_groups = [info], []
            return only
    for sub in group.registered_groups:
        if sub.name == args[0] and sub.typer_instance is not None:
            narrowed = copy.copy(sub)
            narrowed.typer_instance = _pruned(sub.typer_instance, args[1:])
            only = copy.copy(group)
            only.registered_commands, only.registered_groups = [], [narrowed]
            return only
    return group
