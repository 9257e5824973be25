"""The wire trace (``QMPCTL_DEBUG=1``) and the context every error carries, against real QEMU and qemu-ga.

The trace must show each message as it went over the socket, with a
timestamp and the target, leave stdout alone, and never show a secret:
guest-set-user-password's password and guest-file-write's data are sent
to a real qemu-ga that has both commands disabled (``-b``), so nothing
happens on the host and the agent's refusal is traced too.
"""

from __future__ import annotations

import json
import os
import re
import signal
from contextlib import contextmanager
from typing import Iterator

import pytest

from qmpctl.wire import trace
from qmpctl.wire.address import Address
from qmpctl.wire.agent import AgentSession
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, QmpctlError, VmError
from qmpctl.wire.qmp import QmpSession
from qmpctl.wire.request import Request
from support.qga import HostAgent, have_qemu_ga

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (-->|<--|!!!) (.*)$")
PASSWORD = "c2VjcmV0LXBhc3N3b3Jk"  # base64 of a password that must never show
FILE_DATA = "dG9wIHNlY3JldCBmaWxlIGNvbnRlbnRz"
SECRET_COMMANDS = ["guest-set-user-password", "guest-file-write", "guest-file-open"]

needs_agent = pytest.mark.skipif(not have_qemu_ga(), reason="qemu-ga is not installed")


def trace_lines(stderr: str) -> list[tuple[str, str, str]]:
    """(target, arrow, message) of every trace line; every line of stderr but the last diagnostic must be one."""
    found = []
    for line in stderr.splitlines():
        match = LINE.match(line)
        if match:
            found.append((match.group(2), match.group(3), match.group(4)))
        else:
            assert line.startswith("qmpctl: "), f"neither a trace line nor a diagnostic: {line!r}"
    return found


