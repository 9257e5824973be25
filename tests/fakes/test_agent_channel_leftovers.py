"""Agent-channel faults the real qemu-ga cannot be made to show, against a scripted fake agent.

Inside a guest the channel outlives its clients: replies to a client that
gave up, the tails of cut lines and the agent's answer to an earlier flush
byte all wait for the next client. These scripts replay that.
"""

from __future__ import annotations

import base64
import itertools
import json
import time

import pytest

from support.fakes import FakeServer, Peer
from support.qga import answer, answer_sync, send_line

pytestmark = pytest.mark.fault

MARGIN = 2.5  # Python start-up on a loaded 2-core machine
FAKE_INFO = {"version": "9.9.9-fake", "supported_commands": []}

LEFTOVERS = (
    # the agent's id-less answer to some earlier client's flush byte
    b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n'
    # sync replies that earlier clients gave up waiting for
    + b'\xff{"return": 1111}\n' + b'\xff{"return": 2222}\n'
    # their stale answers
    + b'{"return": {"pid": 4242}}\n'
    + b'{"return": {"exited": true, "exitcode": 0}}\n'
    + b'{"return": {"version": "stale"}}\n'
    # the tail of a line whose start went to a client that left
    + b'"exited": false}}\n'
    # junk with 0xFF bytes in it, and no line end before our reply
    + b'garbage \xff\xff more {"return": \xff{"ret'
)


def test_stale_replies_of_earlier_clients_and_junk_before_the_sync_reply(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer, junk=LEFTOVERS)
        answer(peer, "guest-info", FAKE_INFO)

    with FakeServer(tmp_path / "qga.sock", script) as server:
        result = cli("agent", "info", "-a", str(tmp_path / "qga.sock"), "--timeout", "3")
    assert result.code == 0, result
    assert json.loads(result.out) == {"return": FAKE_INFO}
    assert not server.errors
    assert server.received.startswith(b"\xff{")  # the flush byte goes first


def test_a_reply_with_someone_elses_id_is_not_taken_for_ours(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        request = peer.read_request()
        assert request["execute"] == "guest-info" and "id" in request
        send_line(peer, {"return": {"version": "someone else's"}, "id": request["id"] + 1})
        send_line(peer, {"return": FAKE_INFO, "id": request["id"]})

    with FakeServer(tmp_path / "qga.sock", script) as server:
        result = cli("agent", "info", "-a", str(tmp_path / "qga.sock"), "--timeout", "3")
    assert result.code == 0, result
    assert json.loads(result.out)["return"] == FAKE_INFO
    assert not server.errors


def test_an_agent_that_echoes_no_ids_still_works(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        peer.read_request()
        send_line(peer, {"return": FAKE_INFO})

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "info", "-a", str(tmp_path / "qga.sock"), "--timeout", "3")
    assert result.code == 0, result
    assert json.loads(result.out)["return"] == FAKE_INFO


def exec_script(statuses: list[dict], junk: bytes = b"", pid: int = 77):
    """A fake agent that starts a program and answers each status poll with the next of ``statuses``."""
    def script(peer: Peer) -> None:
        answer_sync(peer, junk=junk)
        answer(peer, "guest-exec", {"pid": pid})
        for status in statuses:
            request = answer(peer, "guest-exec-status", status)
            assert request["arguments"] == {"pid": pid}
    return script


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_exec_after_leftovers_gets_its_own_result(cli, tmp_path):
    done = {"exited": True, "exitcode": 5, "out-data": b64(b"\x00mine\xff"), "err-data": b64(b"warn\n"),
            "out-truncated": False, "err-truncated": True}
    with FakeServer(tmp_path / "qga.sock", exec_script([{"exited": False}, done], junk=LEFTOVERS)) as server:
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "3", "--", "prog")
    assert result.code == 5, result
    assert result.out_bytes == b"\x00mine\xff"
    assert result.err.startswith("warn\n")
    assert "truncated the program's stderr" in result.err
    assert not server.errors


