"""The one error hierarchy of qmpctl.

Every failure the library can report is a :class:`QmpctlError` subclass that
carries its exit code and the context of the exchange (what was sent, what
came back), so the CLI can map it to an exit status in exactly one place.
"""

from __future__ import annotations

from enum import IntEnum

from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


class ExitCode(IntEnum):
    """The documented exit-code contract; shell scripts depend on these values."""

    OK = 0
    VM_ERROR = 1
    USAGE = 2
    CONNECT = 3
    TIMEOUT = 4
    PROTOCOL = 5
    JOB_FAILED = 6
    INTERNAL = 70
    OUTPUT = 74
    EXEC_TIMEOUT = 124
    EXEC_FAILED = 125
    INTERRUPTED = 130


class QmpctlError(Exception):
    """Root of every error qmpctl raises on purpose."""

    exit_code: ExitCode = ExitCode.PROTOCOL

    def __init__(self, message: str, *, sent: Any = None, received: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.sent = sent
        self.received = received

    def add_note(self, note: str, /, *, joined: str = "; ") -> None:
        """Add ``note`` to the message, after ``joined``: what cleanup did or could not do, or a hint.

        The error keeps its class, so its exit code, and what was sent and
        received. Unlike :meth:`BaseException.add_note` the note becomes part
        of the message, which is what the command line prints. An empty note
        adds nothing.
        """
        if note:
            self.message = f"{self.message}{joined}{note}"
            self.args = (self.message,)

    def to_json(self) -> dict[str, Any]:
        """The error as fleet mode prints it: class name and message."""
        return {"class": type(self).__name__, "desc": self.message}


class UsageError(QmpctlError):
    """The user's input is invalid; nothing was sent."""

    exit_code = ExitCode.USAGE


class ConnectError(QmpctlError):
    """The socket could not be reached: missing, refused, no permission, unknown host."""

    exit_code = ExitCode.CONNECT


class DeadlineExceeded(QmpctlError):
    """The --timeout deadline (or a --wait-timeout) ran out in some phase of the call."""

    exit_code = ExitCode.TIMEOUT


class Busy(QmpctlError):
    """Someone else is doing the same thing right now (another backup of the same disk); nothing was changed."""

    exit_code = ExitCode.TIMEOUT


class ProtocolError(QmpctlError):
    """The peer broke the protocol: garbage, no greeting, closed before the reply."""

    exit_code = ExitCode.PROTOCOL


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (or reset it) before qmpctl had its answer."""


class VmError(QmpctlError):
    """QEMU (or the guest agent) answered the command with an error object."""

    exit_code = ExitCode.VM_ERROR

    def __init__(self, error_class: str, desc: str, *, sent: Any = None, received: Any = None) -> None:
        super().__init__(f"{error_class}: {desc}", sent=sent, received=received)
        self.error_class = error_class
        self.desc = desc

    def to_json(self) -> dict[str, Any]:
        return {"class": self.error_class, "desc": self.desc}


class JobFailed(QmpctlError):
    """A block job ended with an error or was cancelled by someone else."""

    exit_code = ExitCode.JOB_FAILED


class VerificationFailed(QmpctlError):
    """Data cannot be trusted: a copy or a backup image differs from what was recorded, or a restored
    guest did not come up."""

    exit_code = ExitCode.JOB_FAILED


class NoSuchPath(QmpctlError):
    """A path asked for inside a backup is not there (or not what was asked for): exit 1, naming it."""

    exit_code = ExitCode.VM_ERROR


class Interrupted(QmpctlError):
    """SIGINT or SIGTERM arrived; whatever qmpctl started was cleaned up first."""

    exit_code = ExitCode.INTERRUPTED


class OutputError(QmpctlError):
    """The result could not be written (stdout closed, full disk): the command itself may have succeeded.

    Not exit 5 (the peer did nothing wrong) and not 70 (no bug): sysexits' EX_IOERR.
    """

    exit_code = ExitCode.OUTPUT


class ExecFailed(QmpctlError):
    """``agent exec`` could not run the program (qmpctl's own failure, not the guest program's)."""

    exit_code = ExitCode.EXEC_FAILED


class ExecTimeout(QmpctlError):
    """The guest program outlived ``--wait-timeout``; it is still running in the guest."""

    exit_code = ExitCode.EXEC_TIMEOUT


class ExecLost(ExecTimeout):
    """The agent stopped answering after ``guest-exec`` was sent: the program may be running (exit 124).

    Distinct from an agent that never answered the first sync (exit 125):
    here a retry could run the program twice, so the message says so.
    """
