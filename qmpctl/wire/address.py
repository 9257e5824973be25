"""Socket addresses as users write them: what they passed to QEMU's ``-qmp``.

Accepted: ``PATH``, ``unix:PATH``, ``tcp:HOST:PORT``, ``HOST:PORT`` and
``[IPV6]:PORT``, each optionally followed by QEMU's own options
(``,server=on,wait=off``, ``,server,nowait``), which are ignored so a
``-qmp`` value can be pasted as it is. QEMU escapes a comma inside a path
as ``,,``; so does qmpctl.

``ssh://[USER@]HOST[:PORT]/PATH`` is a unix socket on another machine,
reached through the system's ``ssh`` (:mod:`qmpctl.wire.ssh`). It is recognised
first: its path is taken as it is (no QEMU options), and ``HOST:PORT`` inside
it is SSH's, not QMP's.
"""

from __future__ import annotations

from qmpctl.errors import UsageError
from qmpctl.records import NamedTuple

GLOB_CHARS = frozenset("*?[")
SSH_SCHEME = "ssh://"


class SshHost(NamedTuple):
    """The machine an ``ssh://`` address names, as ssh gets it: user and port only when given."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{user}{host}{port}"


class Address(NamedTuple):
    """Where a monitor or agent socket lives: a unix path (here or on ``via``) or a TCP host and port.

    A NamedTuple rather than a dataclass: ``dataclasses`` imports ``inspect``,
    a few milliseconds every ``qmpctl status`` would pay.
    """

    path: str | None = None
    host: str | None = None
    port: int | None = None
    via: SshHost | None = None
    """The remote machine whose unix socket ``path`` is, for ``ssh://`` addresses."""
    uncut: str | None = None
    """For a path cut at a single comma: the whole text, so a failed connect can say the comma cut it."""

    def __eq__(self, other: object) -> bool:
        """The same socket is the same address, however it was written (``uncut`` aside)."""
        return isinstance(other, Address) and self[:4] == other[:4]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:4])

    @property
    def is_unix(self) -> bool:
        """A unix socket on this machine."""
        return self.path is not None and self.via is None

    def __str__(self) -> str:
        if self.via is not None:
            return f"ssh://{self.via}{self.path}"
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def _strip_qemu_options(text: str) -> str:
    """Drop ``,opt=val`` suffixes while keeping ``,,`` (an escaped comma) in the value."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1 : i + 2] == ",":
                out.append(",")
                i += 2
                continue
            break
        out.append(ch)
        i += 1
    return "".join(out)


def _parse_port(text: str, original: str) -> int:
    # isdigit() alone would accept "²" or "١": only ASCII digits make a port.
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise UsageError(f"invalid port {text!r} in address {original!r} (expected 1-65535)")
    return int(text)


def _parse_host_port(text: str, original: str) -> Address:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or not rest.startswith(":"):
            raise UsageError(f"invalid address {original!r}: expected [IPV6]:PORT")
        return Address(host=host, port=_parse_port(rest[1:], original))
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise UsageError(f"invalid address {original!r}: expected HOST:PORT")
    return Address(host=host, port=_parse_port(port, original))


def _parse_ssh(text: str, original: str) -> Address:
    """``ssh://[USER@]HOST[:PORT]/PATH``: the remote path starts at the first ``/`` after the host."""
    rest = text[len(SSH_SCHEME):]
    authority, slash, path = rest.partition("/")
    if not slash or not path:
        raise UsageError(f"invalid address {original!r}: expected ssh://[USER@]HOST[:PORT]/PATH "
                         "(an absolute socket path on that host)")
    user, at, hostport = authority.rpartition("@")
    if at and not user:
        raise UsageError(f"invalid address {original!r}: empty user before @")
    port: int | None = None
    if hostport.startswith("["):
        host, sep, tail = hostport[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise UsageError(f"invalid address {original!r}: expected [IPV6] or [IPV6]:PORT after ssh://")
        if tail:
            port = _parse_port(tail[1:], original)
    else:
        host, colon, port_text = hostport.partition(":")
        if colon:
            port = _parse_port(port_text, original)
    if not host or host.startswith("-") or any(ch.isspace() or ch in "/@" for ch in host):
        raise UsageError(f"invalid address {original!r}: {host!r} is not a host name")
    if user and (user.startswith("-") or any(ch.isspace() for ch in user)):
        raise UsageError(f"invalid address {original!r}: {user!r} is not a user name")
    if ":" in path:  # ssh -L reads LOCAL:REMOTE and cannot escape a colon
        raise UsageError(f"invalid address {original!r}: ssh cannot forward a socket whose path contains ':'")
    return Address(path="/" + path, via=SshHost(host, user or None, port))


def parse_address(text: str) -> Address:
    """Parse one address; raises :class:`UsageError` (exit 2) naming what is wrong."""
    original = text
    if not text or not text.strip():
        raise UsageError("empty address: pass a socket path, unix:PATH or tcp:HOST:PORT")
    if "\0" in text:
        raise UsageError(f"invalid address {original!r}: contains a NUL byte")
    if text.startswith(SSH_SCHEME):
        return _parse_ssh(text, original)
    text = _strip_qemu_options(text)
    whole = original[5:] if original.startswith("unix:") else original
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise UsageError(f"invalid address {original!r}: unix: needs a path")
        return Address(path=path, uncut=_uncut(path, whole))
    if text.startswith("tcp:"):
        return _parse_host_port(text[4:], original)
    if "/" not in text and ":" in text:
        return _parse_host_port(text, original)
    if not text:
        raise UsageError(f"invalid address {original!r}: no path before the options")
    return Address(path=text, uncut=_uncut(text, whole))


def _uncut(path: str, whole: str) -> str | None:
    """The text as given (``,,`` read as one comma), when QEMU's option syntax cut it at a comma."""
    whole = whole.replace(",,", ",")
    return whole if whole != path else None


def has_glob(text: str) -> bool:
    return any(ch in GLOB_CHARS for ch in text)
