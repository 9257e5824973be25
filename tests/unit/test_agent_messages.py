"""The agent library without a real agent: resync over arbitrary junk, exec results, the poll schedule."""

from __future__ import annotations

import base64
import itertools
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpctl.wire import agent
from qmpctl.guest import exec as guest_exec
from qmpctl.wire.address import parse_address
from qmpctl.deadline import Deadline
from qmpctl.timing import EXEC_POLL_MAX
from qmpctl.errors import ExecTimeout, ProtocolError, UsageError, VmError
from qmpctl.wire.request import Request
from qmpctl.wire.transport import Connection

SYNC_ID = 12345


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=3000), tail=st.sampled_from([b"", b"\n", b'{"return": 1}\n', b"\xff"]))
def test_resync_finds_its_reply_after_any_junk(monkeypatch_id, junk, tail):
    client, peer = socket.socketpair()
    with client, peer:
        peer.sendall(junk + tail + b'\xff{"return": %d}\n' % SYNC_ID)
        session = agent.AgentSession(Connection(client, parse_address("/fake.sock")))
        session.resync(Deadline(2))
        assert peer.recv(4096).startswith(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":12345}}')


@pytest.fixture(scope="module")
def monkeypatch_id():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agent, "_random_id", lambda: SYNC_ID)
        yield


def test_resync_ignores_a_stale_sync_reply_with_another_id(monkeypatch_id):
    client, peer = socket.socketpair()
    with client, peer:
        peer.sendall(b'\xff{"return": 999}\n')
        session = agent.AgentSession(Connection(client, parse_address("/fake.sock")))
        with pytest.raises(Exception) as caught:
            session.resync(Deadline(0.3))
        assert "not responding" in str(caught.value)


# --- exec requests ---

def test_exec_request_always_captures_and_encodes_stdin():
    request = guest_exec.exec_request(["sh", "-c", "cat"], env=["A=1"], input_data=b"\x00\xff")
    assert request.as_dict() == {"execute": "guest-exec", "arguments": {
        "path": "sh", "arg": ["-c", "cat"], "env": ["A=1"], "input-data": "AP8=", "capture-output": True}}


@pytest.mark.parametrize("env", [["A"], ["=1"], ["A=1", "B"]])
def test_env_must_be_assignments(env):
    with pytest.raises(UsageError, match="NAME=VALUE"):
        guest_exec.exec_request(["true"], env=env)


def test_oversized_stdin_is_refused_before_sending():
    with pytest.raises(UsageError, match="16 MiB"):
        guest_exec.exec_request(["cat"], input_data=b"x" * (guest_exec.MAX_INPUT_BYTES + 1))


def test_no_program_is_a_usage_error():
    with pytest.raises(UsageError, match="no program"):
        guest_exec.exec_request([])


# --- exec results ---

def reply(**result):
    return {"return": result}


@pytest.mark.parametrize(("result", "status"), [
    ({"exited": True, "exitcode": 0}, 0),
    ({"exited": True, "exitcode": 3}, 3),
    ({"exited": True, "signal": 9}, 137),
    ({"exited": True, "exitcode": 256}, 255),  # would wrap round to 0 in a shell
    ({"exited": True, "exitcode": 3221225477}, 255),  # a Windows NTSTATUS
])
def test_exit_status_like_a_shell(result, status):
    assert guest_exec.parse_status(1, reply(**result)).exit_status == status


def test_status_decodes_both_streams():
    status = guest_exec.parse_status(7, reply(exited=True, exitcode=0, **{
        "out-data": base64.b64encode(b"\x00out").decode(), "err-data": "ZXJy", "err-truncated": True}))
    assert (status.stdout, status.stderr, status.out_truncated, status.err_truncated) == (b"\x00out", b"err",
                                                                                          False, True)
    assert status.to_json()["stdout"] == "\x00out"


def test_running_program_has_no_exit_status_yet():
    status = guest_exec.parse_status(7, reply(exited=False))
    assert not status.exited
    with pytest.raises(ValueError):
        _ = status.exit_status


@pytest.mark.parametrize("bad", [{"return": []}, {"return": {"exited": "yes"}},
                                 reply(exited=True, exitcode=0, **{"out-data": "%%%"}),
                                 reply(exited=True, signal=True)])
def test_malformed_status_is_a_protocol_error(bad):
    with pytest.raises(ProtocolError):
        guest_exec.parse_status(1, bad)


# --- the poll loop, with a scripted session and a fake clock ---

class ScriptedSession:
    """Answers guest-exec-status with the next reply in ``replies`` and records the polls."""

    target = "scripted"
    supports_events = False

    def __init__(self, replies):
        self.replies = iter(replies)
        self.sent: list[Request] = []

    def execute(self, request, deadline):
        self.sent.append(request)
        answer = next(self.replies)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        pass


def test_poll_delays_start_at_a_millisecond_and_cap():
    delays = list(itertools.islice(guest_exec.poll_delays(), 30))
    assert delays[0] <= 0.002
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))
    assert delays[-1] == EXEC_POLL_MAX <= 0.25
    assert sum(delays[:5]) < 0.02  # a short program is noticed within a few ms


