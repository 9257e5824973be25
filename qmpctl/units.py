"""Sizes and rates on the command line: ``1048576``, ``512K``, ``10M``, ``1G`` (powers of 1024)."""

from __future__ import annotations

import re

from qmpctl.errors import UsageError

SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_size(text: str, option: str, what: str = "bytes", *, allow_zero: bool = False) -> int:
    """The number of bytes ``text`` names; anything else is a usage error naming ``option``.

    One reading of suffixes for every option (``--speed``, ``--bps``,
    ``balloon SIZE``), so ``10M`` means the same everywhere.
    """
    found = _SIZE.fullmatch(text)
    if not found or (int(found.group(1)) == 0 and not allow_zero):
        floor = "0 or more" if allow_zero else "above 0"
        raise UsageError(f"{option} wants {what} {floor}, like 1048576, 512K or 10M; got {text!r}")
    return int(found.group(1)) * SIZE_UNITS[found.group(2).upper()]


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)
_DURATION = re.compile(r"\s*(?:\d+[smhdw])+\s*", re.IGNORECASE)


def parse_duration(text: str, option: str) -> int:
    """The seconds ``text`` names: ``90m``, ``36h``, ``7d``, ``2w``, or several, ``1d12h``; above 0."""
    if not _DURATION.fullmatch(text):
        raise UsageError(f"{option} wants a duration above 0 like 90m, 36h, 7d or 1d12h (s, m, h, d, w); "
                         f"got {text!r}")
    seconds = sum(int(number) * DURATION_UNITS[unit.lower()] for number, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise UsageError(f"{option} wants a duration above 0, got {text!r}")
    return seconds
