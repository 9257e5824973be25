"""Run a declared command with the values either parser read: the one way a handler is called."""

from __future__ import annotations

import sys

from qmpctl.cli.spec import LOCAL, SHARED_NAMES, Command, all_options
from qmpctl.errors import ExitCode
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable


def handler_of(command: Command) -> Callable[..., int]:
    """Import the handler's module only now: other commands never pay for it."""
    module_name, _, function = command.handler.partition(":")
    __import__(module_name)  # not importlib.import_module: importing importlib costs half a millisecond
    handler: Callable[..., int] = getattr(sys.modules[module_name], function)
    return handler


def invoke(command: Command, values: dict[str, Any]) -> int:
    """Gather the shared options into ``Common`` and call the handler with the rest as keywords."""
    from qmpctl.cli.common import make_common

    values = dict(values)
    for option in all_options(command):
        if option.type == "list" and values.get(option.name) is None:
            values[option.name] = []
        elif option.type == "list":
            values[option.name] = list(values[option.name])
    for argument in command.arguments:
        if argument.variadic and values.get(argument.name) is not None:
            values[argument.name] = list(values[argument.name])
    if command.kind == LOCAL:  # talks to no VM: no shared options to check or gather
        from qmpctl.cli.common import Common

        return int(handler_of(command)(Common(sockets=[], domains=[], kind=LOCAL), **values))
    shared = {name: values.pop(name) for name in SHARED_NAMES}
    if command.usage_exit == ExitCode.EXEC_FAILED:
        from qmpctl.cli.exec_run import own_failures_exit_125

        with own_failures_exit_125():
            common = make_common(command.kind, shared)
    else:
        common = make_common(command.kind, shared)
    return int(handler_of(command)(common, **values))
