"""Events, powerdown, reset and quit against real QEMU, the lab guest and libvirtd."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from qmpctl.wire import events
from qmpctl.vm import lifecycle
from qmpctl.wire.address import parse_address
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, UsageError
from qmpctl.wire.qmp import QmpSession
from support.lab import lab_guest_module
from support.libvirt import TestDomain, libvirtd, virsh  # noqa: F401 (fixture)
from support.qemu import RawQmp
from support.waits import wait_for

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
        with vm.check() as other:  # the event reaches every connected client, ours included
            other.cmd("stop")
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
    assert result["forced"] is True and result["seconds"] >= 1
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
        result = lifecycle.reset(session, Deadline(10))
    assert result["event"]["event"] == "SHUTDOWN" and result["note"] == lifecycle.NO_REBOOT_NOTE


# -- through the command line ------------------------------------------------------------------------------

def stop_until_it_ends(vms, process, seconds: float = 20) -> None:
    """Pause and resume the VMs (from their second monitors) until ``process`` ends.

    A background ``events`` gives no sign of having connected, so the STOP is
    repeated until it was seen: what ends the loop is the condition itself.
    """
    deadline = time.monotonic() + seconds
    checks = [vm.check() for vm in vms]
    try:
        while process.poll() is None and time.monotonic() < deadline:
            for check in checks:
                check.cmd("stop")
            try:
                process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                for check in checks:
                    check.cmd("cont")
    finally:
        for check in checks:
            check.close()


@pytest.mark.qemu
def test_cli_events_wait_ends_at_the_stop_with_exit_0(cli, vm):
    vm.check().cmd("cont")
    process = cli.popen("events", "-s", str(vm.qmp_path), "--wait", "STOP", "--timeout", "30")
    stop_until_it_ends([vm], process)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    line = json.loads(out)
    assert line["event"] == "STOP" and line["data"] == {} and set(line["timestamp"]) == {"seconds", "microseconds"}


@pytest.mark.qemu
def test_cli_events_wait_with_nothing_happening_is_exit_4_in_about_the_timeout(cli, vm):
    result = cli("events", "-s", str(vm.qmp_path), "--wait", "STOP", "--timeout", "1")
    assert result.code == 4 and "no STOP within 1 s" in result.err and result.out == "", result
    assert result.seconds < 3


@pytest.mark.qemu
@pytest.mark.qemu
def test_cli_events_wait_for_a_name_this_qemu_never_sends_is_exit_2_at_once(cli, vm):
    """A typo must not wait out the timeout: the VM's own schema lists the events it can send."""
    result = cli("events", "-s", str(vm.qmp_path), "--wait", "STOP,SHUTDWON", "--timeout", "30")
    assert result.code == 2, result
    assert result.seconds < 10, result
    assert "SHUTDWON" in result.err and "SHUTDOWN" in result.err, result
    assert result.out == ""


@pytest.mark.qemu
def test_cli_events_wait_for_a_real_event_name_is_not_refused(cli, vm):
    """Every event QEMU can send passes the check: a known name times out (4), it is not refused (2)."""
    result = cli("events", "-s", str(vm.qmp_path), "--wait", "block_job_completed,DEVICE_DELETED", "--timeout", "1")
    assert result.code == 4, result


def test_cli_events_of_several_vms_name_the_target_in_each_line(cli, vm_factory):
    vms = [vm_factory(), vm_factory()]
    for one in vms:
        one.check().cmd("cont")
    process = cli.popen("events", *[f"-s{one.qmp_path}" for one in vms], "--wait", "STOP",
                        "--match", "data.nothing=1", "--count", "1", "--timeout", "2")
    out, err = process.communicate(timeout=20)
    lines = [json.loads(line) for line in out.splitlines()]
    assert process.returncode == 4 and {line["target"] for line in lines} == {f"unix:{one.qmp_path}" for one in vms}
    assert all(line["exit"] == 4 for line in lines)  # --match narrowed STOP to nothing: each timed out
    process = cli.popen("events", *[f"-s{one.qmp_path}" for one in vms], "--wait", "STOP", "--timeout", "30")
    stop_until_it_ends(vms, process)
    out, err = process.communicate(timeout=10)
    lines = [json.loads(line) for line in out.splitlines()]
    assert process.returncode == 0, err
    assert {line["target"] for line in lines} == {f"unix:{one.qmp_path}" for one in vms}
    assert all(line["event"] == "STOP" for line in lines)


