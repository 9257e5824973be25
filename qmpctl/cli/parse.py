"""The start-up parser: every well-formed command line, read from the declaration without Typer.

Importing Typer costs more than the QMP exchange a command makes, so qmpctl
reads command lines itself from :data:`qmpctl.cli.spec.COMMANDS`, the same
table Typer is built from. It takes only lines it understands completely, and
reads them exactly as click would: options spelled out (``--opt VALUE``,
``--opt=VALUE``, ``-s VALUE``, ``-sVALUE``), ``--`` ending the options,
positional words in place. Anything unusual (``--help``, an unknown option, a
missing or odd-looking value, a value click would refuse, an empty environment
variable, shell completion) yields None, and Typer, the single source of help
and usage errors, takes the line. ``tests/unit/test_cli_parsers.py`` generates
command lines from the declaration and requires both parsers to agree.
"""

from __future__ import annotations

import re

from qmpctl.cli.spec import Command, Option, all_options, find
from qmpctl.records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Mapping

COMPLETION_VARIABLE = "_QMPCTL_COMPLETE"
"""Set by the shell-completion scripts Typer installs: completion is Typer's business."""


class Invocation(NamedTuple):
    command: Command
    values: dict[str, Any]
    """One value per argument and option (the shared ones included), as Typer hands them to the command."""


INT = r"[+-]?[0-9]+"
FLOAT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
"""Plain numbers only: spellings converters disagree on (``1_000``, `` 5``, ``nan``) go to Typer.

Patterns, compiled (and cached by ``re``) when a number is first read, not on every start."""


def _convert(kind: str, text: str, option: Option | None = None) -> Any:
    """The value as click's type would convert it; None when only Typer should judge it."""
    if kind == "float":
        return float(text) if re.fullmatch(FLOAT, text) else None
    if kind == "int":
        return int(text) if re.fullmatch(INT, text) else None
    if kind == "choice" and option is not None and text not in option.choices:
        return None
    return text


def _from_environment(option: Option, text: str) -> Any:
    """An option's value from its environment variable (repeatable ones split on white space, as click does)."""
    if option.type == "list":
        return text.split()
    return _convert(option.type, text, option)


def parse(argv: list[str], environ: Mapping[str, str]) -> Invocation | None:
    """The invocation ``argv`` asks for, or None when Typer should read it."""
    if COMPLETION_VARIABLE in environ:
        return None
    found = find(argv)
    if found is None:
        return None
    command, tokens = found
    read = _read_options(command, tokens)
    if read is None:
        return None
    given, positional = read
    values = _arguments(command, positional)
    if values is None:
        return None
    for option in all_options(command):
        if option.name in given:
            values[option.name] = given[option.name]
        elif option.envvar is not None and option.envvar in environ:
            text = environ[option.envvar]
            if not text.strip():
                return None  # click's reading of an empty variable has changed between releases
            value = _from_environment(option, text)
            if value is None:
                return None
            values[option.name] = value
        else:
            values[option.name] = option.default
    return Invocation(command, values)


def _read_options(command: Command, tokens: list[str]) -> tuple[dict[str, Any], list[str]] | None:
    """The options given on the command line, and the positional words in order."""
    by_flag: dict[str, tuple[Option, bool]] = {}
    for option in all_options(command):
        for flag in option.flags:
            by_flag[flag] = (option, True)
        for flag in option.off_flags:
            by_flag[flag] = (option, False)
    given: dict[str, Any] = {}
    positional: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            positional.extend(tokens[index:])
            break
        if not token.startswith("-") or token == "-":
            if not command.interspersed:
                positional.extend(tokens[index - 1:])
                break
            positional.append(token)
            continue
        attached: str | None = None
        if token.startswith("--"):
            flag, equals, value_part = token.partition("=")
            if equals:
                attached = value_part
        else:
            flag = token[:2]
            if len(token) > 2:
                attached = token[2:]
        entry = by_flag.get(flag)
        if entry is None:
            return None  # --help, -h, a typo, a negative number: Typer explains
        option, on = entry
        if option.type in ("flag", "switch"):
            if attached is not None:
                return None
            given[option.name] = on
            continue
        if attached is None:
            if index >= len(tokens):
                return None
            attached = tokens[index]
            index += 1
        if not attached or attached.startswith("-"):
            return None  # an empty value or one that looks like an option: let Typer decide
        value = _convert(option.type, attached, option)
        if value is None:
            return None
        if option.type == "list":
            given.setdefault(option.name, []).append(value)
        else:
            given[option.name] = value
    return given, positional


def _arguments(command: Command, words: list[str]) -> dict[str, Any] | None:
    """The positional words spread over the declared arguments; None when they do not fit exactly."""
    values: dict[str, Any] = {}
    index = 0
    for argument in command.arguments:
        if argument.variadic:
            taken = words[index:]
            index = len(words)
            if not taken and argument.required:
                return None
            converted = [_convert(argument.type, word) for word in taken]
            if any(value is None for value in converted):
                return None
            values[argument.name] = converted if taken else None  # as click: an optional one not given
            continue
        if index >= len(words):
            if argument.required:
                return None
            values[argument.name] = None
            continue
        value = _convert(argument.type, words[index])
        if value is None:
            return None
        values[argument.name] = value
        index += 1
    if index != len(words):
        return None  # more words than arguments: Typer names the extra one
    return values
