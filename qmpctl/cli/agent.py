"""``qmpctl agent ...``: guest-agent commands over the qemu-ga channel (declared in :mod:`qmpctl.cli.spec`).

``agent exec`` lives in :mod:`qmpctl.cli.exec_run`.
"""

from __future__ import annotations

from qmpctl.cli.common import Common, execute_one, run
from qmpctl.cli.exec_run import check_wait_timeout
from qmpctl.cli.vm import send_plain
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.targets import Target

if TYPE_CHECKING:
    from typing import Any, Optional


def ping(common: Common) -> int:
    return send_plain(common, "guest-ping")


def info(common: Common) -> int:
    return send_plain(common, "guest-info")


def interfaces(common: Common) -> int:
    return send_plain(common, "guest-network-get-interfaces")


def agent_command(common: Common, *, words: list[str]) -> int:
    """Any guest-agent command; the ones that answer only on failure wait briefly for a refusal."""
    from qmpctl.wire.agent import NO_REPLY_COMMANDS
    from qmpctl.cli.rawcommand import parse_raw_command, read_request_words

    request = parse_raw_command(read_request_words(words), protocol="qga")
    if request.execute in NO_REPLY_COMMANDS:
        return run(common, lambda session, deadline, target: session.execute_no_reply(request, deadline), [request])
    return run(common, execute_one(request), [request])


def exec_status(common: Common, *, pid: int, wait: bool, wait_timeout: Optional[float], json_output: bool) -> int:
    """guest-exec-status once, or polled until the program exits."""
    from qmpctl.guest import exec as guest_exec

    check_wait_timeout(wait_timeout)
    request = guest_exec.status_request(pid)

    def action(session: Any, deadline: Any, target: Target) -> dict[str, Any]:
        if wait or wait_timeout is not None:
            status, reply = guest_exec.wait_for_exit(session, pid, reply_timeout=common.timeout,
                                                     wait_timeout=wait_timeout)
        else:
            status, reply = guest_exec.read_status(session, pid, deadline)
        return {"return": status.to_json()} if json_output else reply

    if json_output:  # the decoded object alone, like agent exec --json
        common = common._replace(return_value=True)
    return run(common, action, [request])
