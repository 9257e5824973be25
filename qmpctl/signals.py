"""What SIGINT and SIGTERM do to qmpctl, decided in this one place.

The first SIGINT or SIGTERM becomes a :class:`KeyboardInterrupt`, so the
library's ``finally`` blocks and context managers take back what the call
started (cancel a job, dismiss it, delete nodes, remove a partial file). A
user pressing Ctrl-C twice, or a supervisor sending TERM twice, sends the
second signal while that cleanup runs; were it another KeyboardInterrupt,
it would cut the cleanup short and leave a job and a partial file behind. So
the first signal blocks both signals for the rest of the process: later ones
stay pending and die with it (the exit status is 130 either way). Cleanup can
then not be interrupted, which is why every cleanup step is bounded by its
own short deadline instead.

:func:`shielded` holds signals back around a cleanup block that runs
without a signal (after a timeout or an error) and delivers them afterwards;
:func:`no_return` blocks them for good once a result is printed, so a late
signal cannot turn a reported success into a failure.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional
    import subprocess

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_caught: Optional[int] = None
"""The signal that interrupted this process, once one has."""
_closed = False
"""Set by :func:`no_return`: the outcome is decided, signals change nothing."""


def _in_main_thread() -> bool:
    # Without the threading module loaded no thread of ours exists: skip importing it (about 1 ms).
    threading = sys.modules.get("threading")
    return threading is None or threading.current_thread() is threading.main_thread()


def _block() -> set[int]:
    """Block SIGINT and SIGTERM in this thread; returns the mask before."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    """The handler: the first signal interrupts; any later one finds the process already cleaning up."""
    global _caught
    _block()
    if _caught is not None or _closed:
        return  # delivered before the block took effect (or to another thread): cleanup is under way
    _caught = signum
    raise KeyboardInterrupt


def install() -> Optional[list[Any]]:
    """Route SIGINT and SIGTERM through :func:`_interrupt`, at the start of a command line.

    Returns the handlers it replaced, for :func:`restore`; None where Python
    lets no handler be set (not the main thread: a library caller keeps its own).
    A signal mask inherited blocked (from a supervisor, a test runner, a parent
    that was cleaning up) is opened too: otherwise Ctrl-C and SIGTERM would
    never arrive, and a waiting command could only be killed, cleanup and all.
    """
    global _caught, _closed
    _caught, _closed = None, False
    if not _in_main_thread():
        return None
    previous = [signal.getsignal(number) for number in SIGNALS]
    for number in SIGNALS:
        signal.signal(number, _interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return previous


def restore(previous: Optional[list[Any]]) -> None:
    """Put a caller's handlers back (an in-process run); a signal still pending is dropped, not raised."""
    global _caught, _closed
    _caught, _closed = None, False
    if previous is None:
        return
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(SIGNALS))
    for number, handler in zip(SIGNALS, previous, strict=True):
        signal.signal(number, handler if handler is not None else signal.SIG_DFL)


class shielded:  # noqa: N801 (used like a function: ``with shielded():``)
    """Hold SIGINT and SIGTERM back while the block runs; one that came meanwhile arrives right after.

    For cleanup that runs on an error or a timeout: a Ctrl-C then must wait
    until the job is cancelled and the file removed. Nested use, and use after
    the process was interrupted (signals stay blocked then), are harmless. The
    block itself must be bounded by a deadline: nothing can interrupt it.
    A class rather than a ``contextlib`` generator: every call imports this
    module, and ``contextlib`` costs half a millisecond.
    """

    def __enter__(self) -> None:
        # Signals are handled by the main thread alone: elsewhere there is nothing to hold back.
        self.before = _block() if _in_main_thread() else None

    def __exit__(self, *exc_info: object) -> None:
        if self.before is not None and not _closed:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.before)


def no_return() -> None:
    """From here on SIGINT and SIGTERM change nothing: the outcome is decided (the result printed)."""
    global _closed
    _closed = True
    if _in_main_thread():
        _block()


def die_with_parent() -> None:
    """In a child qmpctl starts (before exec): SIGTERM when qmpctl dies, however it dies, even by SIGKILL.

    Linux's ``prctl(PR_SET_PDEATHSIG)``; for the QEMUs, NBD servers and
    libguestfs appliances a command runs for its own duration, so none
    outlives the qmpctl that started it.
    """
    import ctypes
    import signal as signal_module

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal_module.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def stop_child(child: "subprocess.Popen[bytes]", grace: float) -> None:
    """End a child qmpctl started: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    import subprocess

    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
