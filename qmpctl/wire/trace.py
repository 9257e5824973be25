"""The wire trace: every message sent and received, and every failed exchange with its context.

``QMPCTL_DEBUG=1`` in the environment turns it on, the way qemu.qmp logs each
message at debug level. The library reports to one module-level :data:`sink`
(a function taking one line); it never prints. The one default is writing
to stderr when ``QMPCTL_DEBUG`` is set, chosen like Python's ``logging``
"last resort" handler: an explicit request for diagnostics, on the stream
for diagnostics, never stdout, so scripts reading qmpctl's output see the same
bytes with or without the trace. An application embedding qmpctl sets
``qmpctl.wire.trace.sink`` to its own function (a logger's ``debug``) or to None.
``logging`` itself is not used: it costs more to import than a whole
``qmpctl status`` is allowed to.

Each line is ``TIMESTAMP TARGET --> MESSAGE`` for what qmpctl sent,
``<--`` for what it received and ``!!!`` for an error with what was sent and
received. Secrets never reach the trace: the agent's
``guest-set-user-password`` password and the file contents of
``guest-file-write`` / ``guest-file-read`` (``buf-b64``) are masked.
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import TracebackType

from qmpctl.errors import QmpctlError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable

MASKED = "<masked>"
SECRET_ARGUMENTS = {
    "guest-set-user-password": ("password",),
    "guest-file-write": ("buf-b64",),
}
"""Request arguments the trace never shows, by command."""
SECRET_RETURNS = ("buf-b64",)
"""Members of a reply's ``return`` the trace never shows (guest-file-read's file contents)."""
MAX_SHOWN = 4096
"""Longer messages are cut in the trace (after masking), so a 64 MiB reply does not flood the terminal."""
SYNC_BYTE = b"\xff"


def _stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must not turn a trace into a failure


def _enabled(environ: Any = os.environ) -> bool:
    return environ.get("QMPCTL_DEBUG", "") not in ("", "0")


sink: Callable[[str], None] | None = _stderr if _enabled() else None
"""Where trace lines go; None (the default without ``QMPCTL_DEBUG``) means nowhere, at no cost."""


def mask(message: Any) -> Any:
    """``message`` (a request or reply object) with every secret replaced by ``<masked>``; others as they are."""
    if not isinstance(message, dict):
        return message
    masked = message
    secrets = SECRET_ARGUMENTS.get(str(message.get("execute")), ())
    arguments = message.get("arguments")
    if secrets and isinstance(arguments, dict) and any(key in arguments for key in secrets):
        masked = dict(message, arguments={key: MASKED if key in secrets else value
                                          for key, value in arguments.items()})
    returned = message.get("return")
    if isinstance(returned, dict) and any(key in returned for key in SECRET_RETURNS):
        masked = dict(masked, **{"return": {key: MASKED if key in SECRET_RETURNS else value
                                            for key, value in returned.items()}})
    return masked


def _show(data: bytes | str | Any) -> str:
    """One message as one line: JSON compact and masked, anything else as readable text."""
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
        prefix = raw[:len(raw) - len(raw.lstrip(SYNC_BYTE))]
        text = raw[len(prefix):].decode("utf-8", "replace").rstrip("\r\n")
        shown = "\\xff" * len(prefix)
    elif isinstance(data, str):
        text, shown = data.rstrip("\r\n"), ""
    else:
        text, shown = json.dumps(mask(data), separators=(",", ":"), ensure_ascii=False, default=repr), ""
        data = None
    if data is not None and ('"execute"' in text or '"buf-b64"' in text):
        try:
            text = json.dumps(mask(json.loads(text)), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            if any(secret in text for secrets in SECRET_ARGUMENTS.values() for secret in secrets):
                text = f"<{len(text)} characters not shown: not JSON, and may hold a secret>"
    shown += text
    if len(shown) > MAX_SHOWN:
        shown = f"{shown[:MAX_SHOWN]}... ({len(shown)} characters in all)"
    return shown


def _emit(target: str, arrow: str, text: str) -> None:
    write = sink
    if write is None:
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1_000_000):06d}Z"
    write(f"{stamp} {target} {arrow} {text}")


def sent(target: str, data: bytes | str | Any) -> None:
    """``data`` is on its way to ``target`` (wire bytes, libvirt's command text, or a message object)."""
    if sink is not None:
        _emit(target, "-->", _show(data))


def received(target: str, data: bytes | str | Any) -> None:
    """``data`` came from ``target``."""
    if sink is not None:
        _emit(target, "<--", _show(data))


def failed(target: str, error: QmpctlError) -> None:
    """An exchange with ``target`` ended in ``error``: say so, with what was sent and received."""
    if sink is None:
        return
    text = f"{type(error).__name__}: {error.message}"
    if error.sent is not None:
        text += f" | sent {_show(error.sent)}"
    if error.received is not None:
        text += f" | received {_show(error.received)}"
    _emit(target, "!!!", text)


class Exchange:
    """Around one request: an error that escapes without context gets the request as ``sent``, and is traced.

    Errors raised below the sessions (a timeout in the transport, a reply
    that is not JSON, a connection closed by the peer) know what was received
    but not what qmpctl had sent; the session knows, and adds it here.
    ``request`` None: nothing was sent (waiting for a greeting or an event).
    """

    __slots__ = ("target", "request")

    def __init__(self, target: str, request: dict[str, Any] | None) -> None:
        self.target = target
        self.request = request

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if isinstance(error, QmpctlError):
            if error.sent is None:
                error.sent = self.request
            failed(self.target, error)
