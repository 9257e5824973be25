"""A misbehaving QMP peer, scripted: each fault ends in the right exit code, a clear message, in bounded time.

These complement tests/fakes/test_core_faults.py (no greeting, garbage greeting, a
foreign reply, closed mid-reply, endless line, id-less error) with the rest of
what a monitor can do to a one-shot client.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from support.fakes import EVENT, GREETING, FakeServer, Peer, send_slowly
from support.qemu import RawQmp

pytestmark = pytest.mark.fault

TIMEOUT = 2
BOUND = TIMEOUT + 3
"""Every fault must end within --timeout plus process start-up and a margin."""


def status(cli, path, *extra: str):
    return cli("status", "-s", str(path), "--timeout", str(TIMEOUT), *extra)


def serve(tmp_path, script):
    return FakeServer(tmp_path / "m.sock", script)


def answer_status(peer: Peer, request: dict) -> None:
    peer.reply(request, {"status": "paused", "running": False})


def test_events_before_the_greeting_are_not_taken_for_it(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.send(EVENT)
        peer.send(EVENT)
        peer.handshake()
        answer_status(peer, peer.read_request())

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 0, result
    assert json.loads(result.out) == {"return": {"status": "paused", "running": False}}


def test_the_tests_own_raw_client_skips_them_too(tmp_path):
    """QEMU does this for real: a job's event can reach a new client of a once-negotiated monitor first."""
    def script(peer: Peer) -> None:
        peer.send(EVENT)
        peer.handshake()
        peer.reply(peer.read_request(), [])

    with serve(tmp_path, script), RawQmp(tmp_path / "m.sock") as qmp:
        assert qmp.cmd("query-jobs") == []
        assert qmp.events == [EVENT]


