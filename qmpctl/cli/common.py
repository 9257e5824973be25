"""Options every command shares, and the runner that opens sessions and prints.

Commands stay thin: they build requests and hand an *action* to :func:`run`,
which resolves targets, applies one deadline per target, runs many targets
concurrently (fleet mode), and prints. Errors propagate to ``main``, the one
place that turns them into exit codes.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from qmpctl.deadline import Deadline
from qmpctl.errors import ExitCode, Interrupted, QmpctlError, UsageError
from qmpctl.output import hmp_text, render_reply, to_json
from qmpctl.request import Request
from qmpctl.targets import AGENT, MONITOR, Action, Target, resolve_targets

if TYPE_CHECKING:
    from qmpctl.cli.simple import SimpleCommand

# Typer (and inspect) are imported only inside the functions that build Typer
# options: the fast path (qmpctl/cli/fastpath.py) runs commands without them.

DEFAULT_TIMEOUT = 10.0
DEFAULT_JOBS = 16
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
    """The shared options, gathered from the command line by :func:`command` or the fast path.

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
        return resolve_targets(self.kind, self.sockets, self.domains, self.uri, self.timeout)


class SharedOption(NamedTuple):
    """One option every command takes: both the Typer options and the fast path are built from these."""

    name: str
    """The keyword the command wrapper receives."""
    flags: tuple[str, ...]
    value: str
    """``list`` (repeatable text), ``text``, ``float``, ``int`` or ``flag``."""
    default: Any
    envvar: str | None
    metavar: str | None
    help: str


def shared_options(kind: str) -> tuple[SharedOption, ...]:
    """The shared options of a monitor command (``-s``) or an agent command (``-a``)."""
    if kind == AGENT:
        target = SharedOption(
            "target_sockets", ("-a", "--agent"), "list", None, "QMPCTL_AGENT", "ADDR",
            "Guest-agent channel socket: PATH, unix:PATH, tcp:HOST:PORT. Repeat it, or use a glob, for many VMs.")
    else:
        target = SharedOption(
            "target_sockets", ("-s", "--qmp"), "list", None, "QMPCTL_QMP", "ADDR",
            "QMP socket, as given to QEMU's -qmp: PATH, unix:PATH, tcp:HOST:PORT, HOST:PORT. "
            "Repeat it, or use a glob, for many VMs.")
    return (
        target,
        SharedOption("domain", ("-d", "--domain"), "list", None, None, "DOMAIN",
                     "libvirt domain name, UUID or id (needs the libvirt extra). Repeatable."),
        SharedOption("connect_uri", ("-c", "--connect"), "text", None, "LIBVIRT_DEFAULT_URI", "URI",
                     "libvirt connection URI for --domain [default: qemu:///system]."),
        SharedOption("timeout", ("--timeout",), "float", DEFAULT_TIMEOUT, "QMPCTL_TIMEOUT", "SECONDS",
                     "One deadline for connect, greeting, negotiation and reply."),
        SharedOption("pretty", ("--pretty",), "flag", False, None, None, "Indent the JSON by 2, like virsh --pretty."),
        SharedOption("return_value", ("--return-value",), "flag", False, None, None,
                     "Print only the reply's return value."),
        SharedOption("dry_run", ("--dry-run",), "flag", False, None, None,
                     "Print the validated request(s) and connect to nothing."),
        SharedOption("jobs", ("--jobs", "-j"), "int", DEFAULT_JOBS, None, "N",
                     "With many targets: how many to talk to at once."),
    )


SHARED_NAMES = tuple(option.name for option in shared_options(MONITOR))


def _shared_parameters(kind: str) -> list[Any]:
    """The shared options as keyword-only parameters with Typer defaults, for the command's signature."""
    import inspect

    import typer

    annotations = {"list": Optional[list[str]], "text": Optional[str], "float": float, "int": int, "flag": bool}
    parameters = []
    for option in shared_options(kind):
        completion = {"autocompletion": complete_socket} if option.name == "target_sockets" else {}
        default = typer.Option(option.default, *option.flags, envvar=option.envvar, metavar=option.metavar,
                               show_default=option.default is not None, help=option.help, **completion)
        parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotations[option.value]))
    return parameters


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


def command(kind: str = MONITOR) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the shared options to a command whose last parameter is ``common: Common``."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        import inspect

        signature = inspect.signature(function)
        own = [p for p in signature.parameters.values() if p.name != "common"]

        @functools.wraps(function)
        def wrapper(**kwargs: Any) -> Any:
            common = make_common(kind, {name: kwargs.pop(name) for name in SHARED_NAMES})
            try:
                return function(common=common, **kwargs)
            except KeyboardInterrupt:
                raise Interrupted("interrupted") from None

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=own + _shared_parameters(kind)
        )
        return wrapper

    return decorate


def register_simple(typer_app: Any, words: tuple[str, ...], simple: "SimpleCommand") -> None:
    """Register one argument-less command of :data:`qmpctl.cli.simple.SIMPLE_COMMANDS` on ``typer_app``."""

    @command(simple.kind)
    def handler(common: Common) -> int:
        request = Request(simple.execute, protocol=simple.kind)
        return run(common, execute_one(request), [request])

    handler.__doc__ = simple.summary
    handler.__name__ = "_".join(words).replace("-", "_")
    typer_app.command(words[-1], epilog=f"Example: {simple.example}")(handler)


def emit(text: str) -> None:
    """Write one result to stdout; a reader that went away (``| head``) is not an error."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_dry_run(common: Common, requests: list[Request]) -> None:
    """What --dry-run shows: each request exactly as it would be sent (without the id)."""
    for request in requests:
        emit(to_json(request.as_dict(), common.pretty))


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


def run(common: Common, action: Action, requests: list[Request], *, text: bool = False) -> int:
    """Run ``action`` on every target and print its reply; returns the exit code.

    With one target, the reply is printed as it is. With several (repeated
    options or globs), each target gets one JSON line and the exit code is the
    highest seen, so ``qmpctl status -s '/run/vms/*.sock'`` answers for a host.
    ``text`` marks an action whose ``return`` is text to print as it is (HMP).
    """
    if common.dry_run:
        print_dry_run(common, requests)
        return ExitCode.OK
    targets = common.targets()
    if len(targets) == 1:
        reply = _run_on(targets[0], common, action)
        if reply is not None:
            if text and not common.pretty and isinstance(reply.get("return"), str):
                emit(hmp_text(reply["return"]))
            else:
                emit(render_reply(reply, pretty=common.pretty, return_value=common.return_value))
        return ExitCode.OK
    return run_fleet(targets, common, action)


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
        emit(to_json(line, common.pretty))
        worst = max(worst, line.get("exit", 0))
    return worst
