"""The one way the command line speaks to people: a single ``qmpctl: ...`` line on stderr."""

from __future__ import annotations

import sys


def report(message: str) -> None:
    """One clear diagnostic line on stderr."""
    try:
        sys.stderr.write(f"qmpctl: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # no stderr to speak to: the exit code still tells