def test_polling_starts_fast_and_backs_off_to_a_cap(cli, tmp_path):
    poll_times: list[float] = []

    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-exec", {"pid": 77})
        started = time.monotonic()
        while True:
            request = peer.read_request()
            poll_times.append(time.monotonic() - started)
            finished = poll_times[-1] > 1.0
            send_line(peer, {"return": {"exited": finished, **({"exitcode": 0} if finished else {})},
                             "id": request["id"]})
            if finished:
                return

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--", "prog")
    assert result.code == 0, result
    gaps = [later - earlier for earlier, later in itertools.pairwise(poll_times)]
    assert poll_times[0] < 0.02, poll_times  # the first poll comes at once
    assert sum(1 for gap in gaps if gap < 0.02) >= 4, gaps  # then a few fast ones
    assert max(gaps) < 0.3, gaps  # never slower than the cap
    assert 10 <= len(poll_times) <= 30, poll_times  # backing off: no flood over one second


@pytest.mark.parametrize(("status", "message"), [
    ({"exited": True, "exitcode": 0, "out-data": "not base64!"}, "not base64"),
    ({"exited": True}, "neither exitcode nor signal"),
    ({"exitcode": 0}, "no 'exited' flag"),
    ({"exited": True, "exitcode": "zero"}, "not an integer"),
])
def test_malformed_status_is_125(cli, tmp_path, status, message):
    with FakeServer(tmp_path / "qga.sock", exec_script([status])):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "3", "--", "prog")
    assert result.code == 125, result
    assert message in result.err


def test_agent_silent_after_start_is_124_the_program_may_run(cli, tmp_path):
    """The program started (pid 77): silence now is not "no agent" (125) but a lost outcome (124)."""
    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-exec", {"pid": 77})
        peer.read_request()  # the first poll, never answered

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "1", "--", "prog")
    assert result.code == 124, result
    assert "guest-exec-status" in result.err and "guest pid 77) may still be running" in result.err
    assert "agent exec-status 77" in result.err
    assert 1 <= result.seconds < 1 + MARGIN, result


def test_agent_silent_after_guest_exec_is_124_not_agent_missing(cli, tmp_path):
    """The agent answered the sync, then not guest-exec: it may have started the program."""
    def script(peer: Peer) -> None:
        answer_sync(peer)
        peer.read_request()  # guest-exec, never answered

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "1", "--", "prog")
    assert result.code == 124, result
    assert "no reply to guest-exec" in result.err and "may be running" in result.err
    assert 1 <= result.seconds < 1 + MARGIN, result


def test_agent_silent_at_the_first_sync_is_still_125(cli, tmp_path):
    with FakeServer(tmp_path / "qga.sock", lambda peer: peer.read_request()):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "1", "--", "prog")
    assert result.code == 125, result
    assert "not responding" in result.err


def test_agent_closing_the_channel_mid_poll_is_125(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-exec", {"pid": 77})
        peer.read_request()
        peer.send(b'{"return": {"exi')
        peer.sock.close()

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "3", "--", "prog")
    assert result.code == 125, result
    assert "closed" in result.err


@pytest.mark.parametrize("desc", ["The command guest-exec is not allowed",
                                  "The command guest-exec has been disabled for this instance"])
def test_other_agent_versions_wording_for_a_disabled_command(cli, tmp_path, desc):
    error_class = "GenericError" if "instance" in desc else "CommandNotFound"

    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-exec", error={"class": error_class, "desc": desc})
        answer(peer, "guest-fsfreeze-status", "thawed")  # not frozen: it is the configuration

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "3", "--", "true")
    assert result.code == 125, result
    assert "guest-exec is disabled in the guest agent's configuration" in result.err


QGA10_REFUSAL = {"class": "CommandNotFound", "desc": "Command guest-exec has been disabled: the command is not allowed"}


