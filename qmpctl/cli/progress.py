"""Progress on stderr while qmpctl waits: a redrawn bar on a terminal, or one JSON line per change.

Shared by the commands that wait for QEMU to copy something (backup's job,
migrate's stream); each says how to render what it reads.
"""

from __future__ import annotations

import sys
import time

from qmpctl.timing import BAR_EVERY, JSON_EVERY
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Optional



class ProgressPrinter:
    """Renders readings on stderr; the last one (``finished``) is always shown.

    A reading is whatever the waiting code reads (a job's state, a migration's);
    the render functions given to :func:`printer_for` know its type.
    """

    def __init__(self, mode: str, *, bar: Callable[[Any], str], json: Callable[[Any], str],
                 finished: Callable[[Any], bool], changed: Callable[[Any], Any]) -> None:
        self.mode = mode
        self.bar = bar
        self.json = json
        self.finished = finished
        self.changed = changed
        self.shown_at = float("-inf")
        self.shown_key: Optional[Any] = None
        self.drawn = False

    @property
    def every(self) -> float:
        """How often the waiting code should read progress for this printer."""
        return BAR_EVERY if self.mode == "bar" else JSON_EVERY

    def __call__(self, reading: Any) -> None:
        now = time.monotonic()
        done = self.finished(reading)
        key = self.changed(reading)
        if self.mode == "bar":
            if not (done or now - self.shown_at >= BAR_EVERY):
                return
            self._write("\r" + self.bar(reading) + "\x1b[K" + ("\n" if done else ""))
            self.drawn = not done  # a finished bar ends its line before the result is printed
        else:
            if not (done or (key != self.shown_key and now - self.shown_at >= JSON_EVERY)):
                return
            self._write(self.json(reading) + "\n")
        self.shown_at, self.shown_key = now, key

    def close(self) -> None:
        """End a bar that did not finish (an error message follows it)."""
        if self.drawn:
            self._write("\n")
            self.drawn = False

    @staticmethod
    def _write(text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:
            pass  # a closed stderr must not cost the copy


def printer_for(mode: str, **render: Any) -> Optional[ProgressPrinter]:
    """The printer ``--progress MODE`` asks for (auto: a bar on a terminal), or None for none."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    return None if mode == "none" else ProgressPrinter(mode, **render)
