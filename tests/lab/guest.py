#!/usr/bin/env python3
"""Boot and tear down the lab guest built by build.py, for pytest fixtures and shells.

The guest is a real Linux (TCG, no KVM needed) whose only job is to run
qemu-guest-agent, so qmpctl can be exercised against a real QMP monitor and a
real agent socket.

Shell use:
    eval "$(python3 tests/lab/guest.py up /tmp/lab)"   # boots detached, waits for the agent
    python3 tests/lab/guest.py down /tmp/lab

Python use:
    with LabGuest(tmp_path) as guest:        # start() + wait_agent()
        talk_to(guest.qmp_path, guest.agent_path)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr



def _load_sibling(module_name: str, file_name: str):
    """Load a file next to this one under a unique name: a bare `import build`
    could pick up PyPA's `build` package instead."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().with_name(file_name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


lab_build = _load_sibling("qmpctl_lab_build", "build.py")

QEMU_BINARY = "qemu-system-x86_64"
AGENT_CHANNEL_NAME = "org.qemu.guest_agent.0"
DIRECT_AGENT_CHANNEL_NAME = "org.qemu.guest_agent.1"
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"
DATA_DISK_DEVICE_ID = "disk0"
DATA_DISK_NODE_NAME = "disk0-fmt"
DATA_DISK_FILE_NODE_NAME = "disk0-file"
# The ext2 filesystem the guest mounts at DATA_FS_MOUNTPOINT (for guest-fsfreeze-*
# and file copies).  It sits on virtio-scsi so the data disk stays /dev/vda and
# a hotplugged virtio-blk disk still becomes /dev/vdb.
DATA_FS_DEVICE_ID = "fs0"
DATA_FS_NODE_NAME = "fs0-fmt"
DATA_FS_FILE_NODE_NAME = "fs0-file"
DATA_FS_GUEST_DEVICE = "/dev/sda"
DATA_FS_MOUNTPOINT = "/mnt/data"
DATA_FS_SIZE = "16M"
READ_ONLY_MOUNTPOINT = "/mnt/ro"
LAB_USER = "lab"
UNIX_PATH_MAX = 107


class LabError(RuntimeError):
    """The lab guest could not be started or did not become usable."""


def wait_qmp(path: Path | str, timeout: float = 10.0) -> float:
    """Wait until QEMU has created its QMP unix socket; returns seconds waited.

    Only existence is checked: connecting would occupy QEMU's single QMP
    client slot that the test itself wants to use.
    """
    started = time.monotonic()
    deadline = started + timeout
    path = Path(path)
    while True:
        try:
            if stat.S_ISSOCK(path.stat().st_mode):
                return time.monotonic() - started
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"QMP socket {path} did not appear within {timeout}s")
        time.sleep(0.02)


