"""Write qmpctl/cli/typer_app.py, the Typer application, from the declaration in qmpctl/cli/spec.py.

Run it by hand after changing the declaration (tests/project/test_typer_app.py
fails while the file is out of date)::

    .venv/bin/python man/generate_typer_app.py          # rewrite the file
    .venv/bin/python man/generate_typer_app.py --check  # exit 1 when it would change

The output is ordinary Typer code: one function per command, its parameters
the command's arguments and options, its docstring the command's help. The
options every command shares are written once, as module-level Typer
options, and used as the defaults of each command's parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qmpctl.cli.spec import COMMANDS, AGENT, MONITOR, Argument, Command, Option, shared_options  # noqa: E402

TARGET = ROOT / "qmpctl" / "cli" / "typer_app.py"
WIDTH = 120
TYPES = {"text": "str", "int": "int", "float": "float"}

HEADER = '''"""The Typer application: ordinary Typer code, generated from the declaration (:mod:`qmpctl.cli.spec`).

Do not edit: run ``man/generate_typer_app.py`` after changing the declaration
(tests/project/test_typer_app.py fails while this file is out of date).

Typer is the source of ``--help``, usage errors and shell completion. It is
imported only for command lines the start-up parser (:mod:`qmpctl.cli.parse`)
leaves to it, and :func:`build_app` then turns only the command the line
names into a click command: that costs about a millisecond each.
"""

import os
from typing import Any, Callable, Literal, Optional

import typer

from qmpctl import __version__
from qmpctl.cli.common import complete_socket
from qmpctl.cli import dispatch
from qmpctl.cli.spec import COMMANDS, GROUPS, Command

ROOT_HELP = """Talk to QEMU VMs over QMP and to their guest agents.

qmpctl help COMMAND shows a command's manual page; qmpctl help, the index.

