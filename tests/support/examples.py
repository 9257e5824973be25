"""Each declared command's own example as a ``--dry-run`` command line, for start-up measurements and budgets."""

from __future__ import annotations

import shlex

from qmpctl.cli.spec import Command, all_options

FIXED_DATE = "2026-12-01"
"""What ``$(date +%F)`` in an example becomes: the line is run without a shell."""


def dry_run_words(command: Command) -> list[str]:
    """The first example line's words after ``qmpctl``, with ``--dry-run`` right after the command's words
    (a command that sends nothing, ``help``, has no ``--dry-run``: its example as it is)."""
    words = shlex.split(command.example.split(";  ")[0].replace("$(date +%F)", FIXED_DATE))[1:]
    dry_run = ["--dry-run"] if any("--dry-run" in option.flags for option in all_options(command)) else []
    return list(command.words) + dry_run + words[len(command.words):]