@pytest.mark.qemu
def test_cli_powerdown_without_a_guest_is_exit_4_and_force_after_ends_it(cli, vm):
    ignored = cli("powerdown", "-s", str(vm.qmp_path), "--wait-timeout", "1")
    assert ignored.code == 4 and "did not shut down within 1 s" in ignored.err and vm.alive(), ignored
    pressed = cli("powerdown", "-s", str(vm.qmp_path), "--no-wait")
    assert pressed.code == 0 and json.loads(pressed.out) == {"return": {}}, pressed
    forced = cli("powerdown", "-s", str(vm.qmp_path), "--force-after", "1")
    assert forced.code == 0 and json.loads(forced.out)["return"]["forced"] is True, forced
    assert "made QEMU quit" in forced.err and wait_gone(vm.proc)


@pytest.mark.qemu
def test_cli_quit_is_exit_0_and_qemu_is_gone(cli, vm):
    result = cli("quit", "-s", str(vm.qmp_path))
    assert result.code == 0 and json.loads(result.out) == {"return": {}}, result
    assert wait_gone(vm.proc)


def test_cli_quit_and_force_after_are_refused_for_a_domain_before_anything_is_sent(cli):
    for args in (("quit",), ("powerdown", "--force-after", "5")):
        result = cli(*args, "-d", "no-such-domain")
        assert result.code == 2 and "virsh destroy" in result.err, result


@pytest.mark.parametrize("args", [("--no-wait", "--force-after", "5"), ("--no-wait", "--wait-timeout", "5"),
                                  ("--force-after", "0",)])
def test_cli_powerdown_options_that_contradict_are_exit_2(cli, tmp_path, args):
    result = cli("powerdown", "-s", str(tmp_path / "absent.sock"), *args)
    assert result.code == 2, result


# -- the lab guest -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One booted lab guest for the module; the powerdown test ends it, so it runs last."""
    with lab_guest_module().LabGuest(tmp_path_factory.mktemp("life"), data_fs=False) as booted:
        yield booted


@pytest.mark.lab
def test_reset_reboots_the_lab_guest_and_its_agent_answers_again(cli, guest):
    with RawQmp(guest.qmp_path, timeout=10) as qmp:
        qmp.cmd("set-action", reboot="reset")  # the lab runs with -no-reboot
    reset = cli("reset", "-s", str(guest.qmp_path), "--return-value")
    assert reset.code == 0, reset
    result = json.loads(reset.out)
    assert result["event"]["event"] == "RESET" and "note" not in result
    assert guest.wait_agent(timeout=120) >= 0 and guest.is_running()


@pytest.mark.lab
def test_powerdown_of_the_lab_guest_ends_with_its_shutdown(cli, guest):
    powerdown = cli("powerdown", "-s", str(guest.qmp_path), "--wait-timeout", "60", "--return-value", timeout=90)
    assert powerdown.code == 0, powerdown
    result = json.loads(powerdown.out)
    assert result["forced"] is False
    assert result["event"]["event"] == "SHUTDOWN" and result["event"]["data"]["guest"] is True
    wait_for(lambda: not guest.is_running(), "the lab guest's QEMU to exit", timeout=10, pause=0.1)
    assert not guest.is_running()


# -- libvirt -----------------------------------------------------------------------------------------------------

