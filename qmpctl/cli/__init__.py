"""The qmpctl command line: the only place that prints diagnostics and exits.

The Typer application (:data:`app`, defined in :mod:`qmpctl.cli.root`) is
built on first use: the commands scripts run most take a shortcut past Typer
(:mod:`qmpctl.cli.fastpath`), and Typer with click costs more to import than
a whole ``virsh`` call. Command modules register themselves on ``app``; heavy
work (block jobs, agent exec, libvirt) is imported inside the commands that
need it, so ``qmpctl status`` pays only for what it uses.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from qmpctl.errors import ExitCode, QmpctlError


def __getattr__(name: str) -> Any:
    """``from qmpctl.cli import app`` builds the Typer application when first asked for."""
    if name == "app":
        from qmpctl.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def report(message: str) -> None:
    """One clear diagnostic line on stderr."""
    sys.stderr.write(f"qmpctl: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every outcome to the documented exit code."""
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None, *, fast_path: bool = True) -> int:
    """Run one command line and return its exit code (the in-process form tests use).

    ``fast_path=False`` sends every command line through Typer, so tests can compare both paths.
    """
    from qmpctl import signals
    from qmpctl.cli import fastpath

    signals.install()  # SIGTERM ends qmpctl as Ctrl-C does; a second signal cannot cut the cleanup short
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        invocation = fastpath.parse(args, os.environ) if fast_path else None
        return int(fastpath.run_invocation(invocation) if invocation else _run_typer(args))
    except QmpctlError as exc:
        report(exc.message)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        report("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug in qmpctl: never let scripts read it as "the VM said no" (exit 1)
        if os.environ.get("QMPCTL_TRACEBACK"):
            import traceback

            traceback.print_exc()
        report(f"internal error: {type(exc).__name__}: {exc} (a bug in qmpctl; "
               "set QMPCTL_TRACEBACK=1 to see where)")
        return ExitCode.INTERNAL


def _run_typer(args: list[str]) -> int:
    """Every command line the fast path does not take: Typer parses it, helps and explains mistakes."""
    import click
    import typer

    from qmpctl.cli.root import command_tree_for

    command = typer.main.get_command(command_tree_for(args))
    try:
        result = command.main(args=args, prog_name="qmpctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        if exc.exit_code == ExitCode.INTERRUPTED:  # Typer's own translation of KeyboardInterrupt
            report("interrupted")
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    if result == ExitCode.INTERRUPTED:  # Typer turns a Ctrl-C outside a command into a plain 130
        report("interrupted")
    return int(result) if isinstance(result, int) else ExitCode.OK