def agent_resync(path: Path | str, timeout: float) -> bool:
    """One readiness probe on a fresh connection: True once the agent echoes our sync id.

    Early in boot the agent is not yet reading, so anything sent waits in the
    virtio queue and is answered late (possibly on a later connection).  0xFF
    makes the agent drop any half-parsed input; guest-sync-delimited replies
    with 0xFF followed by {"return": id}, and everything before our id is stale.
    """
    sync_id = random.randrange(1, 2**31)
    request = b"\xff" + json.dumps(
        {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
    ).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(max(0.05, timeout))
        try:
            connection.connect(str(path))
            connection.sendall(request)
        except OSError:
            return False
        pending = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            connection.settimeout(remaining)
            try:
                chunk = connection.recv(65536)
            except (socket.timeout, OSError):
                return False
            if not chunk:
                return False
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    reply = json.loads(line.lstrip(b"\xff").decode("utf-8", "replace"))
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("return") == sync_id:
                    return True


def make_data_fs(path: Path, size: str = DATA_FS_SIZE) -> None:
    """An empty ext2 image (mke2fs from e2fsprogs on the host; well under 0.1 s).

    Built here rather than in the guest so the first boot costs nothing and
    the filesystem's contents are the same on every run.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", "-L", "labdata", "-m", "0", str(temporary), size],
        check=True, capture_output=True,
    )
    os.replace(temporary, path)


class LabGuest:
    """One lab VM: a QMP socket, an agent socket, a serial log and a qcow2 data disk in workdir."""

    def __init__(
        self,
        workdir: Path | str,
        name: str = "lab",
        memory_mb: int = 256,
        data_disk_size: str = "64M",
        extra_qemu_args: Sequence[str] = (),
        kernel: Path | None = None,
        initrd: Path | None = None,
        data_fs: bool = True,
        qemu_binary: str = QEMU_BINARY,
        data_fs_image: Path | str | None = None,
        data_fs_format: str = "raw",
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.qemu_binary = qemu_binary
        self.name = name
        self.memory_mb = memory_mb
        self.data_disk_size = data_disk_size
        self.extra_qemu_args = list(extra_qemu_args)
        self.kernel = kernel
        self.initrd = initrd
        self.qmp_path = self.workdir / f"{name}.qmp.sock"
        self.agent_path = self.workdir / f"{name}.qga.sock"
        self.console_log = self.workdir / f"{name}.console.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self.data_disk = self.workdir / f"{name}-data.qcow2"
        self.pidfile = self.workdir / f"{name}.pid"
        self.data_fs = self.workdir / f"{name}-fs.img" if data_fs else None
        if data_fs and data_fs_image is not None:  # another image holding the filesystem, e.g. a restored overlay
            self.data_fs = Path(data_fs_image).resolve()
        self.data_fs_format = data_fs_format
        self.data_fs_given = data_fs_image is not None
        self.data_fs_mountpoint = DATA_FS_MOUNTPOINT if data_fs else None
        self.data_disk_device_id = DATA_DISK_DEVICE_ID
        self.data_disk_node_name = DATA_DISK_NODE_NAME
        self.started_at: float | None = None
        self._process: subprocess.Popen | None = None
        for socket_path in (self.qmp_path, self.agent_path):
            if len(str(socket_path)) > UNIX_PATH_MAX:
                raise LabError(f"unix socket path too long ({len(str(socket_path))} > {UNIX_PATH_MAX}): {socket_path}")

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        """The QEMU pid, from our child or, for a guest started by another process, the pidfile."""
        if self._process is not None:
            return self._process.pid
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        pid = self.pid
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"qemu-system" in cmdline and str(self.qmp_path).encode() in cmdline

    def qemu_command(self, kernel: Path, initrd: Path) -> list[str]:
        cmdline = KERNEL_CMDLINE
        data_fs: list[str] = []
        if self.data_fs is not None:
            cmdline += f" lab.datafs={DATA_FS_GUEST_DEVICE}"
            data_fs = [
                "-device", "virtio-scsi-pci,id=scsi0",
                "-blockdev", f"driver=file,filename={self.data_fs},node-name={DATA_FS_FILE_NODE_NAME}",
                "-blockdev",
                f"driver={self.data_fs_format},file={DATA_FS_FILE_NODE_NAME},node-name={DATA_FS_NODE_NAME}",
                "-device", f"scsi-hd,bus=scsi0.0,drive={DATA_FS_NODE_NAME},id={DATA_FS_DEVICE_ID}",
            ]
        return [
            self.qemu_binary,
            "-name", self.name,
            "-M", "pc", "-accel", "tcg", "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-serial", f"file:{self.console_log}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev", f"socket,path={self.agent_path},server=on,wait=off,id=qga0",
            "-device", "virtio-serial,id=virtio-serial0",
            "-device", f"virtserialport,chardev=qga0,name={AGENT_CHANNEL_NAME}",
            "-blockdev", f"driver=file,filename={self.data_disk},node-name={DATA_DISK_FILE_NODE_NAME}",
            "-blockdev", f"driver=qcow2,file={DATA_DISK_FILE_NODE_NAME},node-name={DATA_DISK_NODE_NAME}",
            "-device", f"virtio-blk-pci,drive={DATA_DISK_NODE_NAME},id={DATA_DISK_DEVICE_ID}",
            *data_fs,
            "-pidfile", str(self.pidfile),
            *self.extra_qemu_args,
        ]

    def start(self) -> "LabGuest":
        """Launch QEMU in its own session (so it outlives a shell `up`) and wait for QMP."""
        if self.is_running():
            raise LabError(f"{self.name} already running with pid {self.pid}")
        kernel, initrd = self.kernel, self.initrd
        if kernel is None or initrd is None:
            kernel, initrd = lab_build.build()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in (self.qmp_path, self.agent_path, self.pidfile, self.console_log):
            stale.unlink(missing_ok=True)
        if not self.data_disk.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(self.data_disk), self.data_disk_size],
                check=True,
            )
        if self.data_fs is not None and not self.data_fs.exists() and not self.data_fs_given:
            make_data_fs(self.data_fs)
        with open(self.qemu_log, "wb") as qemu_log:
            self.started_at = time.monotonic()
            self._process = subprocess.Popen(
                self.qemu_command(kernel, initrd),
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        try:
            deadline = time.monotonic() + 20
            while not (self.qmp_path.exists() and self.agent_path.exists()):
                if self._process.poll() is not None:
                    raise LabError(f"QEMU exited with {self._process.returncode}: {self._diagnostics()}")
                if time.monotonic() > deadline:
                    raise LabError(f"QEMU sockets did not appear: {self._diagnostics()}")
                time.sleep(0.02)
            wait_qmp(self.qmp_path, timeout=5)
        except BaseException:
            self.stop()
            raise
        return self

    def incoming_twin(self, workdir: Path | str, name: str = "dest") -> "LabGuest":
        """A destination for migrating this guest: the same hardware and data disk, waiting (``-incoming defer``).

        Its own sockets and logs live in ``workdir``; the data disk and the
        data filesystem's image are shared, as on shared storage (QEMU hands the image over with the migration).
        Start it with start(), not ``with``: there is no agent to wait for
        until the guest has arrived.
        """
        twin = LabGuest(workdir, name=name, memory_mb=self.memory_mb, data_disk_size=self.data_disk_size,
                        extra_qemu_args=[*self.extra_qemu_args, "-incoming", "defer"],
                        kernel=self.kernel, initrd=self.initrd, data_fs=self.data_fs is not None)
        twin.data_disk = self.data_disk
        twin.data_fs = self.data_fs  # the guest has it mounted: the same image, never a fresh one
        return twin

    def wait_agent(self, timeout: float = 60.0, attempt_timeout: float = 2.0) -> float:
        """Block until qemu-ga answers a guest-sync-delimited; returns seconds this call waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.is_running():
                raise LabError(f"QEMU is not running: {self._diagnostics()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"guest agent not ready after {timeout}s: {self._diagnostics()}")
            if agent_resync(self.agent_path, min(attempt_timeout, remaining)):
                return time.monotonic() - started
            time.sleep(0.05)

    def seconds_since_start(self) -> float | None:
        return None if self.started_at is None else time.monotonic() - self.started_at

    def qmp_command(self, execute: str, arguments: dict | None = None, timeout: float = 10.0) -> dict:
        """One-off QMP command on a fresh connection (for teardown and simple helpers)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(self.qmp_path))
            stream = connection.makefile("rwb")
            while "event" in json.loads(stream.readline()):  # an event may come before a new client's greeting
                pass
            request = {"execute": execute, **({"arguments": arguments} if arguments else {})}
            for message in ({"execute": "qmp_capabilities"}, request):
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
                while True:
                    line = stream.readline()
                    if not line:
                        raise LabError(f"QMP closed while waiting for {message['execute']}")
                    reply = json.loads(line)
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise LabError(f"QMP {message['execute']} failed: {reply['error']}")
                    break
            return reply

    def stop(self, timeout: float = 10.0) -> None:
        """Ask QEMU to quit over QMP, then escalate to SIGTERM and SIGKILL; always clean up files."""
        try:
            if self.is_running():
                try:
                    self.qmp_command("quit", timeout=2)
                except (OSError, ValueError, LabError):
                    pass
                if not self._wait_exit(min(timeout, 5)):
                    self._signal(signal.SIGTERM)
                    if not self._wait_exit(timeout):
                        self._signal(signal.SIGKILL)
                        self._wait_exit(5)
            elif self._process is not None:
                self._process.wait(timeout=1)
        finally:
            self._process = None
            for leftover in (self.qmp_path, self.agent_path, self.pidfile):
                leftover.unlink(missing_ok=True)

    def destroy(self) -> None:
        """stop() and also delete the data disk and logs."""
        self.stop()
        for leftover in (self.data_disk, self.data_fs, self.console_log, self.qemu_log):
            if leftover is None:
                continue
            leftover.unlink(missing_ok=True)

    def _signal(self, signum: int) -> None:
        pid = self.pid
        if pid is not None and self.is_running():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None:
                try:
                    self._process.wait(timeout=max(0.01, min(0.1, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not self.is_running():
                return True
            time.sleep(0.05)
        return not self.is_running()

    def _diagnostics(self) -> str:
        parts = []
        for label, path in (("qemu", self.qemu_log), ("console", self.console_log)):
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"{label}: ...{text[-1500:]}")
        return " | ".join(parts) or "(no output)"

    def shell_exports(self) -> str:
        values = {
            "QMPCTL_QMP": self.qmp_path,
            "QMPCTL_AGENT": self.agent_path,
            "LAB_DATA_DISK": self.data_disk,
            "LAB_DATA_DISK_ID": self.data_disk_device_id,
            "LAB_DATA_DISK_NODE": self.data_disk_node_name,
            "LAB_DATA_FS": self.data_fs_mountpoint or "",
            "LAB_CONSOLE_LOG": self.console_log,
            "LAB_PID": self.pid,
        }
        return "".join(f"export {key}={shlex.quote(str(value))}\n" for key, value in values.items())

    def __enter__(self) -> "LabGuest":
        self.start()
        try:
            self.wait_agent()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- libvirt


def libvirt_domain_xml(
    name: str,
    kernel: Path | str,
    initrd: Path | str,
    disk_path: Path | str,
    agent_socket_path: Path | str | None = None,
    memory_mb: int = 256,
    console_log: Path | str | None = None,
    direct_agent_socket_path: Path | str | None = None,
    qmp_socket_path: Path | str | None = None,
    emulator: str = "/usr/bin/qemu-system-x86_64",
) -> str:
    """The same guest as a libvirt domain, so qmpctl can be tried against libvirt-managed QEMU.

    Without agent_socket_path libvirt picks the channel path itself (under
    /var/lib/libvirt/qemu/channel/target/); without console_log the serial
    console is a pty.  libvirtd stays connected to org.qemu.guest_agent.0 and
    to its own monitor, so a direct client needs direct_agent_socket_path (a
    second port, org.qemu.guest_agent.1, served by its own qemu-ga in the
    guest) and qmp_socket_path (an extra -qmp via <qemu:commandline>; QEMU
    creates it as the libvirt-qemu user, so its directory must be writable by
    that user).
    """

    def attr(value: object) -> str:
        return quoteattr(str(value))

    channel_source = f"\n      <source mode='bind' path={attr(agent_socket_path)}/>" if agent_socket_path else ""
    if console_log:
        serial = f"""    <serial type='file'>
      <source path={attr(console_log)}/>
      <target port='0'/>
    </serial>"""
    else:
        serial = """    <serial type='pty'>
      <target port='0'/>
    </serial>"""
    direct_channel = ""
    if direct_agent_socket_path:
        direct_channel = f"""
    <channel type='unix'>
      <source mode='bind' path={attr(direct_agent_socket_path)}/>
      <target type='virtio' name='{DIRECT_AGENT_CHANNEL_NAME}'/>
    </channel>"""
    extra_monitor = ""
    if qmp_socket_path:
        extra_monitor = f"""
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value={attr(f"unix:{qmp_socket_path},server=on,wait=off")}/>
  </qemu:commandline>"""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mb)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(KERNEL_CMDLINE)}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(emulator)}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={attr(disk_path)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>{channel_source}
      <target type='virtio' name='{AGENT_CHANNEL_NAME}'/>
    </channel>{direct_channel}
{serial}
    <video>
      <model type='none'/>
    </video>
    <memballoon model='none'/>
  </devices>{extra_monitor}
</domain>
"""


# ---------------------------------------------------------------------- CLI


def _command_up(args: argparse.Namespace) -> int:
    guest = LabGuest(Path(args.dir), name=args.name, memory_mb=args.memory, data_disk_size=args.disk_size)
    if guest.is_running():
        print(f"# {args.name} already running (pid {guest.pid})", file=sys.stderr)
    else:
        guest.start()
        try:
            waited = guest.wait_agent(timeout=args.timeout)
        except BaseException:
            guest.stop()
            raise
        print(f"# agent ready {guest.seconds_since_start():.1f}s after launch ({waited:.1f}s waiting)", file=sys.stderr)
    sys.stdout.write(guest.shell_exports())
    return 0


def _command_down(args: argparse.Namespace) -> int:
    guest = LabGuest(Path(args.dir), name=args.name)
    was_running = guest.is_running()
    guest.stop()
    if args.purge:
        guest.destroy()
    print(f"# {args.name} {'stopped' if was_running else 'was not running'}", file=sys.stderr)
    return 0


def _command_env(args: argparse.Namespace) -> int:
    guest = LabGuest(Path(args.dir), name=args.name)
    if not guest.is_running():
        print(f"# {args.name} is not running", file=sys.stderr)
        return 1
    sys.stdout.write(guest.shell_exports())
    return 0


def _command_xml(args: argparse.Namespace) -> int:
    kernel, initrd = lab_build.build()
    sys.stdout.write(libvirt_domain_xml(
        args.name, kernel, initrd, args.disk, args.agent_socket,
        memory_mb=args.memory, console_log=args.console_log,
        direct_agent_socket_path=args.direct_agent_socket, qmp_socket_path=args.qmp_socket,
    ))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the qmpctl lab guest.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="boot detached, wait for the agent, print export lines")
    down = commands.add_parser("down", help="stop the guest started by `up`")
    env = commands.add_parser("env", help="print export lines for a running guest")
    for sub in (up, down, env):
        sub.add_argument("dir", help="directory holding sockets, logs and the data disk")
        sub.add_argument("--name", default="lab")
    up.add_argument("--memory", type=int, default=256, help="MiB")
    up.add_argument("--disk-size", default="64M")
    up.add_argument("--timeout", type=float, default=120.0)
    down.add_argument("--purge", action="store_true", help="also delete the data disk and logs")
    xml = commands.add_parser("libvirt-xml", help="print a libvirt domain for the lab guest")
    xml.add_argument("name")
    xml.add_argument("disk")
    xml.add_argument("--agent-socket")
    xml.add_argument("--console-log")
    xml.add_argument("--direct-agent-socket", help="second agent port for clients other than libvirtd")
    xml.add_argument("--qmp-socket", help="extra QMP monitor for clients other than libvirtd")
    xml.add_argument("--memory", type=int, default=256, help="MiB")
    args = parser.parse_args(argv)
    handlers = {"up": _command_up, "down": _command_down, "env": _command_env, "libvirt-xml": _command_xml}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
