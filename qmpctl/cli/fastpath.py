"""The shortcut past Typer for the commands scripts run most: status, stop, cont, agent ping/info/interfaces/exec.

Importing Typer and click costs about 50 ms, three whole ``virsh`` calls,
before qmpctl has done anything. The commands in :data:`SIMPLE_COMMANDS` send
one request without arguments and take only the shared options, so they run
here without Typer: from the same option table
(:func:`qmpctl.cli.common.shared_options`), through the same checks
(:func:`~qmpctl.cli.common.make_common`) and the same runner.

Only command lines this module understands completely take the shortcut: the
command words first, then shared options spelled out (``--opt VALUE``,
``--opt=VALUE``, ``-s VALUE``, ``-sVALUE``). Anything else (``--help``, shell
completion, an unknown option, a missing or odd-looking value, an empty
environment variable) yields None and goes through Typer, which stays the
single source of help, completion and usage errors.
``tests/test_cli_fastpath.py`` checks that both read every command line alike.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from qmpctl.cli.common import SharedOption, execute_one, make_common, run, shared_options
from qmpctl.cli.simple import SIMPLE_COMMANDS
from qmpctl.request import Request


COMPLETION_VARIABLE = "_QMPCTL_COMPLETE"
"""Set by the shell-completion scripts Typer installs: completion is Typer's business."""


class Invocation(NamedTuple):
    kind: str
    execute: str
    shared: dict[str, Any]
    """The shared options' values, as Typer would hand them to the command."""


def _convert(option: SharedOption, text: str) -> Any:
    """The value as click's type would convert it; None when only Typer should judge it."""
    if option.value == "float":
        try:
            return float(text)
        except ValueError:
            return None
    if option.value == "int":
        try:
            return int(text)
        except ValueError:
            return None
    return text


def _from_environment(option: SharedOption, environ: Mapping[str, str]) -> Any:
    """An option's value from its environment variable (repeatable ones split on white space, as click does)."""
    text = environ[option.envvar]  # type: ignore[index]
    if option.value == "list":
        return text.split()
    return _convert(option, text)


def parse(argv: list[str], environ: Mapping[str, str]) -> Any:
    """The invocation ``argv`` asks for (an :class:`Invocation`, or ``agent exec``'s own), or None for Typer."""
    if COMPLETION_VARIABLE in environ:
        return None
    if argv[:2] == ["agent", "exec"]:
        from qmpctl.cli.exec_run import parse_exec

        return parse_exec(argv[2:], environ)
    for words in (tuple(argv[:2]), tuple(argv[:1])):
        if words in SIMPLE_COMMANDS:
            break
    else:
        return None
    simple = SIMPLE_COMMANDS[words]
    read = read_command_line(shared_options(simple.kind), argv[len(words):], environ)
    return None if read is None else Invocation(simple.kind, simple.execute, read[0])


def read_command_line(options: tuple[SharedOption, ...], tokens: list[str], environ: Mapping[str, str], *,
                      positionals: bool = False) -> tuple[dict[str, Any], list[str]] | None:
    """The values of ``options`` (from ``tokens``, else the environment, else defaults), and the positional words.

    Without ``positionals`` any positional word sends the line to Typer. With
    it, ``--`` or the first word that is not an option ends the options and
    everything from there on is positional (click's ``allow_interspersed_args``
    off, as ``agent exec`` uses it).
    """
    by_flag = {flag: option for option in options for flag in option.flags}
    given: dict[str, Any] = {}
    rest: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        attached: str | None = None
        if positionals and token == "--":
            rest = tokens[index:]
            break
        if token.startswith("--"):
            flag, equals, value_part = token.partition("=")
            if equals:
                attached = value_part
        elif token.startswith("-") and len(token) > 1:
            flag = token[:2]
            if len(token) > 2:
                attached = token[2:]
        elif positionals:
            rest = tokens[index - 1:]
            break
        else:
            return None  # a positional argument: these commands take none
        option = by_flag.get(flag)
        if option is None:
            return None  # --help, -h, --, --no-..., a typo: Typer explains
        if option.value == "flag":
            if attached is not None:
                return None
            given[option.name] = True
            continue
        if attached is None:
            if index >= len(tokens):
                return None
            attached = tokens[index]
            index += 1
        if not attached or attached.startswith("-"):
            return None  # an empty value or one that looks like an option: let Typer decide
        value = _convert(option, attached)
        if value is None:
            return None
        if option.value == "list":
            given.setdefault(option.name, []).append(value)
        else:
            given[option.name] = value
    values: dict[str, Any] = {}
    for option in options:
        if option.name in given:
            values[option.name] = given[option.name]
        elif option.envvar is not None and option.envvar in environ:
            if not environ[option.envvar].strip():
                return None  # click's reading of an empty variable has changed between releases
            value = _from_environment(option, environ)
            if value is None:
                return None
            values[option.name] = value
        else:
            values[option.name] = option.default
    return values, rest


def run_invocation(invocation: Any) -> int:
    """Do what the Typer command would do with the same options."""
    if not isinstance(invocation, Invocation):
        return invocation.run()  # agent exec (qmpctl.cli.exec_run)
    common = make_common(invocation.kind, invocation.shared)
    request = Request(invocation.execute, protocol=invocation.kind)
    return run(common, execute_one(request), [request])