def test_events_before_and_between_replies_are_skipped(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.send(GREETING)
        negotiation = peer.read_request()
        peer.send(EVENT)
        peer.reply(negotiation)
        peer.send(EVENT)
        request = peer.read_request()
        for _ in range(50):
            peer.send(EVENT)
        answer_status(peer, request)
        peer.send(EVENT)

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["status"] == "paused"
    assert result.out.count("\n") == 1


def test_foreign_error_reply_is_not_ours(cli, tmp_path):
    """An error carrying another client's id must not fail our command."""
    def script(peer: Peer) -> None:
        peer.handshake()
        request = peer.read_request()
        peer.send({"error": {"class": "GenericError", "desc": "not yours"}, "id": "libvirt-7"})
        answer_status(peer, request)

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 0, result
    assert "not yours" not in result.err


def test_reply_split_into_one_byte_writes(cli, tmp_path):
    def script(peer: Peer) -> None:
        send_slowly(peer, json.dumps(GREETING).encode() + b"\r\n")
        negotiation = peer.read_request()
        send_slowly(peer, json.dumps({"return": {}, "id": negotiation["id"]}).encode() + b"\r\n")
        request = peer.read_request()
        reply = {"return": {"status": "paused", "running": False, "text": "é✓"}, "id": request["id"]}
        send_slowly(peer, json.dumps(reply, ensure_ascii=False).encode() + b"\r\n")

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["text"] == "é✓"
    assert result.seconds < BOUND


@pytest.mark.parametrize("stage, phrase", [
    ("before the greeting", "QMP greeting"),
    ("after the greeting", "reply to qmp_capabilities"),
    ("after our request", "reply to query-status"),
])
def test_connection_closed_before_the_reply_is_protocol_error(cli, tmp_path, stage, phrase):
    def script(peer: Peer) -> None:
        if stage != "before the greeting":
            peer.send(GREETING)
            negotiation = peer.read_request()
        if stage == "after our request":
            peer.reply(negotiation)
            peer.read_request()
        peer.sock.close()

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert "connection closed" in result.err and phrase in result.err
    assert result.seconds < BOUND


def test_connection_closed_right_after_the_reply_still_succeeds(cli, tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        answer_status(peer, peer.read_request())
        peer.sock.close()

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["status"] == "paused"


def test_server_that_never_answers_the_command_times_out(cli, tmp_path):
    with serve(tmp_path, lambda peer: (peer.handshake(), peer.read_request())):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 4, result
    assert "timed out after 2s waiting for the reply to query-status" in result.err
    assert TIMEOUT <= result.seconds < BOUND


def test_server_that_stops_reading_bounds_the_send(cli, tmp_path):
    """A 1.2 MB request to a peer that never reads fills the socket buffers; the deadline ends the send."""
    stalled = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        stalled.wait(30)

    words = ["query-status"] + [f'"a{index}": "{"x" * 100_000}",' for index in range(12)] + ['"end": 1']
    with serve(tmp_path, script) as server:
        result = cli("monitor-command", "-s", str(tmp_path / "m.sock"), "--timeout", str(TIMEOUT), *words)
        stalled.set()
    assert result.code == 4, result
    assert "to accept query-status" in result.err
    assert TIMEOUT <= result.seconds < BOUND
    assert len(server.received) < 1_200_000  # it really stopped reading


def test_endless_line_trickled_slowly_is_bounded_by_the_deadline(cli, tmp_path):
    """A line that grows by a byte every 50 ms never ends: the one deadline still does."""
    stop = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_request()
        while not stop.wait(0.05):
            peer.sock.sendall(b"x")

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
        stop.set()
    assert result.code == 4, result
    assert "reply to query-status" in result.err
    assert result.seconds < BOUND


def test_fifty_mib_reply_is_read_whole(cli, tmp_path):
    size = 50 * 1024 * 1024

    def script(peer: Peer) -> None:
        peer.handshake()
        request = peer.read_request()
        peer.send(b'{"return": {"blob": "' + b"x" * size + b'"}, "id": ' + json.dumps(request["id"]).encode()
                  + b"}\r\n")

    with serve(tmp_path, script):
        result = cli("status", "-s", str(tmp_path / "m.sock"), "--timeout", "20", "--return-value")
    assert result.code == 0, result.err
    assert len(result.out_bytes) == len(b'{"blob":""}\n') + size
    assert result.seconds < 20


@pytest.mark.parametrize("reply, phrase", [
    (b"[1, 2, 3]\r\n", "JSON list instead of an object"),
    (b'"hello"\r\n', "JSON str instead of an object"),
    (b"\xff\xfe\x00garbage\r\n", "not JSON"),
    (b'{"return": NaN, "id": "%ID%"}\r\n', "not JSON"),
    (b'{"return": ' + b"[" * 100_000 + b"]" * 100_000 + b', "id": "%ID%"}\r\n', "nested too deeply"),
    (b'{"return": {}, "id": "qmpctl-0-0"}\r\n{"neither": 1, "id": "%ID%"}\r\n', "neither return nor error"),
])
def test_malformed_reply_is_protocol_error(cli, tmp_path, reply, phrase):
    def script(peer: Peer) -> None:
        peer.handshake()
        request = peer.read_request()
        peer.send(reply.replace(b"%ID%", request["id"].encode()))

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert phrase in result.err
    assert "Traceback" not in result.err
    assert result.seconds < BOUND


def test_greeting_that_is_an_error_is_protocol_error(cli, tmp_path):
    with serve(tmp_path, lambda peer: peer.send({"error": {"class": "GenericError", "desc": "go away"}})):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 5, result
    assert "not a QMP monitor" in result.err


def test_negotiation_refused_is_reported_as_the_vm_error(cli, tmp_path):
    """A monitor that refuses qmp_capabilities (e.g. already negotiated) is a VM error naming the class."""
    def script(peer: Peer) -> None:
        peer.send(GREETING)
        request = peer.read_request()
        peer.send({"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete"},
                   "id": request["id"]})

    with serve(tmp_path, script):
        result = status(cli, tmp_path / "m.sock")
    assert result.code == 1, result
    assert "CommandNotFound" in result.err and "negotiation" in result.err


def test_fault_in_one_fleet_target_does_not_delay_the_others(cli, tmp_path):
    """A silent monitor costs its own --timeout, concurrently: the healthy one still answers, exit is 4."""
    def healthy(peer: Peer) -> None:
        peer.handshake()
        answer_status(peer, peer.read_request())

    with FakeServer(tmp_path / "ok.sock", healthy), FakeServer(tmp_path / "silent.sock", None):
        started = time.monotonic()
        result = cli("status", "-s", str(tmp_path / "silent.sock"), "-s", str(tmp_path / "ok.sock"),
                     "--timeout", str(TIMEOUT))
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 4, result
    assert lines[0]["exit"] == 4 and "busy" in lines[0]["error"]["desc"]
    assert lines[1]["return"]["status"] == "paused"
    assert time.monotonic() - started < BOUND
