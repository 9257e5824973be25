"""Live migration between two QEMUs, and a VM's state saved to and restored from a file.

Two monitors take part: the source, which holds the VM, and the destination,
a QEMU with the same hardware started with ``-incoming defer``. Whatever
happens, the VM must end up running on exactly one of them: :class:`Handover`
is the context manager that guarantees it. Until the source reports
``completed`` the VM belongs to the source, so every way out (a failure, a
timeout, a stall, Ctrl-C or SIGTERM) cancels the migration, waits until the
source says it is over, resumes the source if it was running and tells a
destination that never ran to quit. After ``completed`` the VM belongs to the
destination and the source is never resumed: two copies running on the same
disks would corrupt them.

Saved state (``virsh save``) is the same stream into a file:
:mod:`qmpctl.vm.savedstate`. Facts: QEMU's qapi/migration.json.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional
from types import TracebackType

from qmpctl.timing import (CHECK_EVERY, MIGRATION_CLEANUP_SECONDS, MIGRATION_WAIT_TIMEOUT, SETTLE_POLL_FIRST,
                           SETTLE_POLL_MAX)
from qmpctl.deadline import Deadline, backoff
from qmpctl.errors import (ConnectionClosed, DeadlineExceeded, Interrupted, JobFailed, ProtocolError, QmpctlError,
                           UsageError, VmError)
from qmpctl.wire.qmp import QmpSession
from qmpctl.wire.request import Request
from qmpctl.signals import shielded
from qmpctl.wire.waiting import event_named, wait_until

UNLIMITED_BANDWIDTH = 1 << 40
"""Bytes/s set when no --speed is given: QEMU's default (128 MiB/s in 7.2, 32 MiB/s before) makes a
busy guest never converge; 1 TiB/s is "as fast as the channel goes" on every version."""

ENDED = frozenset({"completed", "failed", "cancelled"})
POSTCOPY = frozenset({"postcopy-active", "postcopy-paused", "postcopy-recover"})
RESTARTABLE = frozenset({"paused", "postmigrate", "finish-migrate"})
"""Run states a source may be left in after a failed or cancelled migration, from which ``cont`` resumes it."""


# ------------------------------------------------------------------ readings


def _number(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class MigrationReading(NamedTuple):
    """One ``query-migrate`` answer, reduced to what progress and results show."""

    status: str
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    rate: Optional[float] = None
    """Bytes/s, from QEMU's own ``mbps``."""
    dirty_rate: int = 0
    """Bytes the guest dirties per second (``dirty-pages-rate`` x page size)."""
    expected_downtime: Optional[int] = None
    passes: int = 0
    total_time: Optional[int] = None
    downtime: Optional[int] = None
    setup_time: Optional[int] = None
    error: Optional[str] = None
    elapsed: float = 0.0

    @classmethod
    def from_reply(cls, info: Any, elapsed: float = 0.0) -> "MigrationReading":
        info = info if isinstance(info, dict) else {}
        ram = info.get("ram") if isinstance(info.get("ram"), dict) else {}
        assert isinstance(ram, dict)
        mbps = ram.get("mbps")
        page = _number(ram.get("page-size")) or 4096

        def optional(key: str) -> Optional[int]:
            return _number(info[key]) if key in info else None

        return cls(str(info.get("status") or "none"), _number(ram.get("transferred")), _number(ram.get("remaining")),
                   _number(ram.get("total")), mbps * 1e6 / 8 if isinstance(mbps, (int, float)) else None,
                   _number(ram.get("dirty-pages-rate")) * page, optional("expected-downtime"),
                   _number(ram.get("dirty-sync-count")), optional("total-time"), optional("downtime"),
                   optional("setup-time"), str(info["error-desc"]) if "error-desc" in info else None, elapsed)

    @property
    def done(self) -> int:
        """Bytes of RAM already sent at least once in this pass: total minus remaining."""
        return max(self.total - self.remaining, 0)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "transferred": self.transferred, "remaining": self.remaining,
                "total": self.total, "percent": round(self.percent, 1),
                "rate": None if self.rate is None else round(self.rate),
                "dirty-rate": self.dirty_rate, "expected-downtime": self.expected_downtime,
                "pass": self.passes, "elapsed": round(self.elapsed, 3)}


Progress = Callable[[MigrationReading], None]


# ------------------------------------------------------------------ requests


def capabilities_request(wanted: dict[str, bool]) -> Request:
    return Request("migrate-set-capabilities", {"capabilities": [
        {"capability": name, "state": state} for name, state in wanted.items()]})


