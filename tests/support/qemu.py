"""A real QEMU for tests, and a tiny independent QMP client to check its state.

The checks deliberately do not use qmpctl: a test that asks qmpctl whether
qmpctl worked could not fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from support.waits import wait_for

QEMU10_ROOT = Path(os.environ.get("QMPCTL_QEMU10") or "/var/cache/qmpctl-qemu10/current")
"""Where tests/setup-host unpacks QEMU 10 from bookworm-backports (wrappers in ``bin/``)."""


class QemuBuild:
    """One QEMU with the qemu-img and qemu-ga of the same release: the system's, or one unpacked beside it.

    Tests that take the ``qemu_build`` fixture (``vm``/``vm_factory`` do) run
    once per build, with :attr:`id` (``qemu7.2``, ``qemu10.0``) in the test id.
    """

    def __init__(self, bin_dir: Path | None, expected: str, where: str) -> None:
        self.bin_dir = bin_dir
        self.expected = expected  # the label while the build is missing
        self.where = where
        self._version: tuple[int, int, int] | None = None

    def tool(self, name: str) -> str:
        return name if self.bin_dir is None else str(self.bin_dir / name)

    @property
    def qemu(self) -> str:
        return self.tool("qemu-system-x86_64")

    @property
    def qemu_img(self) -> str:
        return self.tool("qemu-img")

    @property
    def qemu_ga(self) -> str:
        return self.tool("qemu-ga")

    @property
    def guest_agent(self) -> Path | None:
        """The qemu-ga binary itself (not a wrapper) for the lab guest's initramfs; None: the installed one."""
        return None if self.bin_dir is None else self.bin_dir.parent / "usr/sbin/qemu-ga"

    def tools_env(self) -> dict[str, str]:
        """The environment that puts this build's tools (qemu-img, qemu-nbd) first on PATH, for qmpctl to run."""
        path = os.environ.get("PATH", os.defpath)
        return {"PATH": path if self.bin_dir is None else f"{self.bin_dir}{os.pathsep}{path}"}

    def missing(self) -> str | None:
        """Why this build cannot run here, or None."""
        for binary in (self.qemu, self.qemu_img, self.qemu_ga):
            if shutil.which(binary) is None:
                return f"{binary} is not installed ({self.where}; run tests/setup-host)"
        return None

    @property
    def version(self) -> tuple[int, int, int]:
        """(7, 2, 22) from ``QEMU emulator version 7.2.22 (Debian ...)``."""
        if self._version is None:
            out = subprocess.run([self.qemu, "-version"], capture_output=True, text=True, check=True).stdout
            match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
            if match is None:
                raise RuntimeError(f"{self.qemu} -version said {out!r}")
            self._version = (int(match[1]), int(match[2]), int(match[3]))
        return self._version

    @property
    def label(self) -> str:
        if self.missing():
            return self.expected
        major, minor, _ = self.version
        return f"{major}.{minor}"

    @property
    def id(self) -> str:
        return f"qemu{self.label}"

    def __repr__(self) -> str:
        return f"QemuBuild({self.id}, {self.bin_dir or 'PATH'})"


SYSTEM_QEMU = QemuBuild(None, "7.2", "the system's packages")
QEMU10 = QemuBuild(QEMU10_ROOT / "bin", "10.0", f"bookworm-backports, unpacked in {QEMU10_ROOT}")
QEMU_BUILDS = (SYSTEM_QEMU, QEMU10)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_socket(path: Path, timeout: float = 20) -> None:
    wait_for(path.exists, f"{path} appearing", timeout, pause=0.02)


class RawQmp:
    """Just enough QMP to check a VM from a test (greeting, negotiation, one command at a time)."""

    def __init__(self, path: Path, timeout: float = 20) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)

        def connected() -> bool:
            try:
                self.sock.connect(str(path))
            except ConnectionRefusedError:
                return False
            return True

        # QEMU binds the socket file before it listens: a connect in between is refused.
        try:
            wait_for(connected, f"QEMU listening on {path}", 2)
        except BaseException:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        # A monitor whose last client had negotiated may send an event before the new client's greeting (QEMU
        # emits it from the main thread while the monitor's own thread is still accepting): skip it, as qmpctl does.
        while "event" in (greeting := json.loads(self.file.readline())):
            self.events.append(greeting)
        assert "QMP" in greeting, greeting
        self.cmd("qmp_capabilities")

    def cmd(self, execute: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": execute, "id": "raw"}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{execute}: {reply['error']}")
            assert "return" in reply, reply
            return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> "RawQmp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QemuVM:
    """``qemu-system-x86_64 -M pc -accel tcg -nodefaults -display none -S`` with a qcow2 disk.

    ``build`` picks the QEMU (the system's unless told).

    ``paused=False`` leaves out ``-S``: a destination of a migration started
    so runs the VM as soon as it has arrived, as a real one would.

    The disk is node ``disk0`` behind device ``vd0`` (virtio-blk). A second QMP
    monitor (``qmp2_path``) lets tests check state while qmpctl holds the first
    or while a test makes the first one busy.
    """

    def __init__(self, workdir: Path, tcp: bool = False, extra_args: list[str] | None = None,
                 disk_size: str = "64M", qemu_args_disk: bool = True, paused: bool = True,
                 build: QemuBuild = SYSTEM_QEMU) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.qmp_path = workdir / "qmp.sock"
        self.qmp2_path = workdir / "check.sock"
        self.disk = workdir / "disk0.qcow2"
        self.tcp_port = free_tcp_port() if tcp else None
        self.extra_args = extra_args or []
        self.disk_size = disk_size
        self.with_disk = qemu_args_disk
        self.build = build
        self.paused = paused
        self.proc: subprocess.Popen | None = None

    @property
    def tcp_address(self) -> str:
        return f"tcp:127.0.0.1:{self.tcp_port}"

    def command_line(self) -> list[str]:
        args = [self.build.qemu, "-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
                *(["-S"] if self.paused else []),
                "-m", "64", "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-qmp", f"unix:{self.qmp2_path},server=on,wait=off"]
        if self.tcp_port:
            args += ["-qmp", f"tcp:127.0.0.1:{self.tcp_port},server=on,wait=off"]
        if self.with_disk:
            args += ["-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={self.disk}",
                     "-device", "virtio-blk-pci,drive=disk0,id=vd0"]
        return args + self.extra_args

    def start(self) -> None:
        if self.with_disk:
            subprocess.run([self.build.qemu_img, "create", "-q", "-f", "qcow2", str(self.disk), self.disk_size],
                           check=True)
        self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.log", "wb"))
        wait_for_socket(self.qmp2_path)
        if self.tcp_port:
            wait_for(self._greets_on_tcp, f"QEMU greeting on tcp port {self.tcp_port}", 20, pause=0.02)
            with self.check() as qmp:  # until QEMU has let the probe go, so the test's client is served
                wait_for(lambda: not any(chardev["filename"].startswith("tcp:")
                                         for chardev in qmp.cmd("query-chardev")),
                         f"QEMU dropping the probe client of tcp port {self.tcp_port}")

    def _greets_on_tcp(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5) as probe:
                probe.recv(1)  # the greeting's first byte: QEMU serves this probe client
                return True
        except OSError:
            return False

    def check(self) -> RawQmp:
        """An independent QMP connection on the second monitor."""
        return RawQmp(self.qmp2_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
