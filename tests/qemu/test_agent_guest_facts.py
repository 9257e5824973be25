"""agent time and agent guestinfo against the host's real qemu-ga (guest-set-time always blocked here).

The host agent runs on THIS machine: it must never set the host's clock, so
every agent this module starts has guest-set-time disabled (-b), and --sync
is tested here only for the refusal. Setting a clock is tested against the
lab guest (tests/lab/test_guest_os.py), whose busybox has /sbin/hwclock.
"""

from __future__ import annotations

import json
import socket

import pytest

from support.qga import HostAgent, have_qemu_ga

pytestmark = [pytest.mark.agent, pytest.mark.skipif(not have_qemu_ga(), reason="qemu-ga is not installed")]

NEVER_ON_THE_HOST = ["guest-set-time"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory, qemu_build):
    host_agent = HostAgent(tmp_path_factory.mktemp("qga"), block=NEVER_ON_THE_HOST,
                           binary=qemu_build.qemu_ga).start()
    yield host_agent
    host_agent.stop()


@pytest.fixture
def locked_down_agent(tmp_path, qemu_build):
    """An agent with some of guestinfo's commands disabled, as a hardened guest's would be."""
    host_agent = HostAgent(tmp_path / "locked", block=NEVER_ON_THE_HOST + ["guest-get-users", "guest-get-fsinfo"],
                           binary=qemu_build.qemu_ga).start()
    yield host_agent
    host_agent.stop()


def test_time_reads_the_guests_clock_against_the_hosts(cli, agent):
    result = cli("agent", "time", "-a", str(agent.path), "--return-value")
    assert result.code == 0, result
    reading = json.loads(result.out)
    assert set(reading) == {"guest", "host", "offset", "uncertainty"}
    assert abs(reading["offset"]) < 1  # the "guest" is this machine: the same clock
    assert reading["guest"].endswith("Z") and reading["guest"][:16] == reading["host"][:16]


def test_sync_refused_by_the_agent_is_exit_1_with_its_words(cli, agent):
    result = cli("agent", "time", "-a", str(agent.path), "--sync")
    assert result.code == 1, result
    assert "guest-set-time" in result.err and "disabled" in result.err and result.out == ""


def test_sync_dry_run_shows_the_hosts_time_and_sends_nothing(cli, tmp_path):
    result = cli("agent", "time", "-a", str(tmp_path / "absent.sock"), "--sync", "--dry-run")
    assert result.code == 0, result
    shown = json.loads(result.out)
    assert shown["plan"][0]["execute"] == "guest-set-time" and shown["plan"][0]["arguments"]["time"] > 0


def test_guestinfo_has_every_section(cli, agent):
    result = cli("agent", "guestinfo", "-a", str(agent.path), "--return-value")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert list(report) == ["os", "hostname", "timezone", "users", "filesystems", "disks", "vcpus"]
    assert report["hostname"] == socket.gethostname()
    assert report["os"]["machine"] == "x86_64" and "zone" in report["timezone"]
    assert isinstance(report["vcpus"], list) and report["vcpus"]


def test_guestinfo_reports_a_disabled_command_in_its_section(cli, locked_down_agent):
    result = cli("agent", "guestinfo", "-a", str(locked_down_agent.path), "--return-value")
    assert result.code == 0, result
    report = json.loads(result.out)
    for section in ("users", "filesystems"):
        assert report[section]["error"]["class"] == "CommandNotFound", report[section]
        assert "disabled" in report[section]["error"]["desc"]
    assert report["hostname"] == socket.gethostname()  # the others are there


@pytest.mark.one_qemu
def test_guestinfo_of_an_agent_that_is_not_there_is_exit_3(cli, tmp_path):
    result = cli("agent", "guestinfo", "-a", str(tmp_path / "absent.sock"))
    assert result.code == 3, result
