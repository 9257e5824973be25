"""Waiting in tests for a condition a real peer reaches in its own time (never a fixed sleep)."""

from __future__ import annotations

import time
from typing import Callable


def eventually(predicate: Callable[[], bool], seconds: float = 15, every: float = 0.05) -> bool:
    """True as soon as ``predicate`` holds, checking every ``every`` seconds; its last answer after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
