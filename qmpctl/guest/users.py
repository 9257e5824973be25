"""Change a guest user's password (guest-set-user-password) without the password ever showing.

The password travels only inside the request on the wire: it is read from a
file or standard input (never argv, which ``ps`` shows), and the request
object masks it everywhere else it can surface, ``--dry-run`` and the
``sent`` of an error included.
"""

from __future__ import annotations

import base64

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError, VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any, BinaryIO

MASK = "********"
MAX_PASSWORD_BYTES = 4096


class SecretRequest(Request):
    """A request whose ``secret`` arguments appear only in :meth:`wire`: every other view masks them."""

    __slots__ = ("secret",)

    def __init__(self, execute: str, arguments: dict[str, Any], *, secret: tuple[str, ...],
                 protocol: str = "qga") -> None:
        super().__init__(execute, arguments, protocol=protocol)  # validated with the real values
        self.secret = secret

    def as_dict(self, request_id: Any = None) -> dict[str, Any]:
        message = super().as_dict(request_id)
        hidden = getattr(self, "secret", ())
        if hidden and self.arguments is not None:
            message["arguments"] = {key: MASK if key in hidden else value for key, value in self.arguments.items()}
        return message


def read_password(stream: BinaryIO, source: str) -> bytes:
    """The first line of ``stream`` without its line end; an empty one is refused."""
    line = stream.readline(MAX_PASSWORD_BYTES + 2)
    if len(line) > MAX_PASSWORD_BYTES and not line.endswith(b"\n"):
        raise UsageError(f"the password from {source} is longer than {MAX_PASSWORD_BYTES} bytes")
    password = line.rstrip(b"\n").rstrip(b"\r")
    if not password:
        raise UsageError(f"no password: the first line of {source} is empty")
    return password


def password_request(username: str, password: bytes, *, crypted: bool = False) -> SecretRequest:
    """guest-set-user-password, the password base64-encoded as the agent requires (also when crypted)."""
    if not username or ":" in username or "\n" in username:
        raise UsageError(f"invalid user name {username!r}")
    return SecretRequest("guest-set-user-password", {
        "username": username, "password": base64.b64encode(password).decode("ascii"), "crypted": crypted,
    }, secret=("password",))


def set_password(session: Session, request: SecretRequest, deadline: Deadline) -> dict[str, Any]:
    """Send it; the agent's refusal names the user, never the password."""
    try:
        return session.execute(request, deadline)
    except VmError as error:
        user = request.arguments["username"] if request.arguments else "?"
        raise VmError(error.error_class, f"the guest could not set the password of {user!r}: {error.desc}",
                      sent=request.as_dict(), received=error.received) from None
