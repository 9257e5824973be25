"""Agent sessions that break: a frozen or dying qemu-ga, and channels that close or babble.

tests/fakes/test_agent_channel_leftovers.py and tests/qemu/test_agent.py cover stale replies, foreign
ids, a restart between calls and disabled commands; this module covers the
agent failing *during* a call, and output that never becomes a reply.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from support.fakes import FakeServer, Peer
from support.qga import HostAgent, answer, answer_sync
from support.waits import sleeping, wait_for, wait_for_child, wait_until_blocked_on_a_socket

pytestmark = pytest.mark.fault

TIMEOUT = 1
BOUND = TIMEOUT + 3


def ping(cli, path, *extra: str):
    return cli("agent", "ping", "-a", str(path), "--timeout", str(TIMEOUT), *extra)


@pytest.fixture
def host_agent(tmp_path, qemu_build):
    """The real qemu-ga of each build (the qemu_build fixture checks it is installed)."""
    agent = HostAgent(tmp_path / "agent", binary=qemu_build.qemu_ga).start()
    yield agent
    if agent.proc and agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGCONT)
    agent.stop()


@pytest.mark.agent
def test_frozen_agent_times_out_then_recovers(cli, host_agent):
    """A stopped qemu-ga still accepts (kernel backlog): only the deadline tells. After SIGCONT it answers again."""
    host_agent.proc.send_signal(signal.SIGSTOP)
    frozen = ping(cli, host_agent.path)
    assert frozen.code == 4, frozen
    assert "guest agent is not responding" in frozen.err
    assert TIMEOUT <= frozen.seconds < BOUND
    host_agent.proc.send_signal(signal.SIGCONT)
    thawed = ping(cli, host_agent.path, "--timeout", "5")
    assert thawed.code == 0, thawed
    assert json.loads(thawed.out) == {"return": {}}


@pytest.mark.agent
def test_agent_killed_during_a_call_is_a_fast_protocol_error(cli, host_agent):
    host_agent.proc.send_signal(signal.SIGSTOP)
    proc = cli.popen("agent", "ping", "-a", str(host_agent.path), "--timeout", "30")
    wait_until_blocked_on_a_socket(proc.pid)
    host_agent.proc.kill()
    host_agent.proc.wait(timeout=5)
    started = time.monotonic()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 5, err
    assert b"guest-sync-delimited" in err
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("stage, phrase", [
    ("during the sync", "connection closed"),
    ("before the reply", "reply to guest-ping"),
])
def test_agent_closing_the_channel_is_protocol_error(cli, tmp_path, stage, phrase):
    def script(peer: Peer) -> None:
        if stage == "during the sync":
            peer.read_request()
            peer.send(b"\xff{\"return\": ")
        else:
            answer_sync(peer)
            peer.read_request()
        peer.sock.close()

    with FakeServer(tmp_path / "qga.sock", script):
        result = ping(cli, tmp_path / "qga.sock")
    assert result.code == 5, result
    assert "connection closed" in result.err and phrase in result.err
    assert result.seconds < BOUND


def test_agent_that_hangs_on_the_command_times_out_with_the_hint(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        peer.read_request()

    with FakeServer(tmp_path / "qga.sock", script):
        result = ping(cli, tmp_path / "qga.sock")
    assert result.code == 4, result
    assert "reply to guest-ping" in result.err and "not responding" in result.err
    assert TIMEOUT <= result.seconds < BOUND


def test_garbage_instead_of_the_reply_is_protocol_error(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        peer.read_request()
        peer.send(b"Welcome to the serial console\n")

    with FakeServer(tmp_path / "qga.sock", script):
        result = ping(cli, tmp_path / "qga.sock")
    assert result.code == 5, result
    assert "not JSON" in result.err and "serial console" in result.err


def test_endless_lines_without_a_sync_byte_are_bounded_by_the_deadline(cli, tmp_path):
    """Something else on the channel (a console, a log) that never answers the sync: a timeout, not a hang."""
    stop = threading.Event()

    def script(peer: Peer) -> None:
        peer.read_request()
        while not stop.is_set():
            peer.sock.sendall(b"[    1.234] kernel: something happened\n" * 100)
            time.sleep(0.01)

    with FakeServer(tmp_path / "qga.sock", script):
        result = ping(cli, tmp_path / "qga.sock")
        stop.set()
    assert result.code == 4, result
    assert "guest-sync-delimited" in result.err
    assert TIMEOUT <= result.seconds < BOUND


def test_endless_bytes_without_a_line_end_hit_the_size_cap(cli, tmp_path):
    """Memory stays bounded: 64 MiB without a line end is a protocol error, however fast it comes."""
    def script(peer: Peer) -> None:
        peer.read_request()
        chunk = b"\xff" + b"x" * (1024 * 1024)
        for _ in range(70):
            peer.sock.sendall(chunk)

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "ping", "-a", str(tmp_path / "qga.sock"), "--timeout", "20")
    assert result.code == 5, result
    assert "64 MiB" in result.err
    assert result.seconds < 20


def test_agent_error_reply_is_vm_error(cli, tmp_path):
    failure = {"class": "GenericError", "desc": "Guest agent command failed, error was 'boom'"}

    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-ping", error=failure)

    with FakeServer(tmp_path / "qga.sock", script):
        result = ping(cli, tmp_path / "qga.sock")
    assert result.code == 1, result
    assert "GenericError: Guest agent command failed, error was 'boom'" in result.err


@pytest.mark.agent
def test_agent_restarted_while_exec_waits_is_125_at_once(cli, host_agent):
    """qemu-ga restarting mid-exec (an upgrade in the guest): exec ends at once, exit 125, and says where."""
    proc = cli.popen("agent", "exec", "-a", str(host_agent.path), "--timeout", "30", "--", "sleep", "5")
    wait_for_child(host_agent.proc.pid, "sleep")  # guest-exec has started the program
    wait_for(lambda: sleeping(proc.pid), "qmpctl pausing between guest-exec-status polls")
    host_agent.restart()
    restarted = time.monotonic()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 125, err
    assert b"guest-exec-status" in err and (b"closed" in err or b"reset" in err)
    assert time.monotonic() - restarted < 3
    again = ping(cli, host_agent.path, "--timeout", "5")
    assert again.code == 0, again


@pytest.mark.agent
def test_agent_stopped_mid_exec_is_124_naming_the_pid(cli, host_agent):
    """qemu-ga (or the QEMU carrying its channel) stopped while the program runs: exit 124, not 125."""
    proc = cli.popen("agent", "exec", "-a", str(host_agent.path), "--timeout", "1", "--", "sleep", "5")
    wait_for_child(host_agent.proc.pid, "sleep")  # guest-exec has started the program
    # ... and its reply, with the pid, has reached qmpctl: it pauses between guest-exec-status polls.
    # (Stopping the agent between starting the program and replying is the other case: pid unknown.)
    wait_for(lambda: sleeping(proc.pid), "qmpctl pausing between guest-exec-status polls")
    host_agent.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        host_agent.proc.send_signal(signal.SIGCONT)
    assert proc.returncode == 124, err
    assert b"may still be running" in err and b"agent exec-status" in err
    assert b"is qemu-ga running" not in err
    assert time.monotonic() - stopped < BOUND


@pytest.mark.agent
def test_a_signal_as_a_guest_file_block_ends_still_closes_the_handle(host_agent, tmp_path, monkeypatch):
    """Ctrl-C landing between the end of the block and the close: the handle is closed all the same.

    A real signal cannot be aimed at that moment, so the first close raises the KeyboardInterrupt the
    signal handler would; the agent is real, and afterwards it no longer knows the handle.
    """
    from qmpctl.guest import files as guest_files
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.errors import VmError
    from qmpctl.wire.request import Request
    from qmpctl.wire.targets import AGENT, SocketTarget

    source = tmp_path / "file.txt"
    source.write_text("hello\n")
    real_close = guest_files.GuestFile.close
    closes = []

    def interrupted_first(self, deadline):
        closes.append(self.handle)
        if len(closes) == 1:
            raise KeyboardInterrupt
        return real_close(self, deadline)

    monkeypatch.setattr(guest_files.GuestFile, "close", interrupted_first)
    session = SocketTarget(parse_address(str(host_agent.path)), AGENT).open(Deadline(10))
    try:
        with pytest.raises(KeyboardInterrupt):
            with guest_files.open_guest_file(session, str(source), "r", Deadline(10)) as guest_file:
                handle = guest_file.handle
        with pytest.raises(VmError):  # no such handle any more
            session.execute(Request("guest-file-read", {"handle": handle, "count": 1}, protocol="qga"), Deadline(10))
    finally:
        session.close()
    assert closes == [handle, handle]
