"""Run a program in the guest through qemu-ga: guest-exec, then poll guest-exec-status.

The agent has no way to tell a client that a program ended, so the client
polls. A short command ends within a millisecond or two of starting, so the
first poll comes almost at once and later ones back off, up to a cap that
keeps a long program from flooding the channel. The result comes back
base64-encoded; this module decodes it and never prints.
"""

from __future__ import annotations

import base64
import binascii
import math
import time

from qmpctl.timing import EXEC_POLL_FIRST, EXEC_POLL_MAX
from qmpctl.deadline import Deadline, backoff
from qmpctl.errors import DeadlineExceeded, ExecLost, ExecTimeout, ProtocolError, UsageError, VmError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request
from qmpctl.wire.waiting import wait_until
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

MAX_INPUT_BYTES = 16 * 1024 * 1024
"""The most --stdin sends: the agent caps each output stream at the same size, and its
JSON parser refuses single tokens over 64 MiB."""



def poll_delays() -> Iterator[float]:
    """Pauses between status polls: a millisecond first, growing by half up to 200 ms."""
    return backoff(EXEC_POLL_FIRST, EXEC_POLL_MAX)


def parse_env(assignments: list[str]) -> list[str]:
    """Check ``NAME=VALUE`` items before anything is sent."""
    for item in assignments:
        name, equals, _ = item.partition("=")
        if not equals or not name:
            raise UsageError(f"--env expects NAME=VALUE, got {item!r}")
    return list(assignments)


def exec_request(program: list[str], *, env: list[str] | None = None, input_data: bytes | None = None) -> Request:
    """The validated guest-exec request: output always captured, stdin only when given."""
    if not program:
        raise UsageError("no program given: qmpctl agent exec [OPTIONS] -- PROGRAM [ARGS...]")
    arguments: dict[str, Any] = {"path": program[0]}
    if len(program) > 1:
        arguments["arg"] = list(program[1:])
    if env is not None:
        arguments["env"] = parse_env(env)
    if input_data is not None:
        if len(input_data) > MAX_INPUT_BYTES:
            raise UsageError(f"standard input is over {MAX_INPUT_BYTES // (1024 * 1024)} MiB, "
                             "more than qmpctl sends to the guest agent in one request")
        arguments["input-data"] = base64.b64encode(input_data).decode("ascii")
    arguments["capture-output"] = True
    return Request("guest-exec", arguments, protocol="qga")


def status_request(pid: int) -> Request:
    return Request("guest-exec-status", {"pid": pid}, protocol="qga")


class ExecStatus(NamedTuple):
    """What guest-exec-status said about one program, with its output decoded."""

    pid: int
    exited: bool
    exitcode: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    out_truncated: bool = False
    err_truncated: bool = False

    @property
    def exit_status(self) -> int:
        """The program's status as a shell reports it: its exit code, or 128+N for signal N.

        Codes outside 0..255 (Windows guests) become 255, so that a failure can
        never wrap round to 0; the exact code stays in :attr:`exitcode`.
        """
        if self.signal is not None:
            return 128 + self.signal
        if self.exitcode is None:
            raise ValueError("the program has not exited")
        return self.exitcode if 0 <= self.exitcode <= 255 else 255

    def to_json(self) -> dict[str, Any]:
        """The decoded result for scripts: output as UTF-8 text (invalid bytes become U+FFFD)."""
        return {
            "pid": self.pid, "exited": self.exited, "exitcode": self.exitcode, "signal": self.signal,
            "stdout": self.stdout.decode("utf-8", "replace"), "stderr": self.stderr.decode("utf-8", "replace"),
            "out-truncated": self.out_truncated, "err-truncated": self.err_truncated,
        }


def _decode_stream(value: Any, name: str, reply: dict[str, Any]) -> bytes:
    if value is None:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ProtocolError(f"the guest agent sent {name} that is not base64", received=reply) from None


def _optional_int(result: dict[str, Any], key: str, reply: dict[str, Any]) -> int | None:
    value = result.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ProtocolError(f"the guest agent sent a {key} that is not an integer: {value!r}", received=reply)


def parse_status(pid: int, reply: dict[str, Any]) -> ExecStatus:
    """Turn a guest-exec-status reply into an :class:`ExecStatus`; anything malformed is a ProtocolError."""
    try:
        return _parse_status(pid, reply)
    except ProtocolError as exc:
        exc.sent = status_request(pid).as_dict()
        raise


