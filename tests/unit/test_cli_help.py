"""Help is part of the interface: every command explains itself and shows one example that runs."""

from __future__ import annotations

from qmpctl.cli.spec import COMMANDS, all_options


def test_every_command_has_help_an_example_and_documented_arguments():
    for command in COMMANDS:
        name = " ".join(command.words)
        assert command.summary, name
        assert command.example.startswith("qmpctl " + name), name
        for parameter in command.arguments + all_options(command):
            assert parameter.help, f"{name}: {parameter.name} has no help text"
    assert len(COMMANDS) >= 8


def test_argument_help_reaches_the_help_screen(cli):
    result = cli("monitor-command", "--help")
    assert result.code == 0
    assert "A JSON request object" in result.out