def parameters_request(speed: Optional[int], downtime: Optional[int]) -> Request:
    arguments: dict[str, Any] = {"max-bandwidth": speed or UNLIMITED_BANDWIDTH}
    if downtime is not None:
        arguments["downtime-limit"] = downtime
    return Request("migrate-set-parameters", arguments)


def query_migrate(session: QmpSession, deadline: Deadline, elapsed: float = 0.0) -> MigrationReading:
    return MigrationReading.from_reply(session.execute(Request("query-migrate"), deadline).get("return"), elapsed)


def run_state(session: QmpSession, deadline: Deadline) -> str:
    """The VM's run state (``running``, ``paused``, ``inmigrate``, ``postmigrate`` ...)."""
    reply = session.execute(Request("query-status"), deadline).get("return")
    if not isinstance(reply, dict) or not isinstance(reply.get("status"), str):
        raise ProtocolError(f"{session.target} answered query-status without a status", received=reply)
    return str(reply["status"])


def _supported_capabilities(session: QmpSession, deadline: Deadline) -> set[str]:
    reply = session.execute(Request("query-migrate-capabilities"), deadline).get("return")
    return {str(entry.get("capability")) for entry in reply if isinstance(entry, dict)} if isinstance(reply, list) \
        else set()


def _wanted_capabilities(options: "MigrateOptions") -> dict[str, bool]:
    return {"events": True, "auto-converge": options.auto_converge,
            "postcopy-ram": options.postcopy_after is not None}


# ------------------------------------------------------------------ options


@dataclass(frozen=True)
class MigrateOptions:
    """What ``migrate --to`` was asked to do; nonsense is refused on construction (exit 2)."""

    uri: Optional[str] = None
    speed: Optional[int] = None
    downtime: Optional[int] = None
    auto_converge: bool = False
    postcopy_after: Optional[float] = None
    stall_timeout: Optional[float] = None
    wait: bool = True
    wait_timeout: float = MIGRATION_WAIT_TIMEOUT

    def __post_init__(self) -> None:
        for name, value in (("--wait-timeout", self.wait_timeout), ("--stall-timeout", self.stall_timeout),
                            ("--postcopy-after", self.postcopy_after)):
            if value is not None and not 0 < value < float("inf"):
                raise UsageError(f"{name} must be more than 0 seconds, got {value:g}")
        if self.downtime is not None and not 0 < self.downtime <= 2_000_000:
            raise UsageError(f"--downtime must be between 1 and 2000000 ms, got {self.downtime}")
        if self.uri is not None:
            check_channel_uri(self.uri)

    def setup_requests(self, uri: str) -> list[Request]:
        """What the source is sent (after the same capabilities went to the destination), as --dry-run shows it."""
        return [capabilities_request(_wanted_capabilities(self)), parameters_request(self.speed, self.downtime),
                Request("migrate-incoming", {"uri": uri}), Request("migrate", {"uri": uri})]


def check_channel_uri(uri: str) -> None:
    """``tcp:HOST:PORT`` or ``unix:PATH``; ``exec:`` (a shell) and ``fd:`` (qmpctl's own) are refused."""
    if uri.startswith("unix:") and len(uri) > 5:
        return
    if uri.startswith("tcp:"):
        host, _, port = uri[4:].rpartition(":")
        if host and port.isdigit() and int(port) <= 65535:
            return
    raise UsageError(f"--uri {uri!r}: give tcp:HOST:PORT (port 0: the destination picks one) or unix:PATH")


# ------------------------------------------------------------------ the handover


