"""restore CHAIN --serve: a backup point over NBD, read-only, gone without a trace at the end."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.disks import write_pattern
from support.qemu import free_tcp_port
from support.waits import alive, descendants, interrupt_twice

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def chain_of_two(cli, vm, tmp_path: Path) -> str:
    """A chain whose point 1 holds 0x11 at 0 and point 2 also 0x77 at 4 MiB."""
    write_pattern(vm, [(0x11, 0, MiB)])
    first = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    assert first.code == 0, first
    write_pattern(vm, [(0x77, 4 * MiB, MiB)])
    second = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    assert second.code == 0, second
    return json.loads(first.out)["return"]["chain"]


def sums(chain: str) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(chain).iterdir())}


def started(cli, qemu_build, tmp_path: Path, *arguments: str) -> tuple[subprocess.Popen, dict]:
    """qmpctl restore ... --serve running, and the JSON line it printed once serving."""
    env = {**qemu_build.tools_env(), "TMPDIR": str(private_tmp(tmp_path))}
    child = cli.popen("restore", *arguments, env=env)
    line = child.stdout.readline()
    if not line:
        _, err = child.communicate(timeout=30)
        raise AssertionError(f"exit {child.returncode}: {err.decode()}")
    return child, json.loads(line)


def private_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir(exist_ok=True)
    return folder


def gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_served_point_reads_as_its_restore_and_ctrl_c_ends_it(cli, vm_factory, qemu_build, tmp_path):
    vm = vm_factory(disk_size="16M")
    chain = chain_of_two(cli, vm, tmp_path)
    before = sums(chain)
    restored = cli("restore", chain, str(tmp_path / "p1.qcow2"), "--point", "1", "--progress", "none")
    assert restored.code == 0, restored
    sock = tmp_path / "p1.sock"
    child, served = started(cli, qemu_build, tmp_path, chain, "--serve", f"unix:{sock}", "--point", "1")
    try:
        assert served["uri"] == f"nbd+unix:///disk?socket={sock}"
        assert served["point"] == 1 and served["writable"] is False
        compared = subprocess.run([qemu_build.qemu_img, "compare", "-f", "qcow2", "-F", "raw",
                                   str(tmp_path / "p1.qcow2"), served["uri"]], capture_output=True, text=True)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        latest = subprocess.run([qemu_build.qemu_img, "compare", "-U", "-f", "qcow2", "-F", "raw", str(vm.disk),
                                 served["uri"]], capture_output=True, text=True)
        assert latest.returncode == 1  # point 1 lacks what point 2 holds
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert gone(served["pid"]) and not sock.exists()
    assert list(private_tmp(tmp_path).iterdir()) == []
    assert sums(chain) == before


def test_a_writable_session_that_wrote_leaves_the_chain_unchanged(cli, vm_factory, qemu_build, tmp_path):
    vm = vm_factory(disk_size="16M")
    chain = chain_of_two(cli, vm, tmp_path)
    before = sums(chain)
    port = free_tcp_port()
    child, served = started(cli, qemu_build, tmp_path, chain, "--serve", f"tcp:127.0.0.1:{port}", "--writable")
    try:
        assert served["uri"] == f"nbd://127.0.0.1:{port}/disk" and served["writable"] is True
        assert [path.name for path in private_tmp(tmp_path).iterdir()][0].startswith("qmpctl-serve-")
        wrote = subprocess.run([qemu_build.tool("qemu-io"), "-f", "raw", "-c", "write -P 0x5a 0 2M",
                                "-c", "read -P 0x5a 0 2M", "-c", "read -P 0x77 4M 1M", served["uri"]],
                               capture_output=True, text=True)
        assert wrote.returncode == 0 and "verification failed" not in wrote.stdout, wrote.stdout + wrote.stderr
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert gone(served["pid"]) and list(private_tmp(tmp_path).iterdir()) == []
    assert sums(chain) == before


def test_ctrl_c_twice_leaves_no_process_socket_or_overlay(cli, vm_factory, qemu_build, tmp_path):
    vm = vm_factory(disk_size="16M")
    chain = chain_of_two(cli, vm, tmp_path)
    sock = tmp_path / "w.sock"
    child, served = started(cli, qemu_build, tmp_path, chain, "--serve", str(f"unix:{sock}"), "--writable")
    below = descendants(child.pid)
    assert served["pid"] in below
    interrupt_twice(child)  # the second while the first one's cleanup runs
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert gone(served["pid"]) and not sock.exists()
    assert [pid for pid in below if alive(pid)] == []
    assert list(private_tmp(tmp_path).iterdir()) == []


def test_for_ends_the_session_by_itself(cli, vm_factory, qemu_build, tmp_path):
    vm = vm_factory(disk_size="16M")
    chain = chain_of_two(cli, vm, tmp_path)
    sock = tmp_path / "s.sock"
    result = cli("restore", chain, "--serve", f"unix:{sock}", "--for", "1", env=qemu_build.tools_env())
    assert result.code == 0, result
    assert json.loads(result.out)["uri"].endswith(f"socket={sock}") and not sock.exists()


@pytest.mark.one_qemu
def test_serve_refuses_what_it_cannot_do_safely(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    chain = chain_of_two(cli, vm, tmp_path)
    taken = tmp_path / "taken.sock"
    taken.write_bytes(b"")
    for arguments, said in (
            (("--serve", "tcp:0.0.0.0:10809"), "not a loopback address"),
            (("--serve", f"unix:{taken}"), "exists"),
            (("--serve", "nbd:x"), "unix:PATH or tcp:HOST:PORT"),
            (("--serve", f"unix:{tmp_path}/x.sock", "--force"), "--force"),
            ((str(tmp_path / "t.qcow2"), "--serve", f"unix:{tmp_path}/x.sock"), "TARGET"),
            (("--writable",), "--writable goes with --serve"),
            (("--serve", f"unix:{tmp_path}/x.sock", "--point", "3"), "backups 1 to 2")):
        result = cli("restore", chain, *arguments)
        assert result.code == 2 and said in result.err, (arguments, result)
    assert taken.read_bytes() == b""
    (Path(chain) / "0001-full.qcow2").write_bytes(b"broken")
    result = cli("restore", chain, "--serve", f"unix:{tmp_path}/x.sock")
    assert result.code == 6 and "0001-full.qcow2" in result.err and not (tmp_path / "x.sock").exists()