def test_wait_polls_until_exited():
    session = ScriptedSession([reply(exited=False)] * 3 + [reply(exited=True, exitcode=4)])
    slept: list[float] = []
    status, raw = guest_exec.wait_for_exit(session, 5, reply_timeout=1, sleep=slept.append)
    assert status.exit_status == 4 and raw == reply(exited=True, exitcode=4)
    assert len(session.sent) == 4 and len(slept) == 3
    assert all(request.as_dict() == {"execute": "guest-exec-status", "arguments": {"pid": 5}}
               for request in session.sent)


def test_wait_timeout_raises_exec_timeout_naming_the_pid():
    session = ScriptedSession(itertools.repeat(reply(exited=False)))
    with pytest.raises(ExecTimeout, match="pid 5"):
        guest_exec.wait_for_exit(session, 5, reply_timeout=1, wait_timeout=0.05)


def test_unknown_pid_explains_that_results_are_read_once():
    session = ScriptedSession([VmError("GenericError", "Invalid parameter 'pid'")])
    with pytest.raises(VmError, match="already read"):
        guest_exec.read_status(session, 5, Deadline(1))


def test_program_that_cannot_start_names_it():
    failure = VmError("GenericError", "Guest agent command failed, error was 'Failed to execute child process'")
    session = ScriptedSession([failure])
    with pytest.raises(VmError, match="could not start 'nope'"):
        guest_exec.start(session, guest_exec.exec_request(["nope"]), Deadline(1))


def test_start_without_a_pid_is_a_protocol_error():
    session = ScriptedSession([{"return": {}}])
    with pytest.raises(ProtocolError, match="no pid"):
        guest_exec.start(session, guest_exec.exec_request(["true"]), Deadline(1))


# --- disabled and unknown commands, in each qemu-ga's words (replies recorded from the real agents) ---

EXEC_ARGUMENTS = {"path": "true", "capture-output": True}
DISABLED_REPLIES = {
    "qemu-ga 7.2, -b guest-exec": {"class": "CommandNotFound", "desc": "Command guest-exec has been disabled"},
    "qemu-ga 10.0, -b or --allow-rpcs without it": {
        "class": "CommandNotFound", "desc": "Command guest-exec has been disabled: the command is not allowed"},
    "QEMU 2.x": {"class": "GenericError", "desc": "The command guest-exec has been disabled for this instance"},
}


def _recorded(reply: dict[str, object]) -> agent.AgentSession:
    """An agent session whose peer answers with ``reply`` (no id: qemu-ga echoes none when the client sends none)."""
    import json

    from support.fakes import ScriptedSocket

    wire = json.dumps({"error": reply}).encode() + b"\n"
    return agent.AgentSession(Connection(ScriptedSocket([wire]), parse_address("/fake.sock")))  # type: ignore[arg-type]


@pytest.mark.parametrize("agent_version", sorted(DISABLED_REPLIES))
def test_a_disabled_command_names_every_place_it_can_be_enabled(agent_version):
    with pytest.raises(VmError) as caught:
        _recorded(DISABLED_REPLIES[agent_version]).execute(Request("guest-exec", EXEC_ARGUMENTS, protocol="qga"),
                                                            Deadline(2))
    desc = caught.value.desc
    assert desc.startswith("guest-exec is disabled in the guest agent's configuration")
    for where in ("--block-rpcs", "--allow-rpcs", "block-rpcs=", "allow-rpcs=", "qemu-ga.conf"):
        assert where in desc
    assert desc.endswith(f"the agent said: {DISABLED_REPLIES[agent_version]['desc']}")
    assert caught.value.error_class == DISABLED_REPLIES[agent_version]["class"]
    assert caught.value.sent == {"execute": "guest-exec", "arguments": EXEC_ARGUMENTS}


def test_a_command_the_agent_lacks_is_not_called_disabled():
    """qemu-ga 10 is built without guest-get-devices on Linux: "has not been found", which no option changes."""
    reply = {"class": "CommandNotFound", "desc": "The command guest-get-devices has not been found"}
    with pytest.raises(VmError) as caught:
        _recorded(reply).execute(Request.raw({"execute": "guest-get-devices"}, protocol="qga"), Deadline(2))
    assert caught.value.desc == ("The command guest-get-devices has not been found (guest-get-devices is not known "
                                 "to this guest agent: an older qemu-ga, or one built without it)")
    assert "disabled" not in caught.value.desc


def test_other_errors_are_left_as_the_agent_said_them():
    reply = {"class": "GenericError", "desc": "Invalid parameter 'pid'"}
    with pytest.raises(VmError) as caught:
        _recorded(reply).execute(Request("guest-exec-status", {"pid": 1}, protocol="qga"), Deadline(2))
    assert (caught.value.error_class, caught.value.desc) == ("GenericError", "Invalid parameter 'pid'")


@pytest.mark.parametrize("libvirt_message", [
    "internal error: unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled",
    "internal error: unable to execute QEMU agent command 'guest-exec': "
    "Command guest-exec has been disabled: the command is not allowed",
])
def test_the_libvirt_way_gives_the_same_hint(libvirt_message):
    from qmpctl.wire.libvirt import agent_error

    recovered = agent_error(libvirt_message)
    assert recovered is not None
    desc = agent.disabled_command_error(recovered, "guest-exec").desc
    assert "--block-rpcs" in desc and "--allow-rpcs" in desc and "allow-rpcs=" in desc
