"""QEMU's events: follow them as they come, or wait for one.

QEMU sends every event to every monitor connection that has negotiated, and
keeps none for later: qmpctl sees only what happens while it is connected.
Waiting is therefore race-free only when the wait starts listening before
the action that causes the event (``powerdown`` presses the button on the
connection it then waits on). Through libvirt the same events come from
libvirt's QEMU monitor event API (see :mod:`qmpctl.wire.libvirt`).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectionClosed, DeadlineExceeded, QmpctlError, UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.session import Session

if TYPE_CHECKING:
    from typing import Any


def parse_names(values: Iterable[str]) -> frozenset[str]:
    """``--wait SHUTDOWN,STOP`` (repeatable) -> the event names; QEMU's names are upper case."""
    names = frozenset(name.strip().upper() for value in values for name in value.split(",") if name.strip())
    if not names:
        raise UsageError("--wait wants event names, like SHUTDOWN or STOP,RESUME")
    return names


def parse_match(text: str) -> tuple[tuple[str, ...], str]:
    """``--match reason=guest-shutdown`` or ``--match data.path.x=1`` -> (key path, value)."""
    key, sep, value = text.partition("=")
    path = tuple(part for part in key.strip().split("."))
    if path[:1] == ("data",) and len(path) > 1:
        path = path[1:]
    if not sep or not all(path):
        raise UsageError(f"--match wants KEY=VALUE (dotted for nested keys of the event's data), got {text!r}")
    return path, value


def _as_text(value: Any) -> str:
    """How a value in an event compares with the text after ``=``: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class EventFilter(NamedTuple):
    """Which events count: any of ``names`` (all when empty) whose data has every ``matches`` value."""

    names: frozenset[str] = frozenset()
    matches: tuple[tuple[tuple[str, ...], str], ...] = ()

    def __call__(self, event: dict[str, Any]) -> bool:
        if self.names and event.get("event") not in self.names:
            return False
        for path, wanted in self.matches:
            found: Any = event.get("data")
            for key in path:
                if not isinstance(found, dict) or key not in found:
                    return False
                found = found[key]
            if _as_text(found) != wanted:
                return False
        return True

    def describe(self) -> str:
        """``SHUTDOWN or STOP with reason=x``: how a timeout names what did not come."""
        what = " or ".join(sorted(self.names)) or "event"
        if self.matches:
            what += " with " + ", ".join(f"{'.'.join(path)}={value}" for path, value in self.matches)
        return what


def check_names(session: Session, names: frozenset[str], deadline: Deadline) -> None:
    """Refuse (exit 2) a name this QEMU never sends, naming close matches, rather than wait out the timeout.

    The VM's own schema (``query-qmp-schema``) lists every event it can send,
    so the check holds for any QEMU release and costs one request, made only
    when ``--wait`` names events.
    """
    if not names:
        return
    from qmpctl.wire.request import Request

    reply = session.execute(Request("query-qmp-schema"), deadline).get("return")
    entries = reply if isinstance(reply, list) else []
    known = {str(entry.get("name")) for entry in entries
             if isinstance(entry, dict) and entry.get("meta-type") == "event"}
    unknown = sorted(names - known)
    if not known or not unknown:
        return  # a schema without events says nothing: wait as asked
    import difflib

    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hints.append(f"{name} (did you mean {' or '.join(close)}?)" if close else name)
    raise UsageError(f"--wait: {session.target} never sends {', '.join(hints)}; it sends "
                     f"{len(known)} events, e.g. SHUTDOWN, STOP, RESUME, DEVICE_DELETED, JOB_STATUS_CHANGE")


def event_line(event: dict[str, Any]) -> dict[str, Any]:
    """An event as qmpctl prints it: name, data and QEMU's own timestamp."""
    return {"event": event.get("event"), "data": event.get("data", {}), "timestamp": event.get("timestamp")}


def follow(session: Session, deadline: Deadline, keep: EventFilter, count: int | None = None, *,
           until_closed: bool = False) -> Iterator[dict[str, Any]]:
    """The events ``keep`` accepts, as they arrive; ``count`` of them, or until ``deadline``.

    ``until_closed`` makes the monitor closing (QEMU exited) the end of the
    stream rather than an error. ``deadline`` running out raises
    :class:`DeadlineExceeded` naming what did not come.
    """
    seen = 0
    waiting_for = f"{keep.describe()} from {session.target}"
    while count is None or seen < count:
        try:
            event = session.next_event(deadline, waiting_for)
        except DeadlineExceeded:
            raise not_within(keep, deadline, session.target) from None
        except ConnectionClosed:
            if until_closed:
                return
            raise ConnectionClosed(f"{session.target} closed the monitor (QEMU exited) before "
                                   f"{keep.describe()}") from None
        if keep(event):
            seen += 1
            yield event


def not_within(keep: EventFilter, deadline: Deadline, target: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"no {keep.describe()} within {deadline.seconds:g} s from {target}")


def wait_for(session: Session, keep: EventFilter, wait: Deadline) -> dict[str, Any]:
    """The first event ``keep`` accepts, within ``wait`` (else :class:`DeadlineExceeded`: "no NAME within S s")."""
    for event in follow(session, wait, keep, 1):
        return event
    raise not_within(keep, wait, session.target)  # follow yields once or raises; this is for the type checker


if TYPE_CHECKING:
    Item = tuple[int, dict[str, Any] | None, QmpctlError | None]
    """(which producer, an event or None, the error it ended with or None); (n, None, None) is a clean end."""


def interleave(producers: Sequence[Callable[[], Iterator[dict[str, Any]]]]) -> Iterator[Item]:
    """Run each producer in a thread and yield what they give in arrival order, until all have ended.

    A producer's :class:`QmpctlError` ends that producer only (yielded as its
    last item); anything else is a bug and is raised here once the others stop
    mattering. The threads are daemons: Ctrl-C in the consumer ends the process.
    """
    items: queue.Queue[tuple[int, dict[str, Any] | None, BaseException | None, bool]] = queue.Queue()

    def run(index: int, producer: Callable[[], Iterator[dict[str, Any]]]) -> None:
        try:
            for event in producer():
                items.put((index, event, None, False))
        except BaseException as exc:  # noqa: BLE001 (handed over to the consumer, which re-raises bugs)
            items.put((index, None, exc, True))
            return
        items.put((index, None, None, True))

    for index, producer in enumerate(producers):
        threading.Thread(target=run, args=(index, producer), name=f"qmpctl-events-{index}", daemon=True).start()
    running = len(producers)
    while running:
        index, event, error, ended = _get(items)
        if ended:
            running -= 1
        if error is not None and not isinstance(error, QmpctlError):
            raise error
        if event is not None or ended:
            yield index, event, error if isinstance(error, QmpctlError) else None


def _get(items: queue.Queue[Any]) -> Any:
    """``items.get()`` in short slices: a plain blocking get would hold off Ctrl-C until the next item."""
    while True:
        try:
            return items.get(timeout=0.5)
        except queue.Empty:
            continue