Exit codes: 0 success, 1 the VM or agent answered with an error, 2 bad usage or
invalid input (nothing sent), 3 could not connect, 4 timed out (also a busy
monitor), 5 protocol error, 6 a block job failed, 70 internal error (a bug in
qmpctl), 74 the result could not be written (the command itself succeeded),
124 agent exec: program outlived --wait-timeout, 125 agent exec: qmpctl could
not run it, 130 interrupted.
"""

DECLARED: dict[tuple[str, ...], Command] = {command.words: command for command in COMMANDS}


def _show_version(value: bool) -> None:
    if value:
        print(f"qmpctl {__version__}")
        raise typer.Exit()


def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_show_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    pass


_root.__doc__ = ROOT_HELP
'''

FOOTER = '''

def epilog(command: Command) -> str:
    examples = command.example.split(";  ")
    return ("Examples: " if len(examples) > 1 else "Example: ") + ";  ".join(examples)


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The application holding every command, or only the one ``argv`` names (shell completion gets all)."""
    app = typer.Typer(name="qmpctl", help=ROOT_HELP, no_args_is_help=True, add_completion=True,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(_root)
    chosen = list(COMMANDS)
    if argv and "_QMPCTL_COMPLETE" not in os.environ:
        named = [command for command in COMMANDS if tuple(argv[:len(command.words)]) == command.words]
        in_group = [command for command in COMMANDS if len(command.words) == 2 and command.words[0] == argv[0]]
        chosen = named or in_group or chosen
    groups: dict[str, typer.Typer] = {}
    for command in chosen:
        target = app
        if len(command.words) == 2:
            group = command.words[0]
            if group not in groups:
                groups[group] = typer.Typer(help=GROUPS[group], no_args_is_help=True, rich_markup_mode=None)
                app.add_typer(groups[group], name=group)
            target = groups[group]
        settings: dict[str, Any] = {}
        if not command.interspersed:
            settings["allow_interspersed_args"] = False
        target.command(command.words[-1], epilog=epilog(command), context_settings=settings)(
            CALLBACKS[command.words])
    return app
'''


def literal(text: str, indent: int, room: int) -> str:
    """``text`` as Python source: one literal when it fits in ``room`` characters, else a concatenation."""
    whole = repr(text)
    if len(whole) <= room:
        return whole
    pieces: list[str] = []
    rest = text
    size = WIDTH - indent - 4
    while rest:
        cut = len(rest) if len(repr(rest)) <= size else _cut(rest, size)
        pieces.append(repr(rest[:cut]))
        rest = rest[cut:]
    return "(" + ("\n" + " " * (indent + 1)).join(pieces) + ")"


def _cut(text: str, size: int) -> int:
    """Where to end a piece: after the last space that keeps its literal within ``size``."""
    end = size - 2
    while len(repr(text[:end])) > size:
        end -= 1
    space = text.rfind(" ", 0, end)
    return space + 1 if space > 0 else end


def annotation(option: Option) -> str:
    if option.type in ("flag", "switch"):
        return "bool"
    if option.type == "list":
        return "Optional[list[str]]"
    if option.type == "choice":
        base = f"Literal[{', '.join(repr(choice) for choice in option.choices)}]"
    else:
        base = TYPES[option.type]
    return base if option.default is not None else f"Optional[{base}]"


def option_call(option: Option, indent: int) -> str:
    """``typer.Option(...)`` for ``option``, as the declaration says it."""
    flags = option.flags
    if option.type == "switch":
        flags = (f"{option.flags[0]}/{option.off_flags[0]}",)
    words = [repr(option.default)] + [repr(flag) for flag in flags]
    if option.envvar is not None:
        words.append(f"envvar={option.envvar!r}")
    if option.metavar is not None:
        words.append(f"metavar={option.metavar!r}")
    show_default = option.show_default and option.default is not None and option.type != "flag"
    words.append(f"show_default={show_default}")
    if option.complete == "socket":
        words.append("autocompletion=complete_socket")
    return _call("typer.Option", words, option.help, indent)


def argument_call(argument: Argument, indent: int) -> str:
    words = ["..." if argument.required else "None", f"metavar={argument.metavar!r}", "show_default=False"]
    return _call("typer.Argument", words, argument.help, indent)


def _call(function: str, words: list[str], help_text: str, indent: int) -> str:
    inner = indent + len(function) + 1

    def column() -> int:
        return len(lines[-1]) + (indent if len(lines) == 1 else 0)

    lines = [f"{function}("]
    for word in words:
        if column() + len(word) + 2 > WIDTH:
            lines[-1] = lines[-1].rstrip()
            lines.append(" " * inner)
        lines[-1] += word + ", "
    start = column() + len("help=")
    room = WIDTH - start - 2
    if len(repr(help_text)) > room:
        lines[-1] = lines[-1].rstrip()
        lines.append(" " * inner)
        start = inner + len("help=")
        room = WIDTH - start - 2
    lines[-1] += "help=" + literal(help_text, start, room) + ")"
    return "\n".join(lines)


def shared_name(kind: str, option: Option) -> str:
    """``TIMEOUT`` for an option both kinds share as it is, ``MONITOR_TARGET_SOCKETS`` for one they do not."""
    if option in shared_options(MONITOR) and option in shared_options(AGENT):
        return option.name.upper()
    return f"{'AGENT' if kind == AGENT else 'MONITOR'}_{option.name.upper()}"


def function_name(command: Command) -> str:
    return "_".join(command.words).replace("-", "_")


def docstring(command: Command) -> str:
    text = command.summary + ("\n\n" + command.description if command.description else "")
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = text.split("\n")
    body = "\n".join(("    " + line) if line else "" for line in lines[1:])
    return '    """' + lines[0] + ("\n" + body + "\n    " if len(lines) > 1 else "") + '"""'


def command_source(command: Command) -> str:
    parameters = []
    for argument in command.arguments:
        kind = TYPES[argument.type]
        hint = f"list[{kind}]" if argument.variadic else kind
        if not argument.required:
            hint = f"Optional[{hint}]"
        prefix = f"    {argument.name}: {hint} = "
        parameters.append(prefix + argument_call(argument, len(prefix)))
    for option in command.options:
        prefix = f"    {option.name}: {annotation(option)} = "
        parameters.append(prefix + option_call(option, len(prefix)))
    for option in shared_options(command.kind):
        parameters.append(f"    {option.name}: {annotation(option)} = {shared_name(command.kind, option)}")
    return (f"def {function_name(command)}(\n    *,\n" + ",\n".join(parameters) + ",\n) -> int:\n"
            + docstring(command) + "\n"
            + f"    return dispatch.invoke(DECLARED[{command.words!r}], locals())\n")


def source() -> str:
    rule = "# -- the options every command takes, by kind (-s for the monitor, -a for the agent) "
    parts = [HEADER, "\n" + rule + "-" * (WIDTH - len(rule) - 6) + "\n\n"]
    written = set()
    for kind in (MONITOR, AGENT):
        for option in shared_options(kind):
            name = shared_name(kind, option)
            if name not in written:
                written.add(name)
                prefix = f"{name}: Any = "
                parts.append(prefix + option_call(option, len(prefix)) + "\n")
    parts.append("\n\n# -- one function per command " + "-" * 90 + "\n")
    for command in COMMANDS:
        parts.append("\n\n" + command_source(command))
    parts.append("\n\nCALLBACKS: dict[tuple[str, ...], Callable[..., int]] = {\n")
    for command in COMMANDS:
        parts.append(f"    {command.words!r}: {function_name(command)},\n")
    parts.append("}\n")
    parts.append(FOOTER)
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is out of date, write nothing")
    args = parser.parse_args()
    text = source()
    current = TARGET.read_text() if TARGET.exists() else ""
    if args.check:
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run man/generate_typer_app.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.write_text(text)
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
