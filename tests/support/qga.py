"""The real qemu-ga, run on the host, and helpers for scripted fake agents.

qemu-ga in ``unix-listen`` mode speaks exactly the protocol it speaks inside a
guest, so tests exercise qmpctl against the real agent without booting one.
It runs as whoever runs the tests (here root) and guest-exec starts HOST
programs: tests must only run harmless ones (true, cat, printf, sh -c ...).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import tty
from pathlib import Path
from typing import Any

from support.fakes import Peer
from support.waits import blocked_in_poll, wait_for

QGA = "qemu-ga"
AGENT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
"""The environment guest-exec programs inherit when qmpctl passes no --env."""


def agent_request(path: Path, execute: str, timeout: float = 10) -> Any:
    """One request to an agent on a fresh, resynchronised connection: a check that does not go through qmpctl."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sync_id = random.randrange(1, 1 << 30)
        sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode())
        reader = sock.makefile("rb")
        while True:
            line = reader.readline().lstrip(b"\xff")
            try:
                if json.loads(line).get("return") == sync_id:
                    break
            except ValueError:
                continue
        sock.sendall(json.dumps({"execute": execute}).encode())
        return json.loads(reader.readline())["return"]


def have_qemu_ga() -> bool:
    return shutil.which(QGA) is not None


def qemu_ga_version(binary: str = QGA) -> str:
    """``7.2.22`` from ``QEMU Guest Agent 7.2.22``: what guest-info must report."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("QEMU Guest Agent", 1)[1].split()[0]


class HostAgent:
    """``qemu-ga -m unix-listen -p SOCK -t STATEDIR`` (``-b`` for disabled commands), torn down by :meth:`stop`.

    ``binary`` picks the qemu-ga (a :class:`support.qemu.QemuBuild`'s ``qemu_ga``; the system's unless told).
    """

    def __init__(self, workdir: Path, block: list[str] | None = None, binary: str = QGA) -> None:
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "qga.sock"
        self.block = block or []
        self.proc: subprocess.Popen | None = None

    def command_line(self) -> list[str]:
        args = [self.binary, "-m", "unix-listen", "-p", str(self.path), "-t", str(self.workdir),
                "-f", str(self.workdir / "qemu-ga.pid")]
        if self.block:
            args += ["-b", ",".join(self.block)]
        return args

    def _spawn(self) -> None:
        with open(self.workdir / "qemu-ga.log", "ab") as log:
            self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log, env=AGENT_ENV, cwd=self.workdir)

    def start(self, timeout: float = 10) -> "HostAgent":
        self.path.unlink(missing_ok=True)
        self._spawn()

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu-ga exited with {self.proc.returncode}: see {self.workdir}/qemu-ga.log")
            return self._listening()

        wait_for(listening, f"qemu-ga listening on {self.path}", timeout)
        return self

    def _listening(self) -> bool:
        """Connect and leave at once: qemu-ga takes that as a client that said nothing."""
        if not self.path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def raw(self, data: bytes, read: bool = False, timeout: float = 5) -> bytes:
        """A client of our own: send ``data``, optionally read one line, and go away.

        qemu-ga listens with a backlog of 1 and serves one client at a time, so
        while it is still busy with the previous client a connect can fail with
        EAGAIN: wait for the queue to drain, as a patient client would.
        """
        def connected() -> socket.socket | None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except BlockingIOError:
                sock.close()
                return None
            except BaseException:
                sock.close()
                raise
            return sock

        with wait_for(connected, f"qemu-ga's listen queue on {self.path} to drain", timeout) as sock:
            sock.sendall(data)
            if not read:
                return b""
            with sock.makefile("rb") as stream:
                return stream.readline()


class ChannelAgent(HostAgent):
    """The real qemu-ga behind a channel that, like QEMU's chardev, outlives its clients.

    qemu-ga runs in ``isa-serial`` mode on a pty; a bridge serves one unix-socket
    client at a time and copies bytes both ways. What the agent writes while no
    client is connected stays in the pty for the next one, and requests a client
    sent before leaving are still answered: the stale replies a guest channel has.
    """

    def __init__(self, workdir: Path, binary: str = QGA) -> None:
        super().__init__(workdir, binary=binary)
        self.path = workdir / "channel.sock"
        self.master, self.slave = pty.openpty()
        tty.setraw(self.master)
        self.tty_name = os.ttyname(self.slave)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self._stop = threading.Event()
        self.bridge = threading.Thread(target=self._serve, daemon=True)
        self.bridge.start()

    def command_line(self) -> list[str]:
        return [self.binary, "-m", "isa-serial", "-p", self.tty_name, "-t", str(self.workdir),
                "-f", str(self.workdir / "qemu-ga.pid")]

    def start(self, timeout: float = 10) -> "ChannelAgent":
        self._spawn()
        wait_for(self._has_tty_open, f"qemu-ga opening {self.tty_name}", timeout)
        return self

    def wait_until_idle(self, timeout: float = 10) -> None:
        """Until the agent has read every byte sent to it and waits for more: every request is answered.

        qemu-ga handles one request at a time and writes its reply before it
        polls again, so an empty input queue plus an agent asleep in poll
        means all replies are written (into the channel, or to clients gone).
        """
        def idle() -> bool:
            unread = fcntl.ioctl(self.slave, termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(unread, sys.byteorder) == 0 and blocked_in_poll(self.proc.pid)

        wait_for(idle, "qemu-ga reading and answering every request", timeout)

    def _has_tty_open(self) -> bool:
        try:
            fds = os.listdir(f"/proc/{self.proc.pid}/fd")
            return any(os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") == self.tty_name for fd in fds)
        except OSError:
            return False

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with client:
                self._copy_both_ways(client)

    def _copy_both_ways(self, client: socket.socket) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([client, self.master], [], [], 0.1)
            if client in readable:
                try:
                    data = client.recv(65536)
                except OSError:  # reset: a client that left with replies unread
                    return
                if not data:
                    return
                while data:
                    data = data[os.write(self.master, data):]
            if self.master in readable:
                try:
                    client.sendall(os.read(self.master, 65536))
                except OSError:
                    return

    def close(self) -> None:
        self.stop()
        self._stop.set()
        self.listener.close()
        self.bridge.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)


# --- scripted fake agents (for faults the real agent cannot show) ---

def send_line(peer: Peer, message: dict[str, Any], prefix: bytes = b"") -> None:
    """One agent output line: qemu-ga ends lines with a bare LF."""
    peer.send(prefix + json.dumps(message).encode() + b"\n")


def answer_sync(peer: Peer, junk: bytes = b"") -> dict[str, Any]:
    """Read qmpctl's 0xFF + guest-sync-delimited and answer it after ``junk``; returns the request."""
    request = peer.read_request()
    assert request.get("execute") == "guest-sync-delimited", request
    send_line(peer, {"return": request["arguments"]["id"]}, prefix=junk + b"\xff")
    return request


def answer(peer: Peer, expected: str, value: Any = None, *, error: dict[str, str] | None = None) -> dict[str, Any]:
    """Read the next request, check its command, and answer it (echoing its id) with ``value`` or ``error``."""
    request = peer.read_request()
    assert request.get("execute") == expected, request
    message: dict[str, Any] = {"error": error} if error else {"return": {} if value is None else value}
    if "id" in request:
        message["id"] = request["id"]
    send_line(peer, message)
    return request
