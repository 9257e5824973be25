"""A running job's (or migration's) progress as people and CI logs read it: a bar with rate and ETA, or JSON lines.

Pure formatting: the CLI decides where the text goes (stderr) and how often.
"""

from __future__ import annotations

import json
import time
from collections import deque

from qmpctl.timing import RATE_WINDOW
from qmpctl.vm.jobs import JobState
from qmpctl.records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Callable, Optional
    from qmpctl.vm.migration import MigrationReading

CANCELLED = "Operation canceled"
"""The error QEMU gives a job that was cancelled."""


class Reading(NamedTuple):
    job_id: str
    status: str
    done: int
    total: int
    elapsed: float
    rate: Optional[float]
    eta: Optional[float]
    error: Optional[str] = None
    """A concluded job's error (None: it completed)."""

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"job-id": self.job_id, "status": self.status, "done": self.done, "total": self.total,
                "percent": round(self.percent, 1), "elapsed": round(self.elapsed, 3),
                "rate": None if self.rate is None else round(self.rate),
                "eta": None if self.eta is None else round(self.eta, 1), **self.outcome()}

    def outcome(self) -> dict[str, Any]:
        """A concluded job's end, as a log reader wants it last: completed, cancelled or failed (with why)."""
        if self.status != "concluded":
            return {}
        if self.error is None:
            return {"outcome": "completed"}
        if self.error == CANCELLED:
            return {"outcome": "cancelled"}
        return {"outcome": "failed", "error": self.error}


class Meter:
    """Turns successive job states into readings with a rate (bytes/s) and an ETA (s)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: Optional[float] = None
        self.samples: deque[tuple[float, int]] = deque()

    def read(self, state: JobState) -> Reading:
        now = self.clock()
        if self.started is None:
            self.started = now
        self.samples.append((now, state.done))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        first_time, first_done = self.samples[0]
        rate = (state.done - first_done) / (now - first_time) if now > first_time else None
        eta = (state.total - state.done) / rate if rate and state.total >= state.done else None
        if state.concluded:
            eta = 0.0
        return Reading(state.id, state.status, state.done, state.total, now - self.started, rate, eta, state.error)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def clock_text(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def bar_text(reading: Reading, width: int = 24) -> str:
    """``[#########...............]  38%  24.0 MiB / 64.0 MiB  8.0 MiB/s  ETA 0:05``"""
    filled = int(width * reading.percent / 100)
    rate = f"{human_bytes(reading.rate)}/s" if reading.rate is not None else "--"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {reading.percent:3.0f}%  "
            f"{human_bytes(reading.done)} / {human_bytes(reading.total)}  {rate}  ETA {clock_text(reading.eta)}")


def json_text(reading: Reading) -> str:
    return json.dumps(reading.to_json(), separators=(",", ":"))


def migration_reading(reading: "MigrationReading") -> Reading:
    """A migration's progress in the job's terms: done is the RAM sent in this pass, the rate QEMU's own."""
    eta = reading.remaining / reading.rate if reading.rate else None
    if reading.ended:
        eta = 0.0
    return Reading("migration", reading.status, reading.done, reading.total, reading.elapsed, reading.rate, eta)


def migration_bar_text(reading: "MigrationReading") -> str:
    """The job bar, then what only a migration has: ``pass 2  dirty 1.2 MiB/s``."""
    return (f"{bar_text(migration_reading(reading))}  pass {reading.passes}  "
            f"dirty {human_bytes(reading.dirty_rate)}/s  {reading.status}")


def migration_json_text(reading: "MigrationReading") -> str:
    return json.dumps(reading.to_json(), separators=(",", ":"))
