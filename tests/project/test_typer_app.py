"""qmpctl/cli/typer_app.py is generated from the declaration: regenerating it must change nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_typer_app_is_what_the_declaration_generates():
    result = subprocess.run([sys.executable, str(REPO / "man" / "generate_typer_app.py"), "--check"],
                            capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_command_is_a_plain_function_whose_parameters_are_its_declared_names():
    import inspect

    from qmpctl.cli import typer_app
    from qmpctl.cli.spec import COMMANDS, all_options

    for command in COMMANDS:
        callback = typer_app.CALLBACKS[command.words]
        declared = [argument.name for argument in command.arguments] + [option.name for option in
                                                                          all_options(command)]
        assert list(inspect.signature(callback).parameters) == declared, command.words