@pytest.mark.parametrize(("status", "phrase"), [
    ("frozen", "guest-exec is refused while the guest's filesystems are frozen"),
    ("thawed", "guest-exec is disabled in the guest agent's configuration"),
])
def test_qemu_ga_10_refuses_alike_when_frozen_and_when_blocked_so_qmpctl_asks(cli, tmp_path, status, phrase):
    """qemu-ga 10 says "not allowed" for both; the remedy differs (thaw vs. configuration), so the status decides."""
    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-exec", error=QGA10_REFUSAL)
        answer(peer, "guest-fsfreeze-status", status)

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "3", "--", "true")
    assert result.code == 125, result
    assert phrase in result.err and QGA10_REFUSAL["desc"] in result.err, result


def test_a_status_that_is_refused_too_leaves_the_refusal_as_it_was(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-exec", error=QGA10_REFUSAL)
        answer(peer, "guest-fsfreeze-status", error={
            "class": "CommandNotFound",
            "desc": "Command guest-fsfreeze-status has been disabled: the command is not allowed"})

    with FakeServer(tmp_path / "qga.sock", script):
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), "--timeout", "3", "--", "true")
    assert result.code == 125, result
    assert "guest-exec is disabled in the guest agent's configuration" in result.err, result


class _LibvirtError(Exception):
    def get_error_code(self) -> int:
        return 1

    def get_error_message(self) -> str:
        return str(self)


@pytest.mark.parametrize(("status", "phrase"), [
    ("frozen", "guest-exec is refused while the guest's filesystems are frozen"),
    ("thawed", "guest-exec is disabled in the guest agent's configuration"),
])
def test_through_libvirt_a_qemu_ga_10_refusal_is_told_apart_the_same_way(status, phrase):
    """libvirt keeps only the agent's desc; qmpctl asks guest-fsfreeze-status through it too."""
    from types import SimpleNamespace

    from qmpctl.deadline import Deadline
    from qmpctl.errors import VmError
    from qmpctl.wire.libvirt import DomainAgentSession, DomainTarget
    from qmpctl.wire.request import Request
    from qmpctl.wire.targets import AGENT

    sent = []

    def agent_command(domain, text, seconds, flags):
        sent.append(json.loads(text)["execute"])
        if sent[-1] == "guest-fsfreeze-status":
            return json.dumps({"return": status, "id": "libvirt-9"})
        raise _LibvirtError("internal error: unable to execute QEMU agent command 'guest-exec': "
                            + QGA10_REFUSAL["desc"])

    libvirt = SimpleNamespace(libvirtError=_LibvirtError, VIR_ERR_INTERNAL_ERROR=1)
    session = DomainAgentSession(DomainTarget("lab", kind=AGENT), libvirt,
                                 SimpleNamespace(qemuAgentCommand=agent_command), None, None)
    with pytest.raises(VmError) as refused:
        session.execute(Request("guest-exec", {"path": "true", "capture-output": True}, protocol="qga"),
                        Deadline(5))
    assert sent == ["guest-exec", "guest-fsfreeze-status"]
    assert phrase in str(refused.value), refused.value


@pytest.mark.parametrize("args", [["--env", "NOT_AN_ASSIGNMENT"], ["--wait-timeout", "-5"], ["--bogus"]])
def test_bad_exec_usage_sends_nothing(cli, tmp_path, args):
    with FakeServer(tmp_path / "qga.sock", lambda peer: None) as server:
        result = cli("agent", "exec", "-a", str(tmp_path / "qga.sock"), *args, "--", "true")
    assert result.code == 125, result
    assert server.connections == 0 and server.received == b""


def test_several_targets_send_nothing(cli, tmp_path):
    with FakeServer(tmp_path / "a.sock", lambda peer: None) as first, \
            FakeServer(tmp_path / "b.sock", lambda peer: None) as second:
        result = cli("agent", "exec", "-a", str(tmp_path / "*.sock"), "--", "true")
    assert result.code == 125, result
    assert "2 targets" in result.err
    assert first.connections == 0 and second.connections == 0
