"""Turn ``monitor-command`` / ``agent command`` words into a request, the way virsh does.

The words are joined with spaces. Text starting with ``{`` is a whole request
object; otherwise the first word names the command and the rest, if any, are
its arguments written as JSON object members (without the braces).
"""

from __future__ import annotations

import sys

from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request, parse_json

if TYPE_CHECKING:
    from typing import Any


def _parse_json(text: str, what: str) -> Any:
    try:
        return parse_json(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply") from None


MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""What QEMU and qemu-ga accept as one message."""


def read_request_words(words: list[str]) -> list[str]:
    """``-`` reads the request from standard input, ``@FILE`` from FILE; other words stay as they are.

    The kernel caps one command-line argument at 128 KiB, so a larger request
    (a long list of arguments, a base64 payload) cannot be given as a word.
    """
    if len(words) != 1 or not (words[0] == "-" or words[0].startswith("@")):
        return words
    source = words[0]
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
            where = "standard input"
        else:
            where = source[1:]
            with open(where, "rb") as file:
                data = file.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the request from {source[1:] or source}: {exc.strerror or exc}") from None
    if len(data) > MAX_REQUEST_BYTES:
        raise UsageError(f"the request in {where} is over {MAX_REQUEST_BYTES // (1024 * 1024)} MiB, "
                         "more than QEMU accepts in one message")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the request in {where} is not UTF-8 text") from None
    return [text]


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
