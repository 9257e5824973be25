"""Options every command shares, and the runner that opens sessions and prints.

Commands stay thin: they build requests and hand an *action* to :func:`run`,
which resolves targets, applies one deadline per target, runs many targets
concurrently (fleet mode), and prints. Errors propagate to ``main``, the one
place that turns them into exit codes.
"""

from __future__ import annotations

import sys

from qmpctl.deadline import Deadline
from qmpctl.cli.spec import DEFAULT_JOBS
from qmpctl.timing import DEFAULT_TIMEOUT
from qmpctl.errors import ExitCode, OutputError, QmpctlError, UsageError
from qmpctl.output import hmp_text, render_reply, to_json
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request
from qmpctl.wire.targets import MONITOR, Target, resolve_targets, written_targets

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.wire.targets import Action

MAX_TIMEOUT = 365 * 24 * 3600.0


def complete_socket(incomplete: str) -> list[str]:
    """Shell completion for -s/-a: sockets (and folders leading to them) matching what was typed."""
    import glob
    import os
    import stat

    prefix = incomplete[5:] if incomplete.startswith("unix:") else incomplete
    found = []
    for path in sorted(glob.glob(os.path.expanduser(prefix) + "*")):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            found.append(path)
        elif stat.S_ISDIR(mode):
            found.append(path.rstrip("/") + "/")
    return found


class Common(NamedTuple):
    """The shared options, as either parser read them (see :mod:`qmpctl.cli.spec`).

    A NamedTuple (``common._replace(...)`` makes a changed copy) rather than a
    dataclass: ``dataclasses`` imports ``inspect``, which the fast path avoids.
    """

    sockets: list[str]
    domains: list[str]
    uri: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT
    pretty: bool = False
    return_value: bool = False
    dry_run: bool = False
    jobs: int = DEFAULT_JOBS
    kind: str = MONITOR

    def targets(self) -> list[Target]:
        """Every target, globs expanded (an ``ssh://`` glob is listed on its host): resolve once per call."""
        return resolve_targets(self.kind, self.sockets, self.domains, self.uri, self.timeout)

    def written_targets(self) -> list[Target]:
        """The targets as written, nothing expanded or asked: what --dry-run may look at."""
        return written_targets(self.kind, self.sockets, self.domains, self.uri)


def make_common(kind: str, shared: dict[str, Any]) -> Common:
    """Check the shared option values and gather them, whichever parser read them."""
    if not 0 < shared["timeout"] <= MAX_TIMEOUT:  # also refuses nan and inf, which sockets cannot wait for
        raise UsageError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT:.0f} seconds (a year), "
                         f"got {shared['timeout']:g}")
    if shared["jobs"] < 1:
        raise UsageError(f"--jobs must be at least 1, got {shared['jobs']}")
    return Common(
        sockets=list(shared["target_sockets"] or []), domains=list(shared["domain"] or []),
        uri=shared["connect_uri"], timeout=shared["timeout"], pretty=shared["pretty"],
        return_value=shared["return_value"], dry_run=shared["dry_run"], jobs=shared["jobs"], kind=kind,
    )


def emit(text: str, *, final: bool = False) -> None:
    """Write one result to stdout; a reader that went away (``| head``) is not an error.

    ``final``: this is the command's result, so from now on a late SIGINT or
    SIGTERM must not turn the success into a failure (they are blocked until
    exit). A stdout that cannot be written (closed, full disk) is
    :class:`OutputError` (exit 74), which says the command itself succeeded.
    """
    if final:
        result_decided()
    stream = sys.stdout
    if stream is None:
        raise OutputError("the command succeeded, but its result could not be written: standard output is closed")
    try:
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError) as exc:
        _silence_stdout()
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutputError(f"the command succeeded, but its result could not be written to standard output: "
                          f"{detail}") from None


def result_decided() -> None:
    """From here on the outcome is printed: SIGINT and SIGTERM cannot turn it into exit 130/143."""
    from qmpctl import signals

    signals.no_return()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit does not fail a second time."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass


def print_dry_run(common: Common, requests: list[Request]) -> None:
    """What --dry-run shows: each request exactly as it would be sent (without the id)."""
    for request in requests:
        emit(to_json(request.as_dict(), common.pretty), final=True)


