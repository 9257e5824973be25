"""The qmpctl command line: the only place that prints diagnostics and exits.

Command modules register themselves on :data:`app`; heavy work (block jobs,
agent exec, libvirt) is imported inside the commands that need it, so
``qmpctl status`` pays only for what it uses.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Optional

import typer

from qmpctl import __version__
from qmpctl.errors import ExitCode, QmpctlError

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
    monitor), 5 protocol error, 6 a block job failed, 124 agent exec: program outlived
    --wait-timeout, 125 agent exec: qmpctl could not run it, 130 interrupted.
    """


from qmpctl.cli import agent as _agent  # noqa: E402,F401  (registers commands)
from qmpctl.cli import block as _block  # noqa: E402,F401
from qmpctl.cli import vm as _vm  # noqa: E402,F401


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM ends qmpctl the way Ctrl-C does, so cleanup code runs for both."""
    raise KeyboardInterrupt


def report(message: str) -> None:
    """One clear diagnostic line on stderr."""
    sys.stderr.write(f"qmpctl: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every outcome to the documented exit code."""
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    """Run one command line and return its exit code (the in-process form tests use)."""
    import click

    signal.signal(signal.SIGTERM, _terminate)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="qmpctl", standalone_mode=False)
    except QmpctlError as exc:
        report(exc.message)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:
        if exc.exit_code == ExitCode.INTERRUPTED:  # Typer's own translation of KeyboardInterrupt
            report("interrupted")
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        report("interrupted")
        return ExitCode.INTERRUPTED
    if result == ExitCode.INTERRUPTED:  # Typer turns a Ctrl-C outside a command into a plain 130
        report("interrupted")
    return int(result) if isinstance(result, int) else ExitCode.OK
