"""Sizes, rates and durations on the command line: ``1048576``, ``512K``, ``10M``, ``1G`` (powers of 1024);
``90s``, ``12h``, ``7d``."""

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


DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)", re.IGNORECASE)
_DURATION = re.compile(r"\s*(?:\d+(?:\.\d+)?\s*[smhdw]?|(?:\d+(?:\.\d+)?[smhdw]){2,})\s*", re.IGNORECASE)


def parse_duration(text: str, option: str) -> float:
    """The seconds ``text`` names: ``90`` (seconds), ``90s``, ``30m``, ``1.5h``, ``7d``, ``2w``, or several units,
    ``1d12h``; above 0, else a usage error naming ``option``."""
    if not _DURATION.fullmatch(text):
        raise UsageError(f"{option} wants a duration above 0, like 90s, 30m, 12h, 7d, 2w or 1d12h; got {text!r}")
    seconds = sum(float(number) * DURATION_UNITS[unit.lower()]
                  for number, unit in _DURATION_PART.findall(re.sub(r"\s+", "", text)))
    if seconds <= 0:
        raise UsageError(f"{option} wants a duration above 0, like 90s, 30m, 12h, 7d, 2w or 1d12h; got {text!r}")
    return seconds