class Handover:
    """One outgoing migration in flight; leaving the ``with`` block early gives the VM back to the source.

    On every exit before the source reported ``completed``: ``migrate_cancel``,
    wait (bounded) for ``cancelled``/``failed``, ``cont`` the source when it was
    running and is not now, and ``quit`` a destination still waiting in
    ``inmigrate``. What was done is added to the error's message.
    """

    def __init__(self, source: QmpSession, destination: Optional[QmpSession], source_was_running: bool,
                 what: str = "migration", hands_over: bool = True) -> None:
        self.source = source
        self.destination = destination
        self.source_was_running = source_was_running
        self.what = what
        self.hands_over = hands_over
        """False for a save: a completed save leaves the VM with the source, to resume like any other end."""
        self.completed = False
        """Set once the source reported ``completed``: from then on the VM belongs to the destination."""
        self.notes: list[str] = []

    def __enter__(self) -> "Handover":
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        if error is None or self.completed:
            return
        with shielded():
            final = self.give_back()
        if isinstance(error, KeyboardInterrupt):
            interrupted = Interrupted(f"interrupted during the {self.what}")
            self._tell(interrupted, final)
            raise interrupted from None
        if isinstance(error, QmpctlError):
            self._tell(error, final)

    def _tell(self, error: QmpctlError, final: str) -> None:
        """Add to ``error`` what the cleanup did: where the source stands, and every note."""
        error.add_note(f"the source is {final}")
        for note in self.notes:
            error.add_note(note)

    def give_back(self) -> str:
        """Cancel, resume the source if needed, dismiss the destination; returns the source's final run state."""
        grace = Deadline(MIGRATION_CLEANUP_SECONDS)
        status = "unknown"
        try:
            status = cancel_and_wait(self.source, grace, self.what)
        except QmpctlError as exc:
            self.notes.append(f"could not cancel the migration ({exc.message})")
        if status == "completed" and self.hands_over:
            self.completed = True
            self.notes.append("the migration had completed just before: the VM runs on the destination")
            return _safe_state(self.source, grace)
        if status in POSTCOPY:
            self.notes.append(f"the migration is in {status}: the VM already runs on the destination and the "
                              "source holds part of its memory; do not stop the source QEMU until it completes")
            return _safe_state(self.source, grace)
        state = _safe_state(self.source, grace)
        if self.source_was_running and state in RESTARTABLE:
            self.notes.append(resume_source(self.source, grace))
            state = _safe_state(self.source, grace)
        if self.destination is not None:
            self.notes.append(dismiss_destination(self.destination, grace))
        return state


def resume_source(source: QmpSession, grace: Deadline) -> str:
    """``cont`` the source, waiting out the moment QEMU still finalizes a failed migration; returns a note.

    query-migrate can already say "failed" while the run state is still
    finish-migrate, and a ``cont`` then is refused ("Migration is not
    finalized yet"): try again, briefly, until QEMU has let go or ``grace`` ends.
    """
    refused = [""]

    def attempt() -> Optional[str]:
        try:
            source.execute(Request("cont"), grace)
            return "resumed the source with cont"
        except QmpctlError as exc:
            refused[0] = exc.message
            if "not finalized" not in exc.message or grace.expired():
                return f"could not resume the source ({exc.message})"
            return None

    try:
        return wait_until(source, attempt, grace, "QEMU to finalize the failed migration", check_first=True)
    except DeadlineExceeded:
        return f"could not resume the source ({refused[0]})"


def cancel_and_wait(source: QmpSession, deadline: Deadline, what: str = "migration") -> str:
    """``migrate_cancel`` an outgoing migration still under way and return its final status.

    One that already ended, or is in postcopy (where the VM already runs on
    the destination and cancelling would lose it), is left alone.
    """
    reading = query_migrate(source, deadline)
    if reading.ended or reading.status == "none" or reading.status in POSTCOPY:
        return reading.status
    source.execute(Request("migrate_cancel"), deadline)
    return wait_until(source, lambda: _ended_status(source, deadline), deadline, f"the {what} to be cancelled",
                      event=_migration_event_ended, every=0.1)


def _migration_event_ended(event: dict[str, Any]) -> bool:
    data = event.get("data")
    return event.get("event") == "MIGRATION" and isinstance(data, dict) and data.get("status") in ENDED


def _ended_status(session: QmpSession, deadline: Deadline) -> Optional[str]:
    status = query_migrate(session, deadline).status
    return status if status in ENDED or status == "none" else None


def _safe_state(session: QmpSession, deadline: Deadline) -> str:
    try:
        return run_state(session, deadline)
    except QmpctlError:
        return "unknown (its monitor does not answer)"


def dismiss_destination(destination: QmpSession, grace: Deadline) -> str:
    """``quit`` a destination that never ran (still ``inmigrate``); one that exited by itself is left alone."""
    try:
        state = run_state(destination, grace)
    except ConnectionClosed:
        return "the destination QEMU has exited"
    except DeadlineExceeded:
        return "the destination does not answer; left as it is"
    except QmpctlError as exc:
        return f"could not ask the destination for its state ({exc.message})"
    if state != "inmigrate":
        return f"the destination is {state}; left as it is"
    try:
        destination.execute(Request("quit"), grace)
    except ConnectionClosed:
        pass  # it may close before its reply reaches us
    except QmpctlError as exc:
        return f"could not tell the destination to quit ({exc.message})"
    return "told the destination (which never ran) to quit"


