"""Events, powerdown, reset and quit against real QEMU, the lab guest and libvirtd."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from qmpctl import events, lifecycle
from qmpctl.address import parse_address
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, UsageError
from qmpctl.qmp import QmpSession
from support.lab import lab_guest_module
from support.libvirt import TestDomain, libvirtd, virsh  # noqa: F401 (fixture)

STOP = events.EventFilter(frozenset({"STOP"}))


def connect(path: Path) -> QmpSession:
    return QmpSession.connect(parse_address(str(path)), Deadline(10))


def wait_gone(process, seconds: float = 10) -> bool:
    try:
        process.wait(timeout=seconds)
    except Exception:
        return False
    return True


# -- filters ---------------------------------------------------------------------------------------------

def test_filter_matches_names_and_dotted_data_values():
    keep = events.EventFilter(events.parse_names(["shutdown,STOP"]),
                              (events.parse_match("reason=guest-shutdown"), events.parse_match("data.guest=true")))
    shutdown = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}
    assert keep(shutdown)
    assert not keep({**shutdown, "event": "RESET"})
    assert not keep({"event": "SHUTDOWN", "data": {"guest": False, "reason": "guest-shutdown"}})
    nested = events.EventFilter(matches=(events.parse_match("a.b=1"),))
    assert nested({"event": "X", "data": {"a": {"b": 1}}}) and not nested({"event": "X", "data": {"a": 1}})
    assert keep.describe() == "SHUTDOWN or STOP with reason=guest-shutdown, guest=true"


@pytest.mark.parametrize("text", ["reason", "=x", "a..b=1"])
def test_match_without_key_and_value_is_a_usage_error(text):
    with pytest.raises(UsageError, match="KEY=VALUE"):
        events.parse_match(text)


# -- real QEMU without a guest ------------------------------------------------------------------------------

@pytest.mark.qemu
def test_wait_sees_a_stop_caused_by_another_client(vm):
    with connect(vm.qmp_path) as session:
        vm.check().cmd("cont")
        threading.Timer(0.3, lambda: vm.check().cmd("stop")).start()
        event = events.wait_for(session, STOP, Deadline(10))
    assert event["event"] == "STOP" and set(event["timestamp"]) == {"seconds", "microseconds"}


@pytest.mark.qemu
def test_wait_with_nothing_happening_ends_after_its_time(vm):
    with connect(vm.qmp_path) as session:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"no STOP within 1 s"):
            events.wait_for(session, STOP, Deadline(1))
    assert 0.9 < time.monotonic() - started < 3


@pytest.mark.qemu
def test_powerdown_without_a_guest_times_out_and_force_after_quits(vm):
    with connect(vm.qmp_path) as session, pytest.raises(DeadlineExceeded, match="did not shut down within 1 s"):
        lifecycle.powerdown(session, Deadline(10), wait_seconds=1)
    assert vm.alive()
    with connect(vm.qmp_path) as session:
        result = lifecycle.powerdown(session, Deadline(10), force_after=1)
    assert result["return"]["forced"] is True and result["return"]["seconds"] >= 1
    assert wait_gone(vm.proc)


@pytest.mark.qemu
def test_quit_succeeds_on_the_closed_connection_and_qemu_is_gone(vm):
    with connect(vm.qmp_path) as session:
        assert lifecycle.quit_vm(session, Deadline(10)) == {"return": {}}
    assert wait_gone(vm.proc)


@pytest.mark.qemu
def test_reset_with_no_reboot_says_the_vm_shut_down(vm_factory):
    vm = vm_factory(extra_args=["-no-reboot"])
    with connect(vm.qmp_path) as session:
        result = lifecycle.reset(session, Deadline(10))["return"]
    assert result["event"]["event"] == "SHUTDOWN" and result["note"] == lifecycle.NO_REBOOT_NOTE


# -- the lab guest -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One booted lab guest for the module; the powerdown test ends it, so it runs last."""
    with lab_guest_module().LabGuest(tmp_path_factory.mktemp("life")) as booted:
        yield booted


@pytest.mark.lab
def test_reset_reboots_the_lab_guest_and_its_agent_answers_again(guest):
    guest.qmp_command("set-action", {"reboot": "reset"})  # the lab runs with -no-reboot
    with connect(guest.qmp_path) as session:
        result = lifecycle.reset(session, Deadline(10))["return"]
    assert result["event"]["event"] == "RESET" and "note" not in result
    assert guest.wait_agent(timeout=120) >= 0 and guest.is_running()


@pytest.mark.lab
def test_powerdown_of_the_lab_guest_ends_with_its_shutdown(guest):
    with connect(guest.qmp_path) as session:
        result = lifecycle.powerdown(session, Deadline(10), wait_seconds=60)["return"]
    assert result["forced"] is False
    assert result["event"]["event"] == "SHUTDOWN" and result["event"]["data"]["guest"] is True
    deadline = time.monotonic() + 10
    while guest.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not guest.is_running()


# -- libvirt -----------------------------------------------------------------------------------------------------

@pytest.mark.libvirt
def test_events_of_a_domain_see_a_stop_caused_by_virsh_suspend(libvirtd):  # noqa: F811
    from qmpctl.libvirt_backend import DomainTarget

    domain = TestDomain("ev").start()
    try:
        with DomainTarget(domain.name).open(Deadline(10)) as session:
            listening = events.listening(session, Deadline(10))
            threading.Timer(0.3, lambda: virsh("suspend", domain.name)).start()
            event = events.wait_for(listening, STOP, Deadline(20))
            with pytest.raises(UsageError, match="virsh destroy"):
                lifecycle.quit_vm(session, Deadline(10))
        assert event["event"] == "STOP" and set(event["timestamp"]) == {"seconds", "microseconds"}
        assert domain.state() == "paused"
    finally:
        domain.remove()
