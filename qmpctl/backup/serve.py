"""Serve one backup point over NBD, read-only, without restoring it: ``restore CHAIN --serve ADDR``.

``qemu-nbd`` of the installed QEMU does the serving, always told the format
(``-f qcow2``: an image is never probed) and ``-r`` (read-only), so nothing
is ever written to a chain's image. ``--writable`` serves a throwaway qcow2
overlay on top instead, in a private temporary folder; the point's image is
only its read-only backing file. The server runs as a child of qmpctl in its
own session (a Ctrl-C at the terminal reaches qmpctl alone, which stops it)
and dies with qmpctl even when qmpctl is killed (``PR_SET_PDEATHSIG``). On
every way out the server is stopped, its unix socket removed (whoever left
it) and the private folder deleted.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time

from qmpctl.deadline import Deadline
from qmpctl.errors import JobFailed, UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.signals import die_with_parent, shielded, stop_child
from qmpctl.timing import CHILD_STOP_GRACE, NBD_START_TIMEOUT

if TYPE_CHECKING:
    from qmpctl.backup.point import Point
    from typing import Any, Optional

EXPORT = "disk"
"""The NBD export's name: nbd+unix:///disk?socket=PATH, nbd://HOST:PORT/disk."""
LOG_TAIL = 2000
UNIX_PATH_MAX = 107
QEMU_NBD_MISSING = "qemu-nbd is not installed (it comes with QEMU's tools, e.g. the qemu-utils package)"


class Listen(NamedTuple):
    """Where the NBD server listens: a unix socket ``path``, or TCP ``host``:``port``."""

    path: Optional[str] = None
    host: Optional[str] = None
    port: int = 0

    @property
    def uri(self) -> str:
        if self.path is not None:
            return f"nbd+unix:///{EXPORT}?socket={self.path}"
        host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{EXPORT}"

    def arguments(self) -> list[str]:
        if self.path is not None:
            return ["-k", self.path]
        return ["-b", str(self.host), "-p", str(self.port)]

    def connect(self) -> socket.socket:
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX)
            address: Any = self.path
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in str(self.host) else socket.AF_INET)
            address = (self.host, self.port)
        sock.settimeout(2.0)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str, *, allow_remote: bool = False) -> Listen:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (loopback only unless ``allow_remote``); the socket must not exist."""
    if text.startswith("unix:"):
        path = os.path.abspath(text[len("unix:"):])
        if not text[len("unix:"):]:
            raise UsageError("--serve unix:PATH needs a PATH")
        if os.path.lexists(path):
            raise UsageError(f"--serve: {path} exists; qmpctl does not replace it (remove it, or pick another path)")
        if not os.path.isdir(os.path.dirname(path)):
            raise UsageError(f"--serve: the directory {os.path.dirname(path)} does not exist")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise UsageError(f"--serve: {path} is longer than a unix socket path may be ({UNIX_PATH_MAX} bytes)")
        return Listen(path=path)
    if text.startswith("tcp:"):
        host, _, port_text = text[len("tcp:"):].rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not host or not 1 <= port <= 65535:
            raise UsageError(f"--serve wants tcp:HOST:PORT with a port from 1 to 65535, got {text!r}")
        if not _is_loopback(host) and not allow_remote:
            raise UsageError(f"--serve {text}: {host} is not a loopback address; anyone who reaches it could read "
                             "the disk (there is no authentication): add --allow-remote to serve it anyway")
        return Listen(host=host, port=port)
    raise UsageError(f"--serve wants unix:PATH or tcp:HOST:PORT, got {text!r}")


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text[-LOG_TAIL:]


class Server:
    """A context manager: qemu-nbd serving ``point`` at ``listen`` while the block runs, gone after it."""

    def __init__(self, point: Point, listen: Listen, *, writable: bool = False, program: str = "qemu-nbd") -> None:
        self.point = point
        self.listen = listen
        self.writable = writable
        self.program = program
        self.workdir: Optional[str] = None
        self.overlay: Optional[str] = None
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.log = ""

    def __enter__(self) -> "Server":
        try:
            self._start()
        except BaseException:
            with shielded():
                self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        with shielded():
            self._stop()

    def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="qmpctl-serve-")
        self.log = os.path.join(self.workdir, "qemu-nbd.log")
        served = self.point.image
        if self.writable:
            from qmpctl.backup import qemu_img

            self.overlay = os.path.join(self.workdir, "overlay.qcow2")
            qemu_img.run(["create", "-q", "-f", "qcow2", "-b", self.point.image, "-F", "qcow2", self.overlay],
                         Deadline(NBD_START_TIMEOUT), f"creating the overlay {self.overlay}")
            served = self.overlay
        command = [self.program, "-f", "qcow2", *([] if self.writable else ["-r"]), "-x", EXPORT,
                   "-t", "-e", "0", *self.listen.arguments(), served]
        with open(self.log, "wb") as log:
            try:
                self.child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True, preexec_fn=die_with_parent)
            except FileNotFoundError:
                raise UsageError(QEMU_NBD_MISSING) from None
        self._wait_until_ready(Deadline(NBD_START_TIMEOUT))

    def _wait_until_ready(self, deadline: Deadline) -> None:
        """Until the server greets (NBD's first bytes are ``NBDMAGIC``), or exits, or the deadline passes."""
        assert self.child is not None
        while True:
            code = self.child.poll()
            if code is not None:
                raise JobFailed(f"{self.program} exited with {code} before serving: {_tail(self.log)}")
            try:
                with self.listen.connect() as probe:
                    if probe.recv(8) == b"NBDMAGIC":
                        return
            except OSError:
                pass
            time.sleep(min(0.05, deadline.remaining(f"{self.program} to listen at {self.listen.uri}")))

    def wait(self, seconds: Optional[float]) -> None:
        """Serve until ``seconds`` have passed (None: until a signal); the server dying is :class:`JobFailed`."""
        assert self.child is not None
        end = None if seconds is None else time.monotonic() + seconds
        while True:
            left = 1.0 if end is None else end - time.monotonic()
            if left <= 0:
                return
            try:
                code = self.child.wait(timeout=min(left, 1.0))
            except subprocess.TimeoutExpired:
                continue
            raise JobFailed(f"{self.program} exited with {code} while serving: {_tail(self.log)}")

    def _stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            stop_child(child, CHILD_STOP_GRACE)
        if child is not None and self.listen.path is not None:
            try:  # qemu-nbd removes its socket when it ends cleanly; a killed one leaves it
                if stat.S_ISSOCK(os.lstat(self.listen.path).st_mode):
                    os.unlink(self.listen.path)
            except FileNotFoundError:
                pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def summary(self) -> dict[str, Any]:
        assert self.child is not None
        return {"uri": self.listen.uri, "export": EXPORT, "writable": self.writable, "pid": self.child.pid,
                **self.point.summary()}