# ------------------------------------------------------------------ waiting


class _Watch:
    """Reads the source's progress until it ends: stall and postcopy decisions, progress callbacks."""

    def __init__(self, source: QmpSession, request_timeout: float, options: "MigrateOptions | None",
                 progress: Optional[Progress], what: str) -> None:
        self.source = source
        self.request_timeout = request_timeout
        self.stall_timeout = options.stall_timeout if options else None
        self.postcopy_after = options.postcopy_after if options else None
        self.progress = progress
        self.what = what
        self.started = time.monotonic()
        self.lowest: Optional[int] = None
        self.lowest_at = self.started
        self.pass_seen = 0
        self.postcopy_sent = False

    def check(self) -> Optional[MigrationReading]:
        now = time.monotonic()
        reading = query_migrate(self.source, Deadline(self.request_timeout), now - self.started)
        if reading.ended:
            return reading
        if reading.status == "none":
            raise JobFailed(f"the {self.what} is gone from {self.source.target}: another client cleared it?")
        if self.progress is not None:
            self.progress(reading)
        if reading.status == "active":
            self._watch_stall(reading, now)
            if (self.postcopy_after is not None and not self.postcopy_sent
                    and now - self.started >= self.postcopy_after):
                self.source.execute(Request("migrate-start-postcopy"), Deadline(self.request_timeout))
                self.postcopy_sent = True
        return None

    def _watch_stall(self, reading: MigrationReading, now: float) -> None:
        """Stalled: ``remaining`` has not shrunk for ``stall_timeout`` within one pass.

        Each pass starts again from what the guest dirtied meanwhile, so
        ``remaining`` grows at a pass boundary; within a pass it only shrinks
        while data flows.
        """
        if self.lowest is None or reading.remaining < self.lowest or reading.passes != self.pass_seen:
            self.lowest, self.lowest_at, self.pass_seen = reading.remaining, now, reading.passes
        elif self.stall_timeout is not None and now - self.lowest_at >= self.stall_timeout:
            raise DeadlineExceeded(f"the {self.what} stalled: {reading.remaining} bytes have remained for "
                                   f"{now - self.lowest_at:.1f}s (--stall-timeout {self.stall_timeout:g}s)")


def wait_for_source(source: QmpSession, wait: Deadline, request_timeout: float, options: Optional[MigrateOptions],
                    progress: Optional[Progress], every: float, what: str) -> MigrationReading:
    """Block until the source's migration ended (completed, failed or cancelled) and return its last reading."""
    watch = _Watch(source, request_timeout, options, progress, what)
    ended = wait_until(source, watch.check, wait, f"the {what} to finish", event=_migration_event_ended,
                       every=every)
    if ended.status == "completed":
        ended = _settled(source, wait.sub(request_timeout), ended)
    if progress is not None:
        progress(ended)
    return ended


def _settled(source: QmpSession, deadline: Deadline, reading: MigrationReading) -> MigrationReading:
    """The final reading, once QEMU has finished with a completed migration.

    QEMU reports ``completed`` a moment before it stops the clock (total
    time and downtime still read 0) and puts the source in ``postmigrate``;
    no event marks that, so it is polled briefly.
    """
    def settled() -> Optional[MigrationReading]:
        if run_state(source, deadline) == "postmigrate":
            return query_migrate(source, deadline)._replace(elapsed=reading.elapsed)
        return None

    return wait_until(source, settled, deadline, "the source to settle after the migration", check_first=True,
                      pauses=backoff(SETTLE_POLL_FIRST, SETTLE_POLL_MAX))


def after_wait(deadline: Deadline) -> Deadline:
    """The deadline of the requests that follow a long wait: --timeout again, as each request had during it.

    The call's own deadline covers connecting and setting up; a migration
    may take hours, and the last requests must not fail for that.
    """
    return Deadline(deadline.seconds)


def failure(reading: MigrationReading, what: str) -> JobFailed:
    detail = f": {reading.error}" if reading.error else ""
    return JobFailed(f"the {what} {reading.status}{detail}")


