"""The qmpctl command line: the only place that prints diagnostics and exits.

Every command is declared once in :mod:`qmpctl.cli.spec`. A command line is
read by the start-up parser (:mod:`qmpctl.cli.parse`) when it can, else by
the Typer application built from the same declaration
(:mod:`qmpctl.cli.typer_app`); either way the handler is called through
:func:`qmpctl.cli.dispatch.invoke`. Errors become exit codes here, in
:func:`run_cli`, and nowhere else.
"""

from __future__ import annotations

import os
import sys

from qmpctl.cli.diagnostics import report
from qmpctl.errors import ExitCode, QmpctlError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


def __getattr__(name: str) -> Any:
    """``from qmpctl.cli import app`` builds the whole Typer application when first asked for."""
    if name == "app":
        from qmpctl.cli.typer_app import build_app

        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command line and exit with the documented exit code."""
    sys.exit(run_cli(argv, standalone=True))


def run_cli(argv: list[str] | None = None, *, fast_path: bool = True, standalone: bool = False) -> int:
    """Run one command line and return its exit code (the in-process form tests use).

    ``fast_path=False`` sends every command line through Typer, so tests can compare both parsers.
    ``standalone``: the process exits right after, so the signal handlers stay
    as they are (a signal after the result was printed stays blocked and
    cannot change the exit code).
    """
    from qmpctl import signals
    from qmpctl.cli import parse

    previous = signals.install()  # SIGTERM ends qmpctl as Ctrl-C does; a second one cannot cut cleanup short
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        invocation = parse.parse(args, os.environ) if fast_path else None
        if invocation is not None:
            from qmpctl.cli.dispatch import invoke

            return invoke(invocation.command, invocation.values)
        return _run_typer(args)
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
    finally:
        if not standalone:
            signals.restore(previous)


def _run_typer(args: list[str]) -> int:
    """Every command line the start-up parser does not take: Typer parses it, helps and explains mistakes."""
    import typer

    from qmpctl.cli.spec import find
    from qmpctl.cli.typer_app import build_app

    found = find(args)
    usage_exit = found[0].usage_exit if found else ExitCode.USAGE
    command = typer.main.get_command(build_app(args))
    try:
        result = command.main(args=args, prog_name="qmpctl", standalone_mode=False)
    except typer.Exit as exc:
        if exc.exit_code == ExitCode.INTERRUPTED:  # Typer's own translation of KeyboardInterrupt
            report("interrupted")
        return int(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: the ClickException of the click Typer vendors
        exc.show()  # type: ignore[attr-defined]
        code = int(getattr(exc, "exit_code", 1))
        return usage_exit if code == 2 else code
    except typer.Abort:
        raise KeyboardInterrupt from None
    if result == ExitCode.INTERRUPTED:  # Typer turns a Ctrl-C outside a command into a plain 130
        report("interrupted")
    return int(result) if isinstance(result, int) else ExitCode.OK
