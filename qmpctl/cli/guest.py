"""``agent cp``, ``agent set-password``, ``agent fsfreeze``, ``agent shutdown``: into the guest OS.

Declared in :mod:`qmpctl.cli.spec`; the work is in :mod:`qmpctl.guest.files`,
:mod:`qmpctl.guest.users`, :mod:`qmpctl.guest.freeze` and
:mod:`qmpctl.guest.power`. Everything that can be refused locally (a
destination that exists, a missing source, a bad option) is refused before
connecting.
"""

from __future__ import annotations

import sys
import time

from qmpctl.cli.common import MAX_TIMEOUT, Common, execute_one, run
from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.targets import Target

if TYPE_CHECKING:
    from typing import Any, BinaryIO

PROGRESS_FROM_BYTES = 4 * 1024 * 1024
"""--progress auto shows a bar (on a terminal) only for copies bigger than this."""


def _one_target(common: Common, what: str) -> None:
    if len(common.sockets) + len(common.domains) > 1 or any("*" in s or "?" in s for s in common.sockets):
        raise UsageError(f"{what} talks to one guest: give one -a or -d")


def _wait_seconds(wait_timeout: float | None, name: str = "--wait-timeout") -> Deadline:
    if wait_timeout is None:
        return Deadline(MAX_TIMEOUT)
    if not 0 < wait_timeout <= MAX_TIMEOUT:
        raise UsageError(f"{name} must be more than 0 seconds, got {wait_timeout:g}")
    return Deadline(wait_timeout)


# ----------------------------------------------------------------------------- agent cp


class _CopyProgress:
    """Byte counts of a copy as the shared progress printer shows them (bar or JSON lines on stderr)."""

    def __init__(self, mode: str) -> None:
        from qmpctl.cli.progress import printer_for
        from qmpctl.cli.readings import Meter, bar_text, json_text

        self.small_copies_quiet = mode == "auto"  # auto: a bar on a terminal, and only for big copies
        self.printer = printer_for(mode, bar=bar_text, json=json_text,
                                   finished=lambda reading: reading.status == "concluded",
                                   changed=lambda reading: reading.done)
        self.meter = Meter()

    def __call__(self, done: int, total: int | None) -> None:
        from qmpctl.vm.jobs import JobState

        if self.printer is None or (self.small_copies_quiet and max(done, total or 0) < PROGRESS_FROM_BYTES):
            return
        finished = total is not None and done >= total
        self.printer(self.meter.read(JobState("agent-cp", "agent-cp", "concluded" if finished else "running",
                                              done, total if total is not None else done)))

    def close(self) -> None:
        if self.printer is not None:
            self.printer.close()


def cp(common: Common, *, source: str, destination: str, force: bool, verify: bool, progress: str,
       wait_timeout: float | None) -> int:
    """Copy one file between this machine and the guest (guest-file-open/read/write/close)."""
    from qmpctl.guest import files as guest_files

    _one_target(common, "agent cp")
    src, dst = guest_files.plan_copy(source, destination)
    transfer_deadline = _wait_seconds(wait_timeout)
    total = None
    if not src.in_guest and not src.stdio:
        total = guest_files.check_local_source(src.path)
    if not dst.in_guest and not dst.stdio:
        guest_files.check_local_destination(dst.path, force)  # before anything is read from the guest
    if dst.in_guest:
        requests = [guest_files.open_request(dst.path, "w" if force else "a")]
    else:
        requests = [guest_files.open_request(src.path, "r")]
    meter = _CopyProgress(progress)

    def action(session: Any, deadline: Deadline, target: Target) -> dict[str, Any] | None:
        transfer = guest_files.Transfer(transfer_deadline, common.timeout)
        if dst.in_guest:
            stream, close = _open_source(src.path)
            try:
                result = guest_files.copy_to_guest(session, stream, str(src), dst.path, transfer, force=force,
                                                   total=total, verify=verify, progress=meter)
            finally:
                close()
        elif dst.stdio:
            result = guest_files.copy_from_guest(session, src.path, sys.stdout.buffer, "standard output",
                                                 transfer, verify=verify, progress=meter)
            return None  # stdout carries the file itself
        else:
            with guest_files.local_output(dst.path, force) as sink:
                result = guest_files.copy_from_guest(session, src.path, sink, dst.path, transfer, verify=verify,
                                                     progress=meter)
        return {"return": result.to_json()}

    try:
        return run(common, action, requests)
    finally:
        meter.close()