def printed_plan(common: Common, requests: list[Request], note: Optional[str]) -> bool:
    """--dry-run of requests that depend on the VM: print them as a labelled plan, never as the real thing.

    One JSON object, ``{"plan": [requests...], "note": "what the run decides with the VM"}``;
    False (nothing printed) when not a dry run, or when the requests are exact.
    """
    if not common.dry_run or note is None:
        return False
    emit(to_json({"plan": [request.as_dict() for request in requests], "note": note}, common.pretty), final=True)
    return True


def execute_one(request: Request) -> Action:
    """The action of most commands: send one request, return its reply."""
    return lambda session, deadline, target: session.execute(request, deadline)


def _run_on(target: Target, common: Common, action: Action) -> Any:
    deadline = Deadline(common.timeout)
    session = target.open(deadline)
    try:
        return action(session, deadline, target)
    finally:
        session.close()


def run(common: Common, action: Action, requests: list[Request], *, text: bool = False,
        targets: Optional[list[Target]] = None) -> int:
    """Run ``action`` on every target and print its reply; returns the exit code.

    With one target, the reply is printed as it is. With several (repeated
    options or globs), each target gets one JSON line and the exit code is the
    highest seen, so ``qmpctl status -s '/run/vms/*.sock'`` answers for a host.
    ``text`` marks an action whose ``return`` is text to print as it is (HMP).
    ``targets``: the ones a command already resolved (to look at them first), so they are resolved once.
    """
    if common.dry_run:
        print_dry_run(common, requests)
        return ExitCode.OK
    if targets is None:
        targets = common.targets()
    if len(targets) == 1:
        reply = _run_on(targets[0], common, action)
        if reply is not None:
            if text and not common.pretty and isinstance(reply.get("return"), str):
                emit(hmp_text(reply["return"]), final=True)
            else:
                emit(render_reply(reply, pretty=common.pretty, return_value=common.return_value), final=True)
        return ExitCode.OK
    return run_fleet(targets, common, action)


def enveloped(action: Action) -> Action:
    """A library function's data, printed as QEMU's replies look (``{"return": ...}``): the library returns data."""
    return lambda session, deadline, target: {"return": action(session, deadline, target)}


def fleet_line(target: Target, reply: Any = None, error: QmpctlError | None = None) -> dict[str, Any]:
    if error is not None:
        return {"target": str(target), "error": error.to_json(), "exit": int(error.exit_code)}
    line: dict[str, Any] = {"target": str(target)}
    if isinstance(reply, dict):
        line.update(reply)
    return line


def run_fleet(targets: list[Target], common: Common, action: Action) -> int:
    """Talk to many targets at once (bounded by --jobs); one JSON line each, in the order given."""
    import threading

    results: dict[int, dict[str, Any]] = {}
    crashes: list[BaseException] = []
    lock = threading.Lock()
    next_index = iter(range(len(targets)))

    def worker() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            target = targets[index]
            try:
                line = fleet_line(target, _run_on(target, common, action))
            except QmpctlError as exc:
                line = fleet_line(target, error=exc)
            except BaseException as exc:  # a bug: report it after the others finish
                crashes.append(exc)
                return
            with lock:
                results[index] = line

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(common.jobs, len(targets)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if crashes:
        raise crashes[0]
    worst = 0
    for index in range(len(targets)):
        line = results[index]
        emit(to_json(line, common.pretty), final=True)
        worst = max(worst, line.get("exit", 0))
    return worst


def agent_for(common: Common, agent: Optional[str]) -> Optional[Target]:
    """The guest agent a monitor command also talks to: -a AGENT, else the --domain's own agent channel."""
    from qmpctl.wire.targets import AGENT

    if agent is not None:
        return resolve_targets(AGENT, [agent], [], None)[0]
    if common.domains:
        return resolve_targets(AGENT, [], common.domains[:1], common.uri)[0]
    return None


def time_sync_agent(common: Common, agent: Optional[str], sync_time: bool) -> Optional[Target]:
    """The agent --sync-time sets the clock through, checked before anything is done (exit 2 without one)."""
    if not sync_time:
        if agent is not None:
            raise UsageError("-a/--agent goes with --sync-time (the agent that sets the guest's clock)")
        return None
    target = agent_for(common, agent)
    if target is None:
        raise UsageError("--sync-time needs the guest agent: pass -a AGENT (its channel socket), or -d DOMAIN "
                         "for the domain's own agent; nothing was done")
    return target
