#!/usr/bin/env python3
"""End-to-end smoke check of the lab guest using raw sockets only (no qmpctl).

It proves the lab itself works, so a failing qmpctl test can be blamed on
qmpctl rather than on the guest: agent commands, guest-exec with output,
virtio-blk PCI hotplug/unplug seen from inside the guest, and guest-shutdown.

    python3 tests/lab/smoke.py            # boots its own guest in a temp dir
    python3 tests/lab/smoke.py --keep DIR # use DIR and leave logs behind
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable



def _load_guest_module():
    """By file path, so a `guest` module elsewhere on sys.path cannot shadow it."""
    if "qmpctl_lab_guest" not in sys.modules:
        spec = importlib.util.spec_from_file_location("qmpctl_lab_guest",
                                                      Path(__file__).resolve().with_name("guest.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["qmpctl_lab_guest"] = module
        spec.loader.exec_module(module)
    return sys.modules["qmpctl_lab_guest"]


LabGuest = _load_guest_module().LabGuest


class AgentClient:
    """qemu-ga speaks line-delimited JSON with no greeting; a resync discards stale replies first."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.settimeout(timeout)
        self.connection.connect(str(path))
        self.buffer = b""
        self.resync()

    def _read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.connection.recv(65536)
            if not chunk:
                raise ConnectionError("agent closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.lstrip(b"\xff")

    def resync(self) -> None:
        sync_id = random.randrange(1, 2**31)
        self.connection.sendall(b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n")
        while True:
            try:
                reply = json.loads(self._read_line())
            except ValueError:
                continue
            if reply.get("return") == sync_id:
                return

    def send(self, execute: str, arguments: dict | None = None) -> None:
        message: dict[str, Any] = {"execute": execute}
        if arguments:
            message["arguments"] = arguments
        self.connection.sendall(json.dumps(message).encode() + b"\n")

    def execute(self, execute: str, arguments: dict | None = None) -> Any:
        self.send(execute, arguments)
        reply = json.loads(self._read_line())
        if "error" in reply:
            raise RuntimeError(f"{execute}: {reply['error']}")
        return reply["return"]

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str, str]:
        """guest-exec + guest-exec-status polling; returns (exitcode, stdout, stderr)."""
        started = self.execute("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
        deadline = time.monotonic() + timeout
        while True:
            status = self.execute("guest-exec-status", {"pid": started["pid"]})
            if status["exited"]:
                decode = lambda key, status=status: base64.b64decode(status.get(key, "")).decode(  # noqa: E731
                    errors="replace")
                return status.get("exitcode", -1), decode("out-data"), decode("err-data")
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest-exec {argv} still running after {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        self.connection.close()


class QmpClient:
    """Minimal QMP: greeting, capabilities negotiation, commands, and events kept for later checks."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.settimeout(timeout)
        self.connection.connect(str(path))
        self.stream = self.connection.makefile("rb")
        self.events: list[dict] = []
        while "event" in (greeting := self._read()):  # an event may come before a new client's greeting
            self.events.append(greeting)
        assert "QMP" in greeting, greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.stream.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        return json.loads(line)

    def execute(self, execute: str, arguments: dict | None = None) -> Any:
        message: dict[str, Any] = {"execute": execute}
        if arguments:
            message["arguments"] = arguments
        self.connection.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{execute}: {reply['error']}")
            return reply["return"]

    def wait_event(self, name: str, timeout: float, match: Callable[[dict], bool] = lambda e: True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and match(event):
                    self.events.remove(event)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {name} event within {timeout}s")
            self.connection.settimeout(remaining)
            try:
                self.events.append(self._read())
            except socket.timeout:
                continue

    def close(self) -> None:
        self.stream.close()
        self.connection.close()


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, title: str, check: Callable[[], str | None]) -> None:
        started = time.monotonic()
        try:
            detail = check() or ""
        except Exception as error:  # a smoke report should list every failure, not stop at the first
            self.failed += 1
            print(f"FAIL {title}: {type(error).__name__}: {error}", flush=True)
            return
        self.passed += 1
        print(f"ok   {title} ({time.monotonic() - started:.2f}s) {detail}".rstrip(), flush=True)


def smoke(workdir: Path) -> int:
    guest = LabGuest(workdir, name="smoke")
    checks = Checks()
    launched = time.monotonic()
    guest.start()
    try:
        waited = guest.wait_agent(timeout=120)
        print(f"agent ready {time.monotonic() - launched:.2f}s after launch (wait_agent {waited:.2f}s)")
        agent = AgentClient(guest.agent_path)
        qmp = QmpClient(guest.qmp_path)

        checks.run("guest-ping", lambda: str(agent.execute("guest-ping")))

        def info() -> str:
            result = agent.execute("guest-info")
            assert result["version"], result
            return f"version {result['version']}, {len(result['supported_commands'])} commands"
        checks.run("guest-info", info)

        def interfaces() -> str:
            result = agent.execute("guest-network-get-interfaces")
            names = [entry["name"] for entry in result]
            assert "lo" in names, names
            return f"{names}"
        checks.run("guest-network-get-interfaces", interfaces)

        def uname() -> str:
            code, out, err = agent.run(["uname", "-a"])
            assert code == 0 and out.startswith("Linux"), (code, out, err)
            return out.strip()
        checks.run("guest-exec uname -a", uname)

        def exit_codes() -> str:
            assert agent.run(["false"])[0] == 1
            code, out, _ = agent.run(["sh", "-c", "echo hi; exit 3"])
            assert (code, out) == (3, "hi\n"), (code, out)
            return "false -> 1, sh -c 'exit 3' -> 3"
        checks.run("guest-exec exit codes", exit_codes)

        checks.run("data disk is /dev/vda", lambda: _assert_in("vda", agent.run(["ls", "/dev"])[1].split()))

        hot_disk = workdir / "smoke-hot.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(hot_disk), "16M"], check=True)

        def hotplug() -> str:
            qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "hot0-fmt",
                                         "file": {"driver": "file", "filename": str(hot_disk),
                                                  "node-name": "hot0-file"}})
            qmp.execute("device_add", {"driver": "virtio-blk-pci", "drive": "hot0-fmt", "id": "hot0"})
            added = time.monotonic()
            while "vdb" not in agent.run(["ls", "/dev"])[1].split():
                if time.monotonic() - added > 20:
                    raise TimeoutError("vdb never appeared in the guest")
                time.sleep(0.1)
            return f"/dev/vdb after {time.monotonic() - added:.2f}s"
        checks.run("hotplug virtio-blk -> /dev/vdb", hotplug)

        def unplug() -> str:
            qmp.execute("device_del", {"id": "hot0"})
            asked = time.monotonic()
            qmp.wait_event("DEVICE_DELETED", 10, lambda e: e.get("data", {}).get("device") == "hot0")
            took = time.monotonic() - asked
            qmp.execute("blockdev-del", {"node-name": "hot0-fmt"})
            assert "vdb" not in agent.run(["ls", "/dev"])[1].split()
            return f"DEVICE_DELETED after {took:.2f}s"
        checks.run("device_del -> DEVICE_DELETED", unplug)

        def shutdown() -> str:
            agent.send("guest-shutdown")  # no reply on success: the guest is gone
            asked = time.monotonic()
            qmp.wait_event("SHUTDOWN", 30)
            if not guest._wait_exit(30):
                raise TimeoutError("QEMU still running after SHUTDOWN")
            return f"QEMU exited {time.monotonic() - asked:.2f}s after guest-shutdown"
        checks.run("guest-shutdown powers off", shutdown)
        agent.close()
        qmp.close()
    finally:
        guest.stop()
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 else 1


def _assert_in(item: str, collection: list[str]) -> str:
    assert item in collection, collection
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Raw-socket smoke test of the lab guest.")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep logs/disks (default: temp dir)")
    args = parser.parse_args(argv)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        return smoke(Path(args.keep))
    with tempfile.TemporaryDirectory(prefix="qmpctl-lab-smoke-") as workdir:
        return smoke(Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