def _open_source(path: str) -> tuple[BinaryIO, Any]:
    if path == "-":
        return sys.stdin.buffer, lambda: None
    from qmpctl.errors import OutputError

    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the caller's finally
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc.strerror}") from None
    return stream, stream.close


# ----------------------------------------------------------------------------- agent set-password


def set_password(common: Common, *, user: str, password_file: str | None, crypted: bool) -> int:
    """Set a guest user's password from stdin or a file, never from the command line."""
    from qmpctl.guest import users as guest_users

    if password_file is not None:
        try:
            with open(password_file, "rb") as stream:
                password = guest_users.read_password(stream, password_file)
        except OSError as exc:
            raise UsageError(f"cannot read {password_file}: {exc.strerror}") from None
    elif sys.stdin is not None and sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"New password for {user} in the guest: ").encode()
        if not password:
            raise UsageError("no password given")
    else:
        password = guest_users.read_password(sys.stdin.buffer, "standard input")
    request = guest_users.password_request(user, password, crypted=crypted)
    return run(common, lambda session, deadline, target: guest_users.set_password(session, request, deadline),
               [request])


# ----------------------------------------------------------------------------- agent fsfreeze

FREEZE_ACTIONS = ("status", "freeze", "thaw")


def fsfreeze(common: Common, *, action: str, mountpoint: list[str], for_seconds: float | None,
             thaw_timeout: float) -> int:
    """guest-fsfreeze-status / -freeze(-list) / -thaw; freeze --for thaws on every way out."""
    from qmpctl.guest import freeze as guest_freeze
    from qmpctl.cli.diagnostics import report

    if action not in FREEZE_ACTIONS:
        raise UsageError(f"agent fsfreeze takes one of {', '.join(FREEZE_ACTIONS)}, got {action!r}")
    if action != "freeze" and (mountpoint or for_seconds is not None):
        raise UsageError("--mountpoint and --for go with agent fsfreeze freeze")
    if not 0 < thaw_timeout <= MAX_TIMEOUT:
        raise UsageError(f"--thaw-timeout must be more than 0 seconds, got {thaw_timeout:g}")
    if action == "status":
        request = guest_freeze.status_request()
        return run(common, execute_one(request), [request])
    if action == "thaw":
        request = guest_freeze.thaw_request()
        return run(common, execute_one(request), [request])
    request = guest_freeze.freeze_request(mountpoint)
    if for_seconds is None:
        code = run(common, execute_one(request), [request])
        if not common.dry_run:
            report("warning: the guest's filesystems stay frozen, and writes in the guest wait, until "
                   "`qmpctl agent fsfreeze thaw` (or use freeze --for SECONDS)")
        return code
    if not 0 <= for_seconds <= MAX_TIMEOUT:
        raise UsageError(f"--for must not be negative, got {for_seconds:g}")
    _one_target(common, "agent fsfreeze freeze --for")

    def hold(session: Any, deadline: Deadline, target: Target) -> dict[str, Any]:
        with guest_freeze.frozen(session, deadline, mountpoint, thaw_timeout=thaw_timeout) as frozen:
            report(f"froze {frozen.frozen} filesystem(s); thawing in {for_seconds:g}s (Ctrl-C thaws now)")
            time.sleep(for_seconds)
        return {"return": frozen.to_json()}

    return run(common, hold, [request, guest_freeze.thaw_request()])


# ----------------------------------------------------------------------------- agent shutdown


def shutdown(common: Common, *, mode: str, qmp: str | None, wait_timeout: float | None) -> int:
    """guest-shutdown; with -s and --wait-timeout, until QEMU reports the guest down."""
    from qmpctl.guest import power as guest_power
    from qmpctl.timing import GUEST_SHUTDOWN_WAIT

    request = guest_power.shutdown_request(mode)
    if wait_timeout is not None and qmp is None:
        raise UsageError("--wait-timeout needs -s/--qmp: the VM's QMP socket tells when the guest is down")
    if qmp is None:
        return run(common, lambda session, deadline, target: guest_power.shutdown(session, request, deadline),
                   [request])
    _one_target(common, "agent shutdown -s")
    wait = _wait_seconds(wait_timeout if wait_timeout is not None else GUEST_SHUTDOWN_WAIT)

    def action(session: Any, deadline: Deadline, target: Target) -> dict[str, Any]:
        return {"return": guest_power.shutdown_and_wait(session, request, qmp, deadline, wait)}

    return run(common, action, [request])
