"""Waiting for a condition instead of sleeping and hoping: the tests' only way to let time pass.

``wait_for`` polls a condition with a short pause, returns its first true
answer, and fails with a clear message when it never holds: the one polling
loop of the tests and of tests/support (the lab's and the benchmark's
stand-alone scripts keep their own). The process probes read /proc to tell
*what a qmpctl process is doing*: blocked on a socket (waiting for a greeting
or a reply), sleeping between retries, or running a child (qemu-ga's
guest-exec programs), so a test can act at exactly the moment it means to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

POLL_PAUSE = 0.01

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 10, pause: float = POLL_PAUSE) -> T:
    """``condition()``'s first true answer, asked every ``pause`` seconds.

    TimeoutError naming ``what`` when it is still false after ``timeout``
    seconds (it is asked once more at the end, so a slow last answer counts).
    An exception from ``condition`` ends the wait at once: a condition that
    can never hold (a peer that exited) says so by raising.
    """
    give_up = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() > give_up
        answer = condition()
        if answer:
            return answer
        if last_try:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(pause)


def _kernel_wait(pid: int) -> str:
    """Where in the kernel ``pid`` sleeps (/proc/PID/wchan), '' when it runs or is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return Path(f"/proc/{pid}/wchan").read_text() if state == "S" else ""
    except (OSError, IndexError):
        return ""


def _has_socket(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def blocked_in_poll(pid: int) -> bool:
    """``pid`` sleeps in poll or select: an event loop (qemu-ga) waiting for input."""
    return "poll" in _kernel_wait(pid) or "select" in _kernel_wait(pid)


def blocked_on_a_socket(pid: int) -> bool:
    """``pid`` has a socket open and sleeps in poll: qmpctl waiting for a greeting or a reply."""
    return _has_socket(pid) and "poll" in _kernel_wait(pid)


def sleeping(pid: int) -> bool:
    """``pid`` sleeps in nanosleep: qmpctl pausing between retries (a full listen queue, a poll loop)."""
    return "nanosleep" in _kernel_wait(pid)


def wait_until_blocked_on_a_socket(pid: int, timeout: float = 10) -> None:
    wait_for(lambda: blocked_on_a_socket(pid), f"process {pid} waiting on a socket", timeout)


def children(parent: int, command: str | None = None) -> list[int]:
    """The pids of ``parent``'s children (whose command name is ``command``, if given)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].rpartition(")")
        fields = rest.split()
        if len(fields) > 1 and int(fields[1]) == parent and (command is None or name == command):
            found.append(int(stat.parent.name))
    return found


def wait_for_child(parent: int, command: str | None = None, timeout: float = 10) -> None:
    """Until ``parent`` has a child (qemu-ga runs guest-exec programs as its children)."""
    wait_for(lambda: children(parent, command), f"process {parent} starting {command or 'a child'}", timeout)


def descendants(parent: int) -> list[int]:
    """Every process below ``parent``: its children, theirs, and so on (a child in its own session too)."""
    found, todo = [], [parent]
    while todo:
        below = children(todo.pop())
        found.extend(below)
        todo.extend(below)
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie waiting for its parent."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] != "Z"


def _blocks_sigint(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def interrupt_twice(child: subprocess.Popen, timeout: float = 10) -> None:
    """Ctrl-C twice: SIGINT, then a second SIGINT once qmpctl took the first and is cleaning up.

    Two signals sent back to back can merge into one pending signal; qmpctl
    blocks SIGINT when its handler runs (qmpctl/signals.py), so the second is
    sent once /proc says SIGINT is blocked: it lands during the cleanup.
    """
    child.send_signal(signal.SIGINT)
    wait_for(lambda: child.poll() is not None or _blocks_sigint(child.pid), f"process {child.pid} taking SIGINT",
             timeout, pause=0.005)
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