@pytest.mark.libvirt
def test_cli_events_of_a_domain_end_at_the_stop_of_virsh_suspend(cli, libvirtd):  # noqa: F811
    domain = TestDomain("evcli").start()
    try:
        process = cli.popen("events", "-d", domain.name, "--wait", "STOP", "--timeout", "60")
        deadline = time.monotonic() + 40
        while process.poll() is None and time.monotonic() < deadline:  # repeated until it was seen
            virsh("suspend", domain.name)
            try:
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                virsh("resume", domain.name)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert json.loads(out)["event"] == "STOP"
        nothing = cli("events", "-d", domain.name, "--wait", "SHUTDOWN", "--timeout", "1")
        assert nothing.code == 4 and "no SHUTDOWN within 1 s" in nothing.err, nothing
        virsh("resume", domain.name, check=False)
        stats = cli("stats", "-d", domain.name, "--return-value")
        assert stats.code == 0 and json.loads(stats.out)["disks"][0]["device"] == "virtio-disk0", stats
        limited = cli("throttle", "-d", domain.name, "virtio-disk0", "--bps-rd", "1M", "--return-value")
        assert limited.code == 0 and json.loads(limited.out)["limits"]["bps_rd"] == 1024 * 1024, limited
        ignored = cli("powerdown", "-d", domain.name, "--wait-timeout", "1")  # no OS behind the button
        assert ignored.code == 4 and "did not shut down within 1 s" in ignored.err, ignored
        stream = cli.popen("events", "-d", domain.name)  # no --wait: it runs until the domain stops

        def toggle() -> None:
            virsh("suspend", domain.name)
            virsh("resume", domain.name)

        assert json.loads(first_line(stream, seconds=40, meanwhile=toggle))["event"] in ("STOP", "RESUME")
        # libvirt starts QEMU for <on_reboot>destroy</on_reboot> so that a reset ends it; the output says so.
        reset = cli("reset", "-d", domain.name, "--return-value")
        assert reset.code == 0, reset
        result = json.loads(reset.out)
        assert result["event"]["event"] == "SHUTDOWN" and result["note"] == lifecycle.NO_REBOOT_NOTE
        out, err = stream.communicate(timeout=20)  # the domain stopped: the stream ends, as for a socket
        assert stream.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["event"] == "SHUTDOWN"
    finally:
        domain.remove()


def first_line(process, seconds: float = 20, meanwhile=lambda: None) -> str:
    """The first line ``process`` prints, doing ``meanwhile`` until it comes (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        meanwhile()
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            return process.stdout.readline().decode()
    raise AssertionError("no output")


def streaming_events(cli, vm, other, **popen: object) -> tuple[subprocess.Popen, str]:
    """``qmpctl events`` on the VM, once it has printed a first event (caused by pausing and resuming)."""
    process = cli.popen("events", "-s", str(vm.qmp_path), **popen)
    paused = [True]

    def toggle() -> None:
        other.cmd("cont" if paused[0] else "stop")
        paused[0] = not paused[0]

    return process, first_line(process, meanwhile=toggle)


@pytest.mark.qemu
def test_ctrl_c_ends_an_event_stream_and_a_stats_watch_with_exit_0(cli, vm):
    with vm.check() as other:
        process, line = streaming_events(cli, vm, other)
        assert json.loads(line)["event"] in ("STOP", "RESUME")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0 and b"interrupted" not in err, err
    watch = cli.popen("stats", "-s", str(vm.qmp_path), "--watch", "0.2")
    assert "disks" in json.loads(first_line(watch))["return"]
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=10)
    assert watch.returncode == 0 and b"interrupted" not in err, err


def _block_sigint_and_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


@pytest.mark.qemu
def test_ctrl_c_works_even_when_the_parent_started_qmpctl_with_signals_blocked(cli, vm):
    """A blocked signal mask is inherited (a supervisor's, a test runner's): Ctrl-C must still end qmpctl."""
    with vm.check() as other:
        process, _ = streaming_events(cli, vm, other, preexec_fn=_block_sigint_and_sigterm)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0 and b"interrupted" not in err, err


@pytest.mark.qemu
def test_an_event_stream_ends_with_exit_0_when_qemu_exits(cli, vm):
    with vm.check() as other:
        process, _ = streaming_events(cli, vm, other)
        other.sock.sendall(b'{"execute": "quit"}\n')
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "SHUTDOWN"
