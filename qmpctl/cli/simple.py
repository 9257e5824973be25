"""The argument-less commands, in one table for both ways they run.

Typer registers them (:func:`qmpctl.cli.common.register_simple`) and the
start-up shortcut runs them without Typer (:mod:`qmpctl.cli.fastpath`); one
table keeps the two from disagreeing on what a command sends.
"""

from __future__ import annotations

from typing import NamedTuple

from qmpctl.targets import AGENT, MONITOR


class SimpleCommand(NamedTuple):
    kind: str
    """MONITOR or AGENT, which is also the request's protocol."""
    execute: str
    summary: str
    example: str


SIMPLE_COMMANDS: dict[tuple[str, ...], SimpleCommand] = {
    ("status",): SimpleCommand(MONITOR, "query-status", "Show the VM's run state (query-status).",
                               "qmpctl status -s /tmp/vm.sock --return-value"),
    ("stop",): SimpleCommand(MONITOR, "stop", "Pause the VM's CPUs (stop).", "qmpctl stop -s /tmp/vm.sock"),
    ("cont",): SimpleCommand(MONITOR, "cont", "Resume a paused VM (cont).", "qmpctl cont -s /tmp/vm.sock"),
    ("agent", "ping"): SimpleCommand(AGENT, "guest-ping", "Check that the guest agent answers (guest-ping).",
                                     "qmpctl agent ping -a /tmp/channel.sock"),
    ("agent", "info"): SimpleCommand(AGENT, "guest-info",
                                     "Show the agent's version and supported commands (guest-info).",
                                     "qmpctl agent info -a /tmp/channel.sock --pretty"),
    ("agent", "interfaces"): SimpleCommand(AGENT, "guest-network-get-interfaces",
                                           "Show the guest's network interfaces (guest-network-get-interfaces).",
                                           "qmpctl agent interfaces -a /tmp/channel.sock --pretty"),
}
"""Command words -> what the command sends (one request without arguments)."""
