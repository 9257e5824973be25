"""One QMP or guest-agent request: built from typed options, validated, rendered.

A :class:`Request` is validated when it is made, so any request object that
exists may be sent; ``--dry-run`` prints the same object without connecting.
"""

from __future__ import annotations

import json
import math

from qmpctl.wire import schema
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):  # 1e999 would be sent on as Infinity, which is not JSON
        raise ValueError(f"{number} is too large for a JSON number")
    return value


def parse_json(text: str | bytes) -> Any:
    """Strict JSON, as QEMU and qemu-ga read it: Python's NaN and Infinity extensions are refused.

    Raises ValueError for text that is not JSON (or a number that only fits
    as infinity) and RecursionError for nesting deeper than Python can follow
    (QEMU itself stops at 1024 levels).
    """
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


def _undecodable(error: UnicodeEncodeError) -> str:
    """Show what could not be encoded: the original bytes of a non-UTF-8 argument, else the escape."""
    text = error.object[error.start:error.end]
    try:
        return f"bytes {text.encode('utf-8', 'surrogateescape')!r}"  # undecodable argv bytes come back as-is
    except UnicodeEncodeError:
        return f"lone surrogate {ascii(text)}"  # e.g. a "\ud800" JSON escape


class Request:
    """``{"execute": NAME, "arguments": {...}}`` checked against its schema."""

    __slots__ = ("execute", "arguments", "protocol")

    def __init__(self, execute: str, arguments: dict[str, Any] | None = None, *, protocol: str = "qmp",
                 schema_name: str | None = None) -> None:
        self.execute = execute
        self.arguments = arguments
        self.protocol = protocol
        schema.validate(schema_name or f"{protocol}/{execute}", self.message())
        try:
            self.wire()
        except UnicodeEncodeError as exc:
            raise UsageError(f"invalid request ({execute}): text is not valid UTF-8 ({_undecodable(exc)}); "
                             "QEMU accepts UTF-8 only") from None
        except RecursionError:
            raise UsageError(f"invalid request ({execute}): nested too deeply") from None

    @classmethod
    def raw(cls, message: dict[str, Any], *, protocol: str = "qmp") -> "Request":
        """A request the user wrote as JSON: only the envelope can be checked."""
        schema.validate(f"{protocol}-request", message)
        return cls(message["execute"], message.get("arguments"), protocol=protocol,
                   schema_name=f"{protocol}-request")

    def as_dict(self, request_id: Any = None) -> dict[str, Any]:
        """The request as qmpctl shows it (--dry-run, an error's ``sent``): a subclass may mask secrets here."""
        return self.message(request_id)

    def message(self, request_id: Any = None) -> dict[str, Any]:
        """The request exactly as it goes on the wire."""
        message: dict[str, Any] = {"execute": self.execute}
        if self.arguments is not None:
            message["arguments"] = self.arguments
        if request_id is not None:
            message["id"] = request_id
        return message

    def wire(self, request_id: Any = None) -> bytes:
        """Compact UTF-8 JSON as it goes on the socket (newline-terminated)."""
        return json.dumps(self.message(request_id), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def __repr__(self) -> str:
        return f"Request({self.as_dict()!r})"