def wait_destination(destination: QmpSession, wait: Deadline, request_timeout: float) -> str:
    """Wait until the destination has loaded everything; returns its run state then."""
    def check() -> Optional[str]:
        deadline = Deadline(request_timeout)
        status = query_migrate(destination, deadline).status
        if status == "failed":
            raise JobFailed("the destination could not load the VM's state")
        if status != "completed":
            return None
        return run_state(destination, deadline)

    return wait_until(destination, check, wait, "the destination to start the VM",
                      event=event_named("MIGRATION", status="completed"), every=0.1)


def name_wait_timeout(error: BaseException, wait: Deadline, options_wait_timeout: float, what: str) -> None:
    """Name --wait-timeout when that is what ran out."""
    if isinstance(error, DeadlineExceeded) and wait.expired() and "stalled" not in error.message:
        raise DeadlineExceeded(f"the {what} did not finish within --wait-timeout {options_wait_timeout:g}s") \
            from None


# ------------------------------------------------------------------ live migration


class Channel(NamedTuple):
    """Where the state flows; a private directory qmpctl made is removed afterwards."""

    uri: str
    private_dir: Optional[str] = None

    @classmethod
    def private(cls) -> "Channel":
        folder = tempfile.mkdtemp(prefix="qmpctl-migrate-")
        return cls(f"unix:{os.path.join(folder, 'channel.sock')}", folder)

    def remove(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def check_destination(destination: QmpSession, deadline: Deadline) -> None:
    state = run_state(destination, deadline)
    if state != "inmigrate":
        raise UsageError(f"the destination {destination.target} is {state}, not waiting for a migration: start "
                         "it with the same hardware and -incoming defer; the source was not touched")
    reply = destination.execute(Request("query-migrate"), deadline).get("return")
    if isinstance(reply, dict) and (reply.get("status") or "socket-address" in reply):
        raise UsageError(f"the destination {destination.target} already listens for or receives a migration "
                         "(migrate-incoming was sent before): restart it with -incoming defer")


def check_source(source: QmpSession, deadline: Deadline) -> bool:
    """Whether the source runs; refuses a source that cannot be migrated now."""
    state = run_state(source, deadline)
    if state in ("inmigrate", "postmigrate", "finish-migrate"):
        raise UsageError(f"the source {source.target} is {state}: it does not hold a VM to migrate")
    status = query_migrate(source, deadline).status
    if status not in ENDED and status != "none":
        raise UsageError(f"a migration is already under way on {source.target} ({status}): see "
                         "qmpctl migrate --status, or --cancel it")
    return state == "running"


def _set_capabilities(source: QmpSession, destination: QmpSession, deadline: Deadline,
                      options: MigrateOptions) -> None:
    wanted = _wanted_capabilities(options)
    for side, session in (("destination", destination), ("source", source)):
        supported = _supported_capabilities(session, deadline)
        for name, state in wanted.items():
            if state and name not in supported:
                raise UsageError(f"the {side} QEMU does not support the migration capability {name}")
    for side, session in (("destination", destination), ("source", source)):
        try:
            session.execute(capabilities_request({k: v for k, v in wanted.items() if v or k != "events"}), deadline)
        except VmError as exc:
            if wanted["postcopy-ram"]:
                raise UsageError(f"--postcopy-after: the {side} cannot do postcopy ({exc.desc})") from None
            raise


def _listening_uri(destination: QmpSession, deadline: Deadline, uri: str) -> str:
    """The URI the source connects to: with ``tcp:HOST:0`` the port the destination chose."""
    if not (uri.startswith("tcp:") and uri.endswith(":0")):
        return uri
    reply = destination.execute(Request("query-migrate"), deadline).get("return") or {}
    for address in reply.get("socket-address") or []:
        if isinstance(address, dict) and address.get("type") in ("inet", "ipv4", "ipv6") and address.get("port"):
            host = uri[4:].rpartition(":")[0]
            return f"tcp:{host}:{address['port']}"
    raise ProtocolError(f"{destination.target} did not say which port it listens on for {uri}", received=reply)


def migrate(source: QmpSession, destination: QmpSession, deadline: Deadline, options: MigrateOptions, *,
            progress: Optional[Progress] = None, progress_every: float = CHECK_EVERY) -> dict[str, Any]:
    """Move the VM from ``source`` to ``destination``; returns once both agree (or, without wait, once started).

    :raise UsageError: the destination does not wait for a migration, or a capability is missing (nothing sent
        to the source).
    :raise JobFailed: the migration failed; the source has the VM again.
    :raise DeadlineExceeded: --wait-timeout or --stall-timeout; the source has the VM again.
    :raise Interrupted: Ctrl-C or SIGTERM; the source has the VM again.
    """
    check_destination(destination, deadline)
    was_running = check_source(source, deadline)
    _set_capabilities(source, destination, deadline, options)
    source.execute(parameters_request(options.speed, options.downtime), deadline)
    channel = Channel(options.uri) if options.uri else Channel.private()
    started = time.monotonic()
    try:
        with Handover(source, destination, was_running, "migration") as handover:
            destination.execute(Request("migrate-incoming", {"uri": channel.uri}), deadline)
            uri = _listening_uri(destination, deadline, channel.uri)
            source.execute(Request("migrate", {"uri": uri}), deadline)
            if not options.wait:
                connected = wait_until(source, lambda: _connected(source, deadline), deadline,
                                       "the source to connect to the destination", event=_migration_event,
                                       every=0.05)
                handover.completed = connected.status != "failed"  # left to run: nothing to take back
                if connected.status == "failed":
                    raise failure(connected, "migration")
                return {"status": connected.status, "uri": uri}
            wait = Deadline(options.wait_timeout)
            try:
                final = wait_for_source(source, wait, deadline.seconds, options, progress, progress_every,
                                        "migration")
            except DeadlineExceeded as exc:
                name_wait_timeout(exc, wait, options.wait_timeout, "migration")
                raise
            if final.status != "completed":
                raise failure(final, "migration")
            handover.completed = True
    finally:
        channel.remove()
    finishing = after_wait(deadline)
    try:
        destination_state = wait_destination(destination, Deadline(max(deadline.seconds, MIGRATION_CLEANUP_SECONDS)),
                                              deadline.seconds)
    except (JobFailed, ConnectionClosed) as exc:
        raise _destination_failed(source, was_running, exc) from None
    except DeadlineExceeded as exc:  # it may still start the VM: resuming the source could run it twice
        raise DeadlineExceeded(f"the source sent everything but the destination has not reported the VM "
                               f"started ({exc.message}); the source stays {_safe_state(source, finishing)} "
                               "and is not resumed while the destination may still start it") from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted after the source had sent everything: the VM belongs to the "
                          "destination now (qmpctl status there says whether it runs)") from None
    if was_running and destination_state in ("paused", "prelaunch"):
        destination.execute(Request("cont"), finishing)  # a destination started with -S waits for it
        destination_state = run_state(destination, finishing)
    return {
        "source": {"status": run_state(source, finishing), "migration": final.status},
        "destination": {"status": destination_state},
        "uri": uri, "bytes": final.transferred, "total-time-ms": final.total_time,
        "downtime-ms": final.downtime, "setup-time-ms": final.setup_time,
        "seconds": round(time.monotonic() - started, 3)}