@pytest.fixture(scope="module")
def locked_agent(tmp_path_factory) -> Iterator[HostAgent]:
    """A real qemu-ga that refuses the commands carrying secrets: sending them here is harmless."""
    agent = HostAgent(tmp_path_factory.mktemp("qga-trace"), block=SECRET_COMMANDS).start()
    yield agent
    agent.stop()


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """A real peer that accepted the connection and then stops answering (SIGSTOP), resumed afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def captured_trace() -> Iterator[list[str]]:
    lines: list[str] = []
    saved = trace.sink
    trace.sink = lines.append
    try:
        yield lines
    finally:
        trace.sink = saved


# --- the trace on stderr, through the CLI -------------------------------------------------


@pytest.mark.qemu
def test_debug_traces_every_qmp_message_on_stderr_and_leaves_stdout_alone(cli, vm):
    plain = cli("status", "-s", str(vm.qmp_path))
    traced = cli("status", "-s", str(vm.qmp_path), env={"QMPCTL_DEBUG": "1"})
    assert (traced.code, traced.out) == (plain.code, plain.out) == (0, plain.out)
    assert plain.err == ""
    lines = trace_lines(traced.err)
    assert {target for target, _, _ in lines} == {f"unix:{vm.qmp_path}"}
    messages = [(arrow, json.loads(text)) for _, arrow, text in lines]
    assert [arrow for arrow, _ in messages] == ["<--", "-->", "<--", "-->", "<--"]
    assert "QMP" in messages[0][1]
    assert messages[1][1]["execute"] == "qmp_capabilities" and messages[2][1]["id"] == messages[1][1]["id"]
    assert messages[3][1]["execute"] == "query-status"
    assert messages[4][1]["return"]["status"] == json.loads(plain.out)["return"]["status"]


@pytest.mark.qemu
def test_debug_traces_a_refusal_with_what_was_sent(cli, vm):
    result = cli("monitor-command", "-s", str(vm.qmp_path), '{"execute":"job-dismiss","arguments":{"id":"nojob"}}',
                 env={"QMPCTL_DEBUG": "1"})
    assert result.code == 1, result
    failures = [text for _, arrow, text in trace_lines(result.err) if arrow == "!!!"]
    assert len(failures) == 1
    assert failures[0].startswith("VmError: GenericError: ")
    assert '| sent {"execute":"job-dismiss","arguments":{"id":"nojob"}}' in failures[0]
    assert '| received {"error":' in failures[0]


@pytest.mark.agent
@needs_agent
def test_agent_trace_shows_the_sync_and_masks_the_password(cli, locked_agent):
    request = {"execute": "guest-set-user-password",
               "arguments": {"username": "nobody", "password": PASSWORD, "crypted": False}}
    result = cli("agent", "command", "-a", str(locked_agent.path), json.dumps(request), env={"QMPCTL_DEBUG": "1"})
    assert result.code == 1 and "disabled" in result.err, result
    assert PASSWORD not in result.err
    lines = trace_lines(result.err)
    sent = [text for _, arrow, text in lines if arrow == "-->"]
    assert sent[0].startswith('\\xff{"execute":"guest-sync-delimited"')
    assert json.loads(sent[1]) == {"execute": "guest-set-user-password", "id": json.loads(sent[1])["id"],
                                   "arguments": {"username": "nobody", "password": "<masked>", "crypted": False}}
    failure = [text for _, arrow, text in lines if arrow == "!!!"]
    assert len(failure) == 1 and '"password":"<masked>"' in failure[0] and "CommandNotFound" in failure[0]


@pytest.mark.agent
@needs_agent
def test_agent_trace_masks_file_contents(cli, locked_agent):
    request = {"execute": "guest-file-write", "arguments": {"handle": 1, "buf-b64": FILE_DATA}}
    result = cli("agent", "command", "-a", str(locked_agent.path), json.dumps(request), env={"QMPCTL_DEBUG": "1"})
    assert result.code == 1, result
    assert FILE_DATA not in result.err
    assert '"buf-b64":"<masked>"' in result.err


def test_masking_of_recorded_messages():
    """Replies too: guest-file-read's contents; and text that cannot be parsed but may hold a secret."""
    read_reply = b'{"return": {"count": 5, "buf-b64": "aGVsbG8=", "eof": true}, "id": 7}\n'
    with captured_trace() as lines:
        trace.received("unix:/a", read_reply)
        trace.sent("unix:/a", b'\xff{"execute":"guest-set-user-password","arguments":{"password":"x1"')
        trace.sent("domain:vm", '{"execute":"guest-file-write","arguments":{"handle":3,"buf-b64":"QUJD"}}')
    shown = [LINE.match(line).group(4) for line in lines]
    assert json.loads(shown[0]) == {"return": {"count": 5, "buf-b64": "<masked>", "eof": True}, "id": 7}
    assert "x1" not in shown[1] and shown[1].startswith("\\xff<")
    assert json.loads(shown[2])["arguments"] == {"handle": 3, "buf-b64": "<masked>"}


# --- the context every error carries ---------------------------------------------------


@pytest.mark.qemu
def test_a_timeout_waiting_for_qemu_names_the_request(vm):
    session = QmpSession.connect(Address(path=str(vm.qmp_path)), Deadline(10))
    try:
        with stopped(vm.proc.pid), captured_trace() as lines, pytest.raises(DeadlineExceeded) as caught:
            session.execute(Request("query-status"), Deadline(0.3))
    finally:
        session.close()
    assert caught.value.sent == {"execute": "query-status"}
    assert lines[-1].split(" ", 3)[2:] == ["!!!", f"DeadlineExceeded: {caught.value.message} "
                                           '| sent {"execute":"query-status"}']


@pytest.mark.qemu
def test_a_vm_error_carries_request_and_reply(vm):
    with QmpSession.connect(Address(path=str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(VmError) as caught:
            session.execute(Request("job-dismiss", {"id": "nojob"}), Deadline(10))
    assert caught.value.sent == {"execute": "job-dismiss", "arguments": {"id": "nojob"}}
    assert caught.value.received["error"]["class"] == "GenericError"


@pytest.mark.agent
@needs_agent
def test_a_timeout_waiting_for_the_agent_names_the_request(locked_agent):
    session = AgentSession.connect(Address(path=str(locked_agent.path)), Deadline(10))
    try:
        with stopped(locked_agent.proc.pid), pytest.raises(QmpctlError) as caught:
            session.execute(Request("guest-ping", protocol="qga"), Deadline(0.3))
    finally:
        session.close()
    assert isinstance(caught.value, DeadlineExceeded)
    assert caught.value.sent == {"execute": "guest-ping"}
