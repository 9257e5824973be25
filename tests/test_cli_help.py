"""Help is part of the interface: every command explains itself and shows one example."""

from __future__ import annotations

import typer

from qmpctl.cli import app


def all_commands():
    root = typer.main.get_command(app)
    stack = [("", root)]
    while stack:
        prefix, group = stack.pop()
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                stack.append((f"{prefix}{name} ", command))
            else:
                yield f"{prefix}{name}", command


def test_every_command_has_help_an_example_and_documented_arguments():
    seen = 0
    for name, command in all_commands():
        seen += 1
        assert command.help, name
        assert command.epilog and "qmpctl " in command.epilog, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name}: {param.name} has no help text"
    assert seen >= 8


def test_argument_help_reaches_the_help_screen(cli):
    result = cli("monitor-command", "--help")
    assert result.code == 0
    assert "A JSON request object" in result.out