def _migration_event(event: dict[str, Any]) -> bool:
    return event.get("event") == "MIGRATION"


def _connected(source: QmpSession, deadline: Deadline) -> Optional[MigrationReading]:
    """The reading once the source is past setup (connected, or failed to)."""
    reading = query_migrate(source, deadline)
    return None if reading.status == "setup" else reading


def _destination_failed(source: QmpSession, was_running: bool, error: QmpctlError) -> JobFailed:
    """Everything was sent but the destination did not start the VM: the source, intact, takes it back."""
    with shielded():
        grace = Deadline(MIGRATION_CLEANUP_SECONDS)
        note = ""
        if was_running and _safe_state(source, grace) in RESTARTABLE:
            note = "; " + resume_source(source, grace)
        final = _safe_state(source, grace)
    return JobFailed(f"the source sent everything but the destination did not start the VM ({error.message})"
                     f"; the source is {final}{note}")


def status(session: QmpSession, deadline: Deadline) -> dict[str, Any]:
    """``query-migrate`` as QEMU answers it, with the VM's run state."""
    reply = session.execute(Request("query-migrate"), deadline).get("return")
    return {"run-state": run_state(session, deadline), "migration": reply}


def cancel(session: QmpSession, deadline: Deadline) -> dict[str, Any]:
    """Cancel the source's migration and wait until QEMU says it is over; names where the VM is now.

    QEMU resumes a source that was running when the migration started; qmpctl
    cannot know that state afterwards, so it does not ``cont`` a paused one.
    """
    status_after = cancel_and_wait(session, deadline)
    state = run_state(session, deadline)
    result: dict[str, Any] = {"migration": status_after, "run-state": state}
    if status_after == "completed":
        result["note"] = "the migration had completed: the VM runs on the destination"
    return result
