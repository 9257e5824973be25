"""Each declared command's own example as a ``--dry-run`` command line, for start-up measurements and budgets."""

from __future__ import annotations

import shlex

from qmpctl.cli.spec import Command

FIXED_DATE = "2026-12-01"
"""What ``$(date +%F)`` in an example becomes: the line is run without a shell."""


def dry_run_words(command: Command) -> list[str]:
    """The first example line's words after ``qmpctl``, with ``--dry-run`` right after the command's words."""
    words = shlex.split(command.example.split(";  ")[0].replace("$(date +%F)", FIXED_DATE))[1:]
    return list(command.words) + ["--dry-run"] + words[len(command.words):]
