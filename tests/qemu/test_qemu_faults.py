"""Faults a real QEMU produces: busy monitors, a VM killed mid-call, its stale socket, oversized input.

After each fault the VM's state is read through the independent second
monitor (``vm.check()``), so "nothing changed half-way" is checked without
trusting qmpctl.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from support.qemu import RawQmp
from support.waits import wait_until_blocked_on_a_socket

pytestmark = [pytest.mark.qemu, pytest.mark.fault]

TIMEOUT = 1
BOUND = TIMEOUT + 3


def run_state(vm) -> str:
    with vm.check() as qmp:
        return qmp.cmd("query-status")["status"]


def test_stop_on_a_busy_monitor_times_out_and_never_stops_the_vm_later(cli, vm):
    """qmpctl gave up: when the other client leaves, QEMU must not run the stop qmpctl never sent."""
    with vm.check() as qmp:
        qmp.cmd("cont")
    with RawQmp(vm.qmp_path):
        result = cli("stop", "-s", str(vm.qmp_path), "--timeout", str(TIMEOUT))
    assert result.code == 4, result
    assert "busy" in result.err
    assert result.seconds < BOUND
    # QEMU serves one client at a time, in order: answering the next one means it has served the queued
    # (and abandoned) connection of qmpctl first.
    again = cli("status", "-s", str(vm.qmp_path), "--return-value")
    assert again.code == 0 and json.loads(again.out)["status"] == "running", again
    assert run_state(vm) == "running"


def test_many_waiting_clients_all_report_busy(cli, vm):
    """One client served, and more qmpctl runs than QEMU's backlog holds: each ends in exit 4, none in 3."""
    with RawQmp(vm.qmp_path):
        waiting = [cli.popen("status", "-s", str(vm.qmp_path), "--timeout", "3") for _ in range(4)]
        results = [(proc.wait(timeout=15), proc.stderr.read().decode()) for proc in waiting]
    assert [code for code, _ in results] == [4, 4, 4, 4], results
    assert all("busy" in err for _, err in results), results
    assert run_state(vm) == "prelaunch"


def test_busy_monitor_over_tcp(cli, vm):
    with socket.create_connection(("127.0.0.1", vm.tcp_port)) as holder:
        holder.recv(4096)  # the greeting is ours: QEMU serves this client now
        result = cli("status", "-s", vm.tcp_address, "--timeout", str(TIMEOUT))
    assert result.code == 4, result
    assert "busy" in result.err
    assert result.seconds < BOUND


def test_qemu_killed_while_qmpctl_waits_is_a_fast_protocol_error(cli, vm):
    """The wait is cut short by the close, not by the deadline."""
    with RawQmp(vm.qmp_path):
        proc = cli.popen("status", "-s", str(vm.qmp_path), "--timeout", "30")
        wait_until_blocked_on_a_socket(proc.pid)
        vm.kill()
        started = time.monotonic()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 5, err
    assert b"QMP greeting" in err and (b"connection closed" in err or b"Connection reset" in err)
    assert time.monotonic() - started < 3


def test_socket_left_by_a_killed_qemu_is_refused_fast(cli, vm):
    vm.kill()
    assert vm.qmp_path.exists()
    result = cli("status", "-s", str(vm.qmp_path), "--timeout", "30")
    assert result.code == 3, result
    assert "stale socket" in result.err
    assert result.seconds < 3
    tcp = cli("status", "-s", vm.tcp_address, "--timeout", "30")
    assert tcp.code == 3 and "connection refused" in tcp.err, tcp


def test_huge_raw_argument_is_for_the_vm_to_judge(cli, vm):
    """A raw request's arguments are QEMU's business: a 300 KB path is sent, refused with exit 1, VM unharmed.

    (300 KB rather than more only because QEMU's JSON lexer takes seconds per MB.)
    """
    words = ["qom-get", '"property": "type", "path": "' + "a" * 100_000] + ["a" * 100_000] * 2 + ['"']
    result = cli("monitor-command", "-s", str(vm.qmp_path), "--timeout", "10", *words)
    assert result.code == 1, result
    assert result.err.startswith("qmpctl: DeviceNotFound: Device 'aaaa")
    assert run_state(vm) == "prelaunch"


def test_hmp_error_text_is_not_a_qmp_error(cli, vm):
    """HMP reports its errors inside the text: exit 0 with the text, as QEMU gives no error object."""
    result = cli("monitor-command", "-s", str(vm.qmp_path), "--hmp", "no_such_hmp_command")
    assert result.code == 0, result
    assert "unknown command" in result.out
