"""The Typer application, built from the declaration (:mod:`qmpctl.cli.spec`) when a command line needs it.

Typer is the source of ``--help``, usage errors and shell completion. It is
imported only for command lines the start-up parser (:mod:`qmpctl.cli.parse`)
leaves to it, and then builds only the command the line names: turning a
command into a click command costs about a millisecond each.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Literal, Optional

import typer

from qmpctl import __version__
from qmpctl.cli.spec import COMMANDS, GROUPS, Argument, Command, Option, all_options

ROOT_HELP = """Talk to QEMU VMs over QMP and to their guest agents.

qmpctl help COMMAND shows a command's manual page; qmpctl help, the index.

Exit codes: 0 success, 1 the VM or agent answered with an error, 2 bad usage or
invalid input (nothing sent), 3 could not connect, 4 timed out (also a busy
monitor), 5 protocol error, 6 a block job failed, 70 internal error (a bug in
qmpctl), 74 the result could not be written (the command itself succeeded),
124 agent exec: program outlived --wait-timeout, 125 agent exec: qmpctl could
not run it, 130 interrupted.
"""

TYPES: dict[str, Any] = {"text": str, "int": int, "float": float}


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


def _annotation(kind: str, option: Option | None, required: bool) -> Any:
    if option is not None and option.type == "choice":
        base: Any = Literal[option.choices]
    elif option is not None and option.type in ("flag", "switch"):
        return bool
    elif option is not None and option.type == "list":
        return Optional[list[str]]
    else:
        base = TYPES[kind]
    return base if required else Optional[base]


def _option_parameter(option: Option) -> inspect.Parameter:
    from qmpctl.cli.common import complete_socket

    extra: dict[str, Any] = {}
    if option.complete == "socket":
        extra["autocompletion"] = complete_socket
    flags = option.flags
    if option.type == "switch":
        flags = (f"{option.flags[0]}/{option.off_flags[0]}",)
    show_default = option.show_default and option.default is not None and option.type != "flag"
    info = typer.Option(option.default, *flags, envvar=option.envvar, metavar=option.metavar,
                        show_default=show_default, help=option.help, **extra)
    required = option.default is not None and option.type not in ("list",)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=_annotation(option.type, option, required))


def _argument_parameter(argument: Argument) -> inspect.Parameter:
    kind = TYPES[argument.type]
    annotation: Any = list[kind] if argument.variadic else kind  # type: ignore[valid-type]
    if not argument.required:
        annotation = Optional[annotation]
    info = typer.Argument(... if argument.required else None, metavar=argument.metavar, help=argument.help,
                          show_default=False)
    return inspect.Parameter(argument.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _callback(command: Command) -> Any:
    """A function Typer can read: the declared parameters as its signature, the handler as its body."""
    from qmpctl.cli.dispatch import invoke

    def callback(**values: Any) -> int:
        return invoke(command, values)

    parameters = [_argument_parameter(argument) for argument in command.arguments]
    parameters += [_option_parameter(option) for option in all_options(command)]
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    callback.__name__ = "_".join(command.words).replace("-", "_")
    callback.__doc__ = command.summary + ("\n\n" + command.description if command.description else "")
    return callback


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
        target.command(command.words[-1], epilog=epilog(command), context_settings=settings)(_callback(command))
    return app
