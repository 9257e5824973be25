"""Socket paths and TCP ports that cannot be a working monitor: exit 3 naming the cause, or 4 when busy.

No QEMU needed: every case is a filesystem object or a listener the test
makes itself. Each result must arrive within --timeout plus a margin.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.fakes import GREETING, FakeServer, FullListenQueue, Peer
from support.waits import sleeping, wait_for

pytestmark = pytest.mark.fault

TIMEOUT = 2
BOUND = TIMEOUT + 3


def status(cli, address: str | Path, *extra: str):
    return cli("status", "-s", str(address), "--timeout", str(TIMEOUT), *extra)


def dangling_socket(path: Path) -> Path:
    """A socket file whose listener is gone: what a SIGKILLed QEMU leaves behind."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    listener.close()
    return path


def test_regular_file_is_not_a_socket(cli, tmp_path):
    path = tmp_path / "vm.log"
    path.write_text("not a socket\n")
    result = status(cli, path)
    assert result.code == 3, result
    assert f"{path} is not a socket" in result.err
    assert result.seconds < BOUND


def test_directory_is_not_a_socket(cli, tmp_path):
    result = status(cli, tmp_path)
    assert result.code == 3, result
    assert f"{tmp_path} is a directory, not a socket" in result.err


def test_dangling_socket_is_refused_and_called_stale(cli, tmp_path):
    path = dangling_socket(tmp_path / "qmp.sock")
    result = status(cli, path)
    assert result.code == 3, result
    assert "connection refused" in result.err and "stale socket" in result.err and str(path) in result.err
    assert result.seconds < BOUND


def test_missing_parent_directory(cli, tmp_path):
    path = tmp_path / "no-such-dir" / "qmp.sock"
    result = status(cli, path)
    assert result.code == 3, result
    assert f"no such socket: {path}" in result.err


def test_socket_path_too_long_for_unix_sockets(cli, tmp_path):
    path = tmp_path / ("d" * 60) / ("s" * 60 + ".sock")
    result = status(cli, path)
    assert result.code == 3, result
    assert "socket path too long" in result.err and "the limit is 107" in result.err


def run_without_root_privileges(cli, *args: str) -> subprocess.CompletedProcess:
    """Run qmpctl as root but without the capabilities that bypass file permissions."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cli.argv(*args)]
    return subprocess.run(command, capture_output=True, text=True, env=cli.env(), timeout=30)


def test_socket_without_permission(cli, tmp_path):
    """A socket owned by another user with mode 0600, like libvirt's or another user's VM."""
    with FakeServer(tmp_path / "qmp.sock", None) as server:
        os.chown(server.path, 65534, 65534)
        os.chmod(server.path, 0o600)
        started = time.monotonic()
        result = run_without_root_privileges(cli, "status", "-s", str(server.path), "--timeout", str(TIMEOUT))
        assert server.connections == 0
    assert result.returncode == 3, result
    assert f"permission denied on {server.path}" in result.stderr
    assert time.monotonic() - started < BOUND


def test_directory_without_permission(cli, tmp_path):
    """The socket's folder cannot be searched: the message still says permission, not 'no such socket'."""
    folder = tmp_path / "private"
    folder.mkdir()
    with FakeServer(folder / "qmp.sock", None) as server:
        os.chown(folder, 65534, 65534)
        os.chmod(folder, 0o700)
        result = run_without_root_privileges(cli, "status", "-s", str(server.path), "--timeout", str(TIMEOUT))
        assert server.connections == 0
    assert result.returncode == 3, result
    assert f"permission denied on {server.path}" in result.stderr


def test_unix_listen_queue_full_is_busy_not_unreachable(cli, tmp_path):
    """One client served and more queued: the kernel refuses at once (EAGAIN); that is a busy monitor."""
    with FullListenQueue(tmp_path / "qmp.sock") as queue:
        result = status(cli, queue.address)
    assert result.code == 4, result
    assert "listen queue is full" in result.err and "busy" in result.err
    assert TIMEOUT <= result.seconds < BOUND


def test_unix_listen_queue_that_drains_in_time_is_not_an_error(cli, tmp_path):
    """A queue that frees up before the deadline lets qmpctl in: it retried instead of failing."""
    with FullListenQueue(tmp_path / "qmp.sock") as queue:
        popen = cli.popen("status", "-s", str(queue.path), "--timeout", "5")
        wait_for(lambda: sleeping(popen.pid), "qmpctl turned away by the full queue, pausing to retry")
        for client in queue.queued:
            client.close()
        served = threading.Thread(target=serve_first_real_client, args=(queue.listener,), daemon=True)
        served.start()
        out, err = popen.communicate(timeout=10)
    assert popen.returncode == 0, err
    assert b'"running":true' in out


def serve_first_real_client(listener: socket.socket) -> None:
    """Accept until a client that speaks (queued ones that already left are skipped) and answer its status."""
    listener.settimeout(10)
    while True:
        conn, _ = listener.accept()
        with conn:
            peer = Peer(conn, bytearray())
            try:
                peer.send(GREETING)
                negotiation = peer.read_request()
            except OSError:
                continue
            if not negotiation:
                continue
            peer.reply(negotiation)
            peer.reply(peer.read_request(), {"status": "running", "running": True})
            return


def test_tcp_port_with_nothing_listening(cli):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = status(cli, f"tcp:127.0.0.1:{port}")
    assert result.code == 3, result
    assert f"connection refused by tcp:127.0.0.1:{port} (nothing listening?)" in result.err
    assert result.seconds < BOUND


def test_tcp_listen_queue_full_connect_times_out(cli):
    """Loopback SYNs to a full accept queue are dropped: only the deadline ends connect()."""
    with FullListenQueue() as queue:
        result = status(cli, queue.address)
    assert result.code == 4, result
    assert f"waiting for a connection to {queue.address}" in result.err
    assert TIMEOUT <= result.seconds < BOUND


def test_tcp_listener_that_never_greets_is_busy(cli):
    """Accepted by the kernel but never served: the greeting wait says busy."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        result = status(cli, f"127.0.0.1:{port}")
    assert result.code == 4, result
    assert "QMP greeting" in result.err and "busy" in result.err
    assert TIMEOUT <= result.seconds < BOUND


def test_agent_socket_faults_are_reported_the_same_way(cli, tmp_path):
    """The agent path goes through the same transport: a dangling channel socket is exit 3."""
    path = dangling_socket(tmp_path / "qga.sock")
    result = cli("agent", "ping", "-a", str(path), "--timeout", str(TIMEOUT))
    assert result.code == 3, result
    assert "connection refused" in result.err