def _parse_status(pid: int, reply: dict[str, Any]) -> ExecStatus:
    result = reply.get("return")
    if not isinstance(result, dict) or not isinstance(result.get("exited"), bool):
        raise ProtocolError("the guest agent's guest-exec-status reply has no 'exited' flag", received=reply)
    status = ExecStatus(
        pid=pid, exited=result["exited"],
        exitcode=_optional_int(result, "exitcode", reply), signal=_optional_int(result, "signal", reply),
        stdout=_decode_stream(result.get("out-data"), "out-data", reply),
        stderr=_decode_stream(result.get("err-data"), "err-data", reply),
        out_truncated=result.get("out-truncated") is True, err_truncated=result.get("err-truncated") is True,
    )
    if status.exited and status.exitcode is None and status.signal is None:
        raise ProtocolError("the guest agent says the program exited but gives neither exitcode nor signal",
                            received=reply)
    return status


def start(session: Session, request: Request, deadline: Deadline) -> int:
    """Send guest-exec; return the guest pid. A program the agent cannot start is a :class:`VmError`.

    The agent answered the sync before this, so it runs: silence now means it
    may have started the program and its reply is lost (:class:`ExecLost`,
    exit 124), not that the agent is missing.
    """
    try:
        reply = session.execute(request, deadline)
    except DeadlineExceeded:
        raise ExecLost(f"no reply to guest-exec within {deadline.seconds:g}s; the program may be running in the guest "
                       "(its pid is unknown): check before running it again", sent=request.as_dict()) from None
    except VmError as exc:
        if exc.error_class == "CommandNotFound":
            raise
        program = (request.arguments or {}).get("path")
        raise VmError(exc.error_class, f"the guest agent could not start {program!r}: {exc.desc}",
                      sent=exc.sent, received=exc.received) from exc
    result = reply.get("return")
    pid = result.get("pid") if isinstance(result, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise ProtocolError("the guest agent's guest-exec reply carries no pid", sent=request.as_dict(),
                            received=reply)
    return pid


def read_status(session: Session, pid: int, deadline: Deadline) -> tuple[ExecStatus, dict[str, Any]]:
    """One guest-exec-status call: the parsed status and the agent's reply as it came."""
    request = status_request(pid)
    try:
        reply = session.execute(request, deadline)
    except VmError as exc:
        if exc.error_class != "GenericError":
            raise
        raise VmError(exc.error_class, f"{exc.desc} (pid {pid} is unknown to the guest agent: no program of "
                      "guest-exec has it, or its result was already read, and the agent forgets a program once "
                      "it has reported that it exited)", sent=exc.sent, received=exc.received) from exc
    return parse_status(pid, reply), reply


def wait_for_exit(session: Session, pid: int, *, reply_timeout: float, wait_timeout: float | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> tuple[ExecStatus, dict[str, Any]]:
    """Poll until the program exits; :class:`ExecTimeout` once it outlives ``wait_timeout`` (None: no limit).

    Each poll is one round trip bounded by ``reply_timeout`` (the --timeout of
    the call) within the wait, so a long program does not run into it but a
    silent agent (or a stopped QEMU) does: :class:`ExecLost`, exit 124, since
    the program may still be running.
    """
    wait = Deadline(math.inf if wait_timeout is None else wait_timeout)
    last: list[dict[str, Any]] = [{}]

    def exited() -> tuple[ExecStatus, dict[str, Any]] | None:
        try:
            status, reply = read_status(session, pid, wait.sub(reply_timeout))
        except DeadlineExceeded as exc:
            if wait.expired():
                raise ExecTimeout(f"the program (guest pid {pid}) is still running after --wait-timeout "
                                  f"{wait_timeout:g}s", sent=exc.sent, received=exc.received) from None
            raise ExecLost(f"the guest agent stopped answering: no reply to guest-exec-status within "
                           f"{reply_timeout:g}s while the program ran; the "
                           f"program (guest pid {pid}) may still be running: read its result with "
                           f"'qmpctl agent exec-status {pid}' once the agent answers",
                           sent=exc.sent, received=exc.received) from None
        last[0] = reply
        return (status, reply) if status.exited else None

    def outlived() -> ExecTimeout:
        return ExecTimeout(f"the program (guest pid {pid}) is still running after --wait-timeout "
                           f"{wait_timeout:g}s", sent=status_request(pid).as_dict(), received=last[0])

    return wait_until(session, exited, wait, f"guest pid {pid} to exit", check_first=True, pauses=poll_delays(),
                      timeout=outlived, sleep=sleep)
