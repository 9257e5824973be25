"""Protocol faults real QEMU cannot be made to show, against a scripted fake monitor."""

from __future__ import annotations

import json

import pytest

from support.fakes import FakeServer, Peer

pytestmark = pytest.mark.fault


def status(cli, path, *extra):
    return cli("status", "-s", str(path), "--timeout", "2", *extra)


def test_no_greeting_is_timeout_saying_busy(cli, tmp_path):
    with FakeServer(tmp_path / "m.sock", None):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 4, result
    assert "busy" in result.err and "greeting" in result.err
    assert result.seconds < 2 + 3


def test_garbage_instead_of_greeting_is_protocol_error(cli, tmp_path):
    with FakeServer(tmp_path / "m.sock", lambda peer: peer.send(b"SSH-2.0-OpenSSH\r\n")):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert "not JSON" in result.err


def test_stale_foreign_reply_and_events_are_not_taken_for_the_answer(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        request = peer.read_request()
        peer.send({"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "created"},
                   "timestamp": {"seconds": 1, "microseconds": 2}})
        peer.send({"return": {"status": "stale"}, "id": "someone-else"})
        peer.send({"return": {"status": "paused", "running": False}, "id": request["id"]})

    with FakeServer(tmp_path / "m.sock", script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 0, result
    assert json.loads(result.out) == {"return": {"status": "paused", "running": False}}


def test_connection_closed_mid_reply_is_protocol_error(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_request()
        peer.send(b'{"return": {"status": "runn')
        peer.sock.close()

    with FakeServer(tmp_path / "m.sock", script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert "closed" in result.err


def test_endless_line_is_protocol_error_not_memory_blowup(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_request()
        chunk = b"x" * (1024 * 1024)
        for _ in range(70):
            peer.sock.sendall(chunk)

    with FakeServer(tmp_path / "m.sock", script):
        result = cli("status", "-s", str(tmp_path / "m.sock"), "--timeout", "20")
    assert result.code == 5, result
    assert "64 MiB" in result.err


def test_idless_error_is_protocol_error(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_request()
        peer.send({"error": {"class": "GenericError", "desc": "JSON parse error"}})

    with FakeServer(tmp_path / "m.sock", script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert "no id" in result.err


def test_not_a_qmp_monitor(cli, tmp_path):
    with FakeServer(tmp_path / "m.sock", lambda peer: peer.send({"hello": "world"})):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert "not a QMP monitor" in result.err


def test_invalid_input_sends_nothing(cli, tmp_path):
    with FakeServer(tmp_path / "m.sock", lambda peer: peer.handshake()) as server:
        result = cli("monitor-command", "-s", str(tmp_path / "m.sock"), '{"execute": "stop", "bogus": 1}')
        assert result.code == 2, result
        assert "bogus" in result.err
        assert server.connections == 0 and server.received == b""
