"""The one Session contract, kept by every way in: a QMP socket, qemu-ga's socket, libvirt.

Workflows (waiting, jobs, backup) call ``execute``, ``execute_no_reply``,
``wait_event`` and ``events`` on whatever session a target opens; each kind is
held to all of them here, against the real peer behind it.
"""

from __future__ import annotations

import json

import pytest

from qmpctl.wire import trace
from qmpctl.wire.address import Address
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, VmError
from qmpctl.wire.libvirt import DomainTarget
from qmpctl.wire.request import Request
from qmpctl.wire.session import AGENT, MONITOR, Session
from qmpctl.wire.targets import SocketTarget
from qmpctl.wire.waiting import event_named
from support.libvirt import domain, libvirtd  # noqa: F401 (fixtures)
from support.qga import HostAgent, have_qemu_ga

PROTOCOL_MEMBERS = sorted({*Session.__annotations__, *(name for name in vars(Session) if not name.startswith("_"))})
"""Every member the contract names (at run time Session is a plain class: typing is for type checkers only)."""


def _check_contract(session: object) -> Session:
    missing = [member for member in PROTOCOL_MEMBERS if not hasattr(session, member)]
    assert missing == []
    return session  # checked member by member above


def _check_without_events(session: Session) -> None:
    assert session.supports_events is False
    assert list(session.events) == []
    with pytest.raises(DeadlineExceeded, match="delivers no events"):
        session.wait_event(lambda event: True, Deadline(5), "an event")


@pytest.mark.qemu
def test_qmp_session_keeps_the_contract(vm):
    session = _check_contract(SocketTarget(Address(path=str(vm.qmp_path)), MONITOR).open(Deadline(10)))
    try:
        assert session.supports_events is True
        assert session.execute_no_reply(Request("cont"), Deadline(10)) is None
        event = session.wait_event(event_named("RESUME"), Deadline(10), "RESUME")
        assert event["event"] == "RESUME"
        session.execute(Request("stop"), Deadline(10))
        with pytest.raises(DeadlineExceeded):
            session.wait_event(event_named("NO_SUCH_EVENT"), Deadline(0.3), "an event that never comes")
        assert [event["event"] for event in session.events] == ["STOP"]
    finally:
        session.close()


@pytest.mark.agent
@pytest.mark.skipif(not have_qemu_ga(), reason="qemu-ga is not installed")
def test_agent_session_keeps_the_contract(tmp_path):
    agent = HostAgent(tmp_path / "qga").start()
    try:
        session = _check_contract(SocketTarget(Address(path=str(agent.path)), AGENT).open(Deadline(10)))
        try:
            _check_without_events(session)
            assert session.execute(Request("guest-ping", protocol="qga"), Deadline(10)) == {"return": {}}
            assert session.max_message_bytes is None
            session.resync(Deadline(10))
            assert session.execute(Request("guest-ping", protocol="qga"), Deadline(10)) == {"return": {}}
        finally:
            session.close()
    finally:
        agent.stop()


@pytest.mark.libvirt
def test_libvirt_monitor_session_keeps_the_contract(domain):  # noqa: F811 (fixture)
    session = _check_contract(DomainTarget(domain.name, domain.uri, MONITOR).open(Deadline(20)))
    try:
        _check_without_events(session)
        assert session.execute_no_reply(Request("query-status"), Deadline(20)) is None
    finally:
        session.close()
    agent_session = _check_contract(DomainTarget(domain.name, domain.uri, AGENT).open(Deadline(20)))
    try:
        _check_without_events(agent_session)
    finally:
        agent_session.close()


@pytest.mark.libvirt
def test_libvirt_sessions_trace_what_they_pass_on(domain):  # noqa: F811 (fixture)
    """The wire trace covers the libvirt way in too: the command text libvirt gets, and its reply."""
    lines: list[str] = []
    saved, trace.sink = trace.sink, lines.append
    try:
        with DomainTarget(domain.name, domain.uri, MONITOR).open(Deadline(20)) as session:
            session.execute(Request("query-status"), Deadline(20))
            with pytest.raises(VmError) as caught:
                session.execute(Request("job-dismiss", {"id": "nojob"}), Deadline(20))
    finally:
        trace.sink = saved
    shown = [line.split(" ", 3)[1:] for line in lines]
    assert [(target, arrow) for target, arrow, _ in shown] == [(f"domain:{domain.name}", arrow)
                                                               for arrow in ("-->", "<--", "-->", "<--", "!!!")]
    assert shown[0][2] == '{"execute":"query-status"}'
    assert json.loads(shown[1][2])["return"]["status"] in ("running", "paused")
    assert caught.value.sent == {"execute": "job-dismiss", "arguments": {"id": "nojob"}}
    assert json.loads(shown[3][2])["error"]["class"] == "GenericError"
    assert shown[4][2].startswith("VmError: GenericError: ") and '| sent {"execute":"job-dismiss"' in shown[4][2]


@pytest.mark.libvirt
def test_libvirt_sessions_say_how_much_libvirt_carries(domain):  # noqa: F811 (fixture)
    """agent cp sizes its chunks by the session: libvirt's RPC carries at most 4 MiB a message."""
    from qmpctl.guest.files import LIBVIRT_READ_CHUNK, chunk_size
    from qmpctl.wire.libvirt import LIBVIRT_STRING_MAX

    with DomainTarget(domain.name, domain.uri, AGENT).open(Deadline(20)) as session:
        assert session.max_message_bytes == LIBVIRT_STRING_MAX
        assert chunk_size(session, 16 * 1024 * 1024, LIBVIRT_READ_CHUNK) == LIBVIRT_READ_CHUNK
        session.resync(Deadline(1))  # libvirt syncs by itself: nothing to do, nothing sent
