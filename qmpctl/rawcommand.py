"""Turn ``monitor-command`` / ``agent command`` words into a request, the way virsh does.

The words are joined with spaces. Text starting with ``{`` is a whole request
object; otherwise the first word names the command and the rest, if any, are
its arguments written as JSON object members (without the braces).
"""

from __future__ import annotations

from typing import Any

from qmpctl.errors import UsageError
from qmpctl.request import Request, parse_json


def _parse_json(text: str, what: str) -> Any:
    try:
        return parse_json(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply") from None


def parse_raw_command(words: list[str], protocol: str = "qmp") -> Request:
    """Build a validated :class:`Request` from command-line words; bad input is exit 2."""
    text = " ".join(words).strip()
    if not text:
        raise UsageError("no command given: pass a command name or a JSON request object")
    if text.startswith("{"):
        whole = _parse_json(text, "the request")
        if not isinstance(whole, dict):
            raise UsageError("the request must be a JSON object")
        return Request.raw(whole, protocol=protocol)
    if text.startswith(("[", '"')):
        raise UsageError("the request must be a JSON object or a command name, not a JSON "
                         + ("array" if text.startswith("[") else "string"))
    name, _, rest = text.partition(" ")
    message: dict[str, Any] = {"execute": name}
    rest = rest.strip()
    if rest:
        arguments = _parse_json("{" + rest + "}", f"the arguments of {name}")
        message["arguments"] = arguments
    return Request.raw(message, protocol=protocol)
