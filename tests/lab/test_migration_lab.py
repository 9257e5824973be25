"""Live migration of the lab guest, a real Linux whose agent must answer on the destination's channel.

One guest boots for the module and travels: the tests that must leave it
where it is (a throttled migration cut short) run first, then it migrates to
a new QEMU, and from there is saved to a file and restored into another.
Each destination has the same hardware and data disk, waiting with
``-incoming defer`` (tests/lab/guest.py ``incoming_twin``).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from support.lab import lab_guest_module
from support.qemu import RawQmp
from support.runner import CliRunner
from support.waits import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.qemu]


class Journey:
    """Where the lab guest lives now, and every QEMU it lived in (all stopped at the end)."""

    def __init__(self, guest, folders: pytest.TempPathFactory) -> None:
        self.current = guest
        self.folders = folders
        self.started = [guest]

    def twin(self):
        """A new destination for the guest: its current home's hardware and data disk, waiting."""
        twin = self.current.incoming_twin(self.folders.mktemp("twin"))
        self.started.append(twin)
        twin.start()
        return twin


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    lab = lab_guest_module()
    booted = lab.LabGuest(tmp_path_factory.mktemp("lab"))
    with booted:
        trip = Journey(booted, tmp_path_factory)
        try:
            yield trip
        finally:
            for qemu in trip.started[1:]:
                qemu.stop()


@pytest.fixture
def guest(journey: Journey):
    return journey.current


@pytest.fixture
def destination(journey: Journey):
    return journey.twin()


def qmp(vm, execute: str) -> dict:
    with RawQmp(vm.qmp_path, timeout=10) as check:
        return check.cmd(execute)


def agent(cli: CliRunner, agent_path: Path, *command: str):
    return cli("agent", "exec", "-a", str(agent_path), "--", *command)


def left_waiting(vm) -> bool:
    if not vm.is_running():
        return False
    try:
        return qmp(vm, "query-status")["status"] == "inmigrate"
    except Exception:
        return vm.is_running()


def migrate(cli: CliRunner, guest, destination, *options: str, **kwargs):
    return cli("migrate", "-s", str(guest.qmp_path), "--to", str(destination.qmp_path), *options, **kwargs)


def test_a_throttled_migration_cut_short_leaves_the_guest_running_on_the_source(cli, guest, destination):
    result = migrate(cli, guest, destination, "--speed", "1M", "--wait-timeout", "2", "--progress", "none")
    assert result.code == 4, result
    assert "--wait-timeout 2s" in result.err and "the source is running" in result.err, result.err
    assert qmp(guest, "query-status")["status"] == "running"
    assert qmp(guest, "query-migrate")["status"] == "cancelled"
    wait_for(lambda: not left_waiting(destination), "the destination is left waiting", timeout=15)
    alive = agent(cli, guest.agent_path, "echo", "still here")
    assert alive.code == 0 and alive.out == "still here\n", alive


def test_sigint_during_a_migration_gives_the_guest_back(cli, guest, destination):
    process = cli.popen("migrate", "-s", str(guest.qmp_path), "--to", str(destination.qmp_path),
                        "--speed", "1M", "--progress", "json")
    first = process.stderr.readline()  # a progress line: the migration is under way
    assert json.loads(first)["status"] in ("setup", "active"), first
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert b"the source is running" in err, err
    assert qmp(guest, "query-status")["status"] == "running"
    wait_for(lambda: not left_waiting(destination), "the destination no longer waiting", timeout=15)


def test_the_guest_moves_with_its_memory_and_keeps_counting(cli, journey, guest, destination):
    marker = f"in guest RAM only {os.urandom(8).hex()}"
    wrote = agent(cli, guest.agent_path, "sh", "-c", f"echo '{marker}' > /tmp/marker; cat /proc/uptime")
    assert wrote.code == 0, wrote
    uptime_before = float(wrote.out.split()[0])
    result = migrate(cli, guest, destination, "--progress", "json", "--timeout", "30")
    assert result.code == 0, result
    summary = json.loads(result.out)["return"]
    assert summary["source"] == {"status": "postmigrate", "migration": "completed"}, summary
    assert summary["destination"] == {"status": "running"}
    progress = [json.loads(line) for line in result.err.splitlines()]
    assert progress and progress[-1]["status"] == "completed", result.err
    print(f"lab guest migrated: {summary['bytes']} bytes in {summary['total-time-ms']} ms, "
          f"downtime {summary['downtime-ms']} ms")
    assert qmp(guest, "query-status")["status"] == "postmigrate"
    after = agent(cli, destination.agent_path, "sh", "-c", "cat /tmp/marker; cat /proc/uptime")
    assert after.code == 0, after
    kept, uptime = after.out.splitlines()
    assert kept == marker
    assert float(uptime.split()[0]) > uptime_before
    journey.current = destination


def test_saved_state_restored_into_a_new_qemu_continues_the_guest(cli, journey, tmp_path):
    guest = journey.current
    marker = f"saved with the state {os.urandom(8).hex()}"
    wrote = agent(cli, guest.agent_path, "sh", "-c", f"echo '{marker}' > /tmp/saved; cat /proc/uptime")
    assert wrote.code == 0, wrote
    uptime_before = float(wrote.out.split()[0])
    state_file = tmp_path / "lab.state"
    saved = cli("migrate", "-s", str(guest.qmp_path), "--to-file", str(state_file), "--then", "quit",
                "--progress", "none", "--return-value")
    assert saved.code == 0, saved
    wait_for(lambda: not guest.is_running(), "--then quit did not end the QEMU", timeout=15)
    print(f"lab guest saved: {state_file.stat().st_size} bytes, downtime {json.loads(saved.out)['downtime-ms']} ms")
    home = journey.twin()
    restored = cli("migrate", "--from-file", str(state_file), "-s", str(home.qmp_path), "--return-value")
    assert restored.code == 0, restored
    assert json.loads(restored.out)["run-state"] == "running"
    journey.current = home
    after = agent(cli, home.agent_path, "sh", "-c", "cat /tmp/saved; cat /proc/uptime")
    assert after.code == 0, after
    kept, uptime = after.out.splitlines()
    assert kept == marker
    assert float(uptime.split()[0]) >= uptime_before


def test_restored_with_sync_time_the_guest_clock_is_the_hosts(cli, journey, tmp_path):
    """The saved guest is an hour behind; --sync-time sets its clock once it runs in its new QEMU."""
    import time

    guest = journey.current
    assert agent(cli, guest.agent_path, "sh", "-c", f"date -u -s @{int(time.time()) - 3600}").code == 0
    state_file = tmp_path / "lab.state"
    saved = cli("migrate", "-s", str(guest.qmp_path), "--to-file", str(state_file), "--then", "quit",
                "--progress", "none")
    assert saved.code == 0, saved
    wait_for(lambda: not guest.is_running(), "--then quit did not end the QEMU", timeout=15)
    home = journey.twin()
    restored = cli("migrate", "--from-file", str(state_file), "-s", str(home.qmp_path), "--sync-time", "-a",
                   str(home.agent_path), "--return-value")
    assert restored.code == 0, restored
    journey.current = home
    result = json.loads(restored.out)
    assert result["run-state"] == "running" and result["time-synced"] is True, result
    assert result["time-offset-before"] < -3500 and abs(result["time-offset"]) < 2, result
    told = agent(cli, home.agent_path, "date", "+%s")
    assert told.code == 0 and abs(int(told.out) - time.time()) < 3, told
