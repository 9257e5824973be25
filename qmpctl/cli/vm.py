"""VM-wide commands: status, stop, cont and the raw monitor-command (declared in :mod:`qmpctl.cli.spec`)."""

from __future__ import annotations

from qmpctl.cli.common import Common, execute_one, run
from qmpctl.wire.request import Request


def send_plain(common: Common, execute: str) -> int:
    """The commands that send one request without arguments and print its reply."""
    request = Request(execute, protocol=common.kind)
    return run(common, execute_one(request), [request])


def status(common: Common) -> int:
    return send_plain(common, "query-status")


def stop(common: Common) -> int:
    return send_plain(common, "stop")


def cont(common: Common) -> int:
    return send_plain(common, "cont")


def monitor_command(common: Common, *, words: list[str], hmp: bool) -> int:
    from qmpctl.cli.rawcommand import read_request_words

    words = read_request_words(words)
    if hmp:
        request = Request("human-monitor-command", {"command-line": " ".join(words)})
        return run(common, execute_one(request), [request], text=True)
    from qmpctl.cli.rawcommand import parse_raw_command

    request = parse_raw_command(words)
    return run(common, execute_one(request), [request])
